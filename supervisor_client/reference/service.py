"""SupervisorServicer: the Supervisor gRPC service in front of a ReferenceSupervisor.

The only module of the reference supervisor that touches protobuf: requests become store
calls with plain values, store errors become gRPC statuses (one table below), job dicts
become ``Job`` messages through ``supervisor_client.jobdict``, the converter the
executor uses in the other direction. Actions carry ``action_seq``, and the store
applies each ``(invocation_id, action_seq)`` once (applied.py): a repeat gets the first
answer, an error included, and another action under the pair is FAILED_PRECONDITION.
Every store call runs on the store's one thread
(``StoreThread``), never on the caller's event loop: a verb over 100,000 items takes a
second or two of Python, and the executor that embeds this service runs every callback
on that loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import supervisor_pb2, supervisor_pb2_grpc
from supervisor_client.reference.errors import (
    ActionConflictError,
    NoSuchJobError,
    NoSuchWorkError,
    PermissionDeniedError,
    SubmitError,
)
from supervisor_client.reference.store import ReferenceSupervisor
from supervisor_client.reference.store_thread import StoreThread

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
Context = grpc.aio.ServicerContext[Any, Any]

#: Store error → status and the exception kind a callback sees (sent as the trailing
#: metadata ``qb-error-kind``, see supervisor.proto; none for "", a plain QbError), most
#: specific first. A verb that does not apply to the job's state is not an error
#: (``changed`` = 0); FAILED_PRECONDITION is only an action pair's conflict.
STATUS_BY_ERROR: Final[tuple[tuple[type[Exception], grpc.StatusCode, str], ...]] = (
    (ActionConflictError, grpc.StatusCode.FAILED_PRECONDITION, ""),
    (NoSuchWorkError, grpc.StatusCode.NOT_FOUND, "NoSuchWork"),
    (NoSuchJobError, grpc.StatusCode.NOT_FOUND, "NoSuchJob"),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED, "PermissionDenied"),
    (SubmitError, grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgument"),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT, "InvalidArgument"),
)
ERROR_KIND_KEY: Final = "qb-error-kind"


def status_for(error: Exception) -> tuple[grpc.StatusCode, str] | None:
    """The status and qb error kind an expected store error maps to; None for a bug."""
    for error_type, code, kind in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code, kind
    return None


def verb_name(enum_type: Any, value: int) -> str:
    """The store's verb for a proto enum value: JOB_VERB_UNBLOCK → "unblock".

    Raises ValueError for the unspecified value and for numbers this contract does not
    know (proto3 enums are open, so a newer client can send them).
    """
    if value == 0:
        raise ValueError("verb is required")
    try:
        name: str = enum_type.Name(value)
    except ValueError:
        raise ValueError(f"unknown verb number {value}") from None
    return name.split("_VERB_", 1)[1].lower()


def agenda_names(request: supervisor_pb2.JobInfoRequest) -> list[str] | None:
    """The work items a JobInfo asks for: None for every one, else those names (maybe none).

    A scope this contract does not know (proto3 enums are open) gets every item: the
    field is a hint, and answering more is always correct.
    """
    if request.agenda == supervisor_pb2.AGENDA_SCOPE_NONE:
        return []
    if request.agenda == supervisor_pb2.AGENDA_SCOPE_NAMED:
        return list(request.work_names)
    return None


def _plain(message: Message) -> dict[str, Any]:
    """A message as the JSON mapping (enum names, field names as in the .proto)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def result_payload(request: supervisor_pb2.ReportResultRequest) -> dict[str, Any]:
    """What the store keeps of a reported run: the result, plus its callback, event and end."""
    payload = _plain(request.result)
    if request.ended_at:
        payload["ended_at"] = request.ended_at  # tells a later run from a resend
    if request.HasField("callback"):
        payload["callback"] = _plain(request.callback)
    if request.HasField("event"):
        payload["event"] = _plain(request.event)
    return payload


class SupervisorServicer(supervisor_pb2_grpc.SupervisorServiceServicer):
    """The Supervisor RPCs on a ReferenceSupervisor; ``actor`` is checked by the store.

    Args:
        supervisor: the store served.
        unavailable: the errors its ``storage_errors`` raises for a storage failure,
            answered UNAVAILABLE with their message: the call changed nothing and may
            work once the storage does.
        store_thread: the thread the store's calls run on, shared with the store's
            other users in the process; None: one of its own (``close`` lets it go).
    """

    def __init__(
        self,
        supervisor: ReferenceSupervisor,
        unavailable: tuple[type[Exception], ...] = (),
        store_thread: StoreThread | None = None,
    ) -> None:
        self._supervisor = supervisor
        self._unavailable = unavailable
        self._own_thread = store_thread is None
        self._thread = StoreThread() if store_thread is None else store_thread

    def close(self) -> None:
        """Let the store's thread go, when it is the servicer's own."""
        if self._own_thread:
            self._thread.close()

    async def _call(self, context: Context, call: Callable[[], _T]) -> _T:
        """Run one store call on the store's thread; expected errors abort with their status.

        Anything else is a bug here: logged with its traceback, answered with INTERNAL
        and a generic message (never gRPC's default UNKNOWN with the exception text).
        """
        try:
            return await self._thread.run(call)
        except Exception as err:
            mapped = status_for(err)
            if isinstance(err, self._unavailable):
                code, message = grpc.StatusCode.UNAVAILABLE, str(err)
            elif mapped is None:
                logger.exception("reference supervisor failed")
                code, message = (
                    grpc.StatusCode.INTERNAL,
                    "internal error in the reference supervisor",
                )
            else:
                code, message = mapped[0], str(err)
                if mapped[1]:
                    context.set_trailing_metadata(((ERROR_KIND_KEY, mapped[1]),))
        await context.abort(code, message)

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Context
    ) -> supervisor_pb2.JobInfoResponse:
        """One job (NOT_FOUND when unknown) or a pgrp's jobs; reading needs no rights.

        Each job's agenda as the request's ``agenda`` scope asks: only the rows asked
        for are read.
        """
        selector = request.WhichOneof("selector")
        include = request.include_callbacks
        names = agenda_names(request)

        def read() -> list[dict[str, Any]]:
            if selector == "id":
                return [
                    self._supervisor.job(request.id, include_callbacks=include, work_names=names)
                ]
            if selector == "pgrp":
                return self._supervisor.jobs_in_pgrp(
                    request.pgrp, include_callbacks=include, work_names=names
                )
            raise ValueError("JobInfoRequest needs an id or a pgrp")

        def answer() -> supervisor_pb2.JobInfoResponse:
            return supervisor_pb2.JobInfoResponse(jobs=[job_from_dict(job) for job in read()])

        return await self._call(context, answer)

    async def JobAction(
        self, request: supervisor_pb2.JobActionRequest, context: Context
    ) -> supervisor_pb2.JobActionResponse:
        """A job verb; a verb that does not apply answers changed=0 with the reason."""
        result = await self._call(
            context,
            lambda: self._supervisor.job_action(
                verb_name(supervisor_pb2.JobVerb, request.verb),
                request.job_id,
                request.actor,
                invocation_id=request.invocation_id,
                action_seq=request.action_seq,
            ),
        )
        return supervisor_pb2.JobActionResponse(changed=result.changed, message=result.message)

    async def WorkAction(
        self, request: supervisor_pb2.WorkActionRequest, context: Context
    ) -> supervisor_pb2.WorkActionResponse:
        """A work verb on exact work names (the executor has expanded ranges)."""
        result = await self._call(
            context,
            lambda: self._supervisor.work_action(
                verb_name(supervisor_pb2.WorkVerb, request.verb),
                request.job_id,
                list(request.work_names),
                request.actor,
                invocation_id=request.invocation_id,
                action_seq=request.action_seq,
            ),
        )
        return supervisor_pb2.WorkActionResponse(changed=result.changed, message=result.message)

    async def SubjobAction(
        self, request: supervisor_pb2.SubjobActionRequest, context: Context
    ) -> supervisor_pb2.SubjobActionResponse:
        """A job verb on instances; no ids means every instance of the job."""
        result = await self._call(
            context,
            lambda: self._supervisor.subjob_action(
                verb_name(supervisor_pb2.JobVerb, request.verb),
                request.job_id,
                list(request.subjob_ids),
                request.actor,
                invocation_id=request.invocation_id,
                action_seq=request.action_seq,
            ),
        )
        return supervisor_pb2.SubjobActionResponse(changed=result.changed, message=result.message)

    async def ReportResult(
        self, request: supervisor_pb2.ReportResultRequest, context: Context
    ) -> supervisor_pb2.ReportResultResponse:
        """Store a run's result per invocation_id, the latest run's; a resend answers duplicate=True."""
        duplicate = await self._call(
            context,
            lambda: self._supervisor.report_result(
                request.result.invocation_id, request.job_id, result_payload(request)
            ),
        )
        return supervisor_pb2.ReportResultResponse(duplicate=duplicate)

    async def ReportResults(
        self, request: supervisor_pb2.ReportResultsRequest, context: Context
    ) -> supervisor_pb2.ReportResultsResponse:
        """ReportResult for each entry, in one transaction: all stored, or none."""
        duplicates = await self._call(
            context,
            lambda: self._supervisor.report_results(
                [
                    (entry.result.invocation_id, entry.job_id, result_payload(entry))
                    for entry in request.results
                ]
            ),
        )
        return supervisor_pb2.ReportResultsResponse(
            results=[supervisor_pb2.ReportResultResponse(duplicate=d) for d in duplicates]
        )


def add_reference_supervisor(
    server: grpc.aio.Server,
    supervisor: ReferenceSupervisor,
    unavailable: tuple[type[Exception], ...] = (),
    store_thread: StoreThread | None = None,
) -> SupervisorServicer:
    """Serve ``supervisor`` as the Supervisor service on an existing (not yet started) server.

    ``unavailable``, ``store_thread``: as for ``SupervisorServicer``.
    """
    servicer = SupervisorServicer(supervisor, unavailable, store_thread)
    supervisor_pb2_grpc.add_SupervisorServiceServicer_to_server(servicer, server)
    return servicer
