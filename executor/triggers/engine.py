"""The trigger engine: registered jobs' callbacks fired by published events and by timers.

Semantics (documented in the README; every decision is one of evaluate's functions):

- Edge-triggered by default: an event sets the latch of every atom it matches; the
  callback's expression is evaluated over its latches after each matching event. An
  atom whose event happened before the job was registered never latches.
- Level mode (a callback's ``mode``): at registration, the atoms whose events have
  already happened (the engine's known states, states.py) latch, and the callback fires
  at once if that makes its trigger true (registration.py); edge afterwards.
- ``done`` atoms match complete, failed and killed events. A ``*`` atom latches on any
  item, once (it is not per item). A trigger with ``{work}`` keeps one latch vector,
  count and firing per work item of its job (decide.py).
- Firing increments ``count``, honours ``maximum`` (0 = unlimited) and resets every latch
  of the callback (of the work item), so it can fire again on new events.
- Clock atoms are timers (``timers`` table). A callback that can fire no more (spent:
  ``maximum`` reached, for ``{work}`` by every item of its agenda) has its timers
  dropped: a spent repeat is no longer ticked, so it writes no journal entry per
  interval. Registering the job again schedules them again (a raised ``maximum``). A
  universal callback whose line a load removed has its timers dropped too, at every job;
  a reload that has the line back starts them again (universal_set.py).
  A repeat's tick that finds the firing of its clock's last tick unfinished (queued or
  running, in the shared queue) is skipped and counted (timers.py), so a callback
  slower than its interval never piles up; a tick that only finds its atom latched
  writes no journal entry.
- The callback runs in the context of the event that completed its trigger: that
  event's work item (``qb.workid()``; for ``{work}``, the item that fired) and instance
  (``qb.subid()``).
- Order within one event: by owning job id, then callback id; universal callbacks come
  after the job's own. Firings of one event run one after another in that order.
- Durability: latching, counting, queueing the firing, the journal's entries and the
  known states commit in one transaction; the firing worker (firings.py) runs the
  queue, the firings queued before a restart first, each once.
- Repeats: an event whose ``event_id`` was applied within the retention decides nothing;
  the ids past it are forgotten every minute, off the event path (event_ids.py). A job
  ``removed`` takes every row of it with it (``TriggerStore.forget_job``), but the
  latches its events set in other jobs' callbacks: they go when its label or id comes to
  name another job (label_moves.py), in that job's registration.
- Explanations: registration checks (checks.py) come back from ``register_job``; the
  journal (journal.py) says what each event did to each callback; ``explain`` (why.py)
  puts it together for a job.

The engine ties its pieces together and owns the counters (``stats``): the universal
callbacks loaded (universal_set.py), a job's registration (registrar.py), applying
events (applying.py, in transactions group_commit.py shares), the firing worker
(firings.py) and each run's policy or refusal (fired_runs.py), a waiting publisher's
results of record (results_of_record.py), the timers (timers.py) and the event ids'
pruning (event_ids.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from executor.errors import EventIdReusedError, UnavailableError
from executor.model import Event, Invocation, Limits, RunResult
from executor.policies import PolicySet
from executor.runs.outbox import Backoff
from executor.supervisor_link import SupervisorReachability
from executor.triggers import event_ids, timers, why
from executor.triggers.applying import EventApplier
from executor.triggers.decide import Decision, Fired
from executor.triggers.fired_runs import FiredRun, FiredRuns
from executor.triggers.firings import FiringWorker
from executor.triggers.group_commit import GroupCommit
from executor.triggers.journal import JournalLimits
from executor.triggers.label_claims import LabelClaims
from executor.triggers.parsed import parsed
from executor.triggers.registrar import Registrar
from executor.triggers.registration import Registration
from executor.triggers.results_of_record import InTurn, ResultsOfRecord
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import PendingFiring, StoredCallback
from executor.triggers.universal import CodeCheck, ReloadStatus, UniversalCallback, no_code_check
from executor.triggers.universal_set import UniversalSet
from executor.triggers.why import JobExplanation

logger = logging.getLogger(__name__)


@dataclass
class EngineStats:
    events_published: int = 0
    callbacks_fired: int = 0
    # Event ids forgotten before their retention, past event_id_max_count (event_ids.py).
    event_ids_forgotten_early: int = 0
    # Repeat ticks skipped: the firing of the tick before had not finished.
    repeat_ticks_skipped: int = 0


class TriggerEngine:
    """Registers jobs, matches events, and fires callbacks through ``run`` on its own tasks.

    Call ``start()`` in the running loop (the firing worker and the timers), ``close()``
    to end them. Published events are applied whether or not it is started; what they
    fire waits in the queue until it is.
    """

    def __init__(
        self,
        store: TriggerStore,
        run: FiredRun,
        *,
        limits: Limits,
        universal_dirs: Sequence[Path] = (),
        clock: Callable[[], float] = time.time,
        max_parallel_events: int = 4,
        retry: Backoff = Backoff(),
        journal_limits: JournalLimits = JournalLimits(),
        event_id_retention_s: float = event_ids.DEFAULT_RETENTION_S,
        event_id_max_count: int = event_ids.DEFAULT_MAX_COUNT,
        universal_policies: Mapping[Path, str] | None = None,
        policies: PolicySet | None = None,
        check_code: CodeCheck = no_code_check,
        languages: Collection[str] | None = None,
        warn_missing_dirs: bool = True,
        last_good: Path | None = None,
        recorded_result: Callable[[str], RunResult | None] | None = None,
        supervisor_reach: SupervisorReachability | None = None,
    ) -> None:
        """Build the engine over ``store``.

        Args:
            store: The durable state; the engine is its only writer.
            run: Runs one invocation to its result (the dispatcher's ``execute``).
            limits: The limits of every fired run.
            universal_dirs: Where the universal callbacks' ``callbacks.conf`` files are.
            clock: Unix time, for the timers and the event ids' age.
            max_parallel_events: How many events' firings may run at once.
            retry: The delays between tries of a run refused for capacity or availability.
            journal_limits: How much of the per-callback journal is kept.
            event_id_retention_s: How long a published event's id is remembered (a
                repeat within it is ignored); pruned every minute while started.
            event_id_max_count: The most event ids remembered: past it the oldest are
                forgotten at the next prune, before their retention, with a WARNING.
            check_code: Checks a universal callback's code when it is loaded.
            languages: The languages the executor runs; a universal line in another is
                loaded with a warning (its firings are refused).
            warn_missing_dirs: Warn at each reload about a ``universal_dirs`` entry that
                does not exist (off for the default directory, which need not).
            universal_policies: The policy each universal directory names.
            policies: The sandbox policies; None gives every run the engine's ``limits``
                under the built-in policy names.
            last_good: Where each loaded universal set is kept, for ``keep_last_good``.
            recorded_result: In a fleet, the result the shared history has for an
                invocation id (blocks; None: none yet): what a ``wait`` publisher gets
                for a firing this replica ran after its claim was lost.
            supervisor_reach: The supervisor's reach, as the executor's calls found it:
                fired runs are held while it is unreachable (``FiringWorker``).
        """
        self._store = store
        self._clock = clock
        self._journal = journal_limits
        self.stats = EngineStats()
        # The labels held per pgrp, with those the farm checked and is registering.
        self.labels = LabelClaims(store)
        # Judged through ``firing_refusal``: the runs' refusals are made further down.
        self._timers = timers.Timers(
            store,
            clock=clock,
            journal_limits=journal_limits,
            judge=self.firing_refusal,
            fired=self._timers_fired,
        )
        self._universal_set = UniversalSet(
            store,
            universal_dirs=universal_dirs,
            universal_policies=universal_policies,
            policies=policies,
            check_code=check_code,
            languages=languages,
            warn_missing_dirs=warn_missing_dirs,
            last_good=last_good,
            clock=clock,
            wake_timers=self._timers.wake,
        )
        self._fired = FiredRuns(
            store,
            run,
            limits=limits,
            policies=policies,
            languages=languages,
            universal=self._universal_set,
        )
        self._firings = FiringWorker(
            store,
            self._fired.run_firing,
            max_parallel_events=max_parallel_events,
            retry=retry,
            # A fenced run's waiter (fleet only: a single executor's claims always hold).
            result_of_record=self._result_of_record if store.fleet and recorded_result else None,
            reach=supervisor_reach,
        )
        self._records = ResultsOfRecord(store, self._firings, recorded_result)
        self._follower: asyncio.Task[None] | None = None
        self._event_ids = event_ids.EventIdPruner(
            store,
            event_id_retention_s,
            clock,
            max_count=event_id_max_count,
            forgotten_early=self._count_forgotten_early,
        )
        self._event_id_pruning: asyncio.Task[None] | None = None
        self._events = EventApplier(
            store, clock=clock, journal_limits=journal_limits, judge=self.firing_refusal
        )
        self._group: GroupCommit[tuple[Decision, bool]] = GroupCommit(self._events.apply_group)
        self._registrar = Registrar(
            store,
            universal=self._universal_set,
            labels=self.labels,
            refusal=self._fired.refusal,
            judge=self.firing_refusal,
            clock=clock,
            journal_limits=journal_limits,
        )
        self._registering = asyncio.Lock()

    # -- universal callbacks (universal_set.py) -------------------------------------

    @property
    def universal(self) -> list[UniversalCallback]:
        return self._universal_set.universal

    @property
    def universal_reload(self) -> ReloadStatus:
        """The last load of callbacks.conf: when tried, what it found wrong, when a set was taken."""
        return self._universal_set.universal_reload

    def as_loaded(self, callback: StoredCallback) -> StoredCallback:
        """``callback``, a universal one naming its line's file as loaded now (``as_loaded``)."""
        return self._universal_set.as_loaded(callback)

    @property
    def event_transactions(self) -> int:
        """How many transactions published events were applied in (group commit)."""
        return self._group.transactions

    @property
    def store(self) -> TriggerStore:
        """The durable state, for reading (the engine is its only writer)."""
        return self._store

    @property
    def universal_dirs(self) -> list[Path]:
        return self._universal_set.universal_dirs

    @property
    def universal_warnings(self) -> list[str]:
        """Missing directories, then the active universal callbacks' check warnings."""
        return self._universal_set.universal_warnings

    def reload_universal(self, *, quiet: bool = False, fleet_wide: bool = False) -> list[str]:
        """Re-read every callbacks.conf; on errors keep the last good set and return them.

        See ``UniversalSet.reload_universal``; with ``fleet_wide`` every other replica of
        a fleet reloads too (its ``_follow_fleet`` polls the store's version row).
        """
        return self._universal_set.reload_universal(quiet=quiet, fleet_wide=fleet_wide)

    async def reload_universal_off_loop(self, *, fleet_wide: bool = False) -> list[str]:
        """``reload_universal``, its files read and checked on a worker thread; reloads take turns."""
        return await self._universal_set.reload_universal_off_loop(fleet_wide=fleet_wide)

    def keep_last_good(self) -> int | None:
        """After a start-up load that failed: take the set loaded last before the restart."""
        return self._universal_set.keep_last_good()

    # -- registration (registrar.py) ------------------------------------------------

    def register_job(
        self,
        job: dict[str, Any],
        *,
        strict: bool = False,
        published: frozenset[str] | None = None,
    ) -> Registration:
        """Store a job (``Registrar``) and queue what it fired, all on this thread."""
        registration, firings = self._registrar.stored_registration(job, strict, published)
        return self._registered(registration, firings)

    async def register(
        self,
        job: dict[str, Any],
        *,
        strict: bool = False,
        published: frozenset[str] | None = None,
    ) -> Registration:
        """``register_job`` with the store's part on a worker thread.

        A job of tens of thousands of callbacks parses, checks and writes for seconds;
        meanwhile the loop answers every other call. Registrations wait their turn here,
        not on a thread each (the default executor's threads also apply the events).
        Refused, nothing stored, while a database is lost (``TriggerStore.refuse_while_lost``).
        """
        self._store.refuse_while_lost()
        async with self._registering:
            registration, firings = await asyncio.to_thread(
                self._registrar.stored_registration, job, strict, published
            )
        return self._registered(registration, firings)

    def _registered(
        self, registration: Registration, firings: Sequence[PendingFiring]
    ) -> Registration:
        """(On the loop.) Queue what a committed registration fired and wake the timers."""
        self.stats.callbacks_fired += len(registration.fired)
        self._firings.add(firings)
        self._timers.poke()
        return registration

    # -- events (applying.py) -------------------------------------------------------

    def _count(self, decision: Decision, duplicate: bool) -> None:
        if not duplicate:
            self.stats.events_published += 1
            self.stats.callbacks_fired += len(decision.fired)

    def _applied(self, applied: list[tuple[Decision, bool]]) -> list[tuple[Decision, bool]]:
        """Count what committed events decided and queue what they fired (on the loop)."""
        for decision, duplicate in applied:
            self._count(decision, duplicate)
            self._firings.add(decision.firings)
        return applied

    async def publish_many(self, events: Sequence[Event]) -> list[tuple[list[Fired], bool]]:
        """Apply events in order in one transaction; their firings then run.

        The transaction may hold other callers' events too (group commit): a busy
        scheduler's batch costs its events' statements, not a commit each. If it fails,
        these events are applied again in a transaction of their own (all or none).

        Returns:
            Per event, the callbacks it fired and whether it was a repeat.

        Raises:
            UnavailableError: the engine is closing, or a database is lost (nothing was
                applied: ``TriggerStore.refuse_while_lost``).
            EventIdReusedError: an event's id was first used for another event (nothing
                was applied); its ``index`` is the event's in ``events``.
        """
        if self._firings.closed:
            raise UnavailableError("the trigger engine is stopping; publish the events again")
        self._store.refuse_while_lost()
        with _reuse_logged():
            applied = await self._group.submit(events, self._applied)
        return [(decision.fired, duplicate) for decision, duplicate in applied]

    def match(self, event: Event, *, dry: bool) -> Decision:
        """Apply (or, dry, simulate) one event; what it fires is queued for the worker.

        A dry run reads on a snapshot of the store (``TriggerStore.snapshot``) for as long
        as it takes: any thread may call it, and the servicer calls it on a worker thread
        (an event that 30,000 callbacks wait for is decided for a second).

        Returns:
            What it fired (would fire), latched without firing (a dry run's only), and
            the journal entries that say why (a dry run's only: an applied event's are
            written). A dry run writes nothing. A repeat of an ``event_id`` already
            applied decides nothing.
        """
        if dry:
            with self._store.snapshot() as db:
                return self._events.decide(
                    db, event, "", dry=True, place=TriggerStore.place_in(db, event.job_id)
                )
        with _reuse_logged():
            decision, duplicate = self._events.apply(event)
        self._count(decision, duplicate)
        self._firings.add(decision.firings)
        return decision

    async def publish(
        self, event: Event, *, wait: bool, in_turn: InTurn | None = None
    ) -> tuple[list[Fired], bool]:
        """Apply an event; what it fires runs on the firing worker.

        ``in_turn(read)``: runs ``read()``, the reads of a waiting repeat's results from
        the history, when the caller's answer may be made (the API's turn, shared with
        GetRun's; None: at once). Nothing is awaited after it returns.

        Returns:
            The callbacks it fired, with their results when ``wait`` (a refused run is
            retried until it runs; a result is None when the run raised), and whether
            it was a repeat. A repeat fires nothing; with ``wait`` it answers with what
            its id fired when first applied, once run (``ResultsOfRecord.first_firings``).

        Raises:
            UnavailableError: the engine is closing (the event was not applied, unless it
                was while a ``wait`` publisher waited: its firings then run at restart), or
                a database is lost (not applied: ``TriggerStore.refuse_while_lost``).
            EventIdReusedError: its id was first used for another event (not applied).
        """
        if self._firings.closed:
            raise UnavailableError("the trigger engine is stopping; publish the event again")
        self._store.refuse_while_lost()

        def queued(
            applied: list[tuple[Decision, bool]],
        ) -> tuple[Decision, bool, list[asyncio.Future[RunResult | None]]]:
            ((decision, duplicate),) = applied
            self._count(decision, duplicate)
            return decision, duplicate, self._firings.add(decision.firings, wait=wait)

        # Group commit: the transaction holds the events of every call that came meanwhile.
        with _reuse_logged():
            decision, duplicate, futures = await self._group.submit([event], queued)
        if not wait:
            return decision.fired, duplicate
        if duplicate:
            return await self._records.first_firings(event.event_id, in_turn), True
        results = await asyncio.gather(*futures)
        return [
            dataclasses.replace(fired, result=result)
            for fired, result in zip(decision.fired, results, strict=True)
        ], duplicate

    def holds_firing(self, invocation_id: str) -> bool:
        """Whether a firing decided and not yet run to its end has this invocation id."""
        return self._records.holds_firing(invocation_id)

    # -- explanations ---------------------------------------------------------------

    def explain(
        self,
        job_id: int,
        callback_id: int = 0,
        *,
        work_name: str = "",
        journal_limit: int = 0,
        after_callback_id: int = 0,
        limit: int = why.MAX_CALLBACKS_EXPLAINED,
        registration: int = 0,
        max_atoms: int = 0,
    ) -> JobExplanation:
        """Why each callback of a job did or did not fire, and what it still waits for.

        At most ``limit`` callbacks, those with ids above ``after_callback_id``, of the
        job's registration ``registration`` when not 0; of each, its first ``max_atoms``
        atoms (0: all). It reads on a snapshot of the
        store for as long as that takes: any thread may call it, and the servicer calls
        it on a worker thread (``why.explain_job``). It says which universal lines loaded
        now the job does not hold (``UniversalSet.not_attached``).

        Raises:
            NotFoundError: the job (or the callback) is not registered.
            ChangedMeanwhileError: the job was registered again since ``registration``.
        """
        explained = why.explain_job(
            self._store,
            job_id,
            callback_id,
            work_name=work_name,
            journal_limit=journal_limit or self._journal.entries,
            parsed=parsed,
            after_callback_id=after_callback_id,
            limit=limit,
            registration=registration,
            max_atoms=max_atoms,
            not_attached=self._universal_set.not_attached,
        )
        callbacks = []
        for each in explained.callbacks:
            refusal, shadow = self.firing_refusal(each.callback)
            callback = self.as_loaded(each.callback)
            callbacks.append(replace(each, callback=callback, refusal=refusal, shadow=shadow))
        return replace(explained, callbacks=tuple(callbacks))

    # -- runs and their results (fired_runs.py, results_of_record.py) ---------------

    async def _result_of_record(self, invocation_id: str) -> RunResult | None:
        """The firing's result in the history, once the firing is done (``ResultsOfRecord``)."""
        return await self._records.result_of_record(invocation_id)

    def unrecorded(self, invocation: Invocation, why: str) -> None:
        """A fired run ended, but the storage refuses its result for now (``Recorder.tell_unrecorded``)."""
        self._records.unrecorded(invocation, why)

    def firing_refusal(self, cb: StoredCallback) -> tuple[str, bool]:
        """Why a firing of ``cb`` is refused now ("" if not), and whether as a shadow.

        ``FiredRuns.firing_refusal``: any thread may call it, in a transaction too.
        """
        return self._fired.firing_refusal(cb)

    # -- timers and the engine's tasks ----------------------------------------------

    def fire_due_timers(self) -> list[Fired]:
        """Latch every due time atom and fire what completes (``Timers.fire_due``)."""
        return self._timers.fire_due()

    def _timers_fired(
        self, fired: list[Fired], batches: list[list[PendingFiring]], skipped: int
    ) -> None:
        """(A timers' transaction committed.) Count what it fired and skipped; queue its firings."""
        self.stats.callbacks_fired += len(fired)
        self.stats.repeat_ticks_skipped += skipped
        for firings in batches:
            self._firings.add(firings)

    def _count_forgotten_early(self, count: int) -> None:
        # On the pruner's thread: the one writer of this count, read by the loop.
        self.stats.event_ids_forgotten_early += count

    def prune_event_ids(self) -> int:
        """Forget the event ids past their retention, then past the most kept (blocks); how many went.

        A started engine does this every minute on a thread of its own.
        """
        return self._event_ids.prune()

    def start(self) -> None:
        """Start the firing worker, the timers and the event ids' pruning: ended by ``close``.

        The firings queued before a restart run first.
        """
        if self._timers.started:
            raise RuntimeError("the trigger engine is already started")
        self._firings.start()
        self._timers.start()
        self._event_id_pruning = asyncio.get_running_loop().create_task(self._event_ids.run())
        if self._store.fleet:
            self._follower = asyncio.get_running_loop().create_task(self._follow_fleet())

    async def _follow_fleet(self) -> None:
        """In a fleet: reload the universal callbacks when another replica was asked to."""
        while True:
            await asyncio.sleep(timers.FLEET_POLL_S)
            if self._universal_set.fleet_reloaded_since():
                await self.reload_universal_off_loop()

    @property
    def idle(self) -> bool:
        """Whether no firing is queued or running now (the restored ones count until run)."""
        return self._firings.idle

    @property
    def firings_held(self) -> str:
        """Why fired runs are held now (the supervisor unreachable); "" while they are not."""
        return self._firings.held

    async def wait_idle(self) -> None:
        """Until no firing is queued or running (once started)."""
        await self._firings.wait_idle()

    async def close(self) -> None:
        """Stop the timers and the worker; unfinished firings stay queued for the next start.

        The events already taken are applied and answered first.
        """
        await self._group.close()
        self._event_ids.stop()
        if self._event_id_pruning is not None:
            # Not cancelled: its thread would go on writing; it ends after its batch.
            await asyncio.gather(self._event_id_pruning, return_exceptions=True)
        await self._timers.close()
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        await self._firings.close()


@contextlib.contextmanager
def _reuse_logged() -> Iterator[None]:
    """Log an event refused for its reused id at WARNING (a publisher's bug, else unseen)."""
    try:
        yield
    except EventIdReusedError as err:
        logger.warning("%s", err)
        raise
