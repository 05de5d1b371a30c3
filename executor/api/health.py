"""grpc.health.v1: Check, List and Watch of each service's status, with Watch streams that end at a stop.

grpcio-health-checking's servicer keeps every Watch stream open until the client leaves,
and a fleet client's channel (``healthCheckConfig``) always has one open. At a stop the
gRPC server then waits out its whole grace period (``STOP_GRACE_S``, 5 s) for streams
that will never end on their own, so every restart took 5 s longer. Here a stop says
NOT_SERVING to each watcher, then ends its stream (OK): the client has heard the last
word there is, and the server closes as soon as the calls that matter have finished.

Health is open to callers without the token, and each Watch is a coroutine held until
its client leaves (about 20 KB: 60,000 of them took 1.2 GB, probe 85), so at most
``MAX_WATCHES`` are open at once; a further one is refused RESOURCE_EXHAUSTED (counted
with the executor's other such refusals, ``Metrics.note_rejected``). A fleet
client's channel holds one per executor. A name is quoted in an error cut to the
status details' bound (``errors.bounded``): gRPC cannot send a status whose details
pass ~16 KB, and a client got RESOURCE_EXHAUSTED "Stream removed" for NOT_FOUND. A Watch
of a name longer than ``MAX_WATCHED_NAME`` is NOT_FOUND at once, not watched: no such
name is ever served, and each stream held its request (1,000 names of 4 MB: ~4 GB).

Check answers with an id of this process in its initial metadata
(``supervisor_client.first_calls.INSTANCE_KEY``): gRPC's Python client cannot tell which
executor of a fleet answered a call, and a new fleet client asks until each has.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from executor.api.errors import bounded
from executor.runs.metrics import Metrics
from supervisor_client.first_calls import INSTANCE_KEY

# A HealthCheckResponse.ServingStatus value (its stub's nested enum is no type to mypy).
Status: TypeAlias = int
SERVICE_UNKNOWN: Final[Status] = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
# types-grpcio-health-checking's stubs predate Health/List: they lack its messages.
HealthListResponse: Final[Any] = health_pb2.HealthListResponse  # type: ignore[attr-defined]
# Watch streams open at once, over all clients.
MAX_WATCHES: Final = 1000
# The longest service name a Watch waits on (the names served are a few dozen characters).
MAX_WATCHED_NAME: Final = 1024


class HealthService(health_pb2_grpc.HealthServicer):
    """The statuses by service name ("" is the whole server), and who watches them."""

    def __init__(self, max_watches: int = MAX_WATCHES, metrics: Metrics | None = None) -> None:
        self._status: dict[str, Status] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._max_watches = max_watches
        self._metrics = metrics
        self._watches = 0  # open now
        self._changed = asyncio.Condition()  # one for all: a status changes a few times a life
        self._waking: asyncio.Future[None] | None = None  # watchers told of a set_now
        self._ended = False
        self._instance = ((INSTANCE_KEY, uuid.uuid4().hex),)

    def status_name(self, service: str = "") -> str:
        """A service's status as Check names it ("SERVING"); "SERVICE_UNKNOWN" for one not served."""
        status = self._status.get(service, SERVICE_UNKNOWN)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    async def set(self, service: str, status: Status) -> None:
        """Set a service's status; its watchers hear it (unless the watches have ended)."""
        async with self._changed:
            self._status[service] = status
            self._changed.notify_all()

    def set_now(self, services: Iterable[str], status: Status) -> None:
        """Set each service's status in this step (Check and List answer it at once).

        Its watchers hear it once the loop turns: the condition they wait on is taken
        in a task, one pending at a time, which tells them whatever is latest then.
        """
        for service in services:
            self._status[service] = status
        if self._waking is None or self._waking.done():
            self._waking = asyncio.ensure_future(self._wake_watchers())

    async def _wake_watchers(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def end_watches(self) -> None:
        """End every Watch stream, now and from now on, after it has sent the status now.

        Called at a stop once every status is NOT_SERVING: each watcher's last message
        says so, and a Watch begun later gets it and ends at once.
        """
        async with self._changed:
            self._ended = True
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        """The status now, and which process says it; NOT_FOUND for a service that is not served."""
        await context.send_initial_metadata(self._instance)
        status = self._status.get(request.service)
        if status is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, bounded(f"no service {request.service!r} here")
            )
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Every service's status now, "" (the whole server) among them, as Check answers each.

        health.proto lets a server refuse a list too long to send (RESOURCE_EXHAUSTED);
        this one holds a handful of names, fixed at start-up.
        """
        return HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._status.items()
            }
        )

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now, then each change, until the client leaves or a stop ends it.

        RESOURCE_EXHAUSTED when ``max_watches`` are open already; NOT_FOUND for a name
        too long to be any service's.
        """
        if len(request.service) > MAX_WATCHED_NAME and request.service not in self._status:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                bounded(
                    f"a name of more than {MAX_WATCHED_NAME} characters is never served:"
                    f" no service {request.service!r} here"
                ),
            )
        if self._watches >= self._max_watches:
            if self._metrics is not None:
                self._metrics.note_rejected()
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at most {self._max_watches} health Watch streams may be open at once; "
                "use Check, or end another Watch",
            )
        self._watches += 1
        try:
            async for answer in self._updates(request.service):
                yield answer
        finally:
            self._watches -= 1

    async def _updates(self, service: str) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last: Status | None = None
        while True:
            async with self._changed:  # not held while sending: a slow reader holds no one up
                await self._changed.wait_for(functools.partial(self._news, service, last))
                status = self._status.get(service, SERVICE_UNKNOWN)
                ended = self._ended
            if status != last:  # the latest is what a watcher wants, not every step
                last = status
                yield health_pb2.HealthCheckResponse(status=status)
            if ended:
                return

    def _news(self, service: str, last: Status | None) -> bool:
        """Whether a watcher of ``service`` that last said ``last`` has something to do."""
        return self._ended or self._status.get(service, SERVICE_UNKNOWN) != last
