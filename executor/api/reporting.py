"""ReportResult on the wire: the request built from a finished run, and the transport that sends it.

The outbox stores the serialized ``ReportResultRequest`` rather than the domain values,
so what is retried after a restart is byte for byte what would have been sent at once,
whatever the executor's version. The outbox itself knows only bytes: ``ReportEncoder``
makes them, never larger than the supervisor takes, and ``GrpcReportTransport`` sends them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError, Message

from executor.api import convert
from executor.api.lenient_answers import supervisor_stub
from executor.api.supervisor_reach import SupervisorReach
from executor.bounds import ACTION_FRAMING_BYTES, cut_utf8, cut_utf8_end, utf8_size
from executor.model import Invocation, RunResult
from executor.runs.outbox_transport import MESSAGE_MARGIN_BYTES, DeliveryError
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2, types_pb2

# The receiver will refuse these again however often we retry: the result is set aside.
# Only a refusal as invalid: OUT_OF_RANGE (a proxy's or a supervisor's limit of the
# moment) is retried as any other answered failure, as the README says.
PERMANENT_CODES: Final = frozenset({grpc.StatusCode.INVALID_ARGUMENT})
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


# What a report too large for the supervisor keeps of its traceback (its end).
SHRUNK_TRACEBACK_BYTES: Final = 16 << 10
# Room counted for each text beside its bytes: its field's tag and length, and the
# lengths of the messages around it, which grow with it.
TEXT_FRAMING_BYTES: Final = 16
# The most a cut's marker takes (``…[1048576 more bytes]``).
MARKER_BYTES: Final = 32
# The last resort's size for each text: a report whose other fields alone are too large.
MINIMAL_TEXT_BYTES: Final = 1 << 10
# The record that stands for the actions a shrunk report leaves out.
ACTIONS_LEFT_OUT: Final = "not in this report: it must fit the supervisor's message limit"


class ReportEncoder:
    """Serializes a run's ReportResultRequest for the outbox, never larger than ``max_bytes``.

    A report too large for the supervisor's message limit (a few MB of output, a deep
    recursion's traceback, a large code) is cut until it fits, each cut said in what is
    kept. Whole: the result's invocation id, outcome, exit, usage and failure message
    and type, the job id, the event and the callback's id, language and user. Then, in
    this order, each in what the ones before left: the traceback's last
    ``SHRUNK_TRACEBACK_BYTES`` (``…[N earlier bytes]`` before it); the actions, the
    first ones up to a quarter of the room (one last record counts the others); stdout
    and stderr (the shorter up to half), their ``*_truncated`` flags set when cut; the
    callback's trigger and code (the shorter up to half), their start with ``…[N more
    bytes]``. Should the whole fields alone not fit (never within the request bounds),
    the report is minimal: every text cut to ``MINIMAL_TEXT_BYTES`` with its marker,
    but the invocation id. The run history keeps the whole result.
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
        failure = result.failure
        bare = replace(result, stdout="", stderr="", actions=())
        if failure is not None:
            bare = replace(bare, failure=replace(failure, traceback=""))
        callback = invocation.callback
        request = report_request(
            replace(invocation, callback=replace(callback, code="", triggers="")), bare, ended_at
        )
        reported = request.result
        room = self.max_bytes - request.ByteSize() - 6 * TEXT_FRAMING_BYTES
        if room < 0:
            return self._minimal(invocation, result, ended_at)
        if failure is not None and failure.traceback:
            kept = cut_utf8_end(failure.traceback, min(SHRUNK_TRACEBACK_BYTES, room))
            reported.failure.traceback = kept
            room -= utf8_size(kept)
        room -= _add_actions(reported, result, room // 4)
        # Kept for the trigger's and the code's markers, however long the output.
        room -= 2 * MARKER_BYTES
        for name, text, cut in _shared(
            {"stdout": result.stdout, "stderr": result.stderr}, room, _utf8_prefix
        ):
            setattr(reported, name, text)
            if cut:
                setattr(reported, f"{name}_truncated", True)
            room -= utf8_size(text)
        texts = {"triggers": callback.triggers, "code": callback.code}
        for name, text, _ in _shared(texts, room + 2 * MARKER_BYTES, cut_utf8):
            setattr(request.callback, name, text)
        if request.ByteSize() > self.max_bytes:  # the sums above are meant to prevent it
            return self._minimal(invocation, result, ended_at)
        return request

    def _minimal(
        self, invocation: Invocation, result: RunResult, ended_at: float
    ) -> supervisor_pb2.ReportResultRequest:
        """The report with every text cut to ``MINIMAL_TEXT_BYTES``, but the invocation id."""
        request = report_request(
            invocation, replace(result, stdout="", stderr="", actions=()), ended_at
        )
        _cut_texts(request, MINIMAL_TEXT_BYTES)
        reported = request.result
        reported.invocation_id = result.invocation_id  # the supervisor's key: whole
        if result.failure is not None:
            reported.failure.traceback = cut_utf8_end(result.failure.traceback, MINIMAL_TEXT_BYTES)
        for name in ("stdout", "stderr"):
            text = getattr(result, name)
            kept = _utf8_prefix(text, MINIMAL_TEXT_BYTES)
            setattr(reported, name, kept)
            if len(kept) < len(text):
                setattr(reported, f"{name}_truncated", True)
        _add_actions(reported, result, 0)
        return request


def _add_actions(reported: executor_pb2.ExecuteResponse, result: RunResult, budget: int) -> int:
    """Add the first actions within ``budget`` bytes, and a record counting the others; their bytes."""
    before = reported.ByteSize()
    used = 0
    kept = 0
    for action in result.actions:
        record = convert.action_message(action)
        used += record.ByteSize() + ACTION_FRAMING_BYTES
        if used > budget:
            break
        reported.actions.append(record)
        kept += 1
    left_out = len(result.actions) - kept
    if left_out:
        reported.actions.add(verb="…", target=f"{left_out} more qb calls", message=ACTIONS_LEFT_OUT)
    return reported.ByteSize() - before


def _shared(
    texts: dict[str, str], room: int, cut: Callable[[str, int], str]
) -> Iterator[tuple[str, str, bool]]:
    """Each of two texts, whole or ``cut`` to its share of ``room`` bytes, and whether it was cut.

    The shorter keeps what it has, up to half the room; the other the rest.
    """
    room = max(0, room)
    sizes = {name: _utf8_size(text, room) for name, text in texts.items()}
    short, long_ = sorted(texts, key=lambda name: sizes[name])
    keep = {short: min(sizes[short], room // 2)}
    keep[long_] = min(sizes[long_], room - keep[short])
    for name, text in texts.items():
        cut_it = sizes[name] > keep[name]
        yield name, cut(text, keep[name]) if cut_it else text, cut_it


def _cut_texts(message: Message, max_bytes: int) -> None:
    """Cut every string field of ``message``, and of the messages in it, to ``max_bytes``."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING and not field.is_repeated:
            setattr(message, field.name, cut_utf8(value, max_bytes))
        elif field.type == field.TYPE_MESSAGE and not field.is_repeated:
            _cut_texts(value, max_bytes)


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
        """``reach`` is told of each call that found the supervisor away; an answer tells it nothing."""
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
                self._reach.report_failed(
                    err, took_it_all=time.monotonic() - started >= self._timeout_s
                )
            raise
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
            # Malformed, not a refusal: retried like an answer that does not parse.
            raise DeliveryError(
                f"the supervisor's answer was malformed: ReportResults answered"
                f" {len(response.results)} results for {len(messages)}",
                retryable=True,
            )
        return [entry.duplicate for entry in response.results]
