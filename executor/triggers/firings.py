"""The firing worker: runs the durable queue of decided firings while the engine runs.

The engine decides a firing in the transaction that latches and counts it, and that
transaction also queues it (the store's ``firings`` table). This worker runs what the
queue holds; a firing leaves the queue when its run has ended:

* Per user in turn, each user's in decision order. The firings of one event run one
  after another (the order the README promises: a callback may rely on what the one
  before it did); different events' firings run side by side, at most
  ``max_parallel_events`` events at once. The next event to start is the oldest of the
  user next in turn among those with events waiting (an event's user: its first
  firing's), as ``executor.slots`` hands out slots: a user joins the back of the round
  with a first event waiting and goes to the back each time one of theirs starts. So
  one user's event storm holds another user's firing back by one event of each user
  ahead in the round, not by all of theirs (probe 136: 30 s behind alice's ten 6 s
  firings on 2 slots). Its run then waits for a slot in the slots' round, under its
  user, with the Execute calls; its queue time counts from when it was queued here
  (decided, or restored at start, or claimed), or for an event's later firings from
  when the one before it ended.
* A run refused before it started (CapacityError: every slot busy; UnavailableError: a
  child could not start) is retried with exponential backoff while the engine runs; it
  never waits for a restart. The event's later firings wait behind it, so their order
  holds.
* A run the executor's stop ended or refused (ShuttingDownError) is not retried: nothing
  runs again in this process. It stays queued, with its event's later firings, until
  ``close`` (the stop's next step) ends the wait; they run at the next start. No line is
  logged per firing above DEBUG (a WARNING per firing was a false alarm at every routine
  restart, probe 147): ``close`` says how many stay queued.
* A run that an executor bug ends is not an exception here: the dispatcher records and
  reports it as a FAILED run ("internal error in the executor; its log has the
  details") and that is its result. Anything else raised here is a bug outside any run
  (building its invocation, recording its result): it is logged with its traceback and
  the firing leaves the queue all the same, so that it does not replay at every start.
* While the supervisor is known to be unreachable (a ``qb`` call or a result report met
  UNAVAILABLE or its deadline), no fired run starts: the worker holds them all, in
  their order, until the supervisor answers again (``SupervisorReachability``: its look,
  or a ``qb`` call; not a result report's answer, probe 160), logging once as it holds
  and once as it resumes. A run already going when the outage began
  fails as the callback's ``qb`` call does; one that ended FAILED with
  ``SupervisorUnavailable`` while the supervisor was found unreachable is run again
  under its invocation id after the hold (its actions are deduplicated per
  ``(invocation_id, action_seq)``; its result replaces the failed one's record), and so
  on each time it fails so: while the look finds the supervisor away, the outage is real
  and the firing waits it out, its effects applied once it answers (probe 141); the hold
  after such a re-run goes on with the last one's backoff, so the re-runs come further
  and further apart while they fail so. A look
  that finds it answering at once after such a failure (no call found it away since) is
  a supervisor that answers the look but refuses the callback's calls: one such look per
  firing still lets it run again (``OUTAGE_RERUNS``); after a second, its failure is the
  firing's result, so a callback whose calls always fail so does not run for ever.
* Only the worker runs firings, so none runs twice at once. A publisher that waits for its
  event's results (``PublishEvent(wait=True)``) gets them through futures; if it goes
  away, the runs go on: they are durable work, not the caller's. In a fleet, a run
  whose claim was lost while it ran (the replica stalled past its lease) is not the
  firing's: its waiter gets the result of record, the re-run's, once there is one. A
  queued firing whose claim was lost before its run started (the replica stalled or
  lost PostgreSQL for longer than a lease while it waited) is not run here at all: the
  replica that claimed it runs it, and its waiter is answered the same way.
* A run whose result the storage refuses (a full disk) stays the firing's while its
  result waits for the storage (the Recorder): its waiter is answered at once,
  UnavailableError saying so, rather than after the storage recovers, and so is a resend
  of its event meanwhile (``not_recorded``); once recorded, a resend gets the result.
* The queue is mirrored in memory: the engine is the store's only writer, so the
  worker loads the queue once, when the engine is built (the firings decided before a
  restart), and the engine hands it each firing it decides after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NoReturn

from executor import lease_renewal
from executor.errors import CapacityError, ShuttingDownError, UnavailableError
from executor.logs import outside_any_run
from executor.model import Outcome, RunResult
from executor.plurals import counted
from executor.runs.outbox import Backoff
from executor.sql import Db
from executor.supervisor_link import SupervisorReachability
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import PendingFiring

logger = logging.getLogger(__name__)

# What a publisher waiting for its event's firings is told at a stop.
STOPPED: Final = "the trigger engine stopped; the firing runs at its restart"

# How often a fired run that failed only because the supervisor was unreachable is run
# again though the look after its failure found the supervisor answering at once: a
# bound, since a supervisor may answer the look and refuse the callback's calls.
OUTAGE_RERUNS = 1


# One event's firings waiting to start, and when they were queued (``time.monotonic()``).
_Queued = tuple[list[PendingFiring], float]


class FiringWorker:
    """Runs queued firings through ``run``, per user in turn, one event's after another."""

    def __init__(
        self,
        store: TriggerStore,
        run: Callable[[PendingFiring, float], Awaitable[RunResult]],
        *,
        max_parallel_events: int,
        retry: Backoff = Backoff(),
        rng: random.Random | None = None,
        result_of_record: Callable[[str], Awaitable[RunResult | None]] | None = None,
        reach: SupervisorReachability | None = None,
    ) -> None:
        """Run ``store``'s queue through ``run`` (given when the firing's wait began).

        ``result_of_record``: in a fleet, the result a firing's invocation id has in the
        shared history once the firing is done (waits for it; None: it has none).
        ``reach``: the supervisor's, which holds fired runs while it is unreachable.
        """
        if max_parallel_events < 1:
            raise ValueError(f"max_parallel_events must be at least 1, got {max_parallel_events}")
        self._store = store
        self._run = run
        self._max_parallel = max_parallel_events
        self._retry = retry
        self._rng = rng or random.Random()
        # Events waiting to start, per user (an event's first firing's) in turn order
        # (dicts keep it: the first is next), each user's oldest decision first.
        self._waiting: dict[str, deque[_Queued]] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._results: dict[str, asyncio.Future[RunResult | None]] = {}
        # The invocation ids of the firings queued or running here: the store's queue,
        # unless another replica shares it.
        self._queued_ids: set[str] = set()
        # The firings whose run ended but whose result the storage refuses for now: why.
        self._not_recorded: dict[str, str] = {}
        self._result_of_record = result_of_record
        # Waiters answered with another replica's run of a firing (see _answer_with_record).
        self._recorded_waits: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = False
        self._closed = False
        self._closing = asyncio.Event()  # set as ``close`` begins: waiters answer at once
        self._claims: asyncio.Task[None] | None = None
        self._reach = reach
        # While the supervisor is unreachable: the one wait every held run shares, and
        # when it began (what ``held`` counts from).
        self._hold: asyncio.Task[None] | None = None
        self._held_since = 0.0
        # The queue of the last run, event by event: one event's firings were queued in
        # one transaction, so they are neighbours sharing a batch.
        restored = store.pending_firings()
        for _, firings in itertools.groupby(restored, key=lambda firing: firing.batch):
            self._enqueue(list(firings))
        self._restored = len(restored)

    @property
    def closed(self) -> bool:
        """True once ``close`` has begun: nothing more will run."""
        return self._closed

    async def closed_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for ``close`` to begin; whether it has."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)
        return self._closed

    def add(
        self, firings: Sequence[PendingFiring], *, wait: bool = False
    ) -> list[asyncio.Future[RunResult | None]]:
        """Queue one event's firings (already committed to the store), in order.

        Returns:
            With ``wait``, one future per firing for its result (None when the run
            raised); they fail with UnavailableError if the worker closes first.
        """
        if not firings:
            return []
        futures: list[asyncio.Future[RunResult | None]] = []
        if wait:
            loop = asyncio.get_running_loop()
            for firing in firings:
                future: asyncio.Future[RunResult | None] = loop.create_future()
                self._results[firing.invocation_id] = future
                futures.append(future)
        self._enqueue(list(firings))
        self._fill()
        return futures

    def start(self) -> None:
        """Start running the queue (in the running loop); the restored firings go first."""
        if self._restored:
            logger.info("running %d firings decided before the last stop", self._restored)
        self._started = True
        self._fill()
        if self._store.fleet:
            self._claims = asyncio.get_running_loop().create_task(self._claim_forever())

    @property
    def held(self) -> str:
        """Why fired runs are held now, with how long and how many wait; "" while they are not."""
        if self._hold is None or self._reach is None:
            return ""
        # From the hold's start, with the last reason known: another call's answer
        # meanwhile (a report) neither empties it nor restarts its clock (probe 137).
        held_s = time.monotonic() - self._held_since
        return (
            f"the supervisor has been unreachable for {held_s:.0f} s "
            f"({self._reach.last_unreachable}); {len(self._queued_ids)} fired runs wait"
        )

    @property
    def idle(self) -> bool:
        """Whether nothing is queued or running now."""
        return self._idle.is_set()

    async def wait_idle(self) -> None:
        """Until nothing is queued or running (after ``start``; before it, what is queued waits)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Cancel the runs in progress; what has not finished stays queued for the next start."""
        if not self._closed and self._queued_ids:
            logger.info(
                "stopping: %s decided and not run to their end stay queued in the trigger "
                "store (run at the next start, or by another replica of a fleet)",
                counted(len(self._queued_ids), "fired callback"),
            )
        self._closed = True
        self._closing.set()
        for task in (self._claims, self._hold):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for task in (*self._running, *self._recorded_waits):
            task.cancel()
        await asyncio.gather(*self._running, *self._recorded_waits, return_exceptions=True)
        for future in self._results.values():
            if not future.done():
                future.set_exception(UnavailableError(STOPPED))
        self._results.clear()

    def holds(self, invocation_id: str) -> bool:
        """Whether a firing queued or running here has this invocation id."""
        return invocation_id in self._queued_ids

    def unrecorded(self, invocation_id: str, why: str) -> None:
        """A firing's run ended here, but the storage refuses its result for now.

        Its waiter is answered now, UnavailableError with ``why``: with SQLite the result
        waits for the storage as long as it refuses it, and the publisher must not wait
        that long for no answer.
        """
        if invocation_id not in self._queued_ids:
            return
        self._not_recorded[invocation_id] = why
        future = self._results.pop(invocation_id, None)
        if future is not None and not future.done():
            future.set_exception(UnavailableError(why))

    def not_recorded(self, invocation_id: str) -> str:
        """Why a firing's ended run is not recorded yet (``unrecorded``); "" if it is not so."""
        return self._not_recorded.get(invocation_id, "")

    def _enqueue(self, firings: list[PendingFiring]) -> None:
        self._queued_ids.update(firing.invocation_id for firing in firings)
        # The stored callback's user is its job's where it names none (registration).
        user = firings[0].callback.user
        self._waiting.setdefault(user, deque()).append((firings, time.monotonic()))
        self._idle.clear()

    def _fill(self) -> None:
        """Start waiting events while there is room: each time the next user's oldest."""
        while (
            self._started
            and not self._closed
            and self._waiting
            and len(self._running) < self._max_parallel
        ):
            user = next(iter(self._waiting))
            events = self._waiting.pop(user)
            firings, queued_at = events.popleft()
            if events:
                self._waiting[user] = events  # to the back of the round
            # Its runs are the firings', not those of whichever call queued them.
            task = asyncio.get_running_loop().create_task(
                self._run_event(firings, queued_at), context=outside_any_run()
            )
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a firing task failed", exc_info=task.exception())
        self._fill()
        if not self._waiting and not self._running:
            self._idle.set()

    async def _run_event(self, firings: list[PendingFiring], queued_at: float) -> None:
        for firing in firings:
            result, held = await self._run_one(firing, queued_at)
            queued_at = time.monotonic()  # the next one's turn came
            future = self._results.get(firing.invocation_id)
            # A waiting publisher that went away cancelled its future; the run counts anyway.
            if future is None or future.done():
                self._results.pop(firing.invocation_id, None)
            elif not held and self._result_of_record is not None:
                # This run's result was dropped (fencing): the re-run's is the firing's.
                # Waited for aside: the event's next firings do not wait for it.
                wait = asyncio.get_running_loop().create_task(
                    self._answer_with_record(firing.invocation_id, future, self._result_of_record)
                )
                self._recorded_waits.add(wait)
                wait.add_done_callback(self._recorded_waits.discard)
            else:
                del self._results[firing.invocation_id]
                future.set_result(result)

    async def _answer_with_record(
        self,
        invocation_id: str,
        future: asyncio.Future[RunResult | None],
        result_of_record: Callable[[str], Awaitable[RunResult | None]],
    ) -> None:
        """Answer a waiter with the firing's result of record (after close: UnavailableError)."""
        try:
            result = await result_of_record(invocation_id)
        except UnavailableError as err:  # its run here again ended unrecorded (``unrecorded``)
            self._results.pop(invocation_id, None)
            if not future.done():
                future.set_exception(err)
            return
        except Exception:  # a store bug: the waiter gets no result rather than no answer
            logger.exception("firing %s: looking for its result of record failed", invocation_id)
            result = None
        # Cancelled (close), the waiter stays in _results: close() tells it UnavailableError.
        self._results.pop(invocation_id, None)
        if not future.done():
            future.set_result(result)

    async def _run_one(
        self, firing: PendingFiring, queued_at: float
    ) -> tuple[RunResult | None, bool]:
        """Run a firing until it is not refused; it then leaves the queue.

        ``queued_at``: when its wait began (``time.monotonic()``), its run's queue time's start.

        Returns its result and whether this replica's claim on it held to the end; in a
        fleet, a firing whose claim was lost before its run started is not run (None, False).
        """
        refusals = answered_at_once = outage_failures = 0
        while True:
            if not await self._still_claimed(firing):
                self._queued_ids.discard(firing.invocation_id)
                return None, False
            await self._until_supervisor_answers()
            losses = self._reach.losses if self._reach is not None else 0
            try:
                try:
                    result: RunResult | None = await self._run(firing, queued_at)
                finally:
                    # Recorded, given back to run again, or the worker closing: none waits.
                    self._not_recorded.pop(firing.invocation_id, None)
            except ShuttingDownError:
                logger.debug(
                    "firing %s of callback %s stopped by the executor's stop; it stays "
                    "queued and runs at the next start",
                    firing.invocation_id,
                    firing.callback.callback_id,
                )
                await self._until_closed()
            except (CapacityError, UnavailableError) as err:
                refusals += 1
                delay = self._retry.delay(refusals, self._rng)
                # Once per firing at WARNING: a long overload must not flood the log.
                logger.log(
                    logging.WARNING if refusals == 1 else logging.DEBUG,
                    "firing %s of callback %s refused (%s); retrying in %.2fs",
                    firing.invocation_id,
                    firing.callback.callback_id,
                    err,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            except Exception:
                logger.exception(
                    "firing %s of callback %s failed outside its run (an executor bug); "
                    "it leaves the queue unrun",
                    firing.invocation_id,
                    firing.callback.callback_id,
                )
                result = None
            if self._reach is not None and self._failed_for_outage(result, losses):
                outage_failures += 1
                certain = answered_at_once < OUTAGE_RERUNS
                if not await self._found_away_while_held(
                    firing, self._reach, certain=certain, again=outage_failures > 1
                ):
                    answered_at_once += 1  # the look disagrees with the calls
                if answered_at_once <= OUTAGE_RERUNS:
                    queued_at = time.monotonic()  # a run of its own: its wait starts again
                    continue
                logger.warning(
                    "firing %s of callback %s is not run again: the supervisor answered at "
                    "once after its calls failed unreachable; this failure is the firing's "
                    "result",
                    firing.invocation_id,
                    firing.callback.callback_id,
                )
            held = await self._done(firing)
            self._queued_ids.discard(firing.invocation_id)
            return result, held

    async def _until_closed(self) -> NoReturn:
        """Wait until ``close``, the stop's next step, cancels this task: a stop has begun."""
        await asyncio.get_running_loop().create_future()  # never done
        raise AssertionError("unreachable: only close ends the wait")

    async def _found_away_while_held(
        self, firing: PendingFiring, reach: SupervisorReachability, *, certain: bool, again: bool
    ) -> bool:
        """After its run failed for the outage: hold it, then whether a call found the supervisor away.

        The hold's own look, or any other call, after the run ended. ``certain``: it runs
        again whatever the look finds (the log says so). ``again``: a re-run failed so,
        and the hold's waits go on from the last hold's (``until_answering``).
        """
        logger.warning(
            "firing %s of callback %s failed because the supervisor was unreachable; %s",
            firing.invocation_id,
            firing.callback.callback_id,
            "it runs again once the supervisor answers"
            if certain
            else "it runs again once the supervisor answers, if the executor finds it "
            "away meanwhile",
        )
        losses = reach.losses
        await self._until_supervisor_answers(again=again)
        return reach.losses > losses

    def _failed_for_outage(self, result: RunResult | None, losses: int) -> bool:
        """Whether a run failed only because the supervisor was away.

        It ended FAILED with ``SupervisorUnavailable``, and a call found the supervisor
        unreachable meanwhile: not one that answered an error or a malformed answer,
        which the callback sees as the same kind.
        """
        if self._reach is None or result is None or result.outcome != Outcome.FAILED:
            return False
        failure = result.failure
        return (
            failure is not None
            and failure.exception_type.endswith("SupervisorUnavailable")
            and self._reach.losses > losses
        )

    async def _until_supervisor_answers(self, *, again: bool = False) -> None:
        """Wait, with every other fired run, while the supervisor is known to be unreachable.

        ``again``: a re-run failed for the outage; a hold it starts goes on with the last
        hold's backoff (one already going is joined as it is).
        """
        reach = self._reach
        if reach is None or not reach.unreachable:
            return
        if self._hold is None:
            self._held_since = time.monotonic()
            self._hold = asyncio.get_running_loop().create_task(
                self._hold_while_away(reach, again=again)
            )
        # Shielded: one run's cancellation (close) must not end the others' wait.
        await asyncio.shield(self._hold)

    async def _hold_while_away(self, reach: SupervisorReachability, *, again: bool) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        logger.warning(
            "the supervisor is unreachable (%s): holding fired runs until it answers "
            "(%d queued; Execute calls are not held)",
            reach.unreachable,
            len(self._queued_ids),
        )
        try:
            await reach.until_answering(again=again)
        finally:
            self._hold = None
        logger.info(
            "the supervisor answers again: fired runs resume after %.1f s (%d waited)",
            loop.time() - started,
            len(self._queued_ids),
        )

    async def _still_claimed(self, firing: PendingFiring) -> bool:
        """Whether this replica may start the firing's run: in a fleet, its claim still holds.

        Checked before each start, not only at the result's commit: a replica that
        stalled or lost PostgreSQL for longer than a lease comes back to a queue whose
        firings another replica may have claimed, run and marked done meanwhile; running
        them again would repeat every effect of a firing already done. One indexed read
        per start, waiting out a store that is unreachable for now (nothing is known).
        """
        if not self._store.fleet:
            return True
        held = await self._stored(
            lambda: self._store.claim_holds(firing.invocation_id, firing.epoch),
            f"firing {firing.invocation_id}: checking this replica's claim before its run",
        )
        if not held:
            logger.warning(
                "firing %s of callback %s was claimed by another replica while this one "
                "was away (its lease ran out): not run here; that replica's run is the "
                "firing's",
                firing.invocation_id,
                firing.callback.callback_id,
            )
        return held

    async def _done(self, firing: PendingFiring) -> bool:
        """Take the firing off the queue, waiting out a store that is unreachable for now.

        False when this replica's claim on it had been lost (fleet).
        """
        held = await self._stored(
            lambda: self._store.firing_done(firing.invocation_id, firing.epoch),
            f"firing {firing.invocation_id} ran; recording it",
        )
        if not held:
            # Its result was recorded only if the claim still held when it ended
            # (Recorder): else the other replica's run is the firing's.
            logger.warning(
                "firing %s ran, but its lease ran out before it was marked done: another "
                "replica has claimed it and runs it again (or has), and that run's "
                "result is the firing's",
                firing.invocation_id,
            )
        return held

    async def _stored(self, step: Callable[[], bool], doing: str) -> bool:
        """``step``'s answer, waiting out a store that is unreachable for now (nothing is known).

        Each failure is logged with ``doing``, then backed off from until the storage is sound.
        """
        failures = 0
        while True:
            try:
                return step()
            except UnavailableError as err:
                failures += 1
                delay = self._retry.delay(failures, self._rng)
                logger.warning("%s: %s (retrying once the storage is sound)", doing, err)
                await asyncio.sleep(delay)
                await self._store.sound()

    async def _claim_forever(self) -> None:
        """In a fleet: renew this replica's leases, and claim the firings of dead replicas.

        Every third of a lease. A replica claims only once it has been connected for a
        whole lease: after an outage of PostgreSQL every lease looks expired, and the
        replicas that hold them get that long to renew first.
        """
        loop = asyncio.get_running_loop()
        connected_since: float | None = None

        def renew_and_claim() -> None:
            nonlocal connected_since
            self._store.renew_leases()
            if connected_since is None:
                connected_since = loop.time()
            if loop.time() - connected_since >= self._store.lease_s:
                claimed = self._store.claim_expired()
                if claimed:
                    logger.info("claimed %d firings of a replica that stopped", len(claimed))
                for _, firings in itertools.groupby(claimed, key=lambda f: f.batch):
                    self._enqueue(list(firings))
                self._fill()

        def disconnected() -> None:
            nonlocal connected_since
            connected_since = None

        await lease_renewal.renew_forever(
            renew_and_claim,
            lease_s=self._store.lease_s,
            what="firing claims",
            logger=logger,
            failed=disconnected,
        )


def own_queued(store: TriggerStore, db: Db, batch: str, firings: Sequence[PendingFiring]) -> None:
    """In a fleet, claim what a transaction queued for this replica (it runs them)."""
    if firings and store.fleet:
        TriggerStore.own_batch(db, batch, store.owner, store.lease_until())
