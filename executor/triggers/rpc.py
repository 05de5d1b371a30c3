"""The event-path RPCs (RegisterJob, PublishEvent, DryRun, ReloadUniversalCallbacks): proto <-> engine."""

from __future__ import annotations

from typing import Any

import grpc

from executor.convert import response_from_result
from executor.errors import InvalidRequestError
from executor.model import Event
from executor.status import grpc_errors
from executor.triggers.engine import Fired, TriggerEngine, canonical_triggers
from executor.triggers.store import StoredCallback
from supervisor_client.jobdict import job_to_dict
from supervisor_client.qbcallback.v1 import executor_pb2

PUBLISHABLE_TYPES = frozenset({"job", "work", "subjob", "host"})


def registered(cb: StoredCallback) -> executor_pb2.RegisteredCallback:
    return executor_pb2.RegisteredCallback(
        job_id=cb.job_id,
        id=cb.callback_id,
        triggers=cb.triggers,
        canonical_triggers=canonical_triggers(cb.triggers),
        language=cb.language,
        universal=cb.universal,
        source=cb.source,
        count=cb.count,
        maximum=cb.maximum,
        latches=list(cb.latches),
    )


def firing(fired: Fired) -> executor_pb2.Firing:
    message = executor_pb2.Firing(
        job_id=fired.callback.job_id,
        callback_id=fired.callback.callback_id,
        triggers=fired.callback.triggers,
        language=fired.callback.language,
        universal=fired.callback.universal,
        invocation_id=fired.invocation_id,
    )
    if fired.result is not None:
        message.result.CopyFrom(response_from_result(fired.result))
    return message


def occurrence(request: executor_pb2.PublishEventRequest) -> Event:
    if not request.name:
        raise InvalidRequestError("name is required (complete, failed, killed, running, ...)")
    if request.name == "done":
        raise InvalidRequestError(
            "'done' is derived from complete, failed and killed; publish those"
        )
    if request.type not in PUBLISHABLE_TYPES:
        raise InvalidRequestError(
            f"type {request.type!r} cannot be published; expected one of {', '.join(sorted(PUBLISHABLE_TYPES))}"
        )
    if not request.job_id:
        raise InvalidRequestError("job_id is required")
    if request.type == "work" and not request.work_name:
        raise InvalidRequestError("work_name is required for work events")
    if request.type == "subjob" and not request.HasField("subjob_id"):
        raise InvalidRequestError("subjob_id is required for subjob events")
    return Event(
        name=request.name,
        type=request.type,
        job_id=request.job_id,
        work_name=request.work_name,
        subjob_id=request.subjob_id if request.HasField("subjob_id") else -1,
        host=request.host,
        event_id=request.event_id,
    )


class EventPathRpcs:
    """Mixin for CallbackExecutorServicer; needs ``self._engine``."""

    _engine: TriggerEngine

    @grpc_errors
    async def RegisterJob(  # noqa: N802 - gRPC method name
        self, request: executor_pb2.RegisterJobRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.RegisterJobResponse:
        job = job_to_dict(request.job, include_callbacks=True)
        callbacks = self._engine.register_job(job)
        return executor_pb2.RegisterJobResponse(callbacks=[registered(cb) for cb in callbacks])

    @grpc_errors
    async def PublishEvent(  # noqa: N802
        self, request: executor_pb2.PublishEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.PublishEventResponse:
        fired, duplicate = await self._engine.publish(occurrence(request), wait=request.wait)
        return executor_pb2.PublishEventResponse(
            fired=[firing(f) for f in fired], duplicate=duplicate
        )

    @grpc_errors
    async def DryRun(  # noqa: N802
        self, request: executor_pb2.PublishEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.DryRunResponse:
        fired, latched, _ = self._engine.match(occurrence(request), dry=True)
        would_latch = []
        for item in latched:
            message = registered(item.callback)
            message.ClearField("latches")
            message.latches.extend(item.latches)
            would_latch.append(message)
        return executor_pb2.DryRunResponse(
            would_fire=[firing(f) for f in fired], would_latch=would_latch
        )

    @grpc_errors
    async def ReloadUniversalCallbacks(  # noqa: N802
        self,
        request: executor_pb2.ReloadUniversalCallbacksRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> executor_pb2.ReloadUniversalCallbacksResponse:
        errors = self._engine.reload_universal()
        return executor_pb2.ReloadUniversalCallbacksResponse(
            reloaded=not errors, errors=errors, active=len(self._engine.universal)
        )
