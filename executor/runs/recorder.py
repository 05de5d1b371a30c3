"""The dispatcher's ``on_result`` hook: a finished run goes to the outbox, history, callback log, metrics.

Order matters: the outbox commit comes first, before the caller gets its answer, so
once any trace of a run exists the supervisor is sure to hear of it. The row carries the
run's notes (``run_notes``) until the bookkeeping thread has committed its history
record (it then tells the outbox, which drops them), so a start-up after a ``kill -9``
in between rebuilds it (``recovery``), and nothing else; a later run of the id, whose
row replaces that row, waits for the writer to write the earlier run first. In a fleet, a fired
run is recorded only while its replica's claim on the firing holds (fencing: see
``_record_claimed``). The other sinks
are bookkeeping, written by one thread (``bookkeeping.BookkeepingWriter``): off the
event loop, several runs per history commit under load, and flushed before anything
reads the history (off the loop: ``read_history``); a read of the metrics counts the
runs it holds without waiting for it. One that fails (disk full, a bad path) is logged
and skipped, and never costs the caller its answer or the other sinks their entry.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from executor.config import Settings
from executor.errors import TakenOverError, UnavailableError
from executor.model import Invocation, RunResult
from executor.runs import run_notes
from executor.runs.bookkeeping import FLUSH_TIMEOUT_S, BookkeepingWriter
from executor.runs.callback_log import CallbackLog
from executor.runs.callback_log_space import CallbackLogSpace
from executor.runs.history import RunHistory, RunIdentity
from executor.runs.metrics import Metrics
from executor.runs.outbox import Outbox
from executor.runs.outbox_fences import Alongside
from executor.runs.outbox_transport import MESSAGE_MARGIN_BYTES, Transport
from executor.runs.recovery import recover_lost_bookkeeping
from executor.storage import StorageHealth

# Serializes one finished run's report for the outbox (the api layer knows the format),
# with the Unix time it ended: what tells another run of its invocation id from a resend.
EncodeReport = Callable[[Invocation, RunResult, float], bytes]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ClaimsGivenBack(Protocol):
    """A fleet's claims on Execute ids (``invocation_ids.FleetIds``), given back with results."""

    def release_alongside(self, invocation_id: str) -> Alongside | None: ...

    def released(self, invocation_id: str) -> None: ...


# How long a fired callback's result waits for a fleet's PostgreSQL that cannot take it
# before the firing is given back to run again: the firing's lease runs out meanwhile, and
# another replica may claim it and run it again anyway. With SQLite nobody else would: the
# result waits for the storage as long as it takes (or until a stop).
FIRED_RESULT_WAIT_S = 30.0
# How soon the start's rebuild of lost history records is tried again after the storage
# refused it (then once its probe finds it takes writes).
RECOVERY_RETRY_S = 1.0
# How long a stop waits for the results still owed to end their last try (one commit on
# the loop, which a lock holds up for LOOP_BUSY_TIMEOUT_S): past it, they are given up.
OWED_STOP_WAIT_S = 5.0


class Recorder:
    """Fans each finished run out to the sinks; owns them and closes them.

    ``fired_wait_s``: how long a fired run's result waits for a storage that refuses it
    (None: until it is recorded, or a stop begins: ``stop_waiting``).
    ``claim_holds``: in a fleet, whether this replica's claim on a firing (invocation id,
    epoch) still holds (``TriggerStore.claim_holds``); None: no claims to check.
    """

    def __init__(
        self,
        *,
        history: RunHistory,
        callback_log: CallbackLog,
        metrics: Metrics,
        outbox: Outbox | None,
        encode_report: EncodeReport | None = None,
        clock: Callable[[], float] = time.time,
        fired_wait_s: float | None = None,
        claim_holds: Callable[[str, int], bool] | None = None,
        health: StorageHealth | None = None,
        recovery_owed: bool = False,
    ) -> None:
        # recovery_owed: the start's rebuild of lost history records met a storage that
        # refused it; ``start`` tries again once the storage takes writes.
        if outbox is not None and encode_report is None:
            raise ValueError("an outbox needs encode_report")
        self.history = history
        self.callback_log = callback_log
        self.metrics = metrics
        self.outbox = outbox
        self._encode_report = encode_report
        self._clock = clock
        self._fired_wait_s = fired_wait_s
        self._claim_holds = claim_holds
        self._health = health
        # Set at the start of a stop: no result waits for the storage any more.
        self._stopping = asyncio.Event()
        # Results of Execute runs whose callers were told the storage refused them,
        # committed once it takes them.
        self._owed: set[asyncio.Task[bool]] = set()
        self._recovery_owed = recovery_owed
        self._recovering: asyncio.Task[None] | None = None
        # Runs waiting for the writer to write their id's earlier run first.
        self._after_earlier: set[asyncio.Task[None]] = set()
        self._claims: ClaimsGivenBack | None = None
        self._unrecorded: Callable[[Invocation, str], None] | None = None
        # A run's outbox row keeps its notes until the history has committed the run.
        self._writer = BookkeepingWriter(
            history,
            callback_log,
            metrics,
            on_recorded=None if outbox is None else outbox.notes_written,
        )
        # A reader of either never misses a run that was answered. The history's waits for
        # the writer (``read_history`` runs it off the loop); the metrics' never does.
        history.before_read = self._writer.flush
        metrics.before_read = self._writer.observe_pending
        # The history's readers (ListRuns, GetRun), off the loop: each waits for the writer,
        # which waits up to SQLite's busy timeout for a runs.db another process holds
        # locked. A thread of their own, not the default pool's: readers piling up there
        # would hold up what the loop hands to it (a child's cleanup, the outbox's steps).
        self._history_reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-read")
        # Started now: at the executor's process limit a first read could not start it.
        self._history_reads.submit(lambda: None).result()

    @classmethod
    def open(
        cls,
        settings: Settings,
        metrics: Metrics,
        *,
        transport: Transport | None,
        encode_report: EncodeReport | None,
        health: StorageHealth | None = None,
        claim_holds: Callable[[str, int], bool] | None = None,
    ) -> Recorder:
        """The sinks the settings describe, with their files under ``data_dir``.

        With a PostgreSQL ``store``, the outbox and the history are the fleet's, in it,
        and ``claim_holds`` (the trigger store's) fences the fired runs' results.

        ``transport`` and ``encode_report`` report each run to the supervisor through the
        outbox; without a transport (``report_results = false``) nothing is reported.
        ``health`` hears of writes that fail because of the storage.
        """
        outbox = None
        if transport is not None:
            outbox = Outbox(
                settings.store or settings.data_dir / "outbox.db",
                transport,
                batch_bytes=settings.supervisor_max_message_bytes - MESSAGE_MARGIN_BYTES,
                health=health,
                lease_s=settings.store_lease_seconds,
                max_bytes=settings.outbox_max_bytes,
            )
        history = RunHistory(
            settings.store or settings.data_dir / "runs.db",
            retention_days=settings.history_retention_days,
            max_runs=settings.history_max_runs,
            max_bytes=settings.history_max_bytes,
            health=health,
        )
        space = CallbackLogSpace(
            settings.callback_log_dir,
            max_bytes=settings.callback_log_total_max_bytes,
            retention_days=settings.history_retention_days,
        )
        callback_log = CallbackLog(
            settings.callback_log_dir, settings.callback_log_max_bytes, space=space
        )
        owed = (
            outbox is not None and recover_lost_bookkeeping(outbox, history, callback_log) is None
        )
        return cls(
            history=history,
            callback_log=callback_log,
            metrics=metrics,
            outbox=outbox,
            encode_report=encode_report,
            fired_wait_s=FIRED_RESULT_WAIT_S if settings.store else None,
            claim_holds=claim_holds,
            health=health,
            recovery_owed=owed,
        )

    def give_back_claims(self, claims: ClaimsGivenBack) -> None:
        """An Execute's claim on its id ends in its result's commit (a fleet's: one round trip)."""
        self._claims = claims

    def tell_unrecorded(self, hook: Callable[[Invocation, str], None]) -> None:
        """Who hears of a fired run whose result the storage refused, at its first refusal.

        ``hook(invocation, why)``: ``why`` says that its result could not be recorded and
        what becomes of it (the trigger engine answers a ``wait``ing publisher with it).
        """
        self._unrecorded = hook

    def _refused(self, invocation: Invocation) -> Callable[[UnavailableError], None]:
        """What a fired run's commit calls at its first refusal: ``tell_unrecorded``'s hook."""

        def refused(err: UnavailableError) -> None:
            if self._unrecorded is None:
                return
            if self._fired_wait_s is None:
                then = (
                    "the executor keeps it and records it once the storage takes it (the "
                    "event's later firings wait behind it; a stop before then leaves the "
                    "firing queued, and it runs again at the next start)"
                )
            else:
                then = (
                    f"this replica keeps it for up to {self._fired_wait_s:.0f} s for the "
                    "store to take it, then the firing runs again (the event's later "
                    "firings wait behind it)"
                )
            self._unrecorded(invocation, f"its result could not be recorded: {err}; {then}")

        return refused

    def on_result(self, invocation: Invocation, result: RunResult) -> Awaitable[object] | None:
        """Record one finished run (called by the dispatcher on the event loop).

        Returns, when the run is reported, what to await before its caller is answered:
        its commit to the outbox, which raises UnavailableError when the storage failed it
        (the caller must not be told the run succeeded, since the supervisor would never
        hear of it). The bookkeeping is queued either way.
        """
        now = self._clock()
        if self.outbox is not None and self._writer.pending(result.invocation_id) is not None:
            return self._record_after_earlier_run(invocation, result, now)
        return self._record(invocation, result, now)

    def _record(
        self, invocation: Invocation, result: RunResult, now: float
    ) -> Awaitable[object] | None:
        """``on_result``'s work, for a run that ended ``now``."""
        if invocation.claim_epoch is not None and self._claim_holds is not None:
            claim = functools.partial(
                self._claim_holds, invocation.invocation_id, invocation.claim_epoch
            )
            return self._record_claimed(invocation, result, now, claim)
        committed: Awaitable[object] | None = None
        if self.outbox is not None and self._encode_report is not None:
            report = self._encode_report(invocation, result, now)
            notes = run_notes.encode(invocation, result, now)
            if invocation.source == "execute":
                claims = self._claims
                alongside = (
                    None if claims is None else claims.release_alongside(result.invocation_id)
                )
                if alongside is not None:  # a fleet's: its history record waits for it
                    return self._record_fenced(
                        self.outbox, invocation, result, now, report, notes, alongside
                    )
                committed = self._commit_or_owe(
                    self.outbox, result.invocation_id, report, now, notes
                )
            else:
                # A fired callback has run and its effects happened: its result waits for
                # the storage, rather than the firing running again as if it had not.
                committed = self._commit(
                    self.outbox,
                    result.invocation_id,
                    report,
                    ended_at=now,
                    notes=notes,
                    wait_s=self._fired_wait_s,
                    stopping=self._stopping,
                    health=self._health,
                    refused=self._refused(invocation),
                )
        self._book(invocation, result, now)
        return committed

    def _record_after_earlier_run(
        self, invocation: Invocation, result: RunResult, now: float
    ) -> Awaitable[object]:
        """A run whose id's earlier run the writer still holds: recorded once that one is written.

        Its outbox row replaces the earlier run's, and with it the notes a start-up after
        a kill -9 would rebuild that run's ``.cb`` entry from (probe 155): so it waits for
        the writer to write the earlier run first (a resend answered within the writer's
        50 ms: rare, and no other run waits). In a task of its own, so a caller gone
        meanwhile does not leave the run unrecorded; ``close`` waits for it.
        """
        task = asyncio.get_running_loop().create_task(
            self._recorded_after_earlier_run(invocation, result, now)
        )
        self._after_earlier.add(task)
        task.add_done_callback(self._after_earlier_done)
        return asyncio.shield(task)

    async def _recorded_after_earlier_run(
        self, invocation: Invocation, result: RunResult, now: float
    ) -> None:
        invocation_id = result.invocation_id
        loop = asyncio.get_running_loop()
        # The history readers' thread: it is for waits on the writer.
        if not await loop.run_in_executor(
            self._history_reads, self._writer.wait_written, invocation_id
        ):
            logger.warning(
                "run %s: the bookkeeping of the id's earlier run is not written after %.0f s;"
                " this run's outbox row replaces that run's now (a crash before it is written"
                " loses that run's .cb entry)",
                invocation_id,
                FLUSH_TIMEOUT_S,
            )
        committed = self._record(invocation, result, now)
        if committed is not None:
            await committed

    def _after_earlier_done(self, task: asyncio.Task[None]) -> None:
        self._after_earlier.discard(task)
        if not task.cancelled():
            task.exception()  # its caller's to hear of, or logged by _commit already

    async def _record_claimed(
        self, invocation: Invocation, result: RunResult, now: float, claim: Callable[[], bool]
    ) -> None:
        """A fleet's fired run: reported and put in the history only while its claim holds.

        A replica whose lease ran out while it ran the firing (it stalled, or lost
        PostgreSQL for a while) finds the firing claimed by another replica under a
        higher epoch (or already done by it): that replica runs it again, and its run is
        the firing's. This one's result is then dropped: reported, or in the history, it
        would replace the other's (it ended later), and the supervisor and the history
        keep the run of an invocation id that ended last. It stays in this replica's log
        line, ``.cb`` log and metrics: it did run here.

        The claim is checked before each try of the commit. A claim taken over after the
        check is harmless: the other replica's run begins after it, so it ends later
        than this run, whose end was taken before the check, and its result replaces
        this one's.
        """
        report = None
        if self.outbox is not None and self._encode_report is not None:
            report = self._encode_report(invocation, result, now)
        kept = True
        try:
            kept = await self._commit(
                self.outbox if report is not None else None,
                result.invocation_id,
                report or b"",
                ended_at=now,
                notes=None if report is None else run_notes.encode(invocation, result, now),
                wait_s=self._fired_wait_s,
                stopping=self._stopping,
                claim=claim,
                health=self._health,
                refused=self._refused(invocation),
            )
        finally:
            self._book(invocation, result, now, in_history=kept)
        if not kept:
            logger.warning(
                "firing %s ran here after its lease ran out, and another replica has claimed "
                "it: this run's result (%s) is not reported nor put in the history; the other "
                "replica's run is the firing's",
                result.invocation_id,
                result.outcome,
            )

    def recorded(self, invocation_id: str) -> RunIdentity | None:
        """Whose run is recorded (or being recorded) under ``invocation_id``.

        The runs the writer still holds first, then the history: between the two, a run
        is always in one of them. A local history's read never waits for a write.
        """
        pending = self.pending(invocation_id)
        if pending is not None:
            return pending
        return self.history.identity(invocation_id)

    def behind(self) -> str:
        """Why the bookkeeping is behind the runs ("": it is not); see ``BookkeepingWriter``."""
        return self._writer.behind()

    def pending(self, invocation_id: str) -> RunIdentity | None:
        """Whose run the writer holds under ``invocation_id``, not yet in the history."""
        pending = self._writer.pending(invocation_id)
        return None if pending is None else RunIdentity.of(pending)

    async def read_history(self, read: Callable[[RunHistory], T]) -> T:
        """``read(history)`` in the history readers' thread: it may wait, the loop does not."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._history_reads, read, self.history)

    def recorded_result(self, invocation_id: str) -> RunResult | None:
        """The result the history has under ``invocation_id`` (None: none); blocks."""
        record = self.history.get(invocation_id)
        return None if record is None else record.result

    async def _record_fenced(
        self,
        outbox: Outbox,
        invocation: Invocation,
        result: RunResult,
        now: float,
        report: bytes,
        notes: str,
        alongside: Alongside,
    ) -> None:
        """A fleet's Execute run: reported and put in the history only while its claim holds.

        As a fired run's (``_record_claimed``), but checked in the commit itself: the
        claim is given back by the statement that commits the result, which commits
        nothing once another replica took the claim over (this one stalled past its
        lease, and the caller's resend ran there). That run's result is the id's; this
        one's stays in this replica's log line, ``.cb`` log and metrics only, and its
        caller hears TakenOverError (ABORTED).
        """
        in_history = True
        try:
            await self._commit_or_owe(outbox, result.invocation_id, report, now, notes, alongside)
        except TakenOverError as err:
            in_history = False
            logger.warning(
                "Execute run of invocation_id %r ran here after its claim on the id ran out, "
                "and another replica's run of it took the claim over: this run's result (%s) "
                "is not reported nor put in the history; the other run's is the id's",
                result.invocation_id,
                result.outcome,
            )
            raise TakenOverError(
                f"another run of invocation_id {result.invocation_id!r} took over while this"
                " one was stalled past its claim's lease (a resend, at another replica): its"
                " result is the id's; this run's is not reported nor recorded"
            ) from err
        finally:
            self._book(invocation, result, now, in_history=in_history)

    def _book(
        self, invocation: Invocation, result: RunResult, now: float, *, in_history: bool = True
    ) -> None:
        """The run handed to the bookkeeping thread (history, ``.cb`` log, metrics), ended now."""
        self._writer.submit(
            invocation,
            result,
            ended_at=now,
            started_at=now - result.usage.wall_seconds,
            in_history=in_history,
        )

    async def _commit_or_owe(
        self,
        outbox: Outbox,
        invocation_id: str,
        report: bytes,
        ended_at: float,
        notes: str,
        alongside: Alongside | None = None,
    ) -> None:
        """An Execute's result: committed before its caller's answer, or the caller told at once.

        The callback has run and its effects happened, so a result the storage refuses is
        still owed to the supervisor: it is committed when the storage takes it (unless a
        stop comes first), and a later run of the id (a resend) is never replaced by it.
        In a fleet, the claim on the id goes with the commit (``give_back_claims``);
        one not committed is given back by the call (``CallbackExecutorServicer``).
        """
        claims = self._claims
        try:
            await outbox.commit(invocation_id, report, ended_at, notes, alongside)
            if alongside is not None and claims is not None:
                claims.released(invocation_id)
        except UnavailableError as err:
            owed = asyncio.get_running_loop().create_task(
                self._commit(
                    outbox,
                    invocation_id,
                    report,
                    ended_at=ended_at,
                    notes=notes,
                    wait_s=None,
                    stopping=self._stopping,
                    health=self._health,
                ),
                name=invocation_id,
            )
            self._owed.add(owed)
            owed.add_done_callback(self._owed_done)
            raise UnavailableError(
                f"the callback ran, but its result could not be recorded: {err}; it is reported"
                " to the supervisor once the storage takes it (a resend runs it again)"
            ) from err

    def _owed_done(self, task: asyncio.Task[bool]) -> None:
        self._owed.discard(task)
        if not task.cancelled():
            task.exception()  # logged by _commit already

    @staticmethod
    async def _commit(
        outbox: Outbox | None,
        invocation_id: str,
        report: bytes,
        *,
        ended_at: float,
        notes: str | None = None,
        wait_s: float | None,
        stopping: asyncio.Event | None = None,
        claim: Callable[[], bool] | None = None,
        health: StorageHealth | None = None,
        refused: Callable[[UnavailableError], None] | None = None,
    ) -> bool:
        """Commit the result; an unavailable storage is retried for up to ``wait_s`` (None: ever).

        Never once ``stopping`` is set (``stop_waiting``): the run then counts as not
        recorded, and a fired one runs again at the next start, as after a crash.
        A try follows a backoff, and then the storage's ``health``: while it is degraded,
        its probe (a thread) finds when the storage takes writes again, and a try before
        that would only wait for a lock on the loop, or fail again.
        With a ``claim``, it is checked before each try: False, and nothing committed,
        once it no longer holds. No ``outbox``: the claim alone is checked.
        ``refused`` hears of the first refusal (then it is retried, or raised).
        """
        stopping = stopping or asyncio.Event()
        loop = asyncio.get_running_loop()
        give_up_at = None if wait_s is None else loop.time() + wait_s
        delay = 0.25
        while True:
            try:
                if claim is not None and not claim():
                    return False
                if outbox is not None:
                    await outbox.commit(invocation_id, report, ended_at, notes)
            except UnavailableError as err:
                if refused is not None:
                    refused(err)
                    refused = None
                if stopping.is_set() or (
                    give_up_at is not None and loop.time() + delay > give_up_at
                ):
                    why = " (the executor is stopping)" if stopping.is_set() else ""
                    logger.error(
                        "result of %s could NOT be recorded%s: %s", invocation_id, why, err
                    )
                    raise
                logger.warning(
                    "result of %s not recorded yet (%s); retrying in %.2fs, once the storage is sound",
                    invocation_id,
                    err,
                    delay,
                )
            else:
                return True
            await _until_retry(delay, health, stopping, give_up_at)
            delay = min(delay * 2, 4.0)

    def stop_waiting(self) -> None:
        """The start of a stop: results that wait for the storage give up at once."""
        self._stopping.set()

    def start(self) -> None:
        """Start delivering results (needs the running event loop)."""
        if self.outbox is not None:
            self.outbox.start()
            if self._recovery_owed:
                self._recovering = asyncio.get_running_loop().create_task(
                    self._recover_when_sound(self.outbox)
                )

    async def _recover_when_sound(self, outbox: Outbox) -> None:
        """The start's rebuild of lost history records, again once the storage takes writes."""
        while True:
            await asyncio.sleep(RECOVERY_RETRY_S)
            if self._health is not None:
                await self._health.sound()
            if recover_lost_bookkeeping(outbox, self.history, self.callback_log) is not None:
                return

    async def close(self, flush_timeout_s: float = 2.0) -> None:
        """Give queued results a moment to go out, then close everything.

        What is still pending stays in the outbox and goes out after the next start. The
        writer stops before the outbox closes: the runs it writes last lose their notes
        then, and a clean stop leaves notes only of runs the history could not take.
        """
        if self._recovering is not None:  # its notes stay for the next start
            self._recovering.cancel()
            await asyncio.gather(self._recovering, return_exceptions=True)
        if self._after_earlier:  # the writer writes the earlier runs at once: a moment
            await asyncio.wait(list(self._after_earlier), timeout=OWED_STOP_WAIT_S)
        if self._owed:
            self.stop_waiting()
            _, left = await asyncio.wait(list(self._owed), timeout=OWED_STOP_WAIT_S)
            for task in left:  # never expected: the stop ends all the same, and says so
                task.cancel()
                logger.error(
                    "result of %s could NOT be recorded (the executor is stopping, and its "
                    "last try did not end)",
                    task.get_name(),
                )
        if self.outbox is not None and not await self.outbox.flush(flush_timeout_s):
            outbox_file = (self.outbox.path,)
            gone = self._health.replaced(among=outbox_file) if self._health is not None else None
            if gone is not None:
                logger.error(
                    "stopping with %s not yet delivered, lost unless the file now at "
                    "the outbox's path is a copy of the one written: %s",
                    _pending_at_stop(self.outbox),
                    gone.cause,
                )
            else:
                # In a fleet the outbox is the store's: any replica running delivers them.
                later = (
                    "another replica delivers them, or this one after its next start"
                    if self.outbox.fleet
                    else "they go out after the next start"
                )
                logger.warning(
                    "stopping with %s not yet delivered; %s", _pending_at_stop(self.outbox), later
                )
        self._writer.close()
        # A read still waiting for the writer ends now that it has written (or given up).
        self._history_reads.shutdown(wait=True, cancel_futures=True)
        if self.outbox is not None:
            await self.outbox.close()
        self.history.close()


def _pending_at_stop(outbox: Outbox) -> str:
    """How many results ``outbox`` still holds, for the stop's line; said so when unreadable."""
    try:
        return f"{outbox.pending()} results"
    except UnavailableError as err:  # its -shm made immutable, say: the stop goes on
        return f"an unknown number of results ({err})"


async def _until_retry(
    delay: float, health: StorageHealth | None, stopping: asyncio.Event, give_up_at: float | None
) -> None:
    """Wait ``delay``, then until ``health`` is sound; a stop, or ``give_up_at``, ends it."""

    async def ready() -> None:
        await asyncio.sleep(delay)
        if health is not None:
            await health.sound()

    loop = asyncio.get_running_loop()
    waits = [asyncio.ensure_future(ready()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(
            waits,
            timeout=None if give_up_at is None else max(0.0, give_up_at - loop.time()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
