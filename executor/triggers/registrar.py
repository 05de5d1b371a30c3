"""A job's registration run: its label claimed, its callbacks checked, then its one transaction.

The steps are registration.py's, in the order its docstring gives, with the universal
callbacks loaded now attached (universal_set.py); before them, the job's label is
claimed in its pgrp (label_claims.py) until the transaction is over, and the latches
its label's or id's old holder set go (label_moves.py). A callback a registration keeps
is rewritten in its row, its count, latches and clocks as they were (``_keep_callback``).
The engine queues what the registration fired once it has committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from executor import triggers
from executor.errors import InvalidRequestError
from executor.model import Event
from executor.sql import Db
from executor.triggers import checks, journal, label_moves
from executor.triggers.conflicts import retrying
from executor.triggers.decide import Decider, Judge
from executor.triggers.evaluate import JobPlace, atom_key, next_fire
from executor.triggers.firings import own_queued
from executor.triggers.items import callback_spent
from executor.triggers.journal import JournalLimits, SeenEvent
from executor.triggers.label_claims import LabelClaims
from executor.triggers.parsed import checked, parsed
from executor.triggers.registration import (
    Registration,
    callback_specs,
    continued,
    keep_journal,
    level_pass,
    store_job,
    surroundings,
    take_registration,
)
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import LEVEL, NewAtom, PendingFiring, StoredCallback
from executor.triggers.universal_set import UniversalSet


def _keep_callback(
    db: Db,
    kept: StoredCallback,
    spec: dict[str, Any],
    expr: triggers.Expr,
    atoms: list[NewAtom],
    timers: list[tuple[int, float]],
    now_unix: float,
) -> None:
    """Rewrite a callback a registration keeps in its row: count, latches, items and clocks stay.

    Its time atoms go on as they were (``unindex_callbacks``): one that fired stays fired
    and a repeat keeps its next tick (they were re-armed at every registration again: a
    past time fired again, a repeat ticked at each one). One its last registration had
    spent (its clocks stopped) that a higher ``maximum`` makes live again starts them
    afresh: "registering the job again with a higher maximum starts it again". A
    universal line's repeat a reload stopped (``UniversalSet._stop_clocks_of``: the line
    was removed, and is back now) ticks again from its next point.
    """
    spec.update(count=kept.count, latches=list(kept.latches), latched_by=list(kept.marks))
    was_spent = bool(timers) and callback_spent(db, kept, expr)
    TriggerStore.rewrite_callback(db, kept.rowid, spec, atoms)
    if was_spent:
        (now,) = TriggerStore.load_callbacks(db, [kept.rowid])  # with the new maximum
        if not callback_spent(db, now, expr):
            TriggerStore.replace_timers(db, kept.rowid, timers)
    elif kept.universal and timers:
        running = TriggerStore.timer_slots(db, kept.rowid)
        for slot, atom in enumerate(triggers.atoms(expr)):
            # Only a repeat has a next point after a firing; a repeat's clock stops only
            # when spent (above) or when its line is removed: a one-shot's, once it fired.
            due = next_fire(atom, now_unix, last_fired_unix=now_unix)
            if due is not None and slot not in running:
                TriggerStore.add_timer(db, kept.rowid, slot, due)


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s).astimezone().isoformat(timespec="seconds")


class Registrar:
    """Registers jobs in ``store``: each with its callbacks and the universal ones."""

    def __init__(
        self,
        store: TriggerStore,
        *,
        universal: UniversalSet,
        labels: LabelClaims,
        refusal: Callable[[str, str], tuple[str, bool]],
        judge: Judge,
        clock: Callable[[], float],
        journal_limits: JournalLimits,
    ) -> None:
        """Register jobs in ``store``, with the callbacks of ``universal`` attached.

        ``labels``: the labels held per pgrp (``TriggerEngine.labels``). ``refusal``: why
        a job's own callback of a language and user would be refused ("" if not);
        ``judge``: a firing's refusal (``TriggerEngine.firing_refusal``).
        """
        self._store = store
        self._universal_set = universal
        self._labels = labels
        self._refusal = refusal
        self._judge = judge
        self._clock = clock
        self._journal = journal_limits

    def _index(
        self, owner: JobPlace, expr: triggers.Expr
    ) -> tuple[list[NewAtom], list[tuple[int, float]]]:
        """The index rows and the first due times of a callback's atoms."""
        indexed: list[NewAtom] = []
        timers: list[tuple[int, float]] = []
        now = self._clock()
        for slot, atom in enumerate(triggers.atoms(expr)):
            key = atom_key(atom, owner)
            if key is not None:
                indexed.append(NewAtom(slot, key))
            due = next_fire(atom, now)
            if due is not None:
                timers.append((slot, due))
        return indexed, timers

    def stored_registration(
        self, job: dict[str, Any], strict: bool, published: frozenset[str] | None
    ) -> tuple[Registration, list[PendingFiring]]:
        """``_register_job``, again when a fleet's transaction lost a deadlock.

        Registrations of one job take turns in their transactions, in every replica of a
        fleet (``TriggerStore.callbacks_to_register``).
        """
        return retrying(lambda: self._register_job(job, strict=strict, published=published))

    def _register_job(
        self,
        job: dict[str, Any],
        *,
        strict: bool = False,
        published: frozenset[str] | None = None,
    ) -> tuple[Registration, list[PendingFiring]]:
        """Store a job with its callbacks and the universal ones; keeps state of unchanged ones.

        Touches only the store (any thread): what it fired is returned, for the loop to
        queue (``TriggerEngine._registered``).

        Args:
            job: The Qube job dict, with its callbacks (each may say ``mode``).
            strict: Refuse the registration when its own callbacks fail a check.
            published: The events the scheduler publishes ("complete", "running-job"),
                for the never-happens check; None when not declared.

        Raises:
            InvalidRequestError: no id, a label clash, a trigger that does not parse, a
                mode not known, or (``strict``) a failed check.
        """
        job_id = int(job.get("id") or 0)
        if job_id <= 0:
            raise InvalidRequestError("job.id is required to register a job")
        job = dict(job, pgrp=int(job.get("pgrp") or job_id))
        label = str(job.get("label") or "")
        # Held until the transaction is over: its label is not in the store before then.
        with self._labels.registering(job_id, job["pgrp"], label):
            return self._register_labelled(job, job_id, label, strict, published)

    def _register_labelled(
        self,
        job: dict[str, Any],
        job_id: int,
        label: str,
        strict: bool,
        published: frozenset[str] | None,
    ) -> tuple[Registration, list[PendingFiring]]:
        """``_register_job`` once the job's label is its own in its pgrp."""
        specs = callback_specs(job, self._universal_set.universal, checked)
        place = JobPlace.of(job)
        where = surroundings(self._store, place, job, [expr for _, expr in specs], published)
        found = checks.job_checks(place)
        for spec, expr in specs:
            found += checks.trigger_checks(
                expr, spec["id"], where, universal=spec["universal"], level=spec["mode"] == LEVEL
            )
            if not spec["universal"]:  # a universal file's code and language: at its load
                found += checks.code_checks(spec["id"], spec["language"], spec["code"])
                refusal, _ = self._refusal(spec["language"], spec["user"])
                found += checks.refusal_checks(spec["id"], refusal)
        own = [check for check in found if not check.universal]
        if strict and own:
            problems = "; ".join(check.line() for check in own)
            raise InvalidRequestError(f"job {job_id} (strict): {problems}")
        agenda = list(where.agendas.get(job_id) or [])
        now = self._clock()
        batch = uuid.uuid4().hex
        with self._store.transaction() as db, self._store.within_bound(db, job_id):
            # Read (and in a fleet locked) in the transaction that writes it back: a copy
            # read before it would undo an event's latch committed meanwhile.
            previous = TriggerStore.callbacks_to_register(db, job_id)
            before = TriggerStore.place_in(db, job_id)
            plain_specs = [spec for spec, _ in specs]
            kept_as = continued(plain_specs, previous, self._universal_set.universal_dirs)
            first_time = store_job(db, job, plain_specs, kept_as, previous)
            keep_journal(db, job_id, plain_specs, kept_as, previous)
            # Before the level passes: what the old holder of its label or id latched goes.
            cleared = label_moves.release(db, place, before, first_time, now, parsed)
            decider = Decider(
                db,
                SeenEvent(Event("submit", "job", job_id), now),
                batch,
                dry=False,
                parsed=parsed,
                registering=True,
                judge=self._judge,
            )
            for (spec, expr), kept in zip(specs, kept_as, strict=True):
                atoms, timers = self._index(place, expr)
                if kept is not None:
                    _keep_callback(db, kept, spec, expr, atoms, timers, now)
                    continue
                rowid = TriggerStore.put_callback(db, job_id, spec, atoms, timers)
                if spec["mode"] == LEVEL:
                    (stored,) = TriggerStore.load_callbacks(db, [rowid])
                    level_pass(db, decider, stored, expr, place, agenda)
            if first_time:
                take_registration(db, decider, place, parsed)
            checks.replace_job(db, job_id, found)
            if label:
                checks.resolve_label(db, place.pgrp, label, job_id, _iso(now))
            journal.append(db, [*cleared, *decider.decision.entries], self._journal)
            own_queued(self._store, db, batch, decider.decision.firings)
            registered = TriggerStore.callbacks_in(db, job_id)
        return Registration(registered, found, decider.decision.fired), decider.decision.firings
