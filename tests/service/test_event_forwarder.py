"""EventForwarder against a recording TriggerService: events leave the database only once acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from supervisor_client.reference import ReferenceSupervisor
from supervisor_client.reference.forwarder import READ_BATCH, EventForwarder

pytestmark = pytest.mark.service


class RecordingTriggers:
    """A TriggerService with only RegisterJob, PublishEvent and PublishEvents: records calls.

    Holds a call with a ``complete`` event until ``held`` is set, and refuses (as the
    engine refuses a batch: whole) a call with an event of the work item ``refused``.
    """

    def __init__(self) -> None:
        self.calls: list[list[executor_pb2.PublishEventRequest]] = []
        self.registered: list[int] = []
        self.held = asyncio.Event()
        self.reached = asyncio.Event()
        # Calls to answer UNAVAILABLE (an executor restarting) before taking any.
        self.unavailable = 0

    @property
    def requests(self) -> list[executor_pb2.PublishEventRequest]:
        return [request for call in self.calls for request in call]

    @property
    def published(self) -> list[tuple[str, str, str]]:
        """(name, type, event_id) of every event sent, in order."""
        return [(r.name, r.type, r.event_id) for r in self.requests]

    async def register_job(
        self, request: executor_pb2.RegisterJobRequest, context: Any
    ) -> executor_pb2.RegisterJobResponse:
        self.registered.append(request.job.id)
        return executor_pb2.RegisterJobResponse()

    async def _record(
        self,
        requests: list[executor_pb2.PublishEventRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        if self.unavailable:
            self.unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        if any(r.work_name == "refused" for r in requests):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "work_name: refused")
        self.calls.append(requests)
        if any(r.name == "complete" for r in requests):
            self.reached.set()
            await self.held.wait()

    async def publish_event(
        self,
        request: executor_pb2.PublishEventRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> executor_pb2.PublishEventResponse:
        await self._record([request], context)
        return executor_pb2.PublishEventResponse()

    async def publish_events(
        self,
        request: executor_pb2.PublishEventsRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> executor_pb2.PublishEventsResponse:
        await self._record(list(request.events), context)
        return executor_pb2.PublishEventsResponse(
            results=[executor_pb2.PublishEventResponse() for _ in request.events]
        )

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "qbcallback.v1.TriggerService",
            {
                "RegisterJob": grpc.unary_unary_rpc_method_handler(
                    self.register_job,
                    request_deserializer=executor_pb2.RegisterJobRequest.FromString,
                    response_serializer=executor_pb2.RegisterJobResponse.SerializeToString,
                ),
                "PublishEvent": grpc.unary_unary_rpc_method_handler(
                    self.publish_event,
                    request_deserializer=executor_pb2.PublishEventRequest.FromString,
                    response_serializer=executor_pb2.PublishEventResponse.SerializeToString,
                ),
                "PublishEvents": grpc.unary_unary_rpc_method_handler(
                    self.publish_events,
                    request_deserializer=executor_pb2.PublishEventsRequest.FromString,
                    response_serializer=executor_pb2.PublishEventsResponse.SerializeToString,
                ),
            },
        )


@contextlib.asynccontextmanager
async def triggers_on_loopback(
    max_request_bytes: int | None = None,
) -> AsyncIterator[tuple[RecordingTriggers, grpc.aio.Channel]]:
    """``max_request_bytes``: the server's receive limit (gRPC's 4 MiB when None)."""
    servicer = RecordingTriggers()
    options = (
        []
        if max_request_bytes is None
        else [("grpc.max_receive_message_length", max_request_bytes)]
    )
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((servicer.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, channel
    finally:
        await channel.close()
        await server.stop(0)


@contextlib.asynccontextmanager
async def forwarding(forwarder: EventForwarder) -> AsyncIterator[None]:
    task = asyncio.create_task(forwarder.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_an_event_not_acknowledged_before_a_stop_is_sent_again_with_its_id(
    tmp_path: Path,
) -> None:
    path = tmp_path / "supervisor.db"
    async with triggers_on_loopback() as (triggers, channel):
        with ReferenceSupervisor(path, event_outbox=True) as sup:
            # Changes made before any forwarder exists are kept, and sent once one runs.
            (job,) = sup.submit([{"name": "a", "user": "alice"}])
            sup.start_job(job["id"])
            sup.complete_job(job["id"])
            stored = [
                (e.transition.name, e.transition.type, e.event_id) for e in sup.unsent_events()
            ]
            forwarder = EventForwarder(sup, channel)
            async with forwarding(forwarder):
                await asyncio.wait_for(triggers.reached.wait(), 10)
            # Stopped while the executor held the call with the complete event: it stays,
            # with the events sent beside it.
            left = [e.event_id for e in sup.unsent_events()]
            held = [r.event_id for r in triggers.calls[-1]]
            assert left[: len(held)] == held
        before = len(triggers.published)
        assert triggers.published == stored[:before]

        triggers.held.set()
        with ReferenceSupervisor(path, event_outbox=True) as reopened:
            forwarder = EventForwarder(reopened, channel)
            async with forwarding(forwarder):
                await asyncio.wait_for(forwarder.drain(), 10)
            assert not reopened.has_unsent_events()

    # What was left, in order, the held events again under their ids: duplicates to the engine.
    assert [event_id for _, _, event_id in triggers.published[before:]] == left
    assert triggers.published[before:] == stored[before - len(held) :]


async def test_a_frames_event_names_the_instance_that_took_it(tmp_path: Path) -> None:
    async with triggers_on_loopback() as (triggers, channel):
        triggers.held.set()
        with ReferenceSupervisor(tmp_path / "supervisor.db", event_outbox=True) as sup:
            (job,) = sup.submit([{"name": "a", "user": "alice", "agenda": ["1", "2"], "cpus": 2}])
            sup.start_work(job["id"], "1", host="node3", subid=1)
            sup.complete_work(job["id"], "1")
            sup.work_action("block", job["id"], ["2"], "alice")  # never ran: no instance
            forwarder = EventForwarder(sup, channel)
            async with forwarding(forwarder):
                await asyncio.wait_for(forwarder.drain(), 10)

    def instance(request: executor_pb2.PublishEventRequest) -> int | None:
        return request.subjob_id if request.HasField("subjob_id") else None

    sent = [(r.name, r.type, r.work_name, instance(r), r.host) for r in triggers.requests]
    # Qube's work item subid: qb.subid() and *-subjob-self in a frame's callbacks.
    assert ("running", "work", "1", 1, "node3") in sent
    assert ("complete", "work", "1", 1, "node3") in sent
    assert ("blocked", "work", "2", None, "") in sent
    assert all(instance(r) is None for r in triggers.requests if r.type == "job")


async def test_a_workers_many_frames_go_in_few_calls_in_order_and_none_waits(
    tmp_path: Path,
) -> None:
    # One event per call, each waiting for what it fired, held every other job's events
    # behind a 20,000-frame ChangeWork for half a minute.
    frames = [str(n) for n in range(1, 1201)]
    async with triggers_on_loopback() as (triggers, channel):
        triggers.held.set()
        with ReferenceSupervisor(tmp_path / "supervisor.db", event_outbox=True) as sup:
            (job,) = sup.submit([{"name": "a", "user": "alice", "agenda": frames}])
            with sup.together():
                for name in frames:
                    sup.start_work(job["id"], name, host="node1")
                    sup.complete_work(job["id"], name)
            stored = [e.event_id for e in sup.unsent_events(limit=10_000)]
            forwarder = EventForwarder(sup, channel)
            async with forwarding(forwarder):
                await asyncio.wait_for(forwarder.drain(), 30)

    assert [r.event_id for r in triggers.requests] == stored
    # The submit alone (its job registered first), then the rest in calls of READ_BATCH.
    assert len(triggers.calls) <= 2 + len(stored) // READ_BATCH
    assert max(len(call) for call in triggers.calls) <= READ_BATCH
    assert not any(r.wait for r in triggers.requests)


async def test_an_event_refused_in_a_batch_is_dropped_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with triggers_on_loopback() as (triggers, channel):
        triggers.held.set()
        with ReferenceSupervisor(tmp_path / "supervisor.db", event_outbox=True) as sup:
            (job,) = sup.submit([{"name": "a", "user": "alice", "agenda": ["1", "refused", "3"]}])
            for name in ("1", "refused", "3"):
                sup.start_work(job["id"], name)
            stored = [(e.transition.work_name, e.event_id) for e in sup.unsent_events()]
            forwarder = EventForwarder(sup, channel)
            async with forwarding(forwarder):
                await asyncio.wait_for(forwarder.drain(), 10)
            assert not sup.has_unsent_events()

    # Every other event arrived, in order; the refused one was logged and let go.
    assert [r.event_id for r in triggers.requests] == [
        event_id for work, event_id in stored if work != "refused"
    ]
    assert "executor refused" in caplog.text and "work_name: refused" in caplog.text


async def test_a_request_over_the_executors_receive_limit_is_set_aside_and_the_rest_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its RESOURCE_EXHAUSTED was retried every 5 s for ever, silently, and every later
    # event of every job waited behind it, across restarts.
    async with triggers_on_loopback(max_request_bytes=64 << 10) as (triggers, channel):
        triggers.held.set()
        with ReferenceSupervisor(tmp_path / "supervisor.db", event_outbox=True) as sup:
            big, small = sup.submit(
                [
                    {
                        "name": "big",
                        "user": "alice",
                        "agenda": [f"{n:04d}" + "x" * 200 for n in range(1000)],
                    },
                    {"name": "small", "user": "alice", "agenda": ["1"]},
                ]
            )
            sup.start_work(small["id"], "1")
            stored = [(e.transition.job_id, e.event_id) for e in sup.unsent_events()]
            forwarder = EventForwarder(sup, channel)
            async with forwarding(forwarder):
                await asyncio.wait_for(forwarder.drain(), 10)

    # The big job's submit event, which registers it, was let go; every other event came.
    assert triggers.registered == [small["id"]]
    assert [r.event_id for r in triggers.requests] == [
        event_id for job_id, event_id in stored if job_id != big["id"]
    ]
    assert len(triggers.requests) > 1
    (refusal,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert f"job_id={big['id']}" in refusal.getMessage()
    assert "set aside" in refusal.getMessage()
    assert "RESOURCE_EXHAUSTED" in refusal.getMessage()


async def test_a_retried_event_is_logged_at_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with triggers_on_loopback() as (triggers, channel):
        triggers.held.set()
        triggers.unavailable = 3
        with ReferenceSupervisor(tmp_path / "supervisor.db", event_outbox=True) as sup:
            sup.submit([{"name": "a", "user": "alice"}])
            forwarder = EventForwarder(sup, channel)
            async with forwarding(forwarder):
                await asyncio.wait_for(forwarder.drain(), 10)

    assert [r.name for r in triggers.requests] == ["submit"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # The 1st, 2nd and 4th retry are logged (then the 8th, ...): a stall shows, not a flood.
    assert [w.split("; retry ")[1].split(",")[0] for w in warnings] == ["1", "2"], warnings
    assert all("UNAVAILABLE: restarting" in w and "every later event waits" in w for w in warnings)
