"""The executor's side of the Supervisor service: typed calls in, HostCallError out.

``SupervisorPort`` is what the host API needs; ``GrpcSupervisor`` implements it over a
gRPC channel (to a site's supervisor, or to the embedded reference one on loopback).
gRPC status codes become the exception kinds a callback sees (``qb.NoSuchJob``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol

import grpc

from executor.child.protocol import QbErrorKind
from executor.errors import HostCallError
from supervisor_client.jobdict import job_to_dict
from supervisor_client.qbcallback.v1 import supervisor_pb2, supervisor_pb2_grpc

JOB_VERBS = (
    "unblock",
    "block",
    "kill",
    "remove",
    "retry",
    "requeue",
    "preempt",
    "interrupt",
    "migrate",
    "suspend",
    "resume",
    "complete",
    "fail",
)
WORK_VERBS = ("unblock", "block", "kill", "retry", "requeue", "complete", "fail")
# The job verbs that apply to an instance (all but remove); the child-side qb
# modules (Python qb.py, Perl qb.pm) carry the same list.
SUBJOB_VERBS = tuple(verb for verb in JOB_VERBS if verb != "remove")

_KIND_BY_CODE: Final[dict[grpc.StatusCode, QbErrorKind]] = {
    grpc.StatusCode.NOT_FOUND: "NoSuchJob",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.FAILED_PRECONDITION: "QbError",
}


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    changed: int
    message: str


class SupervisorPort(Protocol):
    """What callbacks may ask of the supervisor, on behalf of ``actor``."""

    async def job_info(
        self, *, job_id: int | None, pgrp: int | None, include_callbacks: bool, actor: str
    ) -> list[dict[str, Any]]: ...

    async def job_action(
        self, verb: str, job_id: int, *, actor: str, invocation_id: str
    ) -> ActionOutcome: ...

    async def work_action(
        self, verb: str, job_id: int, work_names: list[str], *, actor: str, invocation_id: str
    ) -> ActionOutcome: ...

    async def subjob_action(
        self, verb: str, job_id: int, subjob_ids: list[int], *, actor: str, invocation_id: str
    ) -> ActionOutcome: ...


def _host_error(err: grpc.aio.AioRpcError) -> HostCallError:
    code = err.code()
    kind: QbErrorKind = _KIND_BY_CODE.get(code, "SupervisorUnavailable")
    details = err.details() or code.name
    if kind == "NoSuchJob" and "work" in details.lower():
        kind = "NoSuchWork"
    if kind == "SupervisorUnavailable":
        details = f"the supervisor did not answer: {code.name}: {details}"
    return HostCallError(kind, details)


class GrpcSupervisor:
    """SupervisorPort over a gRPC channel."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = supervisor_pb2_grpc.SupervisorStub(channel)
        self._timeout_s = timeout_s

    @property
    def stub(self) -> supervisor_pb2_grpc.SupervisorStub:
        return self._stub

    async def job_info(
        self, *, job_id: int | None, pgrp: int | None, include_callbacks: bool, actor: str
    ) -> list[dict[str, Any]]:
        request = supervisor_pb2.JobInfoRequest(include_callbacks=include_callbacks, actor=actor)
        if pgrp is not None:
            request.pgrp = pgrp
        else:
            request.id = job_id or 0
        try:
            response = await self._stub.JobInfo(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise _host_error(err) from err
        return [job_to_dict(job, include_callbacks=include_callbacks) for job in response.jobs]

    async def _action(self, rpc: Any, request: Any) -> ActionOutcome:
        try:
            response = await rpc(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise _host_error(err) from err
        return ActionOutcome(response.changed, response.message)

    async def job_action(
        self, verb: str, job_id: int, *, actor: str, invocation_id: str
    ) -> ActionOutcome:
        request = supervisor_pb2.JobActionRequest(
            verb=supervisor_pb2.JobVerb.Value(f"JOB_VERB_{verb.upper()}"),
            job_id=job_id,
            actor=actor,
            invocation_id=invocation_id,
        )
        return await self._action(self._stub.JobAction, request)

    async def work_action(
        self, verb: str, job_id: int, work_names: list[str], *, actor: str, invocation_id: str
    ) -> ActionOutcome:
        request = supervisor_pb2.WorkActionRequest(
            verb=supervisor_pb2.WorkVerb.Value(f"WORK_VERB_{verb.upper()}"),
            job_id=job_id,
            work_names=work_names,
            actor=actor,
            invocation_id=invocation_id,
        )
        return await self._action(self._stub.WorkAction, request)

    async def subjob_action(
        self, verb: str, job_id: int, subjob_ids: list[int], *, actor: str, invocation_id: str
    ) -> ActionOutcome:
        request = supervisor_pb2.SubjobActionRequest(
            verb=supervisor_pb2.JobVerb.Value(f"JOB_VERB_{verb.upper()}"),
            job_id=job_id,
            subjob_ids=subjob_ids,
            actor=actor,
            invocation_id=invocation_id,
        )
        return await self._action(self._stub.SubjobAction, request)
