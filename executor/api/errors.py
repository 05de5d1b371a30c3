"""The one table from domain errors to gRPC status codes, applied at every servicer method.

Three kinds of failure, three channels: a request the executor refuses is a gRPC status
(this table); a callback that ran and failed is data in an OK response; a bug in the
executor is INTERNAL with a generic message and an incident id (the traceback goes to
the log only, never to the caller).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc

from executor.errors import (
    AlreadyExistsError,
    CapacityError,
    ChangedMeanwhileError,
    ConfigError,
    DataLossError,
    ExecutorError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    TakenOverError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

# Most specific first; anything unmatched becomes INTERNAL with an incident id.
STATUS_BY_ERROR: Final[tuple[tuple[type[ExecutorError], grpc.StatusCode], ...]] = (
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    # ABORTED, not FAILED_PRECONDITION: the client retries at a higher level (gRPC's
    # status guide: restart the sequence), here from the first page.
    (ChangedMeanwhileError, grpc.StatusCode.ABORTED),
    # ABORTED, not UNAVAILABLE: a concurrency conflict the caller resolves (the other
    # run's result is the id's), not one to retry blindly (a resend runs it again).
    (TakenOverError, grpc.StatusCode.ABORTED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (CapacityError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (DataLossError, grpc.StatusCode.DATA_LOSS),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Request, Context], Awaitable[Response]]

# Status details travel in a trailer; gRPC refuses (and the client sees INTERNAL) beyond
# a few KiB. An error quoting a 60 KB trigger word is cut, keeping its start.
MAX_DETAILS_CHARS: Final = 2000


def bounded(message: str) -> str:
    """The message, cut to MAX_DETAILS_CHARS with a note saying how much was left out."""
    if len(message) <= MAX_DETAILS_CHARS:
        return message
    return f"{message[:MAX_DETAILS_CHARS]}... ({len(message) - MAX_DETAILS_CHARS} more characters)"


def status_for(error: ExecutorError) -> grpc.StatusCode:
    """The status code of a domain error (INTERNAL for one the table does not name)."""
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


async def abort_internal(context: Context, what: str) -> None:
    """Log the exception being handled under a new incident id and answer INTERNAL."""
    incident = uuid.uuid4().hex[:12]
    # Called from inside the handler of the exception being logged.
    logger.exception("internal error in %s, incident %s", what, incident)  # noqa: LOG004
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error in the executor (incident {incident})"
    )


# What a call is told when something it waited for was cancelled by the executor itself.
GAVE_UP: Final = (
    "the executor gave up on this call (a step it waited for was cancelled, not by the"
    " caller); try again"
)


def grpc_errors(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn domain errors into their status; log anything else and answer INTERNAL.

    A CancelledError that is not the call's own (its task is not being cancelled: a
    future or task of the executor's it awaited was) is UNAVAILABLE: let through, gRPC
    sends no status (the call hangs to its deadline) or CANCELLED, which a client takes
    for its own cancel and does not retry (probe 110). The caller's own cancellation
    (it cancelled, its deadline passed, the server stops) propagates untouched.
    """

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Request, context: Context) -> Response:
        # Only the handler holds the request, so it can let go of it (see CallGuard).
        calling = handler(self, request, context)
        del request
        try:
            return await calling
        except ExecutorError as err:
            if isinstance(err, CapacityError):
                context.set_trailing_metadata((("retry-after-s", f"{err.retry_after_s:g}"),))
            await context.abort(status_for(err), bounded(str(err)))
        except Exception:  # noqa: BLE001 - a bug of ours: INTERNAL with an incident id, logged
            await abort_internal(context, handler.__qualname__)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # the call's own
            logger.warning("%s: %s", handler.__qualname__, GAVE_UP, exc_info=True)
            await context.abort(grpc.StatusCode.UNAVAILABLE, GAVE_UP)
        raise AssertionError("unreachable: context.abort raises")

    return wrapper
