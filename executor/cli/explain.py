"""Text of the trigger engine's explanations: ``why``, a dry run's, registration warnings.

Shared by ``cbexec triggers why`` / ``dry-run`` / ``register`` and any other command that
shows a job's callbacks (``cbexec farm show``): give ``format_explanation`` the answer of
``ExecutorClient.explain_callbacks`` (or its ``as_plain`` form, as ``--json`` prints it)
and print what it returns. Everything reads the plain form, so the text and ``--json``
say the same; the text adds only when each clock atom is due, worked out from its
timer's ``next_due_unix`` at the moment it is printed (``in 3600 s``). Every line
comes out with its control characters escaped (printable.escaped): names, labels and
work names are a submitter's, and a CR/LF in one must not start a line of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any, Final

from executor.triggers.errors import TriggerSyntaxError
from executor.triggers.explain import compact_names, describe_due
from executor.triggers.nodes import atoms, render_atom
from executor.triggers.parser import parse
from executor.triggers.why import MAX_JOURNAL_COUNTED
from executor.visible_text import escaped, printable
from supervisor_client.client import as_plain

_INDENT: Final = "  "
# A dry run's "would latch" line names this many latched atoms at most (a trigger may hold thousands).
_LATCHED_NAMED: Final = 10


def _plain(message: Any) -> Mapping[str, Any]:
    return message if isinstance(message, Mapping) else as_plain(message)


def _short(enum_name: str, prefix: str) -> str:
    """``JOURNAL_ENTRY_KIND_NEAR_MISS`` -> ``near miss``."""
    return enum_name.removeprefix(prefix).lower().replace("_", " ")


def _when(unix_s: float) -> str:
    if not unix_s:
        return "at registration"
    return datetime.fromtimestamp(unix_s).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def event_text(seen: Mapping[str, Any] | None) -> str:
    """An event as ``cbexec triggers dry-run --event`` takes it: ``complete-work-12-5``."""
    if not seen or not seen.get("event"):
        return "?"
    event = seen["event"]
    parts = [event["name"], event["type"], str(seen.get("job_id") or event.get("context") or "")]
    if event.get("extra") and event["type"] in ("work", "subjob", "host"):
        parts.append(event["extra"])
    text = "-".join(part for part in parts if part)
    return f"{text} (event id {seen['event_id']})" if seen.get("event_id") else text


def format_check(check: Mapping[str, Any]) -> str:
    """One registration check: ``callback 2 complete-work-ribgn-*: label 'ribgn' ...``."""
    where = f"callback {check['callback_id']}" if check["callback_id"] else "job"
    if check.get("universal"):
        where = f"universal {where}"
    atom = f" {check['atom']}" if check.get("atom") else ""
    kind = _short(check["kind"], "TRIGGER_CHECK_KIND_")
    line = f"{where}{atom}: {check['message']} [{kind}]"
    if check.get("resolved"):
        line += f"; resolved: {check['resolved']}"
    return escaped(line)


def format_entry(entry: Mapping[str, Any]) -> str:
    """One journal entry on one line: when, the event, what it did."""
    seen = entry.get("seen") or {}
    head = f"{_when(seen.get('at', 0))} {event_text(seen)}"
    if entry.get("work_name"):
        head += f" [work {entry['work_name']}]"
    return escaped(f"{head}: {entry_effect(entry)}")


def entry_effect(entry: Mapping[str, Any], *, dry: bool = False) -> str:
    """What a journal entry (or, ``dry``, a dry run's explanation) says the event did, and why.

    A dry run's says what the event would do: ``would latch ...; would fire (count 1)``.
    """
    kind = _short(entry["kind"], "JOURNAL_ENTRY_KIND_")
    if kind == "cleared":  # a registration's, never a dry run's
        return f"cleared {', '.join(entry.get('latched') or ())}: {entry.get('reason', '')}"
    parts: list[str] = []
    if entry.get("latched"):
        parts.append(f"{'would latch' if dry else 'latched'} {', '.join(entry['latched'])}")
    if entry.get("already_latched"):
        parts.append(f"already latched {', '.join(entry['already_latched'])}")
    # A firing's reason: why its run was refused (REJECTED, not run).
    if entry.get("reason"):
        refused = f", {'would be refused' if dry else 'refused'}: {entry['reason']}"
    else:
        refused = ""
    if kind == "fired" and dry:
        parts.append(f"would fire (count {entry['count']}){refused}")
    elif kind == "fired":
        run = f" as {entry['invocation_id']}" if entry.get("invocation_id") else ""
        parts.append(f"FIRED{run} (count {entry['count']}){refused}")
    elif kind == "level":
        # Another job's registration (the reason names it), or the callback's own.
        parts.insert(0, f"level mode at {entry.get('reason') or 'registration'}")
        if entry.get("invocation_id"):  # it fired (a registration is never a dry run)
            parts.append(f"FIRED as {entry['invocation_id']}")
    elif kind == "spent":
        parts.append(f"{'would not fire' if dry else 'not fired'}: {entry['reason']}")
    elif kind == "near miss":
        parts.append(f"near miss of {entry['waiting_for']}: {entry['reason']}")
    if entry.get("waiting_for") and kind in ("matched", "level"):
        parts.append(f"still waiting for {entry['waiting_for']}")
    elif entry.get("reason") and kind == "matched":
        # A clock it needs will not latch again: "it will not fire again: ...".
        parts.append(entry["reason"])
    return "; ".join(parts) or kind


def times(count: int) -> str:
    """``0 times``, ``once``, ``3 times``."""
    return "once" if count == 1 else f"{count} times"


# An atom's text -> when it is due, in words ("" for an atom no clock fires).
Due = Callable[[str], str]


def _due_at(explained: Mapping[str, Any], now_unix: float | None) -> Due:
    """When each clock atom's timer is due (its ``next_due_unix``), as of ``now_unix``.

    ``now_unix`` None: this moment. An atom without a timer (a time that fired, a clock
    stopped) is due no more: its state says why.
    """
    now = time.time() if now_unix is None else now_unix
    atoms = [*explained["atoms"], *(a for item in explained["work_items"] for a in item["atoms"])]
    dues = {atom["atom"]: atom.get("next_due_unix", 0.0) for atom in atoms}
    return cache(lambda atom: describe_due(atom, dues.get(atom, 0.0), now))


def _never(atom: str) -> str:
    return ""


def _atom_line(atom: Mapping[str, Any], due: Due) -> str:
    words = ", ".join(part for part in (atom.get("resolution"), atom.get("state")) if part)
    words = "; ".join(part for part in (due(atom["atom"]), words) if part)
    latch = ""
    if atom.get("latched"):
        by = atom.get("latched_by")
        latch = f"  [latched by {event_text(by)} {_when(by['at'])}]" if by else "  [latched]"
    return f"[{atom['slot']}] {atom['atom']}  ->  {words or atom['description']}{latch}"


def _waiting(waiting: str, lines: Iterable[str], indent: str, due: Due) -> list[str]:
    out = [f"{indent}waiting for {waiting}"]
    out.extend(f"{indent}{_INDENT}{_with_due(line, due)}" for line in lines)
    return out


def _with_due(line: str, due: Due) -> str:
    """A ``waiting for`` line (``<atom>: <words>``) with its clock atom's due time first."""
    atom, sep, words = line.partition(": ")
    when = due(atom) if sep else ""
    return f"{atom}: {when}; {words}" if when else line


def _work_lines(
    items: Sequence[Mapping[str, Any]], maximum: int, indent: str, due: Due
) -> list[str]:
    out: list[str] = []
    for item in items:
        names = item["work_names"]
        noun = "work" if len(names) == 1 else f"work items ({len(names)})"
        head = f"{indent}{noun} {compact_names(names)}"
        if item["spent"]:
            out.append(f"{head}: fired {times(item['count'])}, spent (maximum {maximum} reached)")
            continue
        if not item.get("atoms"):
            again = (
                f"fired {times(item['count'])}; waiting again for"
                if item["count"]
                else "waiting for"
            )
            out.append(f"{head}: {again} {item['waiting']}")
            continue
        if item["count"]:
            head += f" (fired {times(item['count'])} before)"
        out.append(f"{head}:")
        latched = [atom for atom in item["atoms"] if atom["latched"]]
        out.extend(f"{indent}{_INDENT}{_atom_line(atom, due)}" for atom in latched)
        out.extend(_waiting(item["waiting"], item["waiting_for"], indent + _INDENT, due))
    return out


def format_callback(
    explained: Mapping[str, Any], indent: str = "", *, now_unix: float | None = None
) -> list[str]:
    """The lines of one callback's explanation; clock atoms' due times as of ``now_unix``."""
    # A spent callback's clocks are stopped: they are due no more.
    due = _due_at(explained, now_unix) if not explained["spent"] else _never
    cb = explained["callback"]
    mode = _short(cb["mode"], "TRIGGER_MODE_") or "edge"
    origin = f"universal, {cb['source']}" if cb["universal"] else cb["language"]
    lines = [f"{indent}callback {cb['id']} ({origin}, {mode}): {cb['triggers']}"]
    inner = indent + _INDENT
    if cb["canonical_triggers"] != cb["triggers"]:
        lines.append(f"{inner}canonical: {cb['canonical_triggers']}")
    maximum = f" of {cb['maximum']}" if cb["maximum"] else ", no maximum"
    if cb.get("per_work_item"):
        lines.append(
            f"{inner}one callback per work item; fired {times(cb['count'])} in all, "
            f"maximum {cb['maximum'] or 'none'} per item"
        )
    else:
        lines.append(f"{inner}fired {times(cb['count'])}{maximum}")
    if explained.get("refusal"):
        # Fired or not, it never runs: its runs are REJECTED (`cbexec runs` shows them).
        lines.append(f"{inner}each firing is refused (REJECTED), not run: {explained['refusal']}")
    elif explained.get("shadow"):
        lines.append(f"{inner}shadow: it runs, its qb actions are recorded, not applied")
    lines.append(f"{inner}atoms:")
    lines.extend(f"{inner}{_INDENT}{_atom_line(atom, due)}" for atom in explained["atoms"])
    if cb.get("per_work_item"):
        lines.extend(_work_lines(explained["work_items"], cb["maximum"], inner, due))
    elif explained["spent"]:
        lines.append(f"{inner}spent: it has fired its maximum ({cb['maximum']})")
    elif explained["waiting"]:
        lines.extend(_waiting(explained["waiting"], explained["waiting_for"], inner, due))
    if explained["checks"]:
        lines.append(f"{inner}checks at registration:")
        lines.extend(f"{inner}{_INDENT}{format_check(check)}" for check in explained["checks"])
    if explained["journal"]:
        lines.append(f"{inner}journal (oldest first):{_journal_cut(explained)}")
        lines.extend(f"{inner}{_INDENT}{format_entry(entry)}" for entry in explained["journal"])
    else:
        lines.append(f"{inner}journal: no event has touched it yet")
    return [escaped(line) for line in lines]


def _journal_cut(explained: Mapping[str, Any]) -> str:
    """How many entries the journal shown leaves out, and how to see them ("" when none)."""
    left = explained.get("journal_left_out") or 0
    if not left:
        return ""
    shown = len(explained["journal"])
    cb = explained["callback"]
    of = f"{shown + left}" + (" or more" if left >= MAX_JOURNAL_COUNTED else "")
    target = f"cbexec triggers why {cb['job_id']}:{cb['id']}"
    if cb.get("per_work_item"):
        how = f", of every work item ({target} --work NAME for one item's)"
    else:
        how = f" ({target} --journal N for more)"
    return f" the newest {shown} entries of {of}{how}"


def format_explanation(reply: Any, *, now_unix: float | None = None) -> str:
    """The text of an ExplainCallbacks answer (the message or its ``as_plain`` dict).

    A clock atom's due time is said relative to ``now_unix`` (this moment when None).
    """
    plain = _plain(reply)
    label = f" {plain['label']!r}" if plain["label"] else ""
    shown = plain["name"] and plain["name"] != plain["label"]
    name = f" ({printable(plain['name'])})" if shown else ""
    lines = [f"job {plain['job_id']}{label}{name} in pgrp {plain['pgrp']}"]
    lines.extend(f"{_INDENT}{format_check(check)}" for check in plain["checks"])
    if plain.get("universal_not_attached"):  # lines a reload added since it registered
        lines.append(f"{_INDENT}{plain['universal_not_attached']}")
    if not plain["callbacks"]:
        lines.append(f"{_INDENT}no callbacks")
    for explained in plain["callbacks"]:
        lines.append("")
        lines.extend(format_callback(explained, now_unix=now_unix))
    return "\n".join(escaped(line) for line in lines)


def format_dry_run(reply: Any) -> str:
    """The text of a DryRun answer: what would fire or latch, then why, callback by callback."""
    plain = _plain(reply)
    lines: list[str] = []
    for firing in plain["would_fire"]:
        work = f" for work {firing['work_name']}" if firing.get("work_name") else ""
        what = (
            f"job {firing['job_id']} callback {firing['callback_id']}{work} "
            f"({firing['language']}) {firing['triggers']}"
        )
        if firing.get("refusal"):  # it fires, and its run is REJECTED
            lines.append(f"would be refused: {what}: {firing['refusal']}")
        else:
            shadow = " (shadow: actions not applied)" if firing.get("shadow") else ""
            lines.append(f"would fire: {what}{shadow}")
    lines.extend(
        f"would latch: job {cb['job_id']} callback {cb['id']} {cb['triggers']} "
        f"(then latched: {_latched(cb['triggers'], cb['latches'])})"
        for cb in plain["would_latch"]
    )
    for field, what in (("would_fire_left_out", "fire"), ("would_latch_left_out", "latch")):
        if plain.get(field):
            lines.append(f"and {plain[field]} more would {what} (not in the answer)")
    if not lines:
        lines.append("nothing would fire or latch")
    if plain.get("explanations"):
        lines.append("why:")
        for entry in plain["explanations"]:
            work = f" [work {entry['work_name']}]" if entry.get("work_name") else ""
            lines.append(
                f"{_INDENT}job {entry['job_id']} callback {entry['callback_id']}{work}: "
                f"{entry_effect(entry, dry=True)}"
            )
    if plain.get("explanations_left_out"):
        lines.append(f"{_INDENT}and {plain['explanations_left_out']} more (not in the answer)")
    return "\n".join(escaped(line) for line in lines)


def _latched(triggers: str, latches: Sequence[bool]) -> str:
    """The atoms latched, by name (``complete-job-2``), the first ``_LATCHED_NAMED`` of them."""
    slots = [slot for slot, latched in enumerate(latches) if latched]
    try:
        found = atoms(parse(triggers, stored=True))
    except TriggerSyntaxError:
        found = []
    if len(found) == len(latches):
        names = [render_atom(found[slot]) for slot in slots[:_LATCHED_NAMED]]
    else:  # not its trigger's atoms (cannot be, but say what is known): their slots
        names = [f"atom [{slot}]" for slot in slots[:_LATCHED_NAMED]]
    more = f" ... ({len(slots) - _LATCHED_NAMED} more)" if len(slots) > _LATCHED_NAMED else ""
    return (", ".join(names) or "none") + more
