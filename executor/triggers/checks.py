"""Checks at registration: what in a trigger cannot work as written, found before any event.

``trigger_checks`` looks at one callback's trigger with what the engine knows around its
job (``Surroundings``), ``job_checks`` at the job itself, ``static_checks`` at a trigger
alone (the universal callbacks at load, when there is no job). What they find:

* ``unknown_label``: a label no job of the job's pgrp holds (yet), with the labels that
  are there and the closest one (``self`` or ``parent`` for ``SELF`` or ``Parent``: a
  context in another case is a label, as a label is case sensitive). Jobs of one pgrp may register in any order, so this
  is kept as *pending*: when a job registers later with that label in that pgrp, the
  check is marked resolved (``resolve_label``) and ``why`` says by which job; where the
  label moved since, which job holds it now, or that none does (``as_it_stands``).
* ``unknown_work``: a work name (or, for ``{work}``, the job's own items) missing from
  the referenced job's agenda, when that agenda is known. Work triggers name items by
  name only (Qube's doc also allows a "work id"): a number that is no name but an index
  into the agenda is told so, with the name of the item at that index.
* ``never_happens``: an atom no event can match: ``global``, ``parent`` of a job without
  one, an event the scheduler declared it never publishes (but a level callback's
  ``submit-job`` atom: its job's registration is its submission).
* ``label_split``: a label holding ``-``, which the grammar splits (``complete-job-a-b``
  names label ``a``).
* ``parse_warning``: what the parser accepted with a warning (an extra on a job atom is
  ignored); for a trigger alone (``triggers check``, a universal line at load), also a
  label that is ``self`` or ``parent`` in another case (at registration the
  ``unknown_label`` check says that instead, while no job of the pgrp holds the label).
* ``label_unnameable``: a label no trigger can name otherwise: characters other than
  ASCII letters, digits, ``_`` and ``.``; all digits (read as a job id); ``self`` or
  ``parent``.
* ``unknown_code``: a qube callback whose code holds a code string the interpreter does
  not know (``fly-self``), or none (blank: one only commented out runs nothing and is
  fine), or too many (``code_checks``): every firing of it would be REJECTED. A
  warning like the others, not a refusal: a job registered before this check (a
  supervisor registering it again) keeps its other callbacks.
* ``refused``: a job's own callback whose every firing its run would be refused
  (``refusal_checks``): its language is one its owner's policy's ``languages`` (or the
  executor's) leaves out. A warning too, for the same reason.

A registration gets them as warnings; a strict one is refused instead (its own
callbacks' checks only: a site's universal callbacks are not the submitter's to fix).
The table here keeps each registered job's checks until it is registered again or
removed.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from executor.bounds import MAX_ID
from executor.model import Language
from executor.runtimes.qube_codes import validate
from executor.sql import Db
from executor.triggers.evaluate import DONE_MEANS, JobPlace
from executor.triggers.explain import compact_names
from executor.triggers.nodes import (
    PLACEHOLDER,
    TIME_TYPES,
    WILDCARD,
    Atom,
    ContextKind,
    EventName,
    EventType,
    Expr,
    atoms,
    render_atom,
)
from executor.triggers.parser import is_label

QUBE: Final = Language.QUBE.value

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS trigger_checks (
    job_id INTEGER NOT NULL,
    callback_id INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    atom TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    universal INTEGER NOT NULL DEFAULT 0,
    pgrp INTEGER NOT NULL DEFAULT 0,
    label TEXT NOT NULL DEFAULT '',
    resolved TEXT NOT NULL DEFAULT '',
    last_holder INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS trigger_checks_by_job ON trigger_checks (job_id);
CREATE INDEX IF NOT EXISTS trigger_checks_pending
    ON trigger_checks (pgrp, label) WHERE label != '' AND resolved = '';
-- The resolved checks of a label too, for the job that takes it last (``resolve_label``).
CREATE INDEX IF NOT EXISTS trigger_checks_by_label ON trigger_checks (pgrp, label)
    WHERE label != '';
"""


class CheckKind(enum.StrEnum):
    """What a check found."""

    UNKNOWN_LABEL = "unknown_label"
    UNKNOWN_WORK = "unknown_work"
    NEVER_HAPPENS = "never_happens"
    LABEL_SPLIT = "label_split"
    PARSE_WARNING = "parse_warning"
    LABEL_UNNAMEABLE = "label_unnameable"
    UNKNOWN_CODE = "unknown_code"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Check:
    """One finding.

    Attributes:
        kind: What was found.
        message: In words, naming what would do instead.
        callback_id: The callback; 0 when it is about the job itself.
        slot: The atom's latch slot; -1 when it is about no atom.
        atom: The atom as written.
        universal: True for a universal callback's.
        pgrp, label: For ``unknown_label``, the label whose registration in that pgrp
            resolves it.
        resolved: Once resolved, by what (``why`` shows it); "" while pending.
        last_holder: The last job that took the label once resolved (0: none yet), the
            one ``why`` names once the label names no job again.
    """

    kind: CheckKind
    message: str
    callback_id: int = 0
    slot: int = -1
    atom: str = ""
    universal: bool = False
    pgrp: int = 0
    label: str = ""
    resolved: str = ""
    last_holder: int = 0

    def line(self) -> str:
        """One line naming the callback and the atom."""
        where = f"callback {self.callback_id}" if self.callback_id else "job"
        what = f" {self.atom}" if self.atom else ""
        return f"{where}{what}: {self.message}"


@dataclass(frozen=True, slots=True)
class Surroundings:
    """What the checks know around a registering job.

    Attributes:
        owner: The job.
        labels: Label -> job id of the jobs of its pgrp (its own label included); at
            least the labels the checks of its atoms read (``labels_read``), and all of
            them when one of those atoms names a label no job there holds.
        agendas: Job id -> the work names of its registered agenda, for the jobs the
            triggers name (the owner included); missing or empty: not known.
        published: The events the scheduler declared it publishes ("complete" or
            "complete-work"); None when it declared nothing.
    """

    owner: JobPlace
    labels: Mapping[str, int]
    agendas: Mapping[int, Sequence[str]]
    published: frozenset[str] | None = None
    # The agendas as sets: a job registering thousands of callbacks checks each work name
    # in constant time.
    members: Mapping[int, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        members = {job_id: frozenset(names) for job_id, names in self.agendas.items()}
        object.__setattr__(self, "members", members)


def referenced_job(atom: Atom, where: Surroundings) -> int | None:
    """The job an atom's context names now (None: none, or not resolvable)."""
    kind = atom.context_kind
    if kind is ContextKind.SELF:
        return where.owner.job_id
    if kind is ContextKind.PARENT:
        return where.owner.pid or None
    if kind is ContextKind.JOB_ID:
        return int(atom.context)
    if kind is ContextKind.LABEL:
        return where.labels.get(atom.context)
    return None


def static_checks(expr: Expr, *, alone: bool = True) -> list[Check]:
    """What is wrong with a trigger whatever job it belongs to (slots filled in).

    ``alone``: no job is around (``triggers check``, a universal line at load), so a
    label that is ``self`` or ``parent`` in another case is warned of here; at
    registration the label check does it, knowing whether a job holds that label.
    """
    found: list[Check] = []
    for slot, atom in enumerate(atoms(expr)):
        text = atom.text or render_atom(atom)
        meant = _context_meant(atom)
        if alone and meant:
            found.append(
                Check(
                    CheckKind.PARSE_WARNING,
                    f"'{atom.context}' is read as a label, not as '{meant}' (contexts are lower"
                    " case; a label is case sensitive)",
                    slot=slot,
                    atom=text,
                )
            )
        found.extend(
            Check(CheckKind.PARSE_WARNING, warning, slot=slot, atom=text)
            for warning in atom.warnings
        )
        if atom.type is EventType.GLOBAL:
            found.append(
                Check(
                    CheckKind.NEVER_HAPPENS,
                    "nothing fires 'global' on its own; use globaltime-<T> or "
                    "globalrepeat-<T>-<seconds>",
                    slot=slot,
                    atom=text,
                )
            )
    return found


def code_checks(callback_id: int, language: str, code: str) -> list[Check]:
    """What is wrong with a job's callback's code that can be told before it runs (qube)."""
    if language != QUBE:
        return []
    problem = validate(code)
    if problem is None:
        return []
    return [
        Check(
            CheckKind.UNKNOWN_CODE,
            f"each firing would be REJECTED: {problem}",
            callback_id=callback_id,
        )
    ]


def refusal_checks(callback_id: int, refusal: str) -> list[Check]:
    """A job's callback whose every firing would be refused (``refusal``: why; "" when none)."""
    if not refusal:
        return []
    return [
        Check(
            CheckKind.REFUSED,
            f"each firing would be REJECTED: {refusal}",
            callback_id=callback_id,
        )
    ]


def job_checks(owner: JobPlace) -> list[Check]:
    """What is wrong with the job itself: a label the grammar cannot name."""
    label = owner.label
    if not label or is_label(label):
        return []
    if "-" in label:
        head = label.split("-", 1)[0]
        return [
            Check(
                CheckKind.LABEL_SPLIT,
                f"label '{label}' holds '-', which splits an atom: "
                f"complete-job-{label} names label '{head}'. No trigger can name this "
                "job by its label; use letters, digits, '_' and '.'",
                pgrp=owner.pgrp,
            )
        ]
    if label in ("self", "parent") or (label.isascii() and label.isdigit()):
        reads_as = "a job id" if label.isdigit() else f"'{label}'"
        why = f"complete-job-{label} reads as {reads_as}, not this label"
    else:
        why = "a label in a trigger is ASCII letters, digits, '_' and '.'"
    return [
        Check(
            CheckKind.LABEL_UNNAMEABLE,
            f"label {label!r}: no trigger can name this job by its label ({why})",
            pgrp=owner.pgrp,
        )
    ]


def trigger_checks(
    expr: Expr,
    callback_id: int,
    where: Surroundings,
    *,
    universal: bool = False,
    level: bool = False,
) -> list[Check]:
    """Everything wrong with one callback's trigger where its job registers.

    ``level``: the callback is in level mode (its job's registration is the submission
    its ``submit-job`` atoms wait for, whatever events the scheduler publishes).
    """
    found = static_checks(expr, alone=False)
    for slot, atom in enumerate(atoms(expr)):
        text = atom.text or render_atom(atom)
        found.extend(
            Check(kind, message, slot=slot, atom=text, pgrp=pgrp, label=label)
            for kind, message, pgrp, label in _atom_problems(atom, where, level=level)
        )
    return [replace(check, callback_id=callback_id, universal=universal) for check in found]


def _atom_problems(
    atom: Atom, where: Surroundings, *, level: bool
) -> Iterable[tuple[CheckKind, str, int, str]]:
    """(kind, message, pgrp, label) of each problem of one atom."""
    owner = where.owner
    if atom.is_timed or atom.type is EventType.GLOBAL:
        return
    kind = atom.context_kind
    if kind is ContextKind.PARENT and not owner.pid:
        yield (
            CheckKind.NEVER_HAPPENS,
            f"job {owner.job_id} has no parent (pid 0): 'parent' names no job",
            0,
            "",
        )
    if kind is ContextKind.LABEL:
        yield from _label_problems(atom, where)
    # For level mode a job's registration is its submission: a level submit-job atom
    # latches when its job registers, with or without a submit event.
    registers = level and atom.name is EventName.SUBMIT and atom.type is EventType.JOB
    if not registers and not _published(atom, where.published):
        declared = _declared(where.published or frozenset())
        yield (
            CheckKind.NEVER_HAPPENS,
            f"the scheduler publishes {declared}: no '{atom.name}-{atom.type}' event will come",
            0,
            "",
        )
    if atom.type is EventType.WORK and atom.extra != WILDCARD:
        message = _work_problem(atom, where)
        if message:
            yield CheckKind.UNKNOWN_WORK, message, 0, ""


def labels_read(atom: Atom) -> list[str]:
    """The labels whose holders in its pgrp a label atom's checks need (none for another atom).

    Its own, and the hyphenated labels it could have meant (``_split_readings``); all
    the pgrp's labels only when its own is held by no job (the check lists them).
    """
    if atom.context_kind is not ContextKind.LABEL:
        return []
    return [atom.context, *_split_readings(atom)]


def _split_readings(atom: Atom) -> list[str]:
    """The hyphenated labels the atom as written reads as, which the grammar split at a '-'.

    What follows its name and type, whole and up to each '-', that begins with its label
    and a '-'.
    """
    written = atom.text.split("-", 2)[2] if atom.text.count("-") >= 2 else atom.context
    ends = [at for at, char in enumerate(written) if char == "-"] + [len(written)]
    return [written[:end] for end in ends if written[:end].startswith(f"{atom.context}-")]


def _label_problems(atom: Atom, where: Surroundings) -> Iterable[tuple[CheckKind, str, int, str]]:
    pgrp = where.owner.pgrp
    readings = set(_split_readings(atom))
    for label in where.labels:
        if label in readings:
            yield (
                CheckKind.LABEL_SPLIT,
                f"'{label}' is a label in pgrp {pgrp}, but the grammar splits it at '-': "
                f"this atom names label '{atom.context}'",
                0,
                "",
            )
    if atom.context in where.labels:
        return
    labels = sorted(where.labels)
    there = f"labels there: {', '.join(labels)}" if labels else "no job there has a label"
    close = difflib.get_close_matches(atom.context, labels, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    if meant := _context_meant(atom):
        hint = (
            f"; did you mean '{meant}'? (contexts are lower case; '{atom.context}' is read"
            " as a label)"
        )
    yield (
        CheckKind.UNKNOWN_LABEL,
        f"label '{atom.context}' names no job in pgrp {pgrp} yet ({there}){hint}",
        pgrp,
        atom.context,
    )


def _context_meant(atom: Atom) -> str:
    """``self`` or ``parent`` when a label atom's label is one of them in another case."""
    lower = atom.context.lower()
    if atom.context_kind is ContextKind.LABEL and lower in ("self", "parent"):
        return lower
    return ""


def _declared(published: frozenset[str]) -> str:
    """The declared events, short: names taken for the same types share them.

    ``complete, running-job`` as declared; the embedded farm's 17 ``NAME-TYPE``
    entries read ``blocked, complete, failed, killed, running (job, subjob, work),
    removed-job, submit-job``.
    """
    types_of: dict[str, set[str]] = {}
    parts = []
    for entry in published:
        name, dash, type_ = entry.partition("-")
        if dash:
            types_of.setdefault(name, set()).add(type_)
        else:
            parts.append(entry)
    groups: dict[frozenset[str], list[str]] = {}
    for name, types in types_of.items():
        groups.setdefault(frozenset(types), []).append(name)
    for kinds, names in groups.items():
        if len(names) == 1 or len(kinds) == 1:
            parts += [f"{name}-{kind}" for name in names for kind in kinds]
        else:
            parts.append(f"{', '.join(sorted(names))} ({', '.join(sorted(kinds))})")
    return ", ".join(sorted(parts))


def _published(atom: Atom, published: frozenset[str] | None) -> bool:
    if published is None or atom.type in TIME_TYPES:
        return True
    names = DONE_MEANS if atom.name is EventName.DONE else frozenset({atom.name})
    return any(name in published or f"{name}-{atom.type}" in published for name in names)


def _work_problem(atom: Atom, where: Surroundings) -> str:
    """Why the work item(s) an atom names are not in its job's agenda ("" when fine)."""
    job_id = referenced_job(atom, where)
    agenda = where.agendas.get(job_id or 0) or ()
    if job_id is None or not agenda:
        return ""
    names = where.members[job_id]
    if atom.extra == PLACEHOLDER:
        own = where.agendas.get(where.owner.job_id) or ()
        missing = [item for item in own if item not in names]
        if not missing:
            return ""
        return (
            f"work items {compact_names(missing)} of job {where.owner.job_id} are not in the "
            f"agenda of job {job_id} ({compact_names(agenda)}): for them {PLACEHOLDER} "
            "never matches"
        )
    if atom.extra in names:
        return ""
    absent = f"work '{atom.extra}' is not in the agenda of job {job_id} ({compact_names(agenda)})"
    number = _frame_number(atom.extra)
    if number is None:
        return absent
    if same := next((item for item in agenda if _frame_number(item) == number), None):
        # '01' for the frame named '1' (or '1' for '001'): the padding slipped, and the
        # index hint below would name another frame.
        return f"{absent}; did you mean '{same}'? (work items are matched by name, exactly)"
    if number >= len(agenda):
        return absent
    # Qube's doc says "work id or work name"; names only here (an id would make a numeric
    # frame's atom ambiguous, README "Triggers and the event path"): say what was meant.
    return (
        f"{absent}; work triggers name agenda items by name, not by index: item {number}"
        f" is named '{agenda[number]}'"
    )


def _frame_number(name: str) -> int | None:
    """The number a frame-like item name spells (``'001'`` is 1), else None."""
    if name.isascii() and name.isdigit() and len(name) <= 18:  # int() refuses 4,300 digits
        return int(name)
    return None


# -- the table ------------------------------------------------------------------------


def replace_job(db: Db, job_id: int, found: Iterable[Check]) -> None:
    """The job's checks are now ``found`` (a registration replaces the last one's)."""
    forget_job(db, job_id)
    db.executemany(
        "INSERT INTO trigger_checks (job_id, callback_id, slot, atom, kind, message, universal,"
        " pgrp, label, resolved) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                job_id,
                c.callback_id,
                c.slot,
                c.atom,
                c.kind.value,
                c.message,
                int(c.universal),
                c.pgrp,
                c.label if c.kind is CheckKind.UNKNOWN_LABEL else "",
                c.resolved,
            )
            for c in found
        ],
    )


def resolution(label: str, job_id: int) -> str:
    """The start of what ``resolve_label`` notes when ``job_id`` takes ``label``."""
    return f"label '{label}' names job {job_id} since "


def resolve_label(db: Db, pgrp: int, label: str, job_id: int, since: str) -> int:
    """Mark the pending ``unknown_label`` checks of ``label`` in ``pgrp`` resolved by ``job_id``.

    The first job to take the label is noted, and the last (``last_holder``) on every
    check of it; where it moved since, ``why`` reads the check as it stands
    (``as_it_stands``).
    """
    resolved = int(
        db.execute(
            "UPDATE trigger_checks SET resolved = ? WHERE pgrp = ? AND label = ? AND label != ''"
            " AND resolved = ''",
            (resolution(label, job_id) + since, pgrp, label),
        ).rowcount
    )
    db.execute(
        "UPDATE trigger_checks SET last_holder = ? WHERE pgrp = ? AND label = ? AND label != ''"
        " AND last_holder != ?",
        (job_id, pgrp, label, job_id),
    )
    return resolved


def as_it_stands(check: Check, holder: int | None) -> Check:
    """A check as the label it waited for stands now (``holder``: the job holding it, or None).

    The table notes the job that resolved it first; a label moves (its job registered
    again without it, or was removed; another took it), and what ``why`` says of the
    check follows it, as its atoms do.
    """
    if check.kind is not CheckKind.UNKNOWN_LABEL or not check.label:
        return check
    if holder is not None:
        if check.resolved.startswith(resolution(check.label, holder)):
            return check
        first = _first_holder(check)
        held = f" ({first} held it first)" if first else ""
        return replace(check, resolved=f"label '{check.label}' names job {holder} now{held}")
    if not check.resolved:
        return check
    return replace(
        check,
        resolved=(
            f"label '{check.label}' names no job in pgrp {check.pgrp} now"
            f" ({_last_holder(check)} held it)"
        ),
    )


def _last_holder(check: Check) -> str:
    """``job N`` of the job that took the label last (the first, for a check from before)."""
    return f"job {check.last_holder}" if check.last_holder else _first_holder(check)


def _first_holder(check: Check) -> str:
    """``job N`` of a check resolved by job N ("" while pending)."""
    if not check.resolved:
        return ""
    return check.resolved.removeprefix(f"label '{check.label}' names ").partition(" since ")[0]


def forget_job(db: Db, job_id: int) -> None:
    db.execute("DELETE FROM trigger_checks WHERE job_id = ?", (job_id,))


def of_job(db: Db, job_id: int, *, callback_ids: tuple[int, int] | None = None) -> list[Check]:
    """The job's checks, pending and resolved, by callback and slot.

    With ``callback_ids`` (first, last): the job's own (its label's) and those of the
    callbacks with ids from first to last only (a page of a big job's callbacks).
    """
    first, last = callback_ids or (0, MAX_ID)
    rows = db.execute(
        "SELECT * FROM trigger_checks WHERE job_id = ? "
        "AND (callback_id = 0 OR callback_id BETWEEN ? AND ?) ORDER BY callback_id, slot, rowid",
        (job_id, first, last),
    ).fetchall()
    return [
        Check(
            CheckKind(row["kind"]),
            row["message"],
            callback_id=int(row["callback_id"]),
            slot=int(row["slot"]),
            atom=row["atom"],
            universal=bool(row["universal"]),
            pgrp=int(row["pgrp"]),
            label=row["label"],
            resolved=row["resolved"],
            last_holder=int(row["last_holder"]),
        )
        for row in rows
    ]
