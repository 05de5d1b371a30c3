"""One event's decisions inside its transaction: latches, work items, firings, journal entries.

The engine looks up the atoms an event matches (the index) and hands them here with the
open transaction; every decision is one of evaluate's pure functions (``step``,
``residual``, ``work_targets``), and what they decide is written (unless dry) in that
same transaction: the latches and their provenance, counts, the queued firings. The
journal entries come back for the engine to write with them, or, for a dry run, to
answer with.

Near misses are found by two lookups in the label atoms (store): atoms of the event's
pgrp whose label no job there holds (a typo, or a job not registered yet), and atoms
of other pgrps naming the event's job's label whose label does not resolve in their
own pgrp (the job landed in another pgrp). An atom whose label does resolve is not a
near miss of other pgrps' events: a farm reuses the same labels in every pgrp, and
each of their events would be one. At most ``MAX_NEAR_MISSES`` per event, and none of a
spent callback, which no event fires any more.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from executor.model import Event, RunResult
from executor.sql import Db
from executor.triggers import items, near_misses, states, submissions
from executor.triggers.evaluate import (
    AtomKey,
    JobPlace,
    Step,
    live_residual,
    residual,
    spent,
    step,
    work_targets,
)
from executor.triggers.explain import near_miss_reason, outside_agenda_reason
from executor.triggers.group_state import GroupState
from executor.triggers.items import WorkState
from executor.triggers.journal import (
    MAX_ENTRY_TEXT_CHARS,
    EntryKind,
    JournalEntry,
    SeenEvent,
    cut_atoms,
)
from executor.triggers.nodes import (
    Atom,
    Expr,
    atoms,
    per_work,
    render_atom,
    render_cut,
    substitute_all,
)
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import LEVEL, PendingFiring, StoredCallback

MAX_NEAR_MISSES: Final = 16

# Why a firing of a callback would be refused ("" when it runs), and whether it runs as a
# shadow (``TriggerEngine.firing_refusal``).
Judge = Callable[[StoredCallback], tuple[str, bool]]


@dataclass(frozen=True, slots=True)
class Fired:
    """A callback an event fired (or would fire), for one of its work items if it has them."""

    callback: StoredCallback
    invocation_id: str = ""
    result: RunResult | None = None
    work_name: str = ""
    # Why its run is refused (REJECTED, not run) as things stood when it was decided, ""
    # when it runs; whether it runs as a shadow (the engine's ``firing_refusal``).
    refusal: str = ""
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class Latched:
    """A callback (a work item of one) whose latches an event set without firing it."""

    callback: StoredCallback
    latches: tuple[bool, ...]
    work_name: str = ""


@dataclass
class Decision:
    """What one event decided: in firing order, and the journal entries that say why.

    ``latched`` is a dry run's only: nothing else reads it, and each holds its callback
    (trigger, latches) while a batch of events is decided. An applied event's
    ``entries`` go to its transaction's writes (``DeferredWrites.take``).
    """

    fired: list[Fired] = field(default_factory=list)
    latched: list[Latched] = field(default_factory=list)
    firings: list[PendingFiring] = field(default_factory=list)
    entries: list[JournalEntry] = field(default_factory=list)


def firing_order(callback: StoredCallback) -> tuple[int, bool, int]:
    """By owning job, the job's own callbacks before universal ones, then callback id."""
    return callback.job_id, callback.universal, callback.callback_id


class Decider:
    """Decides one event (or one level registration) in an open transaction."""

    def __init__(
        self,
        db: Db,
        seen: SeenEvent,
        batch: str,
        *,
        dry: bool,
        parsed: Callable[[str], Expr],
        group: GroupState | None = None,
        registering: bool = False,
        judge: Judge | None = None,
        submitted: Collection[int] = (),
    ) -> None:
        """Decide in ``db``'s open transaction (or, ``dry``, decide without writing).

        ``group`` (PostgreSQL's group transactions): the state the group's earlier events
        left, which this event reads and writes instead of the database (group_state.py).
        ``registering``: a registration decides, its job's submission the event.
        ``judge``: why a firing of a callback would be refused ("" when it runs) and
        whether it runs as a shadow (``TriggerEngine.firing_refusal``): each firing, and
        its journal entry, says so; None: every firing runs. ``submitted``: the jobs
        whose submit event an earlier event of the transaction applied (written at its end).
        """
        self._registering = registering
        self._db = db
        self._group = group
        self._seen = seen
        self._batch = batch
        self._dry = dry
        self._parsed = parsed
        self._judge = judge
        self._submitted = submitted
        # Callback row -> the slots of its clock atoms without a timer (``_timerless``).
        self._timerless: dict[int, frozenset[int]] = {}
        self.decision = Decision()

    @property
    def event(self) -> Event:
        return self._seen.event

    def _submission_taken_already(self) -> bool:
        """Whether this is a submit event of a job whose submission level mode took already.

        A job is submitted once, and a level callback took the submission of a job the
        engine registered when it or the job registered (registration.level_pass,
        take_registration): the event after it is the same submission, not a second one.
        A job never registered (a scheduler registers only jobs with callbacks) has only
        its event, which level callbacks then take, once: a repeat of it (a scheduler
        resending without an event id) is the submission remembered.
        """
        event = self.event
        if self._registering or event.name != "submit" or event.type != "job":
            return False
        return submissions.seen(self._db, event.job_id, level=True, meanwhile=self._submitted)

    def matched(
        self,
        hits: Iterable[tuple[int, int]],
        callbacks: Mapping[int, StoredCallback] | None = None,
    ) -> None:
        """Step every callback the event matched (``hits``: callback row, latch slot).

        ``callbacks``: the hit callbacks, when they were read (and locked) with the hits.
        """
        slots: dict[int, set[int]] = {}
        for rowid, slot in hits:
            slots.setdefault(rowid, set()).add(slot)
        if callbacks is None:
            loaded = TriggerStore.load_callbacks(self._db, slots)
        else:
            loaded = [callbacks[rowid] for rowid in sorted(slots)]
        if self._submission_taken_already():
            loaded = [cb for cb in loaded if cb.mode != LEVEL]
        for cb in sorted(loaded, key=firing_order):
            expr = self._parsed(cb.triggers)
            if per_work(expr):
                self._work_callback(cb, expr, slots[cb.rowid])
            else:
                self._callback(cb, expr, slots[cb.rowid])

    # -- one latch vector -------------------------------------------------------------

    def _callback(self, cb: StoredCallback, expr: Expr, slots: Iterable[int]) -> None:
        moved = step(expr, cb.latches, slots, count=cb.count, maximum=cb.maximum)
        marks = self._marks(cb.marks, moved)
        if moved.fires:
            self._fire(cb, cb.count + 1, self.event.work_name, expr, moved, per_item=False)
            if not self._dry:
                self._save_state(cb.rowid, cb.count + 1, moved.latches, (None,) * len(marks))
            return
        if moved.newly and not self._dry:
            self._save_state(cb.rowid, cb.count, moved.latches, marks)
        if moved.newly and self._dry:
            self.decision.latched.append(Latched(cb, moved.latches))
        self._entry(cb, expr, moved, count=cb.count)

    def _work_callback(self, cb: StoredCallback, expr: Expr, slots: set[int]) -> None:
        """A ``{work}`` callback: the slots latch in the item vectors ``work_targets`` says."""
        found = atoms(expr)
        size = len(found)
        job_id = cb.job_id
        work_name = self.event.work_name if self.event.type == "work" else ""
        held: dict[str, WorkState] = {}
        if any(not found[slot].per_work for slot in slots):
            # An atom without the placeholder latches in every item's vector.
            known = states.agenda_known(self._db, job_id)
            held = (
                items.held(self._db, cb.rowid, size)
                if self._group is None
                else self._group.held(self._db, cb.rowid, size)
            )
            agenda = states.agenda(self._db, job_id)
            names = [*agenda, *(name for name in held if name not in set(agenda))]
        else:
            # The usual event: one item. Its agenda and its latches, in one read.
            read = items.context if self._group is None else self._group.context
            known, listed, held[work_name] = read(self._db, job_id, cb.rowid, work_name, size)
            names = [work_name] if not known or listed else []
        targets, outside = work_targets(expr, slots, work_name, names, agenda_known=known)
        if outside:
            agenda = states.agenda(self._db, job_id)
            self._near_miss(cb, outside, outside_agenda_reason(work_name, job_id, agenda))
        shared = [slot for slot in slots if not found[slot].per_work]
        if shared:
            # An item with no state yet starts from what latched for every item before it:
            # without an agenda, one events name later; with one, one a registration adds.
            self._latch_unnamed(cb, expr, shared, told=not known)
        total = cb.count
        for item, item_slots in targets.items():
            state = held.get(item) or self._item(cb.rowid, item, size)
            state = items.or_unnamed(state, cb)
            item_expr = substitute_all(expr, item)
            moved = step(
                item_expr, state.latches, item_slots, count=state.count, maximum=cb.maximum
            )
            marks = self._marks(state.latched_by, moved)
            if moved.fires:
                total += 1
                after = WorkState(state.count + 1, moved.latches, (None,) * size)
                self._fire(cb, state.count + 1, item, item_expr, moved, per_item=True)
            else:
                after = WorkState(state.count, moved.latches, marks)
                if moved.newly and self._dry:
                    self.decision.latched.append(Latched(cb, moved.latches, item))
                self._entry(cb, item_expr, moved, count=state.count, work_name=item, per_item=True)
            if not self._dry and (moved.fires or moved.newly):
                if self._group is None:
                    items.save(self._db, cb.rowid, item, after)
                else:
                    self._group.save_item(cb.rowid, item, after)
        if total != cb.count and not self._dry:
            if self._group is None:
                TriggerStore.save_count(self._db, cb.rowid, total)
            else:
                self._group.save_count(cb.rowid, total)

    def _latch_unnamed(
        self, cb: StoredCallback, expr: Expr, slots: Sequence[int], *, told: bool
    ) -> None:
        """Latch atoms without ``{work}`` in the state every item starts from (``items.unnamed``).

        Nothing fires, as no item is known yet (when these latches alone make the
        trigger true, an item fires when an event first names it). ``told``: the journal
        entry, kept as one more item's (""), and the answer's ``latched`` say so; with an
        agenda, its items' own entries already do.
        """
        before = items.unnamed(cb)
        matched = sorted(set(slots))
        # Not ``step``: these latches never fire or reset, even when they make the trigger
        # true; an item fires with them when an event names it.
        moved = Step(
            False,
            tuple(latched or slot in matched for slot, latched in enumerate(before.latches)),
            tuple(slot for slot in matched if not before.latches[slot]),
            tuple(slot for slot in matched if before.latches[slot]),
        )
        if moved.newly and not self._dry:
            self._save_state(
                cb.rowid, cb.count, moved.latches, self._marks(before.latched_by, moved)
            )
        if not told:
            return
        if moved.newly and self._dry:
            self.decision.latched.append(Latched(cb, moved.latches))
        self._entry(cb, expr, moved, count=0, per_item=True)

    def _item(self, rowid: int, work_name: str, size: int) -> WorkState:
        if self._group is None:
            return items.state(self._db, rowid, work_name, size)
        return self._group.item(self._db, rowid, work_name, size)

    def _save_state(
        self,
        rowid: int,
        count: int,
        latches: tuple[bool, ...],
        marks: tuple[SeenEvent | None, ...],
    ) -> None:
        if self._group is None:
            TriggerStore.save_state(self._db, rowid, count, latches, marks)
        else:
            self._group.save_state(rowid, count, latches, marks)

    def _marks(
        self, before: Sequence[SeenEvent | None], moved: Step
    ) -> tuple[SeenEvent | None, ...]:
        marks = list(before)
        for slot in moved.newly:
            marks[slot] = self._seen
        return tuple(marks)

    def _fire(
        self,
        cb: StoredCallback,
        count: int,
        work_name: str,
        expr: Expr,
        moved: Step,
        *,
        per_item: bool,
    ) -> None:
        invocation_id = "" if self._dry else str(uuid.uuid4())
        if not self._dry:
            firing = PendingFiring(invocation_id, cb, self.event, self._batch, count, work_name)
            if self._group is None:
                TriggerStore.queue_firing(self._db, firing)
            else:
                self._group.queue_firing(firing)
            self.decision.firings.append(firing)
        refusal, shadow = self._judged(cb)
        self.decision.fired.append(
            Fired(cb, invocation_id, work_name=work_name, refusal=refusal, shadow=shadow)
        )
        self._entry(
            cb,
            expr,
            moved,
            count=count,
            work_name=work_name,
            invocation_id=invocation_id,
            per_item=per_item,
            refusal=refusal,
        )

    def _judged(self, cb: StoredCallback) -> tuple[str, bool]:
        """(Why a firing of ``cb`` would be refused, "" when it runs; whether as a shadow)."""
        return ("", False) if self._judge is None else self._judge(cb)

    def _timerless_slots(self, cb: StoredCallback, found: Sequence[Atom]) -> frozenset[int]:
        """The slots of ``cb``'s clock atoms without a timer (fired, stopped): never to latch again."""
        if not any(atom.is_timed for atom in found):
            return frozenset()
        if cb.rowid not in self._timerless:
            due = TriggerStore.timers_of(self._db, cb.rowid)
            self._timerless[cb.rowid] = frozenset(
                slot for slot, atom in enumerate(found) if atom.is_timed and slot not in due
            )
        return self._timerless[cb.rowid]

    def _waiting(self, cb: StoredCallback, expr: Expr, latches: Sequence[bool]) -> tuple[str, str]:
        """(What ``expr`` still waits for, as an entry keeps it; why it never fires, or "").

        As ``why`` says it: a clock atom whose timer is gone, and a submit atom whose
        submission was seen (submissions.py), will not latch again, so the ways through
        them are left out, and a trigger with no other way says it will not fire again (a
        universal line's clock, unless a reload brings the line back).
        """
        rest, open_slots = residual(expr, latches)
        if rest is None:
            return "", ""
        found = atoms(expr)
        submitted = submissions.seen_slots(
            self._db,
            cb.job_id,
            found,
            open_slots,
            level=cb.mode == LEVEL,
            meanwhile=self._submitted,
        )
        dead = submitted.union(self._timerless_slots(cb, found).intersection(open_slots))
        if dead:
            live = live_residual(expr, latches, set(dead))
            if live is None:
                named = ", ".join(render_atom(found[slot]) for slot in sorted(dead))
                # A reload brings its clocks back; a submission never comes again.
                revived = cb.universal and live_residual(expr, latches, set(submitted)) is not None
                until = " unless a reload brings its callbacks.conf line back" if revived else ""
                return (
                    "",
                    f"it will not fire again{until}: it needs {named}, which will not latch again",
                )
            rest, open_slots = live
        return render_cut(rest, MAX_ENTRY_TEXT_CHARS, len(open_slots)), ""

    def _entry(
        self,
        cb: StoredCallback,
        expr: Expr,
        moved: Step,
        *,
        count: int,
        work_name: str = "",
        invocation_id: str = "",
        per_item: bool = False,
        refusal: str = "",
    ) -> None:
        found = atoms(expr)
        if moved.spent:
            kind = EntryKind.SPENT
            reason = f"maximum reached: fired {count} of {cb.maximum} times"
            waiting = ""
        elif moved.fires:
            kind, reason, waiting = EntryKind.FIRED, refusal, ""
        else:
            kind = EntryKind.MATCHED
            waiting, reason = self._waiting(cb, expr, moved.latches)
        self.decision.entries.append(
            JournalEntry(
                job_id=cb.job_id,
                callback_id=cb.callback_id,
                kind=kind,
                seen=self._seen,
                work_name=work_name,
                latched=_atom_texts(found, moved.newly),
                already=_atom_texts(found, moved.already),
                invocation_id=invocation_id,
                count=count,
                waiting_for=waiting,
                reason=reason,
                per_item=per_item,
            )
        )

    def _near_miss(self, cb: StoredCallback, slots: Iterable[int], reason: str) -> None:
        expr = self._parsed(cb.triggers)
        found = atoms(expr)
        self.decision.entries.append(
            JournalEntry(
                job_id=cb.job_id,
                callback_id=cb.callback_id,
                kind=EntryKind.NEAR_MISS,
                seen=self._seen,
                already=(),
                latched=(),
                waiting_for=" ".join(_atom_texts(found, list(slots))),
                reason=reason,
                # A {work} callback's near misses are kept as one more item's ("").
                per_item=per_work(expr),
            )
        )

    # -- near misses ------------------------------------------------------------------

    def near_misses(
        self,
        keys: Sequence[AtomKey],
        place: JobPlace,
        hits: Iterable[tuple[int, int]],
        in_pgrp: list[near_misses.AtomRef] | None = None,
        elsewhere: list[near_misses.AtomRef] | None = None,
    ) -> None:
        """Journal the label atoms the event almost matched (see the module docstring).

        ``in_pgrp``: those of the job's pgrp, ``elsewhere``: those of other pgrps naming
        the job's label (at most ``MAX_NEAR_MISSES`` each), when they were read already.
        """
        matched = set(hits)
        if in_pgrp is None:
            in_pgrp = near_misses.unresolved_in_pgrp(self._db, keys, place.pgrp, MAX_NEAR_MISSES)
        refs = list(in_pgrp)
        if place.label and len(refs) < MAX_NEAR_MISSES:
            if elsewhere is None:
                elsewhere = near_misses.unresolved_elsewhere(
                    self._db, keys, place.label, place.pgrp, MAX_NEAR_MISSES - len(refs)
                )
            refs += elsewhere[: MAX_NEAR_MISSES - len(refs)]
        refs = [ref for ref in refs if (ref.rowid, ref.slot) not in matched]
        if not refs:
            return
        callbacks = {
            cb.rowid: cb for cb in TriggerStore.load_callbacks(self._db, (r.rowid for r in refs))
        }
        if self._group is not None:  # their counts as the group's events left them
            callbacks.update(
                (r, self._group.callbacks[r]) for r in callbacks if r in self._group.callbacks
            )
        labels: dict[int, list[str]] = {}
        for ref in refs:
            cb = callbacks.get(ref.rowid)
            # Its pgrp and label, from their columns: not the job's JSON (its agenda).
            owner = TriggerStore.place_in(self._db, cb.job_id) if cb else None
            if cb is None or owner is None:
                continue
            if owner.pgrp not in labels:
                labels[owner.pgrp] = list(TriggerStore.labels_of(self._db, owner.pgrp))
            expr = self._parsed(cb.triggers)
            if not per_work(expr) and spent(cb.count, cb.maximum):
                continue  # no event fires it any more: nothing was missed
            atom: Atom = atoms(expr)[ref.slot]
            reason = near_miss_reason(atom, owner, labels[owner.pgrp], self.event, place)
            self._near_miss(cb, [ref.slot], reason)

    # -- level mode at registration ---------------------------------------------------

    def level_unnamed(
        self,
        cb: StoredCallback,
        expr: Expr,
        marks: Sequence[SeenEvent | None],
        *,
        start: WorkState | None = None,
        reason: str = "",
        told: bool = True,
    ) -> WorkState | None:
        """Level mode for the state the items of a ``{work}`` callback start from.

        What already happened of its atoms without ``{work}`` (``marks``) latches in the
        state its items start from (``items.unnamed``; ``start``, when not fresh);
        nothing fires, as no item is known. None when nothing latched. ``told``: a
        journal entry says so (kept as one more item's, ""), for a job without an
        agenda; with one, its items' own entries do. ``reason``: as for ``level``.
        """
        start = start or WorkState.fresh(len(marks))
        newly = tuple(
            slot for slot, mark in enumerate(marks) if mark is not None and not start.latches[slot]
        )
        if not newly:
            return None
        latest = _latest(marks, newly)
        latches = tuple(
            latched or mark is not None for latched, mark in zip(start.latches, marks, strict=True)
        )
        held = tuple(
            marks[slot] if slot in newly else start.latched_by[slot] for slot in range(len(marks))
        )
        if told:
            self.decision.entries.append(
                JournalEntry(
                    job_id=cb.job_id,
                    callback_id=cb.callback_id,
                    kind=EntryKind.LEVEL,
                    seen=SeenEvent(latest.event, self._seen.at),
                    per_item=True,
                    latched=_atom_texts(atoms(expr), newly),
                    # What a clock that will not latch again leaves (its "never" is for
                    # MATCHED entries: a LEVEL entry's reason names the registration).
                    waiting_for=self._waiting(cb, expr, latches)[0],
                    reason=reason,
                )
            )
        return WorkState(start.count, latches, held)

    def level(
        self,
        cb: StoredCallback,
        expr: Expr,
        marks: Sequence[SeenEvent | None],
        work_name: str = "",
        *,
        start: WorkState | None = None,
        reason: str = "",
    ) -> WorkState | None:
        """Latch what already happened in a level callback's vector; fire if it is true.

        The vector is an item's, for a ``{work}`` callback.

        Args:
            cb: The callback, as just stored.
            expr: Its trigger (substituted for ``work_name``).
            marks: Per slot, the event that already happened (None: it has not).
            work_name: The item, for a ``{work}`` callback.
            start: The vector as it stands (fresh, for a callback just registered):
                another job's registration latches in it what that job's states show.
            reason: Whose registration it is, when not the callback's own (the journal
                entry says so).

        Returns the vector's state to store (None when nothing latched: the slots were
        latched already, or the vector is spent). A firing runs with the latest of the
        events it latched, as if it had just happened: with its work item too
        (``qb.workid()``, ``*-work-self``), as an edge firing on that event would.
        """
        size = len(marks)
        start = start or WorkState.fresh(size)
        newly = tuple(
            slot for slot, mark in enumerate(marks) if mark is not None and not start.latches[slot]
        )
        if not newly:
            return None
        moved = step(expr, start.latches, newly, count=start.count, maximum=cb.maximum)
        if moved.spent:
            return None
        latest = _latest(marks, newly)
        seen = SeenEvent(latest.event, self._seen.at)
        fired_work = work_name or latest.event.work_name
        found = atoms(expr)
        invocation_id = ""
        held = tuple(
            marks[slot] if slot in newly else start.latched_by[slot] for slot in range(size)
        )
        after = WorkState(start.count, moved.latches, held)
        waiting = "" if moved.fires else self._waiting(cb, expr, moved.latches)[0]
        if moved.fires:
            after = WorkState(start.count + 1, moved.latches, (None,) * size)
            invocation_id = "" if self._dry else str(uuid.uuid4())
            if not self._dry:
                firing = PendingFiring(
                    invocation_id, cb, latest.event, self._batch, after.count, fired_work
                )
                TriggerStore.queue_firing(self._db, firing)
                self.decision.firings.append(firing)
            # A LEVEL entry's reason names the registration: the refusal is the firing's.
            refusal, shadow = self._judged(cb)
            self.decision.fired.append(
                Fired(cb, invocation_id, work_name=fired_work, refusal=refusal, shadow=shadow)
            )
        self.decision.entries.append(
            JournalEntry(
                job_id=cb.job_id,
                callback_id=cb.callback_id,
                kind=EntryKind.LEVEL,
                seen=seen,
                work_name=work_name,
                per_item=bool(work_name),
                latched=_atom_texts(found, newly),
                invocation_id=invocation_id,
                count=after.count,
                waiting_for=waiting,
                reason=reason,
            )
        )
        return after


def _latest(marks: Sequence[SeenEvent | None], slots: Sequence[int]) -> SeenEvent:
    """The latest of the events in ``slots`` (the first of equals): the one a firing runs with."""
    return max(
        (mark for slot, mark in enumerate(marks) if slot in slots and mark is not None),
        key=lambda mark: mark.at,
    )


def _atom_texts(found: Sequence[Atom], slots: Sequence[int]) -> tuple[str, ...]:
    """The texts of the atoms in ``slots``, as many as an entry keeps (``cut_atoms``)."""
    return cut_atoms((render_atom(found[slot]) for slot in slots), len(slots))
