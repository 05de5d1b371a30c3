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
from supervisor_client.reference.forwarder import EventForwarder

pytestmark = pytest.mark.service


class RecordingTriggers:
    """A TriggerService with only RegisterJob and PublishEvent: records what it is sent.

    Holds the ``complete`` events until ``held`` is set.
    """

    def __init__(self) -> None:
        self.published: list[tuple[str, str, str]] = []  # (name, type, event_id)
        self.requests: list[executor_pb2.PublishEventRequest] = []
        self.held = asyncio.Event()
        self.reached = asyncio.Event()

    async def register_job(
        self, request: executor_pb2.RegisterJobRequest, context: Any
    ) -> executor_pb2.RegisterJobResponse:
        return executor_pb2.RegisterJobResponse()

    async def publish_event(
        self, request: executor_pb2.PublishEventRequest, context: Any
    ) -> executor_pb2.PublishEventResponse:
        self.published.append((request.name, request.type, request.event_id))
        self.requests.append(request)
        if request.name == "complete":
            self.reached.set()
            await self.held.wait()
        return executor_pb2.PublishEventResponse()

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
            },
        )


@contextlib.asynccontextmanager
async def triggers_on_loopback() -> AsyncIterator[tuple[RecordingTriggers, grpc.aio.Channel]]:
    servicer = RecordingTriggers()
    server = grpc.aio.server()
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
            # Stopped while the executor held the first complete event: it stays.
            left = [e.event_id for e in sup.unsent_events()]
            assert left and left[0] == triggers.published[-1][2]
        before = len(triggers.published)
        assert triggers.published == stored[:before]

        triggers.held.set()
        with ReferenceSupervisor(path, event_outbox=True) as reopened:
            forwarder = EventForwarder(reopened, channel)
            async with forwarding(forwarder):
                await asyncio.wait_for(forwarder.drain(), 10)
            assert not reopened.has_unsent_events()

    # What was left, in order, the held event again under its id: a duplicate to the engine.
    assert [event_id for _, _, event_id in triggers.published[before:]] == left
    assert triggers.published[before:] == stored[before - 1 :]


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
