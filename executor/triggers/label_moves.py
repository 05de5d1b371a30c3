"""A label or job id that comes to name another job: the latches its old holder set go.

A latch belongs to the job its atom named when it latched (its mark, ``latched_by``,
names the event's job). Removing that job leaves the latch: a finished render removed
does not un-satisfy comp. But when another job registers with the label in its pgrp, or
the id is registered again after its removal (``removals`` remembers when), the atom
names a job that has not done what the latch says, and an ``&&`` half latched by the old
holder fired on the other half while the new one was pending (probe 139). So
``release`` clears, in the transaction that registers the new holder, the latches its
old holder's events set on atoms naming that label or id, with a journal entry each
(``CLEARED``, its reason in words), and the atom waits for the new holder's event.

A latch set before provenance (no mark) is left as it is: whose it was is not known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from executor.model import Event
from executor.sql import Db, marks_for, row_lock
from executor.triggers import items, removals
from executor.triggers.evaluate import JobPlace, scopes_of
from executor.triggers.items import WorkState
from executor.triggers.journal import EntryKind, JournalEntry, SeenEvent
from executor.triggers.nodes import (
    Atom,
    EventName,
    EventType,
    Expr,
    atoms,
    per_work,
    render_atom,
    substitute_all,
)
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import StoredCallback

_NAMES: Final = tuple(sorted(name.value for name in EventName))
_TYPES: Final = (EventType.JOB.value, EventType.WORK.value, EventType.SUBJOB.value)


@dataclass(frozen=True, slots=True)
class _Rule:
    """Which latches of a scope's atoms are the old holder's, and why they go."""

    stale: Callable[[SeenEvent], bool]
    reason: Callable[[SeenEvent], str]


def release(
    db: Db,
    place: JobPlace,
    before: JobPlace | None,
    first_time: bool,
    now: float,
    parsed: Callable[[str], Expr],
) -> list[JournalEntry]:
    """Clear the latches the old holder of the job's label (or id) set; their journal entries.

    ``before``: the job's place as its last registration left it (None: not registered).
    Called in the registration's transaction, after the job's own rows are locked; the
    other callbacks' rows are locked here in ascending order (a deadlock with an event
    that holds one is lost by one of them and run again, ``conflicts.retrying``).
    """
    job_id = place.job_id
    removed_at = removals.take(db, job_id) if first_time else None

    def earlier_life(mark: SeenEvent) -> bool:
        return removed_at is not None and mark.event.job_id == job_id and mark.at <= removed_at

    rules: dict[str, _Rule] = {}
    job_scope, *label_scope = scopes_of(place)
    if removed_at is not None:
        rules[job_scope] = _Rule(
            earlier_life,
            lambda _: (
                f"job {job_id} is another job now (registered again after its removal);"
                " the removed one latched it"
            ),
        )
    moved = before is None or (before.pgrp, before.label) != (place.pgrp, place.label)
    if label_scope and moved:
        rules[label_scope[0]] = _Rule(
            lambda mark: mark.event.job_id != job_id or earlier_life(mark),
            lambda mark: (
                f"the label '{place.label}' now names job {job_id}"
                f" (job {mark.event.job_id} latched it)"
            ),
        )
    if not rules:
        return []
    scopes = sorted(rules)
    rows = db.execute(
        "SELECT a.slot AS atom_slot, a.scope AS atom_scope, c.* FROM atoms a"  # noqa: S608 - marks only
        " JOIN callbacks c ON c.rowid = a.callback_rowid"
        f" WHERE a.name IN ({marks_for(_NAMES)}) AND a.type IN ({marks_for(_TYPES)})"
        f" AND a.scope IN ({marks_for(scopes)}) ORDER BY c.rowid"
        f"{' FOR UPDATE OF c' if row_lock(db) else ''}",
        (*_NAMES, *_TYPES, *scopes),
    ).fetchall()
    slots: dict[int, dict[int, _Rule]] = {}
    callbacks: dict[int, StoredCallback] = {}
    for row in rows:
        slots.setdefault(row["rowid"], {})[int(row["atom_slot"])] = rules[row["atom_scope"]]
        callbacks.setdefault(row["rowid"], StoredCallback.from_row(row))
    seen = SeenEvent(Event("submit", "job", job_id), now)
    entries: list[JournalEntry] = []
    for rowid, cb in callbacks.items():
        expr = parsed(cb.triggers)
        found = atoms(expr)
        cleared = _cleared(WorkState(cb.count, cb.latches, cb.marks), slots[rowid])
        if cleared is not None:
            after, reasons = cleared
            TriggerStore.save_state(db, rowid, cb.count, after.latches, after.latched_by)
            entries.append(_entry(cb, seen, found, reasons))
        if not per_work(expr):
            continue
        for work_name, work in items.held(db, rowid, len(found)).items():
            cleared = _cleared(work, slots[rowid])
            if cleared is not None:
                after, reasons = cleared
                items.save(db, rowid, work_name, after)
                item_atoms = atoms(substitute_all(expr, work_name))
                entries.append(_entry(cb, seen, item_atoms, reasons, work_name))
    return entries


def _cleared(work: WorkState, rules: dict[int, _Rule]) -> tuple[WorkState, dict[int, str]] | None:
    """``work`` without the stale latches of ``rules``' slots, and why each went; None: none."""
    latches, marks = list(work.latches), list(work.latched_by)
    reasons: dict[int, str] = {}
    for slot, rule in sorted(rules.items()):
        mark = marks[slot] if slot < len(marks) else None
        if latches[slot] and mark is not None and rule.stale(mark):
            latches[slot], marks[slot] = False, None
            reasons[slot] = rule.reason(mark)
    if not reasons:
        return None
    return WorkState(work.count, tuple(latches), tuple(marks)), reasons


def _entry(
    cb: StoredCallback,
    seen: SeenEvent,
    found: Sequence[Atom],
    reasons: dict[int, str],
    work_name: str = "",
) -> JournalEntry:
    return JournalEntry(
        job_id=cb.job_id,
        callback_id=cb.callback_id,
        kind=EntryKind.CLEARED,
        seen=seen,
        work_name=work_name,
        latched=tuple(render_atom(found[slot]) for slot in reasons),
        count=cb.count,
        reason="; ".join(dict.fromkeys(reasons.values())),
        per_item=bool(work_name),
    )


__all__ = ["release"]
