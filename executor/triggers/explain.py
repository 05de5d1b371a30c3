"""Plain-English explanation of a trigger: what it waits for, atom by atom, and why it missed.

Meant for people (CLI, error messages, the journal, ``why``); the wording is not a
contract.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from executor.model import Event
from executor.triggers.errors import TriggerSyntaxError
from executor.triggers.evaluate import JobPlace, qube_to_unix
from executor.triggers.nodes import (
    PLACEHOLDER,
    WILDCARD,
    And,
    Atom,
    ContextKind,
    EventName,
    EventType,
    Expr,
    Or,
    atoms,
    render_atom,
)
from executor.triggers.parser import parse

_VERBS: Final[dict[EventName, str]] = {
    EventName.COMPLETE: "completes",
    EventName.DONE: "is done (completes, fails or is killed)",
    EventName.SUBMIT: "is submitted",
    EventName.KILLED: "is killed",
    EventName.BLOCKED: "is blocked",
    EventName.FAILED: "fails",
    EventName.RUNNING: "starts running",
    EventName.WAITING: "is set to waiting",
    EventName.ASSIGNED: "is assigned to a host",
    EventName.REMOVED: "is removed",
    EventName.MODIFIED: "is modified",
    EventName.TIMEOUT: "times out",
    EventName.DUMMY: "reaches its time",
}

_EDGE_NOTE: Final = (
    "note: edge-triggered. An atom latches when its event happens after the callback is "
    "registered; an event that already happened (a job that completed earlier) is never "
    "seen again. A time atom whose time is already past when the callback is "
    "registered latches at once."
)
_AND_NOTE: Final = (
    "note: && remembers events that happen at different moments; the latches reset when "
    "the callback fires."
)
_WILDCARD_NOTE: Final = "note: a '*' atom latches once, on any item, not once per item."
_PER_WORK_NOTE: Final = (
    "note: {work} makes it one callback per work item of this job: each item has its own "
    "latches, count and firing, and runs with qb.workid() set to the item."
)
_INTEGER: Final = re.compile(r"-?\d+")
# 400 Gregorian years to the second, and the last second datetime can show (9999-12-31).
_CALENDAR_CYCLE_S: Final = 146097 * 86400
_LAST_DATETIME_S: Final = 253402300799


def explain(expr: Expr) -> str:
    """A multi-line explanation of ``expr``.

    The first line is the whole condition in words; then one line per atom with its
    latch slot (and any parse warnings); then notes on edge-triggering.
    """
    lines = [f"fires when {_describe(expr)}", "atoms, by latch slot:"]
    found = atoms(expr)
    for slot, atom in enumerate(found):
        lines.append(f"  [{slot}] {render_atom(atom)}  ->  {describe_atom(atom)}")
        lines.extend(f"      warning: {warning}" for warning in atom.warnings)
    lines.append(_EDGE_NOTE)
    if _has_and(expr):
        lines.append(_AND_NOTE)
    if any(atom.extra == WILDCARD for atom in found):
        lines.append(_WILDCARD_NOTE)
    if any(atom.per_work for atom in found):
        lines.append(_PER_WORK_NOTE)
    return "\n".join(lines)


def _has_and(expr: Expr) -> bool:
    if isinstance(expr, Atom):
        return False
    return isinstance(expr, And) or any(_has_and(term) for term in expr.terms)


def _describe(expr: Expr) -> str:
    if isinstance(expr, Atom):
        return describe_atom(expr)
    parts = [
        f"({_describe(term)})" if not isinstance(term, Atom) else _describe(term)
        for term in expr.terms
    ]
    if isinstance(expr, Or):
        return "EITHER " + " OR ".join(parts)
    return " AND ".join(parts)


def describe_context(atom: Atom) -> str:
    """The job an atom's context names, in words."""
    kind = atom.context_kind
    if kind is ContextKind.SELF:
        return "this job"
    if kind is ContextKind.PARENT:
        return "the parent job"
    if kind is ContextKind.JOB_ID:
        return f"job {atom.context}"
    if kind is ContextKind.LABEL:
        return f"the job labelled '{atom.context}'"
    return "the supervisor (no job)"


def describe_atom(atom: Atom) -> str:
    """One atom as a clause, e.g. ``work item '5' of the job labelled 'render' completes``."""
    if atom.is_timed or atom.type is EventType.GLOBAL:
        return _describe_clock(atom)
    job = describe_context(atom)
    verb = _VERBS[atom.name]
    if atom.type is EventType.JOB:
        return f"{job} {verb}"
    any_item = atom.extra == WILDCARD
    if atom.type is EventType.WORK:
        if atom.per_work:
            return f"the same work item of {job} {verb}"
        item = "any work item" if any_item else f"work item '{atom.extra}'"
    elif atom.type is EventType.SUBJOB:
        item = "any instance (subjob)" if any_item else f"instance {atom.extra}"
    else:
        item = "any host" if any_item else f"host '{atom.extra}'"
        return f"{item} {verb} (host event seen by {job})"
    return f"{item} of {job} {verb}"


def _describe_clock(atom: Atom) -> str:
    if atom.type is EventType.GLOBAL:
        return "a global event (nothing fires it on its own)"
    start, _, interval = atom.extra.partition("-")
    when = _format_qube_time(int(start))
    owner = (
        "global timer"
        if atom.type in (EventType.GLOBALTIME, EventType.GLOBALREPEAT)
        # Whatever context a trigger stored before it was refused named: it is the owner's.
        else "timer of this job"
    )
    if interval:
        return f"the clock reaches {when} and every {interval} s after ({owner})"
    return f"the clock reaches {when} ({owner})"


def _format_qube_time(qube_time: int) -> str:
    return f"{_utc(qube_to_unix(qube_time))} (Qube time {qube_time})"


def _utc(unix_s: float) -> str:
    """A Unix time as a UTC date; one past the year 9999 too (a repeat's tick may be)."""
    # The Gregorian calendar repeats every 400 years: shift into datetime's range, add back.
    try:
        cycles = max(0, math.ceil((unix_s - _LAST_DATETIME_S) / _CALENDAR_CYCLE_S))
        when = datetime.fromtimestamp(unix_s - cycles * _CALENDAR_CYCLE_S, tz=UTC)
    except (OverflowError, OSError, ValueError):  # not a date at all (never from a timer)
        return f"Unix time {unix_s}"
    return f"{when.year + 400 * cycles}-{when:%m-%d %H:%M:%S} UTC"


def describe_due(atom_text: str, due_unix: float, now_unix: float) -> str:
    """When a clock atom's timer is next due, for people; "" for an atom without one.

    ``due_unix`` is its timer's due time as the engine stored it (why's
    ``next_due_unix``), 0 when it has none: a time that fired, a clock stopped (the
    explanation's state says which). ``due 2026-12-05 23:51:02 UTC (in 3600 s)``; a
    repeat ``next tick ... (in 20 s), every 60 s``, or ``first tick ..., then every 60
    s`` before its start. Said relative to ``now_unix``, so ``why``'s text works it out
    from the answer at the moment it prints it.
    """
    if not due_unix:
        return ""
    try:
        atom = parse(atom_text, stored=True)
    except TriggerSyntaxError:
        return ""
    if not isinstance(atom, Atom) or not atom.is_timed:
        return ""
    start, _, interval = atom.extra.partition("-")
    when = f"{_utc(due_unix)} ({_from_now(due_unix, now_unix)})"
    if not interval:
        return f"due {when}"
    if due_unix == qube_to_unix(int(start)) and due_unix >= now_unix:
        return f"first tick {when}, then every {interval} s"
    return f"next tick {when}, every {interval} s"


def _from_now(unix_s: float, now_unix: float) -> str:
    seconds = round(unix_s - now_unix)
    if seconds == 0:
        return "now"
    return f"in {seconds} s" if seconds > 0 else f"{-seconds} s ago"


def compact_names(names: Sequence[str], limit: int = 12) -> str:
    """Work names for people: integers as sorted ranges (``1-4,6,9-10``).

    Only names each spelled as its number is (``001`` is no ``1``: a range would name
    items no agenda holds); other names as given. Past ``limit`` parts, the count of the rest.
    """
    if not names:
        return "none"
    parts: list[str]
    spelled = [_number(name) for name in names]
    if all(number is not None for number in spelled):
        numbers = sorted({number for number in spelled if number is not None})
        parts = []
        start = previous = numbers[0]
        for number in [*numbers[1:], None]:
            if number is not None and number == previous + 1:
                previous = number
                continue
            parts.append(str(start) if start == previous else f"{start}-{previous}")
            if number is not None:
                start = previous = number
    else:
        parts = list(names)
    if len(parts) > limit:
        return f"{','.join(parts[:limit])},... ({len(names)} in all)"
    return ",".join(parts)


def _number(name: str) -> int | None:
    """The integer ``name`` spells as Python writes it (``-2``, ``10``), else None."""
    if not _INTEGER.fullmatch(name) or len(name) > 19:  # int() refuses 4,300 digits
        return None
    number = int(name)
    return number if str(number) == name else None


def describe_job(job_id: int, place: JobPlace | None) -> str:
    """``job 14 'render' in pgrp 3`` (what the engine knows of a job)."""
    if place is None:
        return f"job {job_id} (not registered here)"
    label = f" '{place.label}'" if place.label else ""
    return f"job {job_id}{label} in pgrp {place.pgrp}"


def unresolved_label(label: str, pgrp: int, labels: Sequence[str]) -> str:
    """Why a label context names no job, with the labels that are there."""
    there = f"labels there: {', '.join(sorted(labels))}" if labels else "no job there has a label"
    return f"label '{label}' names no job in pgrp {pgrp} ({there})"


def near_miss_reason(
    atom: Atom, owner: JobPlace, labels: Sequence[str], event: Event, place: JobPlace
) -> str:
    """Why an event whose name, type and extra match a label atom did not latch it."""
    this = f"this event was {describe_job(event.job_id, place)}"
    if place.pgrp == owner.pgrp:
        return f"{unresolved_label(atom.context, owner.pgrp, labels)}; {this}"
    return f"label '{atom.context}' names no job in pgrp {owner.pgrp}; {this}"


def outside_agenda_reason(work_name: str, job_id: int, agenda: Sequence[str]) -> str:
    """Why a ``{work}`` atom did not latch for an event's work item."""
    return (
        f"work '{work_name}' is not in the agenda of job {job_id} ({compact_names(agenda)}): "
        f"{PLACEHOLDER} stands for its items only"
    )
