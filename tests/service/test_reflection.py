"""Server reflection as grpcurl uses it: every symbol it describes resolves to its file."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from executor.api.edge import FARM_SERVICE, SERVICES
from tests.conftest import Stack

pytestmark = pytest.mark.service

ALL_SERVICES = (*SERVICES, FARM_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)


async def ask(channel: grpc.aio.Channel, **question: Any) -> Any:
    """The reflection service's answer to one request."""
    # The reflection stub is typed for sync channels; on an aio one the call streams.
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
    async for answer in stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(**question)]), timeout=5
    ):
        return answer
    raise AssertionError("no reflection answer")


def defining_file(answer: Any) -> descriptor_pb2.FileDescriptorProto:
    """The file a file_containing_symbol answer is about (its dependencies follow it)."""
    assert answer.WhichOneof("message_response") == "file_descriptor_response", answer
    return descriptor_pb2.FileDescriptorProto.FromString(
        answer.file_descriptor_response.file_descriptor_proto[0]
    )


async def test_every_method_resolves_to_its_services_file(stack_warm: Stack) -> None:
    # grpcurl's `describe SERVICE.METHOD` asks this. The default (upb) descriptor pool
    # does not index methods, so each was NOT_FOUND.
    channel = stack_warm.channel
    listed = await ask(channel, list_services="")
    assert {s.name for s in listed.list_services_response.service} == set(ALL_SERVICES)
    for service in ALL_SERVICES:
        package, _, name = service.rpartition(".")
        file = defining_file(await ask(channel, file_containing_symbol=service))
        (methods,) = [s.method for s in file.service if s.name == name]
        assert methods
        for method in methods:
            symbol = f"{service}.{method.name}"
            answer = await ask(channel, file_containing_symbol=symbol)
            assert defining_file(answer).name == file.name, symbol
            assert defining_file(answer).package == package


async def test_other_symbols_still_resolve_and_unknown_ones_are_not_found(
    stack_warm: Stack,
) -> None:
    channel = stack_warm.channel
    for symbol in (
        "qbcallback.v1.ExecuteRequest",
        "qbcallback.v1.ExecuteRequest.invocation_id",
        "qbcallback.v1.OUTCOME_KILLED",
    ):
        file = defining_file(await ask(channel, file_containing_symbol=symbol))
        assert file.name == "qbcallback/v1/executor.proto", symbol
    for symbol in (
        "qbcallback.v1.CallbackExecutorService.NoSuchMethod",
        "qbcallback.v1.NoSuchService.Execute",
        "Execute",
    ):
        answer = await ask(channel, file_containing_symbol=symbol)
        assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], symbol
