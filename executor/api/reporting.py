"""ReportResult on the wire: the request built from a finished run, and the transport that sends it.

The outbox stores the serialized ``ReportResultRequest`` rather than the domain values,
so what is retried after a restart is byte for byte what would have been sent at once,
whatever the executor's version. The outbox itself knows only bytes: ``encode_report``
makes them, ``GrpcReportTransport`` sends them.
"""

from __future__ import annotations

from typing import Final

import grpc
from google.protobuf.message import DecodeError

from executor.api import convert
from executor.model import Invocation, RunResult
from executor.runs.outbox import DeliveryError
from supervisor_client.qbcallback.v1 import supervisor_pb2, supervisor_pb2_grpc, types_pb2

# The receiver will refuse these again however often we retry; everything else (UNAVAILABLE,
# DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNAUTHENTICATED while a token is being rotated,
# even INTERNAL or UNIMPLEMENTED while a supervisor is being upgraded) is retried.
PERMANENT_CODES: Final = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})


def report_request(invocation: Invocation, result: RunResult) -> supervisor_pb2.ReportResultRequest:
    """The ReportResultRequest for one finished run."""
    callback = invocation.callback
    request = supervisor_pb2.ReportResultRequest(
        result=convert.response_from_result(result),
        job_id=invocation.job_id,
        callback=types_pb2.Callback(
            id=callback.id,
            triggers=callback.triggers,
            language=callback.language,
            code=callback.code,
            user=callback.user,
            count=callback.count,
            maximum=callback.maximum,
        ),
    )
    if invocation.event is not None:
        request.event.CopyFrom(convert.event_message(invocation.event))
    return request


def encode_report(invocation: Invocation, result: RunResult) -> bytes:
    """The outbox payload of one finished run: its serialized ReportResultRequest."""
    return report_request(invocation, result).SerializeToString()


def _parsed(payload: bytes) -> supervisor_pb2.ReportResultRequest:
    try:
        return supervisor_pb2.ReportResultRequest.FromString(payload)
    except DecodeError as err:
        raise DeliveryError(f"stored request does not parse: {err}", retryable=False) from err


def _delivery_error(err: grpc.aio.AioRpcError) -> DeliveryError:
    return DeliveryError(
        f"{err.code().name}: {err.details()}", retryable=err.code() not in PERMANENT_CODES
    )


class GrpcReportTransport:
    """Delivers serialized ReportResultRequests with ``SupervisorService.ReportResult(s)``."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float) -> None:
        self._stub = supervisor_pb2_grpc.SupervisorServiceStub(channel)
        self._timeout_s = timeout_s

    async def deliver(self, key: str, payload: bytes) -> bool:
        request = _parsed(payload)
        try:
            response = await self._stub.ReportResult(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            raise _delivery_error(err) from err
        return bool(response.duplicate)

    async def deliver_many(self, messages: list[tuple[str, bytes]]) -> list[bool] | None:
        """One ReportResults call; None when the supervisor does not implement it."""
        request = supervisor_pb2.ReportResultsRequest(
            results=[_parsed(payload) for _, payload in messages]
        )
        try:
            response = await self._stub.ReportResults(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise _delivery_error(err) from err
        if len(response.results) != len(messages):
            raise DeliveryError(
                f"ReportResults answered {len(response.results)} results for {len(messages)}",
                retryable=False,
            )
        return [entry.duplicate for entry in response.results]
