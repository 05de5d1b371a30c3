"""The one error table: each domain error becomes its documented status; anything else INTERNAL."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from executor.api.errors import STATUS_BY_ERROR, grpc_errors, status_for
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
    StoreFullError,
    TakenOverError,
    UnavailableError,
)
from executor.storage import StorageError
from tests.helpers.servicer_context import Aborted, FakeContext, as_context

pytestmark = pytest.mark.unit


class Servicer:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    @grpc_errors
    async def Call(self, request: Any, context: Any) -> str:
        raise self.error


# The README's error paragraph, as a table: the documented status of each domain error.
DOCUMENTED = [
    (InvalidRequestError("bad field"), grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError("no such run"), grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError("id of another run"), grpc.StatusCode.ALREADY_EXISTS),
    (ChangedMeanwhileError("job 5 was registered again"), grpc.StatusCode.ABORTED),
    (TakenOverError("another run of invocation_id 'x' took over"), grpc.StatusCode.ABORTED),
    (CapacityError("busy", retry_after_s=1.5), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreFullError("cannot register job 5: ..."), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError("stopping"), grpc.StatusCode.UNAVAILABLE),
    (StorageError("/data/outbox.db", "database or disk is full"), grpc.StatusCode.UNAVAILABLE),
    (ConfigError("bad setting"), grpc.StatusCode.FAILED_PRECONDITION),
    (PermissionDeniedError("job 3 belongs to alice"), grpc.StatusCode.PERMISSION_DENIED),
    (DataLossError("/data/runs.db: database disk image is malformed"), grpc.StatusCode.DATA_LOSS),
]


@pytest.mark.parametrize(("error", "code"), DOCUMENTED, ids=lambda v: type(v).__name__)
async def test_each_domain_error_has_its_documented_status(
    error: ExecutorError, code: grpc.StatusCode
) -> None:
    context = FakeContext()
    with pytest.raises(Aborted) as aborted:
        await Servicer(error).Call(None, as_context(context))
    assert aborted.value.code == code == status_for(error)
    assert aborted.value.details == str(error)


def test_the_table_names_every_domain_error() -> None:
    named = {error_type for error_type, _ in STATUS_BY_ERROR}
    assert named == {type(error) for error, _ in DOCUMENTED} - {StorageError, StoreFullError}
    assert status_for(ExecutorError("a new kind nobody mapped")) == grpc.StatusCode.INTERNAL


async def test_capacity_refusals_say_when_to_retry() -> None:
    context = FakeContext()
    with pytest.raises(Aborted):
        await Servicer(CapacityError("busy", retry_after_s=2.5)).Call(None, as_context(context))
    assert context.trailers == (("retry-after-s", "2.5"),)


async def test_a_bug_is_internal_with_an_incident_id_and_no_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(Aborted) as aborted:
        await Servicer(KeyError("secret internals")).Call(None, as_context(FakeContext()))
    assert aborted.value.code == grpc.StatusCode.INTERNAL
    assert "secret" not in aborted.value.details
    incident = aborted.value.details.rsplit("incident ", 1)[1].rstrip(")")
    assert incident in caplog.text and "KeyError" in caplog.text


async def test_long_details_are_bounded() -> None:
    with pytest.raises(Aborted) as aborted:
        await Servicer(InvalidRequestError("x" * 10_000)).Call(None, as_context(FakeContext()))
    assert len(aborted.value.details) < 2100


class Waiting:
    """A handler waiting on something the executor itself may cancel (a task of its own)."""

    def __init__(self) -> None:
        self.inner: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting = asyncio.Event()

    @grpc_errors
    async def Call(self, request: Any, context: Any) -> str:
        self.waiting.set()
        return await self.inner


async def test_a_cancel_of_the_executors_own_is_unavailable_not_cancelled() -> None:
    # gRPC answers a handler's CancelledError with no status at all (the call hangs to its
    # deadline) or CANCELLED, which a client takes for its own close and never retries.
    servicer = Waiting()
    call = asyncio.ensure_future(servicer.Call(None, as_context(FakeContext())))
    await servicer.waiting.wait()
    servicer.inner.cancel()
    with pytest.raises(Aborted) as refused:
        await call
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    assert "try again" in refused.value.details


async def test_the_callers_own_cancel_still_ends_the_handler() -> None:
    servicer = Waiting()
    call = asyncio.ensure_future(servicer.Call(None, as_context(FakeContext())))
    await servicer.waiting.wait()
    call.cancel()  # as gRPC does when the caller cancels or its deadline passes
    with pytest.raises(asyncio.CancelledError):
        await call
