"""Send the reference supervisor's transitions to an executor's trigger engine, each job's in order.

The events come from the supervisor's database, not from memory: each transition's
event is written there in the transaction of its change, with its event id
(event_outbox.py), and removed only once the executor has acknowledged it. So an
executor stopped or killed right after a change gets the event when it starts again:
the forwarder sends what is left, and an event sent before the stop but not yet removed
is sent again with the same id, which the trigger engine ignores as a duplicate. A retry
after UNAVAILABLE (an executor restarting) is idempotent the same way.

The order kept is each job's: its events go oldest first, a later one only once the
earlier ones are acknowledged, because the trigger engine's decisions for a job follow
from its events in that order: its submit registers it, and its callbacks' latches and
counts and the job's known states follow each transition after. Across jobs the order is
not kept: the forwarder reads job by job, round-robin over the jobs with events waiting
(up to ``READ_BATCH`` in all, EventOutbox.in_turn), so one verb's 100,000 events on a job
fill one batch at a time and the next batch begins with the other jobs' (probe 68:
strictly oldest first, a callback's 20 s of qb.workblock on its own job held every other
job's callbacks back 50 s). A job's events thus wait behind at most one batch of each
other job with events waiting; when all that waits fits in one batch, it goes oldest
first, as kept. Nothing in the engine needs more: a callback's latches are set by events and
cleared only by its firing, each ``event_id`` is applied once whatever its turn, and a
job registered meanwhile judges another job's state (level mode) by the events the
engine has, as it does when a submission registers its jobs ahead of the queue.

A submitted job is registered (RegisterJob, with its callbacks) before its ``submit``
event is published; the transitions between are published together, as many as are
waiting (up to ``READ_BATCH``), in one PublishEvents: the trigger engine applies them in
order in one transaction, so a worker completing 20,000 frames in one ChangeWork costs
40 calls, not 20,000 one after another while every other job's events wait behind them.
``register_now`` lets a
submission register its jobs at once, ahead of the queue, so the trigger engine has them
when the submission is answered (the queue may be waiting on an earlier event's
callbacks); the ``submit`` event then uses that registration (registering a job again
keeps its callbacks' state, so the registration a resent ``submit`` makes is harmless).
A change Qube publishes no event for (a retry puts a complete job back to pending) has
the job registered again in its place in the queue (states.REGISTER_AGAIN), so the trigger
engine's known states follow the job: a dependency on it is not met by its old end.
Events are not published with ``wait``: an acknowledgement means the engine latched the
event and queued what it fired, durably, and a slow callback holds no other event back.
``drain()`` says every transition so far was acknowledged; whoever needs the callbacks run
too waits for the engine's firings as well (``EmbeddedSupervisor.settle``).

Its reads and removals of the database run on a thread, never on the loop: the
supervisor's verbs run on a thread of their own (service.py) and hold the store's lock
meanwhile (a second or two for a verb over 100,000 items), which the loop would wait for.

A job's events are forwarded in order, and one call at a time, so one the executor can
never take must not be retried for ever: it would hold every later event of every job
behind it. A refusal a
resend cannot change is logged at ERROR and the event set aside: any status but
UNAVAILABLE and RESOURCE_EXHAUSTED, and RESOURCE_EXHAUSTED too when gRPC says the message
is over the executor's receive limit. A RegisterJob the executor's limit
(``MAX_REQUEST_BYTES``) cannot carry is not sent at all (the farm's SubmitJobs refuses
such a job; one stored before it did, or grown since by result packages, is set aside
so). Retries are logged at WARNING, so a stalled event path shows in the log.

A refusal for the trigger store's room (RESOURCE_EXHAUSTED of one call: a registration
past ``triggers_max_bytes``) is not retried in place: later events would resolve it (a
job's ``removed`` frees its space), and they would wait behind it for ever (probe 136).
The job waits alone, with its later events (each job's order is all that is kept); the
other jobs' events go on, ``removed`` ones included, and it is tried again with the
backoff of any retry, and at once after a removal was forwarded. A WARNING says when it
begins to wait (not each try), ``waits_for_room`` says it for the health line, and
``drain`` does not wait for its events: its job is not registered, so none of them can
fire anything yet. The farm's SubmitJobs refuses a job the store has no room for; one
stored before it did, or past its check in a race, is what waits so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import grpc

from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc
from supervisor_client.reference.errors import NoSuchJobError
from supervisor_client.reference.event_outbox import UnsentEvent
from supervisor_client.reference.states import PUBLISHED_EVENTS, REGISTER_AGAIN
from supervisor_client.reference.store import ReferenceSupervisor

logger = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# How gRPC words a request over the receiver's limit (RESOURCE_EXHAUSTED): the same
# request is refused again, however long we wait.
_OVER_RECEIVE_LIMIT: Final = "larger than max"
# The executor's gRPC receive limit (executor/bounds.py MAX_REQUEST_BYTES; a test keeps
# the two equal): a request over it is refused whole, before the executor reads it.
MAX_REQUEST_BYTES: Final = 16 << 20
# Events read from the database at a time, and the most one PublishEvents carries (the
# engine takes up to 1,000).
READ_BATCH: Final = 500
# After the database failed a read or a removal: wait this long, then try again.
STORE_RETRY_S: Final = 1.0


class UndeliverableError(Exception):
    """A request the executor can never take, so it is not sent; the message says why."""


def registration_request(job: Mapping[str, Any]) -> executor_pb2.RegisterJobRequest:
    """The RegisterJob the forwarder sends for a job dict (with its callbacks).

    The farm's SubmitJobs checks a job with this very request before it stores it.
    """
    return executor_pb2.RegisterJobRequest(
        job=job_from_dict(dict(job)), published_events=sorted(PUBLISHED_EVENTS)
    )


def oversize_problem(request: executor_pb2.RegisterJobRequest) -> str | None:
    """Why the executor's receive limit refuses ``request``, or None when it fits."""
    size = request.ByteSize()
    if size <= MAX_REQUEST_BYTES:
        return None
    return (
        f"registering it with the trigger engine takes a RegisterJob request of {size} bytes;"
        f" the executor takes at most {MAX_REQUEST_BYTES} bytes (16 MiB): split it into"
        " smaller jobs"
    )


class EventForwarder:
    """Forwards a ReferenceSupervisor's kept events to an executor's TriggerService.

    Raises ValueError when the supervisor does not keep its events
    (``ReferenceSupervisor(event_outbox=True)``).
    """

    def __init__(
        self,
        supervisor: ReferenceSupervisor,
        channel: grpc.aio.Channel,
        *,
        max_backoff_s: float = 5.0,
    ) -> None:
        if not supervisor.keeps_events:
            raise ValueError(
                "EventForwarder needs a ReferenceSupervisor(..., event_outbox=True): "
                "it sends the events the supervisor keeps"
            )
        self._supervisor = supervisor
        self._stub = executor_pb2_grpc.TriggerServiceStub(channel)
        self._loop = asyncio.get_running_loop()
        # Set when a transition was committed: there may be new rows to send.
        self._new = asyncio.Event()
        # Notified whenever a row is removed: ``drain`` looks again.
        self._removed = asyncio.Condition()
        # Registrations made ahead of the queue, until each job's submit event takes its own.
        self._ahead: dict[int, asyncio.Future[bool | None]] = {}
        self._max_backoff_s = max_backoff_s
        # The job the last read ended at: the next begins after it (round-robin).
        self._last_job = 0
        # Jobs whose registration the trigger store has no room for, each with its events.
        self._held: dict[int, _Held] = {}
        supervisor.add_outbox_listener(self._on_kept)

    def _on_kept(self) -> None:
        """Wake the sender; what to send is already in the database (any thread)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._new.set()
        else:
            self._loop.call_soon_threadsafe(self._new.set)

    async def drain(self) -> None:
        """Wait until every transition so far (and those they caused) has been forwarded.

        The database says what waits, so a change committed just before the call (on any
        thread) counts. The events of a job that waits for the trigger store's room are
        not waited for (``waits_for_room``): nothing of theirs can fire before it has room.
        """
        async with self._removed:
            while await asyncio.to_thread(self._supervisor.has_unsent_events, tuple(self._held)):
                await self._removed.wait()

    def has_unsent_events(self) -> bool:
        """Whether an event waits to be forwarded, but for those waiting for room (on the loop)."""
        return self._supervisor.has_unsent_events(tuple(self._held))

    def waits_for_room(self) -> str:
        """Which jobs' events wait for the trigger store's room, and why; "" when none do (on the loop)."""
        if not self._held:
            return ""
        jobs = sorted(self._held)
        first = self._held[jobs[0]]
        named = ", ".join(map(str, jobs[:10])) + (", ..." if len(jobs) > 10 else "")
        return (
            f"the events of {len(jobs)} {'job' if len(jobs) == 1 else 'jobs'} ({named}) wait in"
            " the forwarder for the trigger store's room, the other jobs' go on: job"
            f" {jobs[0]}: {first.refusal}"
        )

    def register_now(self, job_ids: list[int]) -> asyncio.Task[None]:
        """Register just-submitted jobs now, in order, ahead of the queue.

        Call it before awaiting anything after the submission, so each job is claimed
        before the queue reaches its submit event. A refusal or an unreachable executor
        is left to the queue, which registers the job again with its submit event.
        """
        claimed: list[tuple[int, asyncio.Future[bool | None]]] = []
        for job_id in job_ids:
            if job_id not in self._ahead:
                self._ahead[job_id] = self._loop.create_future()
                claimed.append((job_id, self._ahead[job_id]))
        return asyncio.ensure_future(self._register_all(claimed))

    async def _register_all(self, claimed: list[tuple[int, asyncio.Future[bool | None]]]) -> None:
        for job_id, outcome in claimed:
            try:
                registered: bool | None = await self._register(job_id)
            except (grpc.aio.AioRpcError, UndeliverableError):
                registered = None  # the queue's turn registers it, or logs why it cannot
            if not outcome.done():
                outcome.set_result(registered)

    async def _register(self, job_id: int) -> bool:
        """RegisterJob with the job as it is now; False when it has been removed.

        UndeliverableError when the request is over the executor's receive limit.
        """
        # Read and built off the loop: a job of 100,000 items takes over half a second.
        request = await asyncio.to_thread(self._registration, job_id)
        if request is None:
            return False
        await self._stub.RegisterJob(request)
        return True

    def _registration(self, job_id: int) -> executor_pb2.RegisterJobRequest | None:
        """The RegisterJob of the job as it is now; None when it has been removed."""
        try:
            job = self._supervisor.job(job_id, include_callbacks=True)
        except NoSuchJobError:
            return None
        request = registration_request(job)
        problem = oversize_problem(request)
        if problem is not None:
            raise UndeliverableError(f"job {job_id}: {problem}")
        return request

    async def _registered(self, job_id: int) -> bool:
        """The job's registration made ahead of the queue, else the queue's own."""
        ahead = self._ahead.pop(job_id, None)
        if ahead is not None:
            registered = await asyncio.shield(ahead)
            if registered is not None:
                return registered
        return await self._register(job_id)

    async def run(self) -> None:
        """Forward forever, job by job, each job's events oldest first; those left from before first.

        An event is removed once the executor acknowledged it, or refused it for a reason
        a resend would not change (logged); a cancellation leaves it for the next start.
        """
        while True:
            self._new.clear()  # before reading: a commit after the read sets it again
            now = self._loop.time()
            not_yet = [job_id for job_id, held in self._held.items() if held.due > now]
            try:
                turn = await asyncio.to_thread(
                    self._supervisor.unsent_events_in_turn, self._last_job, READ_BATCH, not_yet
                )
            except Exception:
                logger.exception("cannot read the events to forward; trying again")
                await asyncio.sleep(STORE_RETRY_S)
                continue
            if not turn.events:
                await self._wait_new(not_yet)
                continue
            self._last_job = turn.last_job
            waiting: set[int] = set()  # jobs that began to wait for room in this turn
            for read in _as_calls(turn.events):
                group = [e for e in read if e.transition.job_id not in waiting]
                if not group:
                    continue
                try:
                    await self._with_retry(group)
                except _NoRoomError as err:
                    waiting.add(group[0].transition.job_id)
                    await self._hold(group[0], err.refusal)
                    continue
                except Exception:
                    logger.exception(
                        "could not forward %s", ", ".join(str(e.transition) for e in group)
                    )
                self._release(group)
                await self._remove(group)

    async def _wait_new(self, not_yet: list[int]) -> None:
        """Until a transition is committed, or the first job waiting for room is due again."""
        if not not_yet:
            await self._new.wait()
            return
        due = min(self._held[job_id].due for job_id in not_yet)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, due - self._loop.time())):
                await self._new.wait()

    async def _hold(self, event: UnsentEvent, refusal: str) -> None:
        """The job's registration found no room: its events wait, the other jobs' go on.

        A WARNING when it begins to wait, not at each try: it is tried again with the
        backoff of any retry, and at once when a job's removal was acknowledged.
        """
        job_id = event.transition.job_id
        held = self._held.get(job_id)
        if held is None:
            held = self._held[job_id] = _Held(refusal)
            logger.warning(
                "%s waits for the trigger store's room (RESOURCE_EXHAUSTED: %s); the job's"
                " later events wait with it, the other jobs' go on; tried again every %gs at"
                " most, and once a job's removal is forwarded",
                event.transition,
                refusal,
                self._max_backoff_s,
            )
            async with self._removed:
                self._removed.notify_all()  # ``drain`` no longer waits for its events
        held.refusal = refusal
        held.due = self._loop.time() + min(0.05 * 2 ** min(held.tries, 16), self._max_backoff_s)
        held.tries += 1

    def _release(self, group: list[UnsentEvent]) -> None:
        """After ``group`` was forwarded: a job that waited for room goes on; a removal makes room."""
        for event in group:
            if self._held.pop(event.transition.job_id, None) is not None:
                logger.info("%s no longer waits for room; its job's events go on", event.transition)
        if any(e.transition.name == "removed" for e in group):
            for held in self._held.values():
                held.due = 0.0  # its space may be what the next one waits for

    async def _remove(self, events: list[UnsentEvent]) -> None:
        while True:
            try:
                await asyncio.to_thread(
                    self._supervisor.remove_events, [event.seq for event in events]
                )
            except Exception:
                # Not removed, they would be sent again: wait for the database instead.
                logger.exception("cannot remove %d forwarded events; trying again", len(events))
                await asyncio.sleep(STORE_RETRY_S)
            else:
                break
        async with self._removed:
            self._removed.notify_all()

    async def _with_retry(self, events: list[UnsentEvent]) -> None:
        """Send events until acknowledged, or refused for good (then each alone, logged)."""
        backoff = 0.05
        attempt = 0
        while True:
            try:
                await self._send(events)
            except UndeliverableError as err:
                logger.error(
                    "cannot forward %s, set aside: %s; the job's callbacks will not fire",
                    events[0].transition,
                    err,
                )
                return
            except grpc.aio.AioRpcError as err:
                if len(events) == 1 and _no_room(err):
                    raise _NoRoomError(err.details() or "") from err
                if not _retryable(err):
                    if len(events) > 1:
                        # A batch is applied whole or not at all: find the one refused.
                        for event in events:
                            await self._with_retry([event])
                        return
                    logger.error(
                        "executor refused %s, set aside: %s: %s",
                        events[0].transition,
                        err.code().name,
                        err.details(),
                    )
                    return
                attempt += 1
                if attempt & (attempt - 1) == 0:  # the 1st, 2nd, 4th, 8th, ... retry
                    logger.warning(
                        "could not forward %s (%s: %s); retry %d, every %gs at most; every"
                        " later event waits for it",
                        ", ".join(str(e.transition) for e in events),
                        err.code().name,
                        err.details(),
                        attempt,
                        self._max_backoff_s,
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
            else:
                return

    async def _send(self, events: list[UnsentEvent]) -> None:
        """One call for ``events`` (the fleet tests send each to the next replica)."""
        if len(events) > 1:
            await self._publish([_request(event) for event in events])
            return
        (event,) = events
        t = event.transition
        if t.name == REGISTER_AGAIN:
            await self._register(t.job_id)  # a job removed meanwhile has nothing to register
            return
        if _is_submission(event) and not await self._registered(t.job_id):
            return  # removed before we got to it
        await self._publish([_request(event)])

    async def _publish(self, requests: list[executor_pb2.PublishEventRequest]) -> None:
        """One PublishEvent, or one PublishEvents of several."""
        if len(requests) == 1:
            await self._stub.PublishEvent(requests[0])
        else:
            await self._stub.PublishEvents(executor_pb2.PublishEventsRequest(events=requests))


class _NoRoomError(Exception):
    """The trigger store has no room for an event's job now (RESOURCE_EXHAUSTED)."""

    def __init__(self, refusal: str) -> None:
        super().__init__(refusal)
        self.refusal = refusal


@dataclass(slots=True)
class _Held:
    """A job whose events wait for the trigger store's room: why, and when to try again."""

    refusal: str
    tries: int = 0
    due: float = 0.0


def _no_room(err: grpc.aio.AioRpcError) -> bool:
    """A refusal for the trigger store's room: RESOURCE_EXHAUSTED, a resend may pass.

    The executor refuses nothing else of ours so (events never; a registration past
    ``triggers_max_bytes``), and a removal of another job is what makes the room.
    """
    return err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and _retryable(err)


def _retryable(err: grpc.aio.AioRpcError) -> bool:
    """Whether the same call may succeed later: not when it is over the receive limit."""
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return _OVER_RECEIVE_LIMIT not in (err.details() or "")
    return err.code() in RETRYABLE


def _is_submission(event: UnsentEvent) -> bool:
    return event.transition.name == "submit" and event.transition.type == "job"


def _as_calls(events: list[UnsentEvent]) -> Iterator[list[UnsentEvent]]:
    """The events in order, in groups to send as one call.

    A registration again and a job's ``submit`` (which registers the job first) go
    alone; the events between them go together.
    """
    group: list[UnsentEvent] = []
    for event in events:
        if event.transition.name == REGISTER_AGAIN or _is_submission(event):
            if group:
                yield group
                group = []
            yield [event]
        else:
            group.append(event)
    if group:
        yield group


def _request(event: UnsentEvent) -> executor_pb2.PublishEventRequest:
    t = event.transition
    request = executor_pb2.PublishEventRequest(
        name=t.name,
        type=t.type,
        job_id=t.job_id,
        work_name=t.work_name,
        host=t.host,
        event_id=event.event_id,
    )
    if t.subjob_id >= 0:  # an instance's event, or a work item's (the instance that took it)
        request.subjob_id = t.subjob_id
    return request
