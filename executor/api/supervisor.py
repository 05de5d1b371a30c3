"""The executor as a client of the SupervisorService: ``SupervisorPort`` over gRPC.

Every ``qb`` call that reads or changes a job goes here, on behalf of the callback's
owner (``actor``). A refused call becomes the ``HostCallError`` whose kind the callback
sees as an exception (``qb.NoSuchJob``, ...): the supervisor may name the kind in the
trailing metadata key ``qb-error-kind``; otherwise the status code decides. Nothing is
guessed from the message text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import grpc

from executor.child.protocol import QbErrorKind
from executor.errors import HostCallError
from executor.supervisor_link import ActionOutcome
from supervisor_client.jobdict import job_to_dict
from supervisor_client.qbcallback.v1 import supervisor_pb2, supervisor_pb2_grpc

ERROR_KIND_KEY: Final = "qb-error-kind"
# The kinds a supervisor may name; anything else falls back to the status code.
NAMED_KINDS: Final[dict[str, QbErrorKind]] = {
    kind: kind for kind in ("NoSuchJob", "NoSuchWork", "PermissionDenied", "InvalidArgument")
}
_KIND_BY_CODE: Final[dict[grpc.StatusCode, QbErrorKind]] = {
    grpc.StatusCode.NOT_FOUND: "NoSuchJob",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.FAILED_PRECONDITION: "QbError",
}

# Codes that mean no answer came (down, too slow, the call cut); any other is an answer.
_NO_ANSWER: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)

_Response = TypeVar("_Response")


def host_error(err: grpc.aio.AioRpcError) -> HostCallError:
    """The error a callback sees for a refused SupervisorService call."""
    code = err.code()
    named = NAMED_KINDS.get(str(dict(err.trailing_metadata() or ()).get(ERROR_KIND_KEY, "")))
    kind = named or _KIND_BY_CODE.get(code, "SupervisorUnavailable")
    details = err.details() or code.name
    if kind == "SupervisorUnavailable":
        if code in _NO_ANSWER:
            said = "the supervisor did not answer"
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
            said = "the supervisor's answer was larger than the executor takes"
        else:
            said = "the supervisor answered with an error"
        details = f"{said}: {code.name}: {details}"
    return HostCallError(kind, details)


class GrpcSupervisor:
    """``executor.supervisor_link.SupervisorPort`` over a SupervisorService channel."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = supervisor_pb2_grpc.SupervisorServiceStub(channel)
        self._timeout_s = timeout_s

    async def _call(self, rpc: Callable[..., Awaitable[_Response]], request: Any) -> _Response:
        try:
            return await rpc(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise host_error(err) from err

    async def job_info(
        self,
        *,
        job_id: int | None,
        pgrp: int | None,
        include_callbacks: bool,
        actor: str,
        work_names: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        request = supervisor_pb2.JobInfoRequest(include_callbacks=include_callbacks, actor=actor)
        if pgrp is not None:
            request.pgrp = pgrp
        else:
            request.id = job_id or 0
        if work_names is None:
            request.agenda = supervisor_pb2.AGENDA_SCOPE_ALL
        elif not work_names:
            request.agenda = supervisor_pb2.AGENDA_SCOPE_NONE
        else:
            request.agenda = supervisor_pb2.AGENDA_SCOPE_NAMED
            request.work_names.extend(work_names)
        response = await self._call(self._stub.JobInfo, request)
        return [job_to_dict(job, include_callbacks=include_callbacks) for job in response.jobs]

    async def job_action(
        self, verb: str, job_id: int, *, actor: str, invocation_id: str, action_seq: int
    ) -> ActionOutcome:
        request = supervisor_pb2.JobActionRequest(
            verb=supervisor_pb2.JobVerb.Value(f"JOB_VERB_{verb.upper()}"),
            job_id=job_id,
            actor=actor,
            invocation_id=invocation_id,
            action_seq=action_seq,
        )
        response = await self._call(self._stub.JobAction, request)
        return ActionOutcome(response.changed, response.message)

    async def work_action(
        self,
        verb: str,
        job_id: int,
        work_names: list[str],
        *,
        actor: str,
        invocation_id: str,
        action_seq: int,
    ) -> ActionOutcome:
        request = supervisor_pb2.WorkActionRequest(
            verb=supervisor_pb2.WorkVerb.Value(f"WORK_VERB_{verb.upper()}"),
            job_id=job_id,
            work_names=work_names,
            actor=actor,
            invocation_id=invocation_id,
            action_seq=action_seq,
        )
        response = await self._call(self._stub.WorkAction, request)
        return ActionOutcome(response.changed, response.message)

    async def subjob_action(
        self,
        verb: str,
        job_id: int,
        subjob_ids: list[int],
        *,
        actor: str,
        invocation_id: str,
        action_seq: int,
    ) -> ActionOutcome:
        request = supervisor_pb2.SubjobActionRequest(
            verb=supervisor_pb2.JobVerb.Value(f"JOB_VERB_{verb.upper()}"),
            job_id=job_id,
            subjob_ids=subjob_ids,
            actor=actor,
            invocation_id=invocation_id,
            action_seq=action_seq,
        )
        response = await self._call(self._stub.SubjobAction, request)
        return ActionOutcome(response.changed, response.message)
