"""Which ``submit-job`` atoms wait for a submission already seen: a job is submitted once.

As the engine takes a submission (states.py): for a level callback a registered job's
registration is its submission, and its submit event latches level callbacks no more,
nor does a repeated submit of a job never registered whose submission is remembered
(decide.Decider.matched); an edge callback takes the submit event itself, which a
scheduler publishes after registering the job, so it waits for it until it has come.
Once seen, the submission will not come again: a trigger whose every way needs it will
not fire again, as one needing a clock that fired (``why``, the journal, a dry run:
evaluate.live_residual).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from executor.sql import Db
from executor.triggers import states
from executor.triggers.evaluate import JobPlace
from executor.triggers.nodes import Atom, ContextKind, EventName, EventType
from executor.triggers.store import TriggerStore


def is_submit(atom: Atom) -> bool:
    return atom.name is EventName.SUBMIT and atom.type is EventType.JOB


def seen(db: Db, job_id: int, *, level: bool, meanwhile: Collection[int] = ()) -> bool:
    """Whether job ``job_id``'s submission has been seen, as a callback of that mode takes it.

    ``meanwhile``: the jobs whose submit event an earlier event of the open transaction
    applied (their rows are written at its end: deferred_writes.py).
    """
    if job_id in meanwhile or states.submitted(db, job_id) is not None:
        return True
    # Level: a registered job's registration is its submission.
    return level and TriggerStore.place_in(db, job_id) is not None


def seen_slots(
    db: Db,
    owner_id: int,
    found: Sequence[Atom],
    slots: Iterable[int],
    *,
    level: bool,
    meanwhile: Collection[int] = (),
) -> frozenset[int]:
    """Of ``slots``, those of submit atoms whose job's submission has been seen.

    ``owner_id``: the job whose callback it is (the atoms' contexts name jobs from it).
    """
    submits = [slot for slot in slots if is_submit(found[slot])]
    if not submits:
        return frozenset()
    head = TriggerStore.head_in(db, owner_id)
    if head is None:
        return frozenset()
    return frozenset(
        slot
        for slot in submits
        if (job_id := _job_named(db, found[slot], head.place))
        and seen(db, job_id, level=level, meanwhile=meanwhile)
    )


def _job_named(db: Db, atom: Atom, owner: JobPlace) -> int:
    """The job an atom's context names now (0: none), as ``why`` resolves it."""
    kind = atom.context_kind
    if kind is ContextKind.SELF:
        return owner.job_id
    if kind is ContextKind.PARENT:
        return owner.pid
    if kind is ContextKind.JOB_ID:
        return int(atom.context)
    if kind is ContextKind.LABEL:
        return TriggerStore.labels_among(db, owner.pgrp, [atom.context]).get(atom.context, 0)
    return 0
