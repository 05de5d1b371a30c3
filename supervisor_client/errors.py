"""Errors the executor client raises instead of grpc.aio.AioRpcError, sorted by what to do.

ExecutorRpcError            any failed call; ``code`` and ``details`` say why
├── RetryableError          UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED:
│                           the same request may succeed later (back off first)
└── InvalidRequestError     INVALID_ARGUMENT: the request itself is wrong; never retry

A callback that ran and failed is not an error: it is an OK response whose outcome
says so.
"""

from __future__ import annotations

from typing import Final

import grpc

__all__ = ["ExecutorRpcError", "InvalidRequestError", "RetryableError", "from_rpc_error"]


class ExecutorRpcError(Exception):
    """A call to the executor failed with a gRPC status other than OK."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class RetryableError(ExecutorRpcError):
    """The executor could not take the request now; retrying later is sensible."""


class InvalidRequestError(ExecutorRpcError):
    """The executor refused the request as malformed; retrying cannot help."""


_CLASS_BY_CODE: Final[dict[grpc.StatusCode, type[ExecutorRpcError]]] = {
    grpc.StatusCode.UNAVAILABLE: RetryableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RetryableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: RetryableError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
}


def from_rpc_error(err: grpc.aio.AioRpcError) -> ExecutorRpcError:
    """The typed error for a failed call (the caller chains it with ``raise ... from err``)."""
    code = err.code()
    return _CLASS_BY_CODE.get(code, ExecutorRpcError)(code, err.details() or "")
