"""Admission and dispatch: bounded slots and queue, language gating, one owned task and one RunResult per run.

Every run takes a slot (its pids cgroup is the slot's), or waits in a bounded queue;
past the queue the request is refused with CapacityError (RESOURCE_EXHAUSTED). The queue
is bounded twice: by the runs waiting (``max_queue``), and by the bytes their requests
came in (``max_queue_bytes``): each is held until its run has ended, so the count alone
let 256 requests of 16 MiB take the executor to many GB. Python
and Perl run in a sandboxed child; qube code strings run in the executor's own
interpreter.

Priority (``executor.slots``): a freed slot goes round-robin over the users with runs
waiting, first come first within a user, Execute requests and fired runs alike
(``execute(..., fired=True)``: a callback the trigger engine fired, durable work that
must not be lost). A fired run may come with a ``recheck``: what it runs as is decided
again when it takes its slot (a universal callback's line as the set loaded then says: a
reload while it waited stops or demotes it), and a refusal then ends it REJECTED.
At the queue's bounds an Execute request of a user holding less of
the queue may take the place of the newest of the user holding most, which is refused
as at the door; a fired run is never refused for a full queue nor gives up its place,
it waits for a slot like the rest (so the queue may hold more than ``max_queue`` runs
when fired ones are among them). Both are refused while draining, and while no run may
start (``refusal``: the outbox past its bound, every slot kept by a killed process that
has not ended), which is checked at the door and again
when a queued run gets its slot (probe 136: checked at the door only, every run queued
when the bound was passed started all the same).

Each run is a task of this dispatcher, keyed by its invocation id; its caller awaits it
shielded. A run ends early only through a stop with a reason (``lifecycle.RunStop``):
``drain()`` stops every run ("the executor is shutting down"), and a caller cancelled
(client deadline or cancel) stops its own ("the caller cancelled the request"). A
stopped run ends as KILLED with that reason as its failure, its sandbox kills and reaps
its child, and it is recorded through ``on_result`` like any other run; drain's callers
get it as their answer, a cancelled caller its cancellation once the run has ended.
Two exceptions. An Execute whose callback had not started (waiting for a slot, or its
child not yet given its start) when a drain or its caller stopped it is no run: nothing
is recorded or reported, and its caller may send it again; a drain's caller gets
ShuttingDownError (``NOT_STARTED``, an UnavailableError), a cancelled caller its
cancellation (the task's UnavailableError, ``_refuse_unstarted``, is only logged). A
fired run drain stopped (or never started): its caller, the trigger engine's queue, gets
ShuttingDownError, and keeps the firing for the next start without trying it again here.

A run an executor bug ends (an unexpected exception) is an Execute caller's INTERNAL
error; a qube run, and a fired run (it has no caller to tell), is instead a FAILED run
with ``INTERNAL_FAILURE``, recorded and reported like any other: a fired callback is
never lost without a trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, NamedTuple, Protocol

from executor.child.protocol import StartFrame
from executor.errors import (
    AlreadyExistsError,
    CapacityError,
    ExecutorError,
    InvalidRequestError,
    ShuttingDownError,
    UnavailableError,
)
from executor.host_api import HostApi
from executor.model import (
    ActionRecord,
    Failure,
    Invocation,
    Language,
    Limits,
    Outcome,
    RunResult,
    Usage,
)
from executor.plurals import counted
from executor.policies import Policy, PolicySet, language_refusal
from executor.runtimes.child import ChildRuntime, child_runtime
from executor.sandbox.bridge import CallHandler
from executor.sandbox.exit_status import SandboxResult
from executor.sandbox.lifecycle import RunStop, RunStopped, stoppable
from executor.slots import Slots
from executor.supervisor_link import SupervisorPort
from executor.visible_text import escaped

logger = logging.getLogger(__name__)

SHUTTING_DOWN: Final = "the executor is shutting down"
# An Execute a stop caught before its callback started: no run, so its caller may resend it.
NOT_STARTED: Final = (
    "the executor is shutting down and the callback did not start; it may be sent again"
    " under the same invocation_id (to another executor of a fleet, or here once restarted)"
)
# Languages the executor's own interpreter runs, with no child process.
_INTERPRETED: Final = frozenset({Language.QUBE, Language.MAIL})
CALLER_CANCELLED: Final = "the caller cancelled the request"
CALLER_DEADLINE: Final = "the caller's deadline passed"
# The failure of a run that an executor bug ended (a qube run, or a fired child run).
INTERNAL_FAILURE: Final = "internal error in the executor; its log has the details"
# A cancellation this close to the caller's deadline is the deadline's (clocks differ).
_DEADLINE_SLACK_S: Final = 0.05


def in_progress(invocation_id: str) -> str:
    """The refusal of a run whose invocation id a run still in progress has."""
    return (
        f"a run with invocation_id {invocation_id!r} is still in progress; retry once it has ended"
    )


def firings_id(invocation_id: str) -> str:
    """The refusal of an Execute naming the id of a firing not yet run to its end."""
    return (
        f"invocation_id {invocation_id!r} is a fired callback's, which has"
        " not run to its end yet; choose a new invocation_id"
    )


# A failure's first line is enough to tell runs apart in a log; the whole is in the history.
MAX_LOGGED_FAILURE_CHARS: Final = 200
# How often a slot kept for the bookkeeping looks whether it caught up (it writes in
# batches of about that long, ``bookkeeping.GATHER_S``).
BEHIND_POLL_S: Final = 0.05


def run_log_fields(invocation: Invocation, language: str, result: RunResult) -> dict[str, Any]:
    """The per-run line's fields, each its own key in the JSON log (``logs.JsonFormatter``)."""
    failure = result.failure.message.strip().partition("\n")[0] if result.failure else ""
    return {
        "invocation_id": invocation.invocation_id,
        "job_id": invocation.job_id,
        "callback_id": invocation.callback.id,
        "callback": invocation.callback.name,
        "language": str(language),
        "source": invocation.source,
        "policy": invocation.policy,
        "shadow": invocation.shadow,
        "outcome": result.outcome.value,
        "wall_seconds": round(result.usage.wall_seconds, 6),
        "cpu_seconds": round(result.usage.cpu_seconds, 6),
        "peak_rss_bytes": result.usage.peak_rss_bytes,
        "queue_seconds": round(result.usage.queue_seconds, 6),
        "actions": len(result.actions),
        "failure": failure[:MAX_LOGGED_FAILURE_CHARS],
    }


class QubeRunner(Protocol):
    """Runs a qube-language code string through the host API (executor/runtimes/qube.py)."""

    async def run(self, invocation: Invocation, host: HostApi) -> RunResult: ...


class ChildRunner(Protocol):
    """Runs one callback in a sandboxed child (``SandboxRunner``; a fake in unit tests)."""

    async def run(
        self,
        *,
        runtime: ChildRuntime,
        limits: Limits,
        slot: int,
        start: StartFrame,
        on_call: CallHandler,
        stop: RunStop | None = None,
        policy: Policy | None = None,
        gate: Callable[[], None] | None = None,
    ) -> SandboxResult: ...

    def stop_preparing(self) -> None:
        """Prepare nothing for later runs: the runs are being stopped for good."""
        ...

    async def close(self) -> None:
        """Dispose of what was prepared for runs that will not come."""
        ...


class RunProgress(NamedTuple):
    """A run in progress, as GetRun tells it (``Dispatcher.progress``)."""

    state: str  # "running", or "waiting for a slot"
    admitted_at: float  # Unix seconds; a record of its id that ended before is an earlier run's


@dataclass(slots=True)
class _Run:
    """One admitted run: the task that owns it, and the way to stop it."""

    invocation: Invocation
    language: Language
    stop: RunStop
    fired: bool = False
    # ``execute``'s gate until it is opened (``open_gate``); None: nothing (more) to check.
    gate: Callable[[], None] | None = None
    # ``execute``'s recheck, applied when the run takes its slot.
    recheck: Callable[[Invocation], Invocation] | None = None
    # ``execute``'s queued_at: when its wait began (None: when it was admitted).
    queued_at: float | None = None
    task: asyncio.Task[RunResult] | None = None
    # Whether it has left the queue with a slot (GetRun says "running", else "waiting").
    has_slot: bool = False
    # Unix seconds: a record of its id that ended before is an earlier run's.
    admitted_at: float = field(default_factory=time.time)

    def open_gate(self) -> None:
        """Open the run's gate, once; what it raises ends the run, unrecorded.

        Just before the run's code may run, or before a run that never started is recorded.
        """
        gate, self.gate = self.gate, None
        if gate is not None:
            gate()


class Dispatcher:
    """Runs invocations within the configured concurrency; owns every run until it has ended."""

    def __init__(
        self,
        *,
        runner: ChildRunner,
        supervisor: SupervisorPort,
        qube: QubeRunner,
        languages: frozenset[Language],
        max_concurrent: int,
        max_queue: int,
        max_queue_bytes: int | None = None,
        on_result: Callable[[Invocation, RunResult], Awaitable[object] | None] | None = None,
        policies: PolicySet | None = None,
        refusal: Callable[[], str] = lambda: "",
        unenforceable: Callable[[Limits], str | None] = lambda _: None,
        behind: Callable[[], str] = lambda: "",
    ) -> None:
        self._runner = runner
        # Why the runs' bookkeeping is behind them ("": it is not): an ended run keeps its
        # slot while it is, so callbacks cannot fill memory with output faster than the
        # history takes it; new runs queue, then are refused at the queue's bound.
        self._behind = behind
        # Slots kept for the bookkeeping now (logged as the first is kept and the last freed).
        self._kept_for_bookkeeping = 0
        # Why no run may start now ("": one may): the outbox past outbox_max_bytes, a
        # database lost, every slot kept by a killed process that has not ended.
        self._refusal = refusal
        # Why a run's limits cannot be enforced on this host (None: they can).
        self._unenforceable = unenforceable
        # None (unit tests): every run is confined as the sandbox options alone say.
        self._policies = policies
        self._supervisor = supervisor
        self._qube = qube
        self._languages = languages
        self._slots = Slots(max_concurrent, max_queue, max_queue_bytes)
        self._runs: dict[str, _Run] = {}
        self._draining = False
        self._on_result = on_result
        # Children of answered runs still being ended, each holding its slot.
        self._finishing: set[asyncio.Future[None]] = set()

    @property
    def kept_for_history(self) -> int:
        """Slots ended runs keep until the bookkeeping catches up (``behind``)."""
        return self._kept_for_bookkeeping

    @property
    def active(self) -> int:
        """Runs holding a slot."""
        return self._slots.busy

    @property
    def running(self) -> int:
        """Runs whose callback has started and not ended (``active`` also counts unstarted ones)."""
        return sum(run.stop.started for run in self._runs.values())

    @property
    def waiting(self) -> int:
        """Runs waiting for a slot."""
        return self._slots.waiting

    @property
    def waiting_bytes(self) -> int:
        """What the requests of the runs waiting for a slot came in as, in bytes."""
        return self._slots.waiting_bytes

    async def execute(
        self,
        invocation: Invocation,
        *,
        fired: bool = False,
        deadline: float | None = None,
        request_bytes: int = 0,
        gate: Callable[[], None] | None = None,
        recheck: Callable[[Invocation], Invocation] | None = None,
        queued_at: float | None = None,
    ) -> RunResult:
        """Run one invocation to its RunResult. Raises CapacityError / UnavailableError.

        ShuttingDownError (an UnavailableError) once a stop has begun: refused at the
        door, or stopped by ``drain`` (a fired run, or an Execute not started).

        ``fired``: the trigger engine fired it; it is never refused for a full queue.
        ``request_bytes``: the size its request came in, counted against
        ``max_queue_bytes`` while it waits for a slot (its caller's gRPC call holds it). If
        the caller is cancelled, the run is stopped (KILLED, recorded, its failure saying
        whether the caller's ``deadline``, a ``time.monotonic()`` value, had passed or it
        cancelled) and the cancellation goes on once it has ended.

        ``gate`` (an Execute's checks of its caller's invocation id, ``IdGate``) is called
        just before the callback's code may run (a child's once its start frame is sent:
        the child prepares the run meanwhile and waits for the go) and before a run that
        never started is recorded. What it raises is the caller's: the run is not
        recorded, and its child, if it had one, is ended without running the code.

        ``recheck`` (a fired universal callback's: the trigger engine's look at its line)
        is called with the invocation once the run has its slot, before anything of it
        starts; the run goes on as what it returns, refused (REJECTED, recorded) as a
        refusal here would be: the set loaded may have changed while it waited.

        ``queued_at`` (a fired run's: when its wait in the trigger engine's queue began, a
        ``time.monotonic()`` value) is where its ``queue_seconds`` count from; else from now.
        Once it has its slot, the run starts only if a run may start now (``refusal``,
        the outbox's bound, is checked again: it may have been passed while the run
        waited); else its slot goes on and it raises UnavailableError saying why, as at
        the door, unrecorded (a fired run waits in the engine's queue).
        """
        if self._draining:
            raise ShuttingDownError(SHUTTING_DOWN)
        if full := self._refusal():  # a fired run waits in its queue (FiringWorker)
            raise UnavailableError(full)
        try:
            language = Language(invocation.callback.language)
        except ValueError:
            valid = ", ".join(lang.value for lang in Language)
            unsupported = (
                f"callback.language {invocation.callback.language!r} is not supported; "
                f"expected one of {valid}"
            )
            if not fired:
                raise InvalidRequestError(unsupported) from None
            # Registration refuses such a callback; one stored before it did still fires.
            return await self._refused(invocation, invocation.callback.language, unsupported)
        # A child's rlimits only: a qube or mail run has none to enforce.
        unenforceable = None if language in _INTERPRETED else self._unenforceable(invocation.limits)
        if unenforceable is not None and not fired:
            raise InvalidRequestError(unenforceable)
        refusal = (
            invocation.refusal
            or unenforceable
            or language_refusal(language, self._languages, self._policy(invocation))
        )
        if refusal is not None:
            if gate is not None:
                gate()
            return await self._refused(invocation, language, refusal)
        run, task = self._admit(
            invocation,
            language,
            fired=fired,
            request_bytes=request_bytes,
            gate=gate,
            recheck=recheck,
            queued_at=queued_at,
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise  # not the caller: the run itself was cancelled
            late = deadline is not None and time.monotonic() >= deadline - _DEADLINE_SLACK_S
            run.stop.request(CALLER_DEADLINE if late else CALLER_CANCELLED)
            # The run ends (KILLED, recorded; unless it never started) before the
            # cancellation goes on; cancelling the caller again ends only this wait, the
            # run still ends on its own.
            await asyncio.wait([task])
            if not task.cancelled() and (error := task.exception()) is not None:
                if isinstance(error, ExecutorError):  # what the caller would have been told
                    logger.log(
                        logging.WARNING if run.stop.started else logging.INFO,
                        "run %s, whose caller has gone: %s",
                        invocation.invocation_id,
                        error,
                    )
                else:
                    logger.error("run %s failed", invocation.invocation_id, exc_info=error)
            raise

    async def _refused(self, invocation: Invocation, language: str, refusal: str) -> RunResult:
        """Record and report a run that never started as REJECTED (Qube fails silently here)."""
        result = RunResult(invocation.invocation_id, Outcome.REJECTED, failure=Failure(refusal))
        await self._finished(invocation, language, result)
        return result

    def _rechecked(self, run: _Run) -> str | None:
        """Apply the run's ``recheck`` (it has its slot); why it may not start now (None: it may)."""
        if run.recheck is None:
            return None
        run.invocation = invocation = run.recheck(run.invocation)
        interpreted = run.language in _INTERPRETED
        return (
            invocation.refusal
            or (None if interpreted else self._unenforceable(invocation.limits))
            or language_refusal(run.language, self._languages, self._policy(invocation))
        )

    def _policy(self, invocation: Invocation) -> Policy | None:
        return self._policies.get(invocation.policy) if self._policies is not None else None

    def _admit(
        self,
        invocation: Invocation,
        language: Language,
        *,
        fired: bool,
        request_bytes: int,
        gate: Callable[[], None] | None,
        recheck: Callable[[Invocation], Invocation] | None,
        queued_at: float | None,
    ) -> tuple[_Run, asyncio.Task[RunResult]]:
        """Take a place for the run (CapacityError) and start the task that owns it."""
        if (same := self._runs.get(invocation.invocation_id)) is not None:
            if same.fired and not fired:  # the engine made the id: never an Execute's
                raise AlreadyExistsError(firings_id(invocation.invocation_id))
            raise UnavailableError(in_progress(invocation.invocation_id))
        ticket = self._slots.ticket(user=invocation.actor, fired=fired, request_bytes=request_bytes)
        run = _Run(
            invocation,
            language,
            RunStop(),
            fired=fired,
            gate=gate,
            recheck=recheck,
            queued_at=queued_at,
        )
        task = run.task = asyncio.create_task(
            self._run(run, ticket), name=f"run {invocation.invocation_id}"
        )
        self._runs[invocation.invocation_id] = run
        return run, task

    async def _run(self, run: _Run, ticket: asyncio.Future[int | None]) -> RunResult:
        """The owned task of one run: wait for a slot, run, release it, record the result."""
        invocation_id = run.invocation.invocation_id
        try:
            queued_at = time.monotonic() if run.queued_at is None else run.queued_at
            with run.stop.calling(lambda: self._slots.withdraw(ticket)):
                slot = await self._slots.take(ticket)
            run.has_slot = slot is not None
            queue_s = time.monotonic() - queued_at
            if slot is not None and run.stop.requested:
                # Handed a slot, then stopped before this task woke to take it (the
                # stop's withdrawal came too late): the slot goes on to the next run.
                self._slots.release(slot)
                slot = None
            if slot is not None and (full := self._refusal()):
                # Checked at the door only, the outbox's bound let every queued run start
                # (probe 136: 3.2 MiB past a 1 MiB bound): nothing of it starts.
                self._slots.release(slot)
                raise UnavailableError(full)
            if slot is not None and (refusal := self._rechecked(run)) is not None:
                self._slots.release(slot)
                result = RunResult(invocation_id, Outcome.REJECTED, failure=Failure(refusal))
            elif slot is None:  # stopped before it started
                if run.fired and self._draining:
                    # Never started: the firing stays in the engine's durable queue and
                    # runs at the next start, instead of ending as a run that never was.
                    raise ShuttingDownError(SHUTTING_DOWN)
                self._refuse_unstarted(run)
                result = self._stopped(run.invocation, run.stop, ())
            else:
                finishing: Awaitable[None] | None = None
                try:
                    result, finishing = await self._run_in_slot(run, slot)
                finally:
                    if finishing is None and not self._behind():
                        self._slots.release(slot)
                    else:
                        self._hold_slot(slot, finishing)
                if not run.fired:  # a fired one stopped so is recorded, and kept (below)
                    self._refuse_unstarted(run)
            result = replace(result, usage=replace(result.usage, queue_seconds=queue_s))
            run.open_gate()  # opened already, unless the run never started
            await self._finished(run.invocation, run.language, result)
        finally:
            del self._runs[invocation_id]
            # An error this task ends with holds this frame, and so ``run`` (its request):
            # with ``run`` holding the task, the three made a cycle only the cyclic
            # collector freed (probe 183: 15 MiB per cancelled queued Execute, kept).
            run.task = None
        if run.fired and result.outcome is Outcome.KILLED and run.stop.reason == SHUTTING_DOWN:
            # Recorded as it ended, but not done: the firing stays in the engine's durable
            # queue and runs again at the next start, under its invocation id, as after a
            # crash (the actions it applied are not applied twice). Done, a routine restart
            # would leave a dependency it was to unblock blocked for good.
            raise ShuttingDownError(SHUTTING_DOWN)
        return result

    @staticmethod
    def _refuse_unstarted(run: _Run) -> None:
        """UnavailableError for an Execute whose callback a stop kept from starting.

        It waited for a slot, or its child had not been given its start: not a run, so
        neither recorded nor reported. Stopped by the executor's stop, its caller, told
        UNAVAILABLE, sends it again (a fleet's client to another executor) under the same
        invocation id, which then runs as a first attempt does (answered KILLED, a
        rolling restart lost it). Stopped by its caller's deadline or cancel, the caller
        has its DEADLINE_EXCEEDED or CANCELLED, and the history and the supervisor no
        KILLED run that never ran (probe 129).
        """
        if run.fired or run.stop.started:
            return
        if run.stop.reason == SHUTTING_DOWN:
            raise ShuttingDownError(NOT_STARTED)
        if run.stop.reason in (CALLER_DEADLINE, CALLER_CANCELLED):
            raise UnavailableError(f"{run.stop.reason} before the callback started: no run")

    def _hold_slot(self, slot: int, finishing: Awaitable[None] | None) -> None:
        """Keep ``slot`` taken until the run's child has been ended (answered at its end mark).

        And then while the bookkeeping is behind (``behind``), unless the executor stops.
        """
        task = asyncio.ensure_future(self._until_slot_free(finishing))
        self._finishing.add(task)

        def release(_: object) -> None:
            self._finishing.discard(task)
            self._slots.release(slot)

        task.add_done_callback(release)

    async def _until_slot_free(self, finishing: Awaitable[None] | None) -> None:
        if finishing is not None:
            await finishing
        if self._draining or not (behind := self._behind()):
            return
        self._kept_for_bookkeeping += 1
        if self._kept_for_bookkeeping == 1:
            logger.warning("%s: ended runs keep their slots until it catches up", behind)
        try:
            # Looked at, not waited on: the writer is another thread, and a slot kept this
            # way is the rare case, while its end is on every run's path.
            while not self._draining and self._behind():  # noqa: ASYNC110
                await asyncio.sleep(BEHIND_POLL_S)
        finally:
            self._kept_for_bookkeeping -= 1
            if not self._kept_for_bookkeeping and not self._draining:
                logger.info("the runs' bookkeeping caught up: slots are free again")

    async def _run_in_slot(self, run: _Run, slot: int) -> tuple[RunResult, Awaitable[None] | None]:
        """The run's result, and what must finish before its slot is free again (or None)."""
        invocation = run.invocation
        policy = self._policy(invocation)
        host = HostApi(self._supervisor, invocation, policy)
        if run.language in _INTERPRETED:
            run.open_gate()
            run.stop.start()  # not stopped yet (``_run`` checked), and nothing awaited since
            began = time.monotonic()
            try:
                async with stoppable(run.stop):
                    return await self._qube.run(invocation, host), None
            except RunStopped:
                wall_s = time.monotonic() - began  # what it ran before the stop
                return self._stopped(invocation, run.stop, tuple(host.actions), wall_s), None
            except Exception:  # an executor bug: still a run, answered, recorded, reported
                logger.exception("qube run %s failed inside the executor", invocation.invocation_id)
                return self._failed_inside(invocation, host), None
        try:
            return await self._run_child(run, slot, host, policy)
        except (CapacityError, UnavailableError):
            raise  # not started: the engine's queue tries a fired run again
        except Exception:
            if not run.fired:
                raise  # its caller is answered INTERNAL
            logger.exception("fired run %s failed inside the executor", invocation.invocation_id)
            return self._failed_inside(invocation, host), None

    @staticmethod
    def _failed_inside(invocation: Invocation, host: HostApi) -> RunResult:
        """A run an executor bug ended: FAILED, with what its host applied before."""
        return RunResult(
            invocation.invocation_id,
            Outcome.FAILED,
            failure=Failure(INTERNAL_FAILURE),
            actions=tuple(host.actions),
        )

    async def _run_child(
        self, run: _Run, slot: int, host: HostApi, policy: Policy | None
    ) -> tuple[RunResult, Awaitable[None] | None]:
        """A Python or Perl callback's run in a sandboxed child, in ``slot`` (as ``_run_in_slot``)."""
        invocation = run.invocation
        child = await self._runner.run(
            runtime=child_runtime(run.language),
            limits=invocation.limits,
            slot=slot,
            start={
                "type": "start",
                "language": run.language.value,
                "code": invocation.callback.code,
                "context": invocation.child_context(),
            },
            on_call=host.serve_frame,
            stop=run.stop,
            policy=policy,
            gate=None if run.gate is None else run.open_gate,
        )
        if child.escaped_pids:
            logger.info(
                "callback %s left %d processes running; they were killed",
                invocation.invocation_id,
                len(child.escaped_pids),
            )
        if child.bridge_error:
            logger.warning(
                "callback %s broke the bridge protocol: %s",
                invocation.invocation_id,
                child.bridge_error,
            )
        return RunResult(
            invocation_id=invocation.invocation_id,
            outcome=child.outcome,
            exit_code=child.exit_code,
            signal=child.signal,
            stdout=child.stdout,
            stderr=child.stderr,
            stdout_truncated=child.stdout_truncated,
            stderr_truncated=child.stderr_truncated,
            failure=child.failure,
            usage=child.usage,
            actions=tuple(host.actions),
        ), child.finishing

    @staticmethod
    def _stopped(
        invocation: Invocation,
        stop: RunStop,
        actions: tuple[ActionRecord, ...],
        wall_s: float = 0.0,
    ) -> RunResult:
        return RunResult(
            invocation.invocation_id,
            Outcome.KILLED,
            failure=Failure(stop.reason),
            usage=Usage(wall_seconds=wall_s),
            actions=actions,
        )

    async def _finished(self, invocation: Invocation, language: str, result: RunResult) -> None:
        """Log the run's one line and hand it to ``on_result`` (recording, reporting)."""
        fields = run_log_fields(invocation, language, result)
        logger.info(
            "callback ran: job=%s callback=%s language=%s source=%s outcome=%s wall=%.3fs "
            "cpu=%.3fs rss=%dKiB queue=%.3fs actions=%d%s",
            invocation.job_id,
            escaped(invocation.callback.name),  # a universal file's name: the admin's text
            language,
            escaped(invocation.source),
            result.outcome,
            result.usage.wall_seconds,
            result.usage.cpu_seconds,
            result.usage.peak_rss_bytes // 1024,
            result.usage.queue_seconds,
            len(result.actions),
            f" failure={json.dumps(fields['failure'])}" if fields["failure"] else "",
            extra=fields,
        )
        if self._on_result is not None:
            recorded = self._on_result(invocation, result)
            if recorded is not None:
                await recorded

    def progress(self, invocation_id: str) -> RunProgress | None:
        """How a run of the id is in progress here; None: none is.

        Its record is made when it ends: until then GetRun and ListRuns say so (RunServicer).
        """
        run = self._runs.get(invocation_id)
        if run is None:
            return None
        return RunProgress("running" if run.has_slot else "waiting for a slot", run.admitted_at)

    def stop_admitting(self) -> None:
        """Refuse new runs from now on (UnavailableError), the first step of a stop."""
        self._draining = True

    async def drain(self) -> None:
        """Refuse new runs, stop every run, wait until all have ended.

        A run whose callback has started ends KILLED, recorded and answered; an Execute
        whose callback has not is answered UnavailableError (NOT_STARTED), unrecorded; a
        fired one stays in the engine's queue.
        """
        self.stop_admitting()
        self._runner.stop_preparing()  # a run it stops leaves its cell no child ready
        runs = list(self._runs.values())
        # Counted before the stop: one its caller stopped already ends as that caller's.
        stopping = [run for run in runs if not run.stop.requested]
        # The fired ones not started are the trigger engine's to count: most of its queue
        # never reached a slot (``FiringWorker.close`` says how many stay queued).
        started = sum(run.stop.started for run in stopping)
        unstarted_executes = sum(not run.fired and not run.stop.started for run in stopping)
        logger.info(
            "stopping: killing %s (KILLED, recorded); %s not started answered UNAVAILABLE "
            "(not recorded: to be sent again)",
            counted(started, "callback in progress", "callbacks in progress"),
            counted(unstarted_executes, "Execute call"),
        )
        for run in runs:
            run.stop.request(SHUTTING_DOWN)
        tasks = [run.task for run in runs if run.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        if self._finishing:
            await asyncio.wait(list(self._finishing))
        await self._runner.close()  # the children prepared for runs that will not come
