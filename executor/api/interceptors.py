"""The bearer-token check (a server interceptor), and the guard every unary call passes through.

``CallGuard`` decodes each request itself, so bytes that are not the request message
(random bytes, a truncated message, invalid UTF-8 in a string field, nesting too deep)
are answered INVALID_ARGUMENT with one log line, instead of gRPC Python's default
UNKNOWN "Unexpected <class 'DecodeError'>" and a traceback. A string field holding
invalid UTF-8, or whose messages nest too deep, is named (``undecodable.py``): protobuf's own error
does not say which. It also counts the calls refused RESOURCE_EXHAUSTED, whatever their
service and cause (a full queue, the trigger store's room, unread answers): most never
reach the dispatcher's ``on_result`` (nothing ran), so they are counted where every one
passes, as the status leaving the server.
After a call whose request or answer was large it has the heap trimmed
(``heap_return.py``), and counts a large answer until it has been read
(``unread_answers.py``), refusing calls whose answers can be big past that count. And
it tells the method how large its request came in (``request_bytes``): gRPC holds
those bytes until the call ends, so a queued Execute counts them against
``max_queue_bytes``.

Calls refused for their token are logged through ``RefusalLog``: anyone who can reach
the port can make them, so the log says so once a minute per address and reason, with
how many were left out, instead of once per call. A wrong token is answered after half a
second, 64 at a time for the whole port (``WrongTokenTurns``): 128 guesses a second at
most, as on the HTTP side port, however many calls and connections a guesser opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health

from executor.api.undecodable import undecodable_field
from executor.api.unread_answers import (
    BIG_ANSWER_METHODS,
    BIG_ANSWER_WHEN_WAITING,
    COUNTED_ANSWER_BYTES,
    RETRY_AFTER_S,
    AnswerRoom,
    UnreadAnswers,
    answer_room,
)
from executor.heap_return import LARGE_CALL_BYTES, HeapTrimmer
from executor.runs.metrics import Metrics

logger = logging.getLogger(__name__)

# Services callers may use without the token (load balancers, grpc_health_probe).
OPEN_SERVICES: Final = (f"/{health.SERVICE_NAME}/",)

Context = grpc.aio.ServicerContext[Any, Any]
Behavior = Callable[[Any, Context], Awaitable[Any]]
if TYPE_CHECKING:  # the stubs make it generic; the runtime class is not
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
S = TypeVar("S")
# A refused caller's address and reason is logged at most once per this many seconds.
REFUSAL_LOG_INTERVAL_S: Final = 60.0
# Addresses remembered at most; beyond them new ones share one entry (see RefusalLog).
REFUSAL_LOG_MAX_KEYS: Final = 1024
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["MethodHandler | None"]]
# A wrong token is answered after this long (as on the HTTP side port, web/auth.py), and
# at most this many wait at once: 128 guesses a second at most on this port.
WRONG_TOKEN_DELAY_S: Final = 0.5
WRONG_TOKENS_AT_ONCE: Final = 64
# The size, as received, of the request the current call is handling (each call is a task
# of its own, so its own value): set by CallGuard, 0 outside a guarded call.
request_bytes: Final = contextvars.ContextVar[int]("request_bytes", default=0)


@dataclass(slots=True)
class _Held:
    """A logged key: when its line was written, and how many refusals since were not."""

    logged_at: float
    left_out: int = 0


class RefusalLog:
    """WARNING lines for refused calls, at most one per (address, reason) per interval.

    The first refusal of a key is logged; those within the next ``interval_s`` are only
    counted, and the first one after it is logged with that count. Keys are bounded:
    when ``max_keys`` are held, the ones whose interval is over are let go (their counts
    logged), and a new address beyond them is counted under "other addresses".
    """

    def __init__(
        self,
        interval_s: float = REFUSAL_LOG_INTERVAL_S,
        *,
        max_keys: int = REFUSAL_LOG_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._held: dict[tuple[str, str], _Held] = {}

    def refused(self, address: str, method: str, reason: str) -> None:
        """Log (or count) that a call from ``address`` to ``method`` was refused for ``reason``."""
        now = self._clock()
        key = (address, reason)
        if key not in self._held and len(self._held) >= self._max_keys:
            self._let_go_of_ended(now)
            if len(self._held) >= self._max_keys:
                key = ("other addresses", reason)
        held = self._held.get(key)
        if held is not None and now - held.logged_at < self._interval_s:
            held.left_out += 1
            return
        left_out = held.left_out if held is not None else 0
        self._held[key] = _Held(now)
        logger.warning(
            "refused %s from %s: %s%s",
            method,
            key[0],
            reason,
            self._left_out_text(left_out),
        )

    def _let_go_of_ended(self, now: float) -> None:
        for key, held in list(self._held.items()):
            if now - held.logged_at >= self._interval_s:
                del self._held[key]
                if held.left_out:
                    logger.warning(
                        "refused calls from %s: %s%s",
                        key[0],
                        key[1],
                        self._left_out_text(held.left_out),
                    )

    def _left_out_text(self, left_out: int) -> str:
        if not left_out:
            return ""
        return f" ({left_out} more since the last such line, not logged)"


def peer_address(peer: str) -> str:
    """``context.peer()`` without the port: each new connection has a port of its own."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0] or rest
    return peer


class WrongTokenTurns:
    """Holds each wrong token's answer for ``delay_s``, ``at_once`` of them at a time.

    A guess is answered only once its turn is over, so however many calls a guesser
    makes at once, on however many connections, the port says "wrong" ``at_once /
    delay_s`` times a second at most. Beyond ``at_once`` a call waits for a turn in
    gRPC's own task for it (and one future here), in its refusal, its request never read
    (gRPC holds HTTP/2's first window of it, 64 KiB: ``connections.py``): nothing of
    ours per call, and no more calls than gRPC takes anyway (``max_connections`` x
    ``max_streams``), as many as an open Health.Watch lets anyone hold. Answering those
    at once instead, even with another status, would tell their guesses wrong at full
    speed. A caller that gives up (its deadline, a cancel) gives its turn back.
    """

    def __init__(
        self, delay_s: float = WRONG_TOKEN_DELAY_S, at_once: int = WRONG_TOKENS_AT_ONCE
    ) -> None:
        self._delay_s = delay_s
        self._turns = asyncio.Semaphore(at_once)

    async def wait(self) -> None:
        """Return once this wrong token's turn is over."""
        async with self._turns:
            await asyncio.sleep(self._delay_s)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without exactly one ``authorization: Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(
        self,
        token: str,
        refusals: RefusalLog | None = None,
        turns: WrongTokenTurns | None = None,
    ) -> None:
        # Without surrounding whitespace (a token file's newline), as clients send it.
        self._expected = token.strip().encode()
        self._refusals = refusals or RefusalLog()
        self._turns = turns or WrongTokenTurns()

    def _refusal(self, details: grpc.HandlerCallDetails) -> str:
        """Why the call may not go on; "" when it may."""
        if details.method.startswith(OPEN_SERVICES):
            return ""
        given = [
            value.encode() if isinstance(value, str) else value
            for key, value in details.invocation_metadata or ()
            if key == "authorization"
        ]
        if not given:
            return "no bearer token"
        if len(given) > 1:
            # Judging one of them would make the credential depend on their order.
            return "several authorization entries"
        # Whitespace around the value is no part of it, before the scheme as after the
        # token. The scheme in any case, as HTTP has it (RFC 9110 11.1).
        scheme, _, token = given[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return "not a bearer token"
        # Constant time: the comparison must not reveal how much of a guess was right.
        if hmac.compare_digest(token.strip(), self._expected):
            return ""
        return "wrong bearer token"

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        reason = self._refusal(handler_call_details)
        if not reason:
            return handler
        method = handler_call_details.method

        async def refuse(requests: Any, context: Context) -> Any:
            del requests  # never read (below)
            if reason == "wrong bearer token":
                # In the refusal, not before it is chosen: gRPC took the whole request of
                # a call waiting there (64 guesses of 15 MiB: 800 MB); here none of it.
                await self._turns.wait()
            # Here, not above: only the call's context knows who made it.
            self._refusals.refused(peer_address(context.peer()), method, reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _TOLD[reason])

        return _refusing_unread(handler, refuse)


# What the caller is told, by refusal: a caller who sent a token learns that it is wrong,
# never what it was.
_TOLD: Final = {
    "no bearer token": "this executor requires 'authorization: Bearer <token>' metadata",
    "not a bearer token": (
        "this executor requires 'authorization: Bearer <token>' metadata; "
        "the authorization given is not a bearer token"
    ),
    "wrong bearer token": "the bearer token does not match this executor's token",
    "several authorization entries": (
        "this executor requires one 'authorization: Bearer <token>' metadata entry; "
        "the call carried more than one"
    ),
}


def _request_type(method: str) -> Descriptor | None:
    """The request message of ``/package.Service/Method``; None when the pool lacks it."""
    service, _, name = method.strip("/").rpartition("/")
    try:
        return descriptor_pool.Default().FindMethodByName(f"{service}.{name}").input_type
    except KeyError:
        return None


class CallGuard:
    """Registers services on a server with each unary method guarded (see the module doc).

    Given where the generated ``add_*Servicer_to_server`` functions take the server (see
    ``register``), it wraps each method's handler once, at registration. A server
    interceptor would do the same per call, as a coroutine that builds a new handler.

    The methods are registered as generic handlers only. gRPC's aio server keeps one
    waiting task per *registered* method and waits on all of them for every call it
    takes: with this API's 19 methods that cost ~60 us of CPU per call (measured on a
    bare server), more than finding the method in a generic handler's dict.
    """

    def __init__(
        self,
        server: grpc.aio.Server,
        metrics: Metrics,
        trimmer: HeapTrimmer | None = None,
        unread: UnreadAnswers | None = None,
    ) -> None:
        self._server = server
        self._metrics = metrics
        self._trimmer = trimmer or HeapTrimmer()
        self._unread = unread
        self._refusals = RefusalLog()

    def register(self, add_to_server: Callable[[S, Any], None], servicer: S) -> None:
        """``add_to_server(servicer, server)`` (generated), each method guarded."""
        add_to_server(servicer, self)

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Nothing: the generated code gives the same methods next, by name (below)."""

    def add_registered_method_handlers(
        self, service: str, method_handlers: dict[str, MethodHandler]
    ) -> None:
        guarded = {
            name: self._guarded(f"/{service}/{name}", handler)
            for name, handler in method_handlers.items()
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, guarded),)
        )

    def _guarded(self, method: str, handler: MethodHandler) -> MethodHandler:
        if handler.unary_unary is None:
            return handler
        behavior: Behavior = handler.unary_unary  # type: ignore[assignment]  # aio handlers are async
        decode = handler.request_deserializer
        metrics = self._metrics
        request_type = _request_type(method)
        trimmer = self._trimmer
        unread = self._unread
        big = unread is not None and method in BIG_ANSWER_METHODS
        # Checked once decoded: only a request that waits (its ``wait``) has a big answer.
        big_when_waiting = unread is not None and method in BIG_ANSWER_WHEN_WAITING
        refusals = self._refusals

        async def answer(raw: bytes, context: Context) -> Any:
            if big and unread is not None:
                await _admit_big_answer(unread, context, method, refusals, metrics)
            try:
                request = decode(raw) if decode is not None else raw
            except (DecodeError, RecursionError, UnicodeDecodeError, ValueError) as err:
                logger.info("refused %s: the request does not decode: %s", method, err)
                refusal = f"the request is not a valid {method.rsplit('/', 1)[-1]} message"
                why = None if request_type is None else undecodable_field(request_type, raw)
                if why is not None:
                    refusal += f": {why}"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal)
            if big_when_waiting and unread is not None and getattr(request, "wait", False):
                await _admit_big_answer(unread, context, method, refusals, metrics)
            # Only the method holds the parsed request, so it can let go of it (Execute
            # does, once it has made its invocation: a queued run need not keep it).
            calling = behavior(request, context)
            del request
            try:
                return await calling
            finally:
                if context.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    metrics.note_rejected()

        async def guarded(raw: bytes, context: Context) -> Any:
            size = len(raw)
            request_bytes.set(size)
            answering = answer(raw, context)
            del raw  # ``answering`` holds it, and lets go of it when it aborts (below)
            try:
                reply = await answering
            except grpc.aio.AbortError as aborted:
                _let_go_of_frames(aborted)
                trimmer.after_call(size)
                raise
            except BaseException:
                # A cancelled GetRun or Execute may have made a big answer (the dashboard's
                # page gives up after its 5 s): what it took is given back all the same.
                trimmer.after_call(max(size, LARGE_CALL_BYTES if big or big_when_waiting else 0))
                raise
            _follow_answer(context, reply, size, unread, trimmer)
            return reply

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=None, response_serializer=handler.response_serializer
        )


async def _admit_big_answer(
    unread: UnreadAnswers,
    context: Context,
    method: str,
    refusals: RefusalLog,
    metrics: Metrics,
) -> None:
    """Refuse a call RESOURCE_EXHAUSTED while its share of unread answers is held.

    Else the call is left the same check for later (``unread_answers.answer_room``).
    Counted here: the refusal comes before the call's own count (``answer``) is armed.
    """
    peer = context.peer()
    if why := unread.refusal(peer):
        refusals.refused(peer_address(peer), method, "answers not read (unread_answers_max_bytes)")
        metrics.note_rejected()
        context.set_trailing_metadata((("retry-after-s", f"{RETRY_AFTER_S:g}"),))
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)
    # Checked again just before the answer's work starts (unread_answers.py).
    answer_room.set(AnswerRoom(unread, peer))


def _follow_answer(
    context: Context, reply: object, size: int, unread: UnreadAnswers | None, trimmer: HeapTrimmer
) -> None:
    """Count a large answer until its call has ended, and trim once it has."""
    # gRPC holds a large answer until the client has read it: count it and trim once the
    # call has ended (sent, or its connection gone), not when it was made.
    reply_bytes = reply.ByteSize() if isinstance(reply, Message) else 0
    largest = max(size, reply_bytes)
    release = None
    if unread is not None and reply_bytes >= COUNTED_ANSWER_BYTES:
        release = unread.hold(context.peer(), reply_bytes)
    if largest < LARGE_CALL_BYTES and release is None:
        return  # the others pay no callback

    def ended(_: Context) -> None:
        if release is not None:
            release()
        trimmer.after_call(largest)

    context.add_done_callback(ended)  # type: ignore[arg-type]  # stubs: a class, no Protocol


def _let_go_of_frames(aborted: BaseException) -> None:
    """Clear the ended frames of ``aborted``'s traceback and of the errors it came from.

    gRPC keeps an abort's exception on its call (``RPCState.abort_exception``) and every
    frame it went through holds the call's context: a reference cycle, which only the
    cyclic collector frees, and that an idle executor may not run for minutes. It held
    what those frames did: a refused Execute's request, bytes and parsed message, and
    the job dict made of it, up to 16 MiB each, long after the refusal was sent.
    """
    error: BaseException | None = aborted
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        _clear_ended_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def _clear_ended_frames(tb: TracebackType | None) -> None:
    """Clear the frames of ``tb`` that have ended; never one that still runs or waits.

    An error raised in several tasks (the callers of one failed shared commit) has their
    frames in its traceback too, and clearing a suspended coroutine's frame closes the
    coroutine: a result waiting to be tried again was dropped, and the stop then waited
    for it forever (probe 74). CPython has the collector track a frame only once it has
    ended (then it owns what it held); one running or waiting is not tracked.
    """
    while tb is not None:
        if gc.is_tracked(tb.tb_frame):
            with contextlib.suppress(RuntimeError):  # still running after all
                tb.tb_frame.clear()
        tb = tb.tb_next


def _refusing_unread(handler: MethodHandler, refuse: Behavior) -> MethodHandler:
    """A handler that runs ``refuse`` as the call comes, its request never read.

    gRPC receives a unary request whole before it calls the handler: a peer that
    declared 16 MiB and sent part of it had the executor hold what it sent, for as long
    as it kept the stream open (probe 167). A handler that streams its requests is
    called once the headers are in; the wire is the same for the caller, and the
    refusal's end lets go of what the stream had sent.
    """
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream is not None or handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
