"""supervisor_client's public surface: exact exports, one client method per RPC, error classes."""

from __future__ import annotations

import inspect
import re

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor

import supervisor_client
from supervisor_client import client as client_module
from supervisor_client import errors
from supervisor_client.qbcallback.v1 import executor_pb2, farm_pb2, types_pb2

pytestmark = pytest.mark.unit

EXPORTED = {
    "ClientClosedError",
    "ExecutorClient",
    "ExecutorRpcError",
    "FarmClient",
    "InvalidRequestError",
    "ReferenceSupervisor",
    "RetryableError",
    "SupervisorServicer",
    "add_reference_supervisor",
}


def test_all_is_exact_and_importable() -> None:
    assert sorted(supervisor_client.__all__) == sorted(EXPORTED)
    assert len(supervisor_client.__all__) == len(EXPORTED)
    for name in EXPORTED:
        assert getattr(supervisor_client, name) is not None


def test_public_names_of_the_package_are_only_the_exports() -> None:
    public = {
        name
        for name, value in vars(supervisor_client).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public == EXPORTED


def test_generated_modules_are_not_reexported() -> None:
    assert not any(name.endswith(("_pb2", "_pb2_grpc")) for name in supervisor_client.__all__)
    assert not hasattr(supervisor_client, "executor_pb2")


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize(
    "service", executor_pb2.DESCRIPTOR.services_by_name.values(), ids=lambda s: s.name
)
def test_the_client_wraps_every_executor_rpc(service: ServiceDescriptor) -> None:
    assert service.methods
    for method in service.methods:
        wrapper = getattr(supervisor_client.ExecutorClient, snake(method.name), None)
        assert inspect.iscoroutinefunction(wrapper), method.name
        assert "timeout" in inspect.signature(wrapper).parameters, method.name


def test_the_farm_client_wraps_every_farm_rpc() -> None:
    (service,) = farm_pb2.DESCRIPTOR.services_by_name.values()
    assert service.methods
    for method in service.methods:
        wrapper = getattr(supervisor_client.FarmClient, snake(method.name), None)
        assert inspect.iscoroutinefunction(wrapper), method.name
        assert "timeout" in inspect.signature(wrapper).parameters, method.name


def test_as_plain_keeps_numbers_and_short_outcome_names() -> None:
    run = executor_pb2.Run(
        invocation_id="i",
        job_id=2**40,
        outcome=executor_pb2.OUTCOME_FAILED,
        started_at=1.5,
        usage=executor_pb2.Usage(wall_seconds=0.25),
    )
    plain = client_module.as_plain(run)
    assert plain["job_id"] == 2**40
    assert plain["outcome"] == "FAILED"
    assert plain["event"] is None and plain["result"] is None
    assert plain["usage"] == {
        "wall_seconds": 0.25,
        "cpu_seconds": 0.0,
        "peak_rss_bytes": 0,
        "queue_seconds": 0.0,
    }


def test_outcome_names_round_trip() -> None:
    for name in client_module.OUTCOMES:
        assert client_module.outcome_name(client_module.outcome_value(name)) == name
    assert client_module.outcome_value("outcome_killed") == executor_pb2.OUTCOME_KILLED
    with pytest.raises(ValueError, match="expected one of SUCCEEDED"):
        client_module.outcome_value("FINE")


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.UNAVAILABLE, errors.RetryableError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.RetryableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.RetryableError),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidRequestError),
        (grpc.StatusCode.INTERNAL, errors.ExecutorRpcError),
        (grpc.StatusCode.NOT_FOUND, errors.ExecutorRpcError),
    ],
)
def test_from_rpc_error_sorts_by_retryability(
    code: grpc.StatusCode, error_type: type[errors.ExecutorRpcError]
) -> None:
    raw = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="why")

    typed = errors.from_rpc_error(raw)

    assert type(typed) is error_type
    assert (typed.code, typed.details, str(typed)) == (code, "why", f"{code.name}: why")


def test_from_rpc_error_without_details() -> None:
    raw = grpc.aio.AioRpcError(grpc.StatusCode.UNKNOWN, grpc.aio.Metadata(), grpc.aio.Metadata())

    assert errors.from_rpc_error(raw).details == ""


@pytest.mark.parametrize(
    "last_error",
    [
        "ipv4:127.0.0.1:50051: Socket closed",  # plaintext
        # TLS: the handshake's words around it (a full TLS port, probe 149)
        "ipv4:127.0.0.1:50051: Handshake read failed (Socket closed)",
    ],
)
def test_a_closed_connection_gets_the_transport_hint(last_error: str) -> None:
    details = f"failed to connect to all addresses; last error: UNAVAILABLE: {last_error}"
    raw = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details
    )

    assert errors.from_rpc_error(raw).details == (
        f"{details} [the executor closed the connection before answering: if the executor "
        "uses TLS (tls_cert), give its CA (--tls-ca, root_certificates); if it requires "
        "client certificates (tls_client_ca), give one it trusts (--tls-cert/--tls-key); "
        "or it had max_connections connections open]"
    )


def test_request_builder_rejects_what_the_messages_cannot_hold() -> None:
    with pytest.raises(ValueError, match="wall_clock"):
        client_module.build_execute_request(
            language="python", code="x", job={"id": 1}, limits={"wall_clock": 3}
        )
    with pytest.raises(ValueError, match="when"):
        client_module.build_execute_request(
            language="python", code="x", job={"id": 1}, event={"when": "now"}
        )
    request = client_module.build_execute_request(
        language="python", code="x", job=types_pb2.Job(id=4), invocation_id="fixed"
    )
    assert (request.invocation_id, request.context.job.id) == ("fixed", 4)
