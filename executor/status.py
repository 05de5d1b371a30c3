"""The one table from domain errors to gRPC status codes, applied at the servicer boundary."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc

from executor.errors import (
    CapacityError,
    ConfigError,
    ExecutorError,
    InvalidRequestError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

# Most specific first; anything unmatched becomes INTERNAL with an incident id.
STATUS_BY_ERROR: Final[tuple[tuple[type[ExecutorError], grpc.StatusCode], ...]] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)

Response = TypeVar("Response")


# Status details travel in a trailer; gRPC refuses (and the client sees INTERNAL) beyond
# a few KiB. An error quoting a 60 KB trigger word is cut, keeping its start.
MAX_DETAILS_CHARS: Final = 2000


def bounded(message: str) -> str:
    """The message, cut to MAX_DETAILS_CHARS with a note saying how much was left out."""
    if len(message) <= MAX_DETAILS_CHARS:
        return message
    return f"{message[:MAX_DETAILS_CHARS]}... ({len(message) - MAX_DETAILS_CHARS} more characters)"


def status_for(error: ExecutorError) -> grpc.StatusCode:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def grpc_errors(
    handler: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Response]]:
    """Turn domain errors into their status; log anything else and answer INTERNAL."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Response:
        try:
            return await handler(self, request, context)
        except ExecutorError as err:
            if isinstance(err, CapacityError):
                context.set_trailing_metadata((("retry-after-s", f"{err.retry_after_s:g}"),))
            await context.abort(status_for(err), bounded(str(err)))
        except Exception:
            incident = uuid.uuid4().hex[:12]
            logger.exception("internal error, incident %s", incident)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in the executor (incident {incident})"
            )
        raise AssertionError("unreachable: context.abort raises")

    return wrapper
