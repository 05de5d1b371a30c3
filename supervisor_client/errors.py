"""Errors the executor client raises instead of grpc.aio.AioRpcError, sorted by what to do.

ExecutorRpcError            any failed call; ``code`` and ``details`` say why
├── RetryableError          UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED:
│                           the same request may succeed later (back off first;
│                           ``retry_after_s``: the executor's hint how long, if any)
├── InvalidRequestError     INVALID_ARGUMENT: the request itself is wrong; never retry
└── ClientClosedError       CANCELLED, raised by the client itself: it (or the channel
                            it was given) was closed; nothing was sent

A callback that ran and failed is not an error: it is an OK response whose outcome
says so.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import grpc

__all__ = [
    "ClientClosedError",
    "ExecutorRpcError",
    "InvalidRequestError",
    "RetryableError",
    "checked_call",
    "from_rpc_error",
]

_Response = TypeVar("_Response")

# The trailing metadata key of the executor's hint how long to wait before a retry.
RETRY_AFTER_KEY: Final = "retry-after-s"


class ExecutorRpcError(Exception):
    """A call to the executor failed with a gRPC status other than OK."""

    def __init__(
        self, code: grpc.StatusCode, details: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        # The executor's ``retry-after-s`` trailing metadata: seconds to wait before sending
        # the request again (1 for a full queue, 60 for triggers_max_bytes); None: no hint.
        self.retry_after_s = retry_after_s


class RetryableError(ExecutorRpcError):
    """The executor could not take the request now; retrying later is sensible."""


class InvalidRequestError(ExecutorRpcError):
    """The executor refused the request as malformed; retrying cannot help."""


class ClientClosedError(ExecutorRpcError):
    """The client was used after ``close()`` (or its given channel was closed): nothing sent."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.CANCELLED, "the client is closed; open a new one to call again"
        )


_CLASS_BY_CODE: Final[dict[grpc.StatusCode, type[ExecutorRpcError]]] = {
    grpc.StatusCode.UNAVAILABLE: RetryableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RetryableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: RetryableError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
}


# gRPC's words when a fleet channel's health checks (targets.py) leave it no executor:
# "connections to all backends failing; last error: ipv4:10.0.0.1:50051: backend unhealthy".
_ALL_UNHEALTHY: Final = re.compile(r"last error: (?:ipv[46]:)?(\S+): backend unhealthy")


def _explained(code: grpc.StatusCode, details: str) -> str:
    """``details``, saying in plain words what gRPC's text means where it is cryptic.

    Every executor of a fleet NOT_SERVING (its storage cannot record results: a full
    disk, PostgreSQL down; every slot held by a killed process that has not ended; or
    it is stopping) leaves the channel nothing to call, even
    for a read such as GetMetrics, and gRPC says only "backend unhealthy": the executor
    answers why when asked directly, so the error says whom to ask. gRPC names only the
    last executor it tried: of the others, one may as well be down or frozen.
    """
    if code != grpc.StatusCode.UNAVAILABLE:
        return details
    unhealthy = _ALL_UNHEALTHY.search(details)
    if unhealthy is None:
        return _transport_hint(details)
    last = unhealthy.group(1)
    return (
        f"no executor of the fleet is SERVING (the one gRPC tried last, {last}, reports"
        " NOT_SERVING: its storage cannot record results, e.g. a full disk or PostgreSQL"
        " unreachable, every slot is held by a killed process that has not ended, or it"
        " is stopping; any other reports the same or could not be reached); ask one by"
        f" its own address for why, e.g. `cbexec metrics --address {last}`"
        f" (storage_problem, slots_problem) [{details}]"
    )


# A connection closed before gRPC's handshake ended: what a plaintext client sees from a
# TLS port, and a client without an accepted certificate from a mutual TLS port; a TLS
# client at a full port sees it inside the handshake's words ("Handshake read failed
# (Socket closed)").
_CLOSED: Final = ("Socket closed", "Socket closed)")
# What OpenSSL says when the peer's first bytes are no TLS record: a plaintext port.
_NOT_TLS: Final = "WRONG_VERSION_NUMBER"


def _transport_hint(details: str) -> str:
    """``details`` with the likely transport mistake, when gRPC's words are only the symptom.

    The client cannot tell these apart from the connection alone (the handshake error is
    the server's to see), so the hint names each cause it may be.
    """
    if _NOT_TLS in details:
        return (
            f"{details} [the address does not speak TLS: the executor may be plaintext (no "
            "tls_cert); leave out --tls-ca and the client certificate]"
        )
    if details.endswith(_CLOSED):
        return (
            f"{details} [the executor closed the connection before answering: if the executor "
            "uses TLS (tls_cert), give its CA (--tls-ca, root_certificates); if it requires "
            "client certificates (tls_client_ca), give one it trusts (--tls-cert/--tls-key); "
            "or it had max_connections connections open]"
        )
    return details


def from_rpc_error(err: grpc.aio.AioRpcError) -> ExecutorRpcError:
    """The typed error for a failed call (the caller chains it with ``raise ... from err``)."""
    code = err.code()
    error_class = _CLASS_BY_CODE.get(code, ExecutorRpcError)
    return error_class(code, _explained(code, err.details() or ""), _retry_after_s(err))


def _retry_after_s(err: grpc.aio.AioRpcError) -> float | None:
    """The call's ``retry-after-s`` hint in seconds; None when it has none (or a malformed one)."""
    for key, value in err.trailing_metadata() or ():
        if key == RETRY_AFTER_KEY:
            try:
                seconds = float(value)
            except (TypeError, ValueError):
                return None
            return seconds if seconds >= 0 else None
    return None


async def checked_call(closed: bool, call: Callable[[], Awaitable[_Response]]) -> _Response:
    """Make the call (``call()`` starts it) with a failure as the typed error.

    A closed client starts nothing: gRPC's C core can corrupt the heap when a method is
    first used on a closed channel. A channel closed by its owner is grpc's UsageError,
    raised as ClientClosedError too; so is the CancelledError grpc.aio raises in a call
    under way when its channel is closed (the caller's task was not cancelled: a bare
    CancelledError would pass ``except Exception`` and read as the caller's own).
    """
    if closed:
        raise ClientClosedError
    try:
        return await call()
    except grpc.aio.AioRpcError as err:
        raise from_rpc_error(err) from err
    except grpc.aio.UsageError as err:
        raise ClientClosedError from err
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # the caller's own cancellation
        raise ClientClosedError from None
