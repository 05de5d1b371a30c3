"""Send the reference supervisor's transitions to an executor's trigger engine, in order.

A submitted job is registered (RegisterJob, with its callbacks) before its ``submit``
event is published; every later transition is one PublishEvent. ``register_now`` lets a
submission register its jobs at once, ahead of the queue, so the trigger engine has them
when the submission is answered (the queue may be waiting on an earlier event's
callbacks); the ``submit`` event then uses that registration. Each transition gets
its event id when it happens, so a retry after UNAVAILABLE (an executor restarting) is
idempotent. Events are published with ``wait`` so that ``drain()`` returning means the
callbacks they fired have run, and the transitions those callbacks caused have been
forwarded too.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

import grpc

from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc
from supervisor_client.reference.errors import NoSuchJobError
from supervisor_client.reference.states import PUBLISHED_EVENTS, Transition
from supervisor_client.reference.store import ReferenceSupervisor

logger = logging.getLogger(__name__)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True, slots=True)
class _Queued:
    transition: Transition
    event_id: str


class EventForwarder:
    """Listens to a ReferenceSupervisor and forwards to an executor's TriggerService."""

    def __init__(
        self,
        supervisor: ReferenceSupervisor,
        channel: grpc.aio.Channel,
        *,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._supervisor = supervisor
        self._stub = executor_pb2_grpc.TriggerServiceStub(channel)
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue()
        # Registrations made ahead of the queue, until each job's submit event takes its own.
        self._ahead: dict[int, asyncio.Future[bool | None]] = {}
        self._max_backoff_s = max_backoff_s
        supervisor.add_listener(self._on_transition)

    def _on_transition(self, transition: Transition) -> None:
        item = _Queued(transition, uuid.uuid4().hex)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._queue.put_nowait(item)  # same thread: visible to drain() at once
        else:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def drain(self) -> None:
        """Wait until every transition so far (and those they caused) has been forwarded."""
        await self._queue.join()

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
            except grpc.aio.AioRpcError:
                registered = None  # the queue's turn registers it
            if not outcome.done():
                outcome.set_result(registered)

    async def _register(self, job_id: int) -> bool:
        """RegisterJob with the job as it is now; False when it has been removed."""
        try:
            job = self._supervisor.job(job_id, include_callbacks=True)
        except NoSuchJobError:
            return False
        await self._stub.RegisterJob(
            executor_pb2.RegisterJobRequest(
                job=job_from_dict(job), published_events=sorted(PUBLISHED_EVENTS)
            )
        )
        return True

    async def _registered(self, job_id: int) -> bool:
        """The job's registration made ahead of the queue, else the queue's own."""
        ahead = self._ahead.pop(job_id, None)
        if ahead is not None:
            registered = await asyncio.shield(ahead)
            if registered is not None:
                return registered
        return await self._register(job_id)

    async def run(self) -> None:
        """Forward forever, one transition at a time."""
        while True:
            item = await self._queue.get()
            try:
                await self._forward_with_retry(item)
            except Exception:
                logger.exception("could not forward %s", item.transition)
            finally:
                self._queue.task_done()

    async def _forward_with_retry(self, item: _Queued) -> None:
        backoff = 0.05
        while True:
            try:
                await self._forward(item)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE:
                    logger.error("executor refused %s: %s", item.transition, err.details())
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
            else:
                return

    async def _forward(self, item: _Queued) -> None:
        t = item.transition
        if t.name == "submit" and t.type == "job" and not await self._registered(t.job_id):
            return  # removed before we got to it
        request = executor_pb2.PublishEventRequest(
            name=t.name,
            type=t.type,
            job_id=t.job_id,
            work_name=t.work_name,
            host=t.host,
            event_id=item.event_id,
            wait=True,
        )
        if t.type == "subjob":
            request.subjob_id = t.subjob_id
        await self._stub.PublishEvent(request)
