"""The gRPC server: every service registered on the one port, health, reflection, the guards.

The executor's three services always; the FarmService (farm.py) too when the executor
runs the embedded reference supervisor, whose farm it drives. One servicer per service
(the shape of grpc's ``multiplex_server`` example), each method under the one error
table (``errors.grpc_errors``). The server refuses to share its port
(``grpc.so_reuseport`` off): a second executor on a port already in use fails at start
instead of silently taking a share of the calls. What a connection can make it hold is
bounded by ``connections.py`` (keepalive, connection and stream caps, idle and age), and
its calls' headers by ``header_bound.py`` where gRPC does not bound them yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from executor.api import security
from executor.api.answer_turns import AnswerTurns
from executor.api.callback_executor import CallbackExecutorServicer
from executor.api.connection_watch import LOOK_EVERY_S, ConnectionWatch
from executor.api.connections import server_options
from executor.api.farm import FarmServicer
from executor.api.header_bound import HeaderBound
from executor.api.health import HealthService
from executor.api.interceptors import CallGuard
from executor.api.private_socket import PrivateSocket
from executor.api.reflection import enable_reflection
from executor.api.runs import RunServicer
from executor.api.triggers import TriggerServicer
from executor.api.unread_answers import UnreadAnswers
from executor.bounds import MAX_REQUEST_BYTES
from executor.config import Settings
from executor.dispatcher import Dispatcher
from executor.heap_return import LARGE_CALL_BYTES, HeapTrimmer
from executor.policies import PolicySet
from executor.runs.invocation_ids import InvocationIds, LocalIds
from executor.runs.metrics import Metrics
from executor.runs.recorder import Recorder
from executor.storage import StorageHealth
from executor.triggers.engine import TriggerEngine
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, farm_pb2, farm_pb2_grpc


class ServingProblem(Protocol):
    """What health follows: a problem ("" for none) and who hears it change (any thread)."""

    listeners: list[Callable[[str], None]]

    @property
    def problem(self) -> str: ...


SERVICES: Final = tuple(
    service.full_name for service in executor_pb2.DESCRIPTOR.services_by_name.values()
)
FARM_SERVICE: Final = farm_pb2.DESCRIPTOR.services_by_name["FarmService"].full_name


@dataclass
class Edge:
    """The executor's gRPC server, its health service and its channel to itself."""

    server: grpc.aio.Server
    port: int
    health: HealthService
    own_channel: grpc.aio.Channel
    # The services registered (health answers for each by name).
    services: tuple[str, ...] = SERVICES
    # Gives back the memory of large requests and answers after them (heap_return.py), and
    # of the side port's large pages.
    trimmer: HeapTrimmer = field(default_factory=HeapTrimmer)
    # The Unix socket ``own_channel`` reaches the server through (security.py).
    internal_socket: PrivateSocket | None = None
    # Says when the port's connections fill max_connections (connection_watch.py).
    connections: ConnectionWatch | None = None
    # The FarmService, when registered: its WaitJobs end at a stop's start as Watch streams do.
    farm: FarmServicer | None = None
    _stopping: bool = False
    # Why it is NOT_SERVING now, by what followed says it (``follow``); "" for none.
    _problems: dict[str, str] = field(default_factory=dict)

    def follow(self, source: ServingProblem, name: str) -> None:
        """Answer NOT_SERVING while ``source`` has a problem (or another does), SERVING after.

        The storage that cannot record results, every slot kept by a killed process
        (``StuckSlots``): each is one of the reasons, so one's end does not hide another.
        A problem said on the loop changes the status in the same step, so no call
        (a Check, a GetMetrics) sees the one without the other; one said on another
        thread reaches the loop first.
        """
        loop = asyncio.get_running_loop()

        def on_loop(problem: str) -> None:
            self._problems[name] = problem
            if not self._stopping:
                self.set_serving(not any(self._problems.values()))

        def changed(problem: str) -> None:
            if _running_loop() is loop:
                on_loop(problem)
            else:
                loop.call_soon_threadsafe(on_loop, problem)

        source.listeners.append(changed)
        if source.problem:  # met before now (start-up on a full disk)
            on_loop(source.problem)

    async def stop_serving(self) -> None:
        """NOT_SERVING from now on, whatever the problems followed do (the start of a stop).

        Then every Watch stream ends, its last word NOT_SERVING, and every farm WaitJobs,
        UNAVAILABLE (its client asks again): open, either would hold the server's stop for
        the whole grace period (health.py, farm.py).
        """
        self._stopping = True
        self.set_serving(False)
        await self.health.end_watches()
        if self.farm is not None:
            self.farm.end_waits()

    def set_serving(self, serving: bool) -> None:
        """Health of the server and of each service, all at once: SERVING, or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set_now(("", *self.services), status)

    async def close(self, grace_s: float) -> None:
        """Stop serving (calls in flight get ``grace_s`` to finish) and close our channel."""
        await self.server.stop(grace_s)
        if self.internal_socket is not None:
            self.internal_socket.remove()
        await self.own_channel.close()
        await self.trimmer.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # a thread of the executor's, not the loop's
        return None


def build(
    settings: Settings,
    credentials: grpc.ServerCredentials | None,
    *,
    metrics: Metrics,
    dispatcher: Dispatcher,
    engine: TriggerEngine,
    recorder: Recorder,
    farm: FarmServicer | None = None,
    policies: PolicySet | None = None,
    storage: StorageHealth | None = None,
    ids: InvocationIds | None = None,
) -> Edge:
    """The server with every service registered and its port bound; not started yet.

    ``farm`` is the embedded supervisor's FarmService, registered only when given.
    ``ids``: what Execute asks of a caller's invocation id, and claims it with (a
    fleet's ``FleetIds``); None: this executor's own firings and history.
    """
    server = grpc.aio.server(
        interceptors=security.server_interceptors(settings) or None,
        options=[
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            # Requests as sent only (identity): 16 KiB of gzip inflated to a 16 MiB request,
            # each held the loop ~0.15 s to decode, and 200 of them, 3 MB sent, held every
            # other caller for 30 s (probe 170). A compressed request is UNIMPLEMENTED.
            ("grpc.compression_enabled_algorithms_bitset", 1 << grpc.Compression.NoCompression),
            ("grpc.so_reuseport", 0),
            *server_options(settings),
        ],
    )
    trimmer = HeapTrimmer()
    # First: a call whose headers pass gRPC's bound is refused before any method is found.
    server.add_generic_rpc_handlers((HeaderBound(trimmer, metrics),))
    unread = UnreadAnswers(settings.unread_answers_max_bytes)
    # Registers each service's methods guarded.
    guarded = CallGuard(server, metrics, trimmer, unread)
    guarded.register(
        executor_pb2_grpc.add_CallbackExecutorServiceServicer_to_server,
        CallbackExecutorServicer(
            dispatcher,
            default_limits=settings.default_limits,
            max_limits=settings.max_limits,
            policies=policies,
            storage=storage,
            ids=ids or LocalIds(engine.holds_firing, recorder.recorded),
            label_owner=engine.store.label_owner,
        ),
    )
    # One turn for the answers read from the history: GetRun's, a repeated wait's.
    turns = AnswerTurns()
    guarded.register(
        executor_pb2_grpc.add_TriggerServiceServicer_to_server, TriggerServicer(engine, turns)
    )
    guarded.register(
        executor_pb2_grpc.add_RunServiceServicer_to_server,
        RunServicer(recorder, turns, progress=dispatcher.progress),
    )
    services = SERVICES
    if farm is not None:
        guarded.register(farm_pb2_grpc.add_FarmServiceServicer_to_server, farm)
        services = (*SERVICES, FARM_SERVICE)
    health_servicer = HealthService(metrics=metrics)
    guarded.register(health_pb2_grpc.add_HealthServicer_to_server, health_servicer)
    enable_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), guarded)
    port = security.add_port(server, settings, credentials)
    own_channel, internal_socket = security.own_channel(server, settings)
    # Several looks within a handshake timeout: silent peers hold their places that long.
    look_s = min(LOOK_EVERY_S, settings.handshake_timeout_seconds / 4)
    connections = ConnectionWatch(
        port,
        settings.max_connections,
        look_s,
        # As after a large call: the connections gone may have held requests sent in part.
        on_fewer=lambda: trimmer.after_call(LARGE_CALL_BYTES),
    )
    metrics.registry.register(connections)
    return Edge(
        server,
        port,
        health_servicer,
        own_channel,
        services,
        trimmer,
        internal_socket,
        connections,
        farm,
    )
