"""The standard gRPC health service, asked from a test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _stub(channel: grpc.aio.Channel) -> Any:
    # The health stubs are typed for sync channels only; on an aio channel the calls
    # are awaitable (Check) and async-iterable (Watch).
    return health_pb2_grpc.HealthStub(channel)


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    """The status the server reports for ``service`` ("" for the server as a whole)."""
    reply = await _stub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def health_list(channel: grpc.aio.Channel) -> dict[str, int]:
    """Every service's status, by name, as the server's List reports them."""
    request = health_pb2.HealthListRequest()  # type: ignore[attr-defined]  # the stubs predate List
    reply = await _stub(channel).List(request, timeout=5)
    return {service: int(answer.status) for service, answer in reply.statuses.items()}


def health_updates(channel: grpc.aio.Channel, service: str = "") -> AsyncIterator[Any]:
    """Every status the server announces for ``service``, as it changes."""
    updates: AsyncIterator[Any] = _stub(channel).Watch(
        health_pb2.HealthCheckRequest(service=service)
    )
    return updates
