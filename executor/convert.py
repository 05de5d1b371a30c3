"""Pure conversions between the wire contract and the domain types, with request validation."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Final

from executor.errors import InvalidRequestError
from executor.model import (
    CallbackSpec,
    Event,
    Invocation,
    Limits,
    Outcome,
    RunResult,
)
from executor.sandbox.limits import merge
from supervisor_client.jobdict import job_to_dict
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2

MAX_CODE_BYTES: Final = 1 << 20
MAX_TRIGGER_BYTES: Final = 64 << 10

_OUTCOMES: Final = {
    outcome: executor_pb2.Outcome.Value(f"OUTCOME_{outcome.value}") for outcome in Outcome
}


def _limits(message: executor_pb2.Limits) -> Limits:
    # The proto message and the dataclass name their fields alike, one for one.
    return Limits(**{f.name: getattr(message, f.name) for f in dataclasses.fields(Limits)})


def event_message(event: Event) -> types_pb2.Event:
    """The wire form of a triggering event: the job id as context, the item as extra."""
    return types_pb2.Event(
        name=event.name, type=event.type, context=event.context, extra=event.item
    )


def invocation_from_request(
    request: executor_pb2.ExecuteRequest, *, default_limits: Limits, max_limits: Limits
) -> Invocation:
    """Validate an ExecuteRequest into an Invocation; InvalidRequestError names the field."""
    callback = request.callback
    if not callback.language.strip():
        raise InvalidRequestError("callback.language is required (python, perl or qube)")
    if not callback.code.strip():
        raise InvalidRequestError("callback.code is empty: there is nothing to run")
    if len(callback.code.encode()) > MAX_CODE_BYTES:
        raise InvalidRequestError(
            f"callback.code is {len(callback.code.encode())} bytes; the limit is {MAX_CODE_BYTES}"
        )
    if len(callback.triggers.encode()) > MAX_TRIGGER_BYTES:
        raise InvalidRequestError(f"callback.triggers is longer than {MAX_TRIGGER_BYTES} bytes")
    if not request.HasField("context") or not request.context.job.id:
        raise InvalidRequestError("context.job.id is required: a callback runs in a job's context")
    context = request.context
    job_id = context.job.id
    event = None
    if context.HasField("event") and context.event.name:
        wire = context.event
        event = Event.from_atom_form(wire.name, wire.type, wire.context, wire.extra, job_id=job_id)
    return Invocation(
        invocation_id=request.invocation_id or str(uuid.uuid4()),
        callback=CallbackSpec(
            language=callback.language.strip().lower(),
            code=callback.code,
            triggers=callback.triggers,
            id=callback.id,
            user=callback.user,
            count=callback.count,
            maximum=callback.maximum,
        ),
        job=job_to_dict(context.job, include_callbacks=True),
        limits=merge(_limits(request.limits), default_limits, max_limits),
        event=event,
        work_name=context.work_name,
        subjob_id=context.subjob_id if context.HasField("subjob_id") else -1,
    )


def response_from_result(result: RunResult) -> executor_pb2.ExecuteResponse:
    """The wire form of a run's result."""
    response = executor_pb2.ExecuteResponse(
        invocation_id=result.invocation_id,
        outcome=_OUTCOMES[result.outcome],
        exit_code=result.exit_code,
        signal=result.signal,
        stdout=result.stdout,
        stderr=result.stderr,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        usage=executor_pb2.Usage(
            wall_seconds=result.usage.wall_seconds,
            cpu_seconds=result.usage.cpu_seconds,
            peak_rss_bytes=result.usage.peak_rss_bytes,
            queue_seconds=result.usage.queue_seconds,
        ),
    )
    if result.failure is not None:
        response.failure.message = result.failure.message
        response.failure.exception_type = result.failure.exception_type
        response.failure.traceback = result.failure.traceback
    for action in result.actions:
        response.actions.add(
            verb=action.verb, target=action.target, ok=action.ok, message=action.message
        )
    return response
