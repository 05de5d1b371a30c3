"""ReportResult on the wire: the request built from a finished run, and the transport that sends it.

The outbox stores the serialized ``ReportResultRequest`` rather than the domain values,
so what is retried after a restart is byte for byte what would have been sent at once,
whatever the executor's version. The outbox itself knows only bytes: ``ReportEncoder``
makes them, never larger than the supervisor takes, and ``GrpcReportTransport`` sends them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

from executor.api import convert
from executor.api.lenient_answers import supervisor_stub
from executor.api.supervisor_reach import SupervisorReach
from executor.model import Invocation, RunResult
from executor.runs.outbox import MESSAGE_MARGIN_BYTES, DeliveryError
from supervisor_client.qbcallback.v1 import supervisor_pb2, types_pb2

# The receiver will refuse these again however often we retry: the result is set aside.
PERMANENT_CODES: Final = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE})
# The receiver did not answer (down, restarting, hanging): retried for as long as it takes.
UNREACHABLE_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
# Everything else (RESOURCE_EXHAUSTED for a message too large for it, UNAUTHENTICATED while
# a token is being rotated, INTERNAL or UNIMPLEMENTED while a supervisor is being upgraded)
# is retried, and a single result that keeps failing is set aside after a few tries.


def report_request(
    invocation: Invocation, result: RunResult, ended_at: float = 0.0
) -> supervisor_pb2.ReportResultRequest:
    """The ReportResultRequest for one finished run, which ended at ``ended_at`` (Unix time)."""
    callback = invocation.callback
    request = supervisor_pb2.ReportResultRequest(
        result=convert.response_from_result(result),
        job_id=invocation.job_id,
        ended_at=ended_at,
        callback=types_pb2.Callback(
            id=callback.id,
            triggers=callback.triggers,
            language=callback.language,
            code=callback.code,
            user=callback.user,
            count=convert.saturated(callback.count),
            maximum=convert.saturated(callback.maximum),
        ),
    )
    if invocation.event is not None:
        request.event.CopyFrom(convert.event_message(invocation.event))
    return request


# Kept of a traceback when a report must shrink.
SHRUNK_TRACEBACK_CHARS: Final = 4000


class ReportEncoder:
    """Serializes a run's ReportResultRequest for the outbox, never larger than ``max_bytes``.

    A result too large for the supervisor's message limit (a few MB of output, or a
    traceback of a deep recursion) is reported reduced: its output cut with the
    ``*_truncated`` flags set, its traceback and actions shortened. The run history keeps
    the whole result.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_bytes = max_message_bytes - MESSAGE_MARGIN_BYTES

    def __call__(self, invocation: Invocation, result: RunResult, ended_at: float = 0.0) -> bytes:
        # A character is at least a byte: output longer than the room in characters is
        # cut before a request is built, not after, so megabytes of it are not copied
        # into a message (and serialized) for nothing.
        if len(result.stdout) + len(result.stderr) > self.max_bytes:
            return self._shrunk(invocation, result, ended_at).SerializeToString()
        payload = report_request(invocation, result, ended_at).SerializeToString()
        if len(payload) <= self.max_bytes:
            return payload
        return self._shrunk(invocation, result, ended_at).SerializeToString()

    def _shrunk(
        self, invocation: Invocation, result: RunResult, ended_at: float
    ) -> supervisor_pb2.ReportResultRequest:
        request = report_request(invocation, replace(result, stdout="", stderr=""), ended_at)
        reported = request.result
        if len(reported.failure.traceback) > SHRUNK_TRACEBACK_CHARS:
            reported.failure.traceback = reported.failure.traceback[-SHRUNK_TRACEBACK_CHARS:]
        # The actions are the callback's own words: at most a quarter of the room.
        while reported.actions and request.ByteSize() > self.max_bytes // 4:
            del reported.actions[len(reported.actions) // 2 :]
        room = max(0, self.max_bytes - request.ByteSize() - 64)
        texts = {"stdout": result.stdout, "stderr": result.stderr}
        sizes = {name: _utf8_size(text, room) for name, text in texts.items()}
        # The shorter stream keeps what it has, up to half the room; the other the rest.
        short, long_ = sorted(texts, key=lambda name: sizes[name])
        keep = {short: min(sizes[short], room // 2)}
        keep[long_] = min(sizes[long_], room - keep[short])
        for name, text in texts.items():
            cut = sizes[name] > keep[name]
            if cut:
                setattr(reported, f"{name}_truncated", True)
            setattr(reported, name, _utf8_prefix(text, keep[name]) if cut else text)
        return request


def _utf8_size(text: str, room: int) -> int:
    """Bytes of ``text`` in UTF-8, or ``room + 1`` when it has more than ``room`` characters.

    Its length when it is ASCII (which CPython knows at once); what is longer than the
    room is cut the same whatever its size, so it is not encoded to be measured.
    """
    if text.isascii():
        return len(text)
    return room + 1 if len(text) > room else len(text.encode())


def _utf8_prefix(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` within ``max_bytes`` of UTF-8."""
    if text.isascii():
        return text[:max_bytes]
    return text[:max_bytes].encode()[:max_bytes].decode("utf-8", "ignore")


def _parsed(payload: bytes) -> supervisor_pb2.ReportResultRequest:
    try:
        return supervisor_pb2.ReportResultRequest.FromString(payload)
    except DecodeError as err:
        raise DeliveryError(f"stored request does not parse: {err}", retryable=False) from err


def _delivery_error(err: grpc.aio.AioRpcError) -> DeliveryError:
    code = err.code()
    return DeliveryError(
        f"{code.name}: {err.details()}",
        retryable=code not in PERMANENT_CODES,
        unreachable=code in UNREACHABLE_CODES,
    )


# A supervisor that did not answer a report in time is given twice the time for the
# next, up to this many times ``supervisor_timeout_seconds``: sending it the same results
# again at the same pace would only add to what keeps it slow.
MAX_PATIENCE_FACTOR: Final = 8


class GrpcReportTransport:
    """Delivers serialized ReportResultRequests with ``SupervisorService.ReportResult(s)``.

    Each call's deadline is ``timeout_s``, doubled after a call that ran out of it (up to
    ``MAX_PATIENCE_FACTOR`` times) until one is answered within ``timeout_s`` again.
    ``connections`` counts the connections its calls made or will make: each may reach
    another supervisor (upgraded, replaced), which the outbox then asks for batches.
    """

    def __init__(
        self, channel: grpc.aio.Channel, timeout_s: float, reach: SupervisorReach | None = None
    ) -> None:
        """``reach`` is told what each call found of the supervisor's reach."""
        self._reach = reach
        self._channel = channel
        self._stub = supervisor_stub(channel)
        self._timeout_s = timeout_s
        self._patience_s = timeout_s
        self._connects = 0  # calls that found the channel not connected

    @property
    def connections(self) -> int:
        """Connections its calls made, and the one the next call makes when not connected now."""
        return self._connects + (not self._is_connected())

    def _is_connected(self) -> bool:
        return self._channel.get_state() == grpc.ChannelConnectivity.READY

    async def _call(self, method: Any, request: Any, name: str) -> Any:
        """Call ``method`` (named ``name``); an answer that does not parse is a DeliveryError.

        The stub gives None for such an answer (``lenient_answers``) instead of raising. The supervisor answered
        (a proto of another version, a proxy mangling bodies), so it counts as a refusal:
        retried, and set aside after a few like any answered failure.
        """
        if not self._is_connected():
            self._connects += 1
        started = time.monotonic()
        try:
            response = await method(request, timeout=self._patience_s)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                self._patience_s = min(self._patience_s * 2, self._timeout_s * MAX_PATIENCE_FACTOR)
            if self._reach is not None:
                self._reach.noted(err, took_it_all=time.monotonic() - started >= self._timeout_s)
            raise
        if self._reach is not None:
            self._reach.answered()
        if time.monotonic() - started < self._timeout_s:
            self._patience_s = self._timeout_s
        if response is None:
            raise DeliveryError(
                f"the supervisor's answer was malformed: its {name} answer does not parse",
                retryable=True,
            )
        return response

    async def deliver(self, key: str, payload: bytes) -> bool:
        request = _parsed(payload)
        try:
            response = await self._call(self._stub.ReportResult, request, "ReportResult")
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                # A supervisor that implements only ReportResults: a batch of one.
                duplicates = await self.deliver_many([(key, payload)])
                if duplicates is not None:
                    return duplicates[0]
            raise _delivery_error(err) from err
        return bool(response.duplicate)

    async def deliver_many(self, messages: list[tuple[str, bytes]]) -> list[bool] | None:
        """One ReportResults call; None when the supervisor does not implement it."""
        request = supervisor_pb2.ReportResultsRequest(
            results=[_parsed(payload) for _, payload in messages]
        )
        try:
            response = await self._call(self._stub.ReportResults, request, "ReportResults")
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
