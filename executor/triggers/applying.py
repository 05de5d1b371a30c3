"""Applying published events: each one's decisions made and written in the transaction committing it.

One event alone (``apply``), or a group commit's events in one transaction
(``apply_group``): on SQLite one after another, on PostgreSQL each kind of read once
for the group (``_apply_set_based``: group_reads.py, group_state.py). Each event's id
is checked first (a repeat decides nothing, an id first used for another event is
refused: event_id_reuse.py); its decisions are decide.py's, with its near misses; what
no later event reads waits for the transaction's end (deferred_writes.py). A dry run
decides on a snapshot and writes nothing (``decide``). What is bounded is pruned on the
way, at most once per ``journal.PRUNE_EVERY_S`` (``_prune``). What the events fired is
counted and queued by the engine once committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from executor import triggers
from executor.model import Event
from executor.sql import Db, pipelined
from executor.triggers import (
    event_id_reuse,
    group_reads,
    journal,
    near_misses,
    removals,
    states,
)
from executor.triggers.conflicts import retrying
from executor.triggers.decide import MAX_NEAR_MISSES, Decider, Decision, Judge
from executor.triggers.deferred_writes import DeferredWrites
from executor.triggers.evaluate import AtomKey, JobPlace, event_keys
from executor.triggers.firings import own_queued
from executor.triggers.group_state import GroupState
from executor.triggers.journal import JournalLimits, SeenEvent
from executor.triggers.nodes import EventName, EventType, per_work
from executor.triggers.parsed import parsed
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import StoredCallback


def _removes_job(event: Event) -> bool:
    return event.name == EventName.REMOVED and event.type == EventType.JOB


def _key_parts(keys: Sequence[AtomKey]) -> tuple[str, list[str], list[str]]:
    """An event's keys as the type, names and extras they are made of (one type per event)."""
    return (
        keys[0].type,
        sorted({key.name for key in keys}),
        sorted({key.extra for key in keys}),
    )


def _work_items(
    events: Sequence[Event],
    keys: Sequence[Sequence[AtomKey]],
    hits_by_key: Mapping[AtomKey, Sequence[tuple[int, int]]],
    callbacks: Mapping[int, StoredCallback],
) -> list[tuple[int, int, str, int]]:
    """(job id, callback rowid, item, latches) of each ``{work}`` callback an event hit.

    The item is the one the event names (its context is what decide.py reads for it).
    """
    wanted = []
    for event, event_keys_ in zip(events, keys, strict=True):
        work_name = event.work_name if event.type == EventType.WORK else ""
        for key in event_keys_:
            for rowid, _slot in hits_by_key.get(key, ()):
                expr = parsed(callbacks[rowid].triggers)
                if per_work(expr):
                    wanted.append(
                        (callbacks[rowid].job_id, rowid, work_name, len(triggers.atoms(expr)))
                    )
    return wanted


class EventApplier:
    """Applies events to ``store`` durably (or, dry, decides them on a snapshot)."""

    def __init__(
        self,
        store: TriggerStore,
        *,
        clock: Callable[[], float],
        journal_limits: JournalLimits,
        judge: Judge,
    ) -> None:
        """Apply events to ``store``; ``judge``: a firing's refusal (the engine's ``firing_refusal``)."""
        self._store = store
        self._clock = clock
        self._journal = journal_limits
        self._judge = judge
        self._journal_pruned_at = float("-inf")

    def decide(
        self,
        db: Db,
        event: Event,
        batch: str,
        *,
        dry: bool,
        place: JobPlace | None,
        deferred: DeferredWrites | None = None,
        near_in_pgrp: list[Any] | None = None,
        near_elsewhere: list[Any] | None = None,
        group: GroupState | None = None,
        hits_by_key: Mapping[AtomKey, Sequence[tuple[int, int]]] | None = None,
    ) -> Decision:
        """Every decision of one event in the open transaction, with its near misses.

        ``place``: the event's job's (None: not registered), as the caller read it. ``deferred``
        (not dry): where the state the event leaves its object in waits to be written.
        ``near_in_pgrp``: the near misses in the job's pgrp, when read with the place
        (``near_misses.in_pgrp_subquery``); ``near_elsewhere``: those of other pgrps
        naming the job's label, when read with it too. ``group`` and ``hits_by_key``: a group's
        state and the atoms its keys found, read for the whole group (``_apply_segment``).
        """
        keys = event_keys(event, place)
        seen = SeenEvent(event, self._clock())
        decider = Decider(
            db,
            seen,
            batch,
            dry=dry,
            parsed=parsed,
            group=group,
            judge=self._judge,
            submitted=deferred.submitted if deferred is not None else (),
        )
        if group is None or hits_by_key is None:
            hits, callbacks = TriggerStore.matching_callbacks(db, keys)
        else:
            hits = [hit for key in keys for hit in hits_by_key.get(key, ())]
            callbacks = group.callbacks
        decider.matched(hits, callbacks)
        if place is not None:
            in_pgrp = (
                None if near_in_pgrp is None else near_misses.refs_from_json(near_in_pgrp, keys)
            )
            elsewhere = (
                None if near_elsewhere is None else near_misses.refs_from_json(near_elsewhere, keys)
            )
            decider.near_misses(keys, place, hits, in_pgrp, elsewhere)
            if deferred is not None:
                deferred.records.append(seen)
        elif (
            deferred is not None and event.name == EventName.SUBMIT and event.type == EventType.JOB
        ):
            # A job never registered: level callbacks registered later take its submission.
            deferred.submissions.append(seen)
        if deferred is not None and event.name == EventName.SUBMIT and event.type == EventType.JOB:
            deferred.submitted.add(event.job_id)  # for this transaction's later events
        return decider.decision

    def apply(self, event: Event) -> tuple[Decision, bool]:
        """Apply one event durably (``_apply_once``; again after a lost deadlock)."""
        return retrying(lambda: self._apply_once(event))

    def _apply_once(self, event: Event) -> tuple[Decision, bool]:
        """Apply one event durably: what it decided, and whether it was a repeat."""
        with self._store.transaction() as db:
            TriggerStore.submissions_take_turns(db, [event])  # first: before any row lock
            deferred = DeferredWrites(self._journal)
            applied = self._apply_in(db, event, deferred, event_id_reuse.FirstUses(), 0)
            deferred.flush(db)
        return applied

    def _apply_in(
        self,
        db: Db,
        event: Event,
        deferred: DeferredWrites,
        firsts: event_id_reuse.FirstUses,
        index: int,
    ) -> tuple[Decision, bool]:
        """One event's part of a transaction: its id checked, its decisions made.

        Its journal entries and states wait in ``deferred`` for the caller's ``flush``.
        ``firsts``: the transaction's first uses of ids so far, of which this event is the
        ``index``-th. EventIdReusedError when its id was first used for another event.
        """
        batch = uuid.uuid4().hex
        # The near misses in the job's pgrp are read with the event's id (names, type and
        # extras are the event's own; the job's place only adds scopes).
        near = near_misses.in_pgrp_subquery(event_keys(event, None), "j.pgrp", MAX_NEAR_MISSES)
        sighting = TriggerStore.sighting(
            db,
            event.event_id,
            event.job_id,
            near,
            event_id_reuse.fingerprint(event) if event.event_id else None,
        )
        if not sighting.first:
            firsts.check_repeat(db, index, event, sighting.earlier)
            return Decision(), True
        firsts.add(index, event)
        decision = self.decide(
            db,
            event,
            batch,
            dry=False,
            place=sighting.place,
            deferred=deferred,
            near_in_pgrp=sighting.also,
        )
        own_queued(self._store, db, batch, decision.firings)
        deferred.take(db, event, decision)
        if event.name == EventName.REMOVED and event.type == EventType.JOB:
            deferred.flush(db)  # what waits for the job's states is written before they go
            TriggerStore.forget_job(db, event.job_id, self._clock())
        self._prune(db)
        return decision, False

    def apply_group(self, events: Sequence[Event]) -> list[tuple[Decision, bool]]:
        """Apply events in order in one transaction (again after a lost deadlock).

        On PostgreSQL each kind of read is one statement for the group
        (``_apply_set_based``); on SQLite, whose statements make no round trips, the
        events are applied one after another. Runs on the group commit's thread; what is
        counted and queued is left to the loop.
        """

        def apply_all() -> list[tuple[Decision, bool]]:
            with self._store.transaction() as db:
                if self._store.fleet:
                    return self._apply_set_based(db, events)
                deferred = DeferredWrites(self._journal)
                firsts = event_id_reuse.FirstUses()
                applied = [
                    self._apply_in(db, event, deferred, firsts, index)
                    for index, event in enumerate(events)
                ]
                deferred.flush(db)
                return applied

        return retrying(apply_all)

    def _apply_set_based(self, db: Db, events: Sequence[Event]) -> list[tuple[Decision, bool]]:
        """(PostgreSQL) A group's events in the open transaction: each kind of read once.

        The events are read in segments (group_reads.py): a ``removed`` job ends one, as
        the events after it must not find its rows. Each segment's events are decided in
        order on the state the earlier ones left (group_state.py), and what they wrote
        is written at the segment's end.
        """
        # First, before any row lock: a first registration and its job's submit event
        # take turns, so one of them reads what the other wrote.
        TriggerStore.submissions_take_turns(db, events)
        applied: list[tuple[Decision, bool]] = []
        deferred = DeferredWrites(self._journal)
        firsts = event_id_reuse.FirstUses()
        start = 0
        while start < len(events):
            end = start
            while end < len(events) - 1 and not _removes_job(events[end]):
                end += 1
            applied += self._apply_segment(db, events[start : end + 1], deferred, firsts, start)
            start = end + 1
        self._prune(db)
        return applied

    def _apply_segment(
        self,
        db: Db,
        events: Sequence[Event],
        deferred: DeferredWrites,
        firsts: event_id_reuse.FirstUses,
        offset: int,
    ) -> list[tuple[Decision, bool]]:
        """``_apply_set_based``'s events up to and including a ``removed`` job's, if any.

        ``offset``: the place of the segment's first event among the transaction's.
        """
        found = group_reads.sightings(
            db,
            events,
            [_key_parts(event_keys(event, None)) for event in events],
            MAX_NEAR_MISSES,
            [event_id_reuse.fingerprint(event) if event.event_id else b"" for event in events],
        )
        keys = [
            event_keys(event, seen.place) if seen.first else []
            for event, seen in zip(events, found, strict=True)
        ]
        hits_by_key, callbacks = group_reads.matching(db, (key for some in keys for key in some))
        group = GroupState(self._store.owner, self._store.lease_until(), callbacks)
        group.contexts = group_reads.work_contexts(
            db, _work_items(events, keys, hits_by_key, callbacks)
        )
        applied: list[tuple[Decision, bool]] = []
        for index, (event, seen) in enumerate(zip(events, found, strict=True), offset):
            if not seen.first:
                firsts.check_repeat(db, index, event, seen.earlier)
                applied.append((Decision(), True))
                continue
            firsts.add(index, event)
            decision = self.decide(
                db,
                event,
                uuid.uuid4().hex,
                dry=False,
                place=seen.place,
                deferred=deferred,
                near_in_pgrp=seen.near,
                near_elsewhere=seen.near_elsewhere,
                group=group,
                hits_by_key=hits_by_key,
            )
            deferred.take(db, event, decision)
            applied.append((decision, False))
        last = events[-1]
        # What the segment wrote, in one round trip (the group's own reads are done).
        with pipelined(db):
            group.flush(db)
            deferred.flush(db)  # what waits for a removed job's states is written before they go
        if _removes_job(last) and not applied[-1][1]:
            TriggerStore.forget_job(db, last.job_id, self._clock())
        return applied

    def _prune(self, db: Db) -> None:
        """Prune what is bounded, at most once per ``PRUNE_EVERY_S``.

        Journal entries past their age, and the remembered submissions of jobs never
        registered and removals of jobs past their numbers
        (``states.MAX_REMEMBERED_SUBMISSIONS``, ``removals.MAX_REMEMBERED_REMOVALS``).
        """
        now = self._clock()
        if now - self._journal_pruned_at < journal.PRUNE_EVERY_S:
            return
        self._journal_pruned_at = now
        journal.prune_older_than(db, now - self._journal.max_age_s)
        states.prune_submissions(db)
        removals.prune(db)
