"""Assemble and run the gRPC server: sandbox probe, dispatcher, services, graceful stop.

With no ``supervisor`` address configured, the embedded reference supervisor (SQLite in
the data dir) is served on the same port and the executor talks to it over loopback,
the same code path a site's remote supervisor takes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from executor import security
from executor.config import Settings
from executor.dispatcher import Dispatcher
from executor.errors import ConfigError
from executor.metrics import Metrics
from executor.recorder import Recorder
from executor.runs_rpc import CapacityCounter, RunsService
from executor.runtimes.qube import QubeInterpreter
from executor.sandbox.process import SandboxOptions, SandboxRunner
from executor.sandbox.spawners import ColdSpawner, Spawner, ZygoteSpawner
from executor.sandbox.tier import describe_tier, sandbox_options
from executor.servicer import CallbackExecutorServicer
from executor.supervisor_link import GrpcSupervisor
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from supervisor_client.credentials import open_channel
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc
from supervisor_client.reference import ReferenceSupervisor, add_reference_supervisor
from supervisor_client.reference.forwarder import EventForwarder

logger = logging.getLogger(__name__)

MAX_REQUEST_BYTES: Final = 16 << 20
# sun_path holds 108 bytes, the terminating NUL included.
MAX_UNIX_SOCKET_PATH: Final = 107
EXECUTOR_SERVICE: Final = executor_pb2.DESCRIPTOR.services_by_name["CallbackExecutor"].full_name


@dataclass
class RunningServer:
    """A started executor; ``port`` is the bound port (useful with ':0')."""

    server: grpc.aio.Server
    port: int
    dispatcher: Dispatcher
    spawner: Spawner
    health: health.aio.HealthServicer
    supervisor_channel: grpc.aio.Channel
    # The executor's channel to its own port (the embedded supervisor's forwarder uses it).
    own_channel: grpc.aio.Channel
    # The embedded supervisor's private server (a Unix socket in the data dir), if any.
    supervisor_server: grpc.aio.Server | None
    options: SandboxOptions
    reference: ReferenceSupervisor | None
    engine: TriggerEngine
    trigger_store: TriggerStore
    engine_tasks: list[asyncio.Task[Any]]
    # The embedded supervisor's transitions, on their way to the engine (embedded mode only).
    forwarder: EventForwarder | None
    # Outbox, run history, callback logs and metrics (executor/recorder.py).
    recorder: Recorder | None = None

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, end running callbacks (killing their children), stop serving."""
        for service in ("", EXECUTOR_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        for task in self.engine_tasks:
            task.cancel()
        await asyncio.gather(*self.engine_tasks, return_exceptions=True)
        await self.engine.close()
        await self.dispatcher.drain()
        if self.recorder is not None:  # before server.stop: the embedded supervisor is on it
            await self.recorder.close()
        await self.server.stop(grace_s)
        if self.supervisor_server is not None:
            await self.supervisor_server.stop(grace_s)
        await self.spawner.close()
        self.trigger_store.close()
        await self.supervisor_channel.close()
        await self.own_channel.close()
        if self.options.cgroups is not None:
            self.options.cgroups.close()
        if self.reference is not None:
            self.reference.close()


async def start_embedded_supervisor(
    reference: ReferenceSupervisor, data_dir: Path
) -> tuple[grpc.aio.Server, str]:
    """Serve the reference supervisor on a private Unix socket, never on the public port.

    The Supervisor service trusts the ``actor`` it is told; on the public port any client,
    a callback with network access included, could claim to be root. The socket sits in
    the 0700 data dir, which the hardened tier hides from callbacks.
    """
    socket_path = data_dir / "supervisor.sock"
    if len(str(socket_path)) > MAX_UNIX_SOCKET_PATH:
        socket_path = Path(tempfile.mkdtemp(prefix="cbexec-")) / "supervisor.sock"
    socket_path.unlink(missing_ok=True)
    address = f"unix:{socket_path}"
    server = grpc.aio.server()
    add_reference_supervisor(server, reference)
    if server.add_insecure_port(address) == 0:
        raise ConfigError(f"data_dir: cannot listen on the supervisor socket {socket_path}")
    await server.start()
    return server, address


async def start(settings: Settings) -> RunningServer:
    """Build and start everything the settings describe."""
    credentials = security.server_credentials(settings)  # fail on bad TLS files before any start
    options = sandbox_options(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    metrics = Metrics()
    server = grpc.aio.server(
        interceptors=[*security.server_interceptors(settings), CapacityCounter(metrics)],
        # Above gRPC's 4 MiB default, so an oversized callback meets our own validation (a
        # clear INVALID_ARGUMENT naming the field) instead of a transport-level refusal.
        options=[("grpc.max_receive_message_length", MAX_REQUEST_BYTES)],
    )
    reference = None
    supervisor_server = None
    if settings.supervisor:
        supervisor_address = settings.supervisor
        # A remote supervisor never gets our token: it is not theirs.
        supervisor_channel = open_channel(settings.supervisor)
    else:
        reference = ReferenceSupervisor(str(settings.data_dir / "supervisor.db"))
        supervisor_server, supervisor_address = await start_embedded_supervisor(
            reference, settings.data_dir
        )
        supervisor_channel = grpc.aio.insecure_channel(supervisor_address)
    port = security.add_port(server, settings, credentials)
    if port == 0:
        raise ConfigError(f"bind: could not listen on {settings.bind}")
    own_channel = security.own_channel(server, settings, port)
    recorder = Recorder.open(settings, supervisor_channel, metrics)
    spawner: Spawner = (
        ZygoteSpawner(sys.executable, private_network=not options.network)
        if settings.launcher == "zygote"
        else ColdSpawner(sys.executable)
    )
    dispatcher = Dispatcher(
        runner=SandboxRunner(options, spawner, prepare_ahead=settings.prepare_ahead),
        supervisor=GrpcSupervisor(supervisor_channel, settings.supervisor_timeout_seconds),
        qube=QubeInterpreter(settings.mail_settings),
        languages=settings.languages,
        max_concurrent=settings.max_concurrent,
        max_queue=settings.max_queue,
        on_result=recorder.on_result,
    )
    trigger_store = TriggerStore(str(settings.data_dir / "triggers.db"))
    engine = TriggerEngine(
        trigger_store,
        dispatcher.execute,
        limits=settings.default_limits,
        universal_dirs=settings.universal_callback_dirs,
    )
    engine.reload_universal()
    executor_pb2_grpc.add_CallbackExecutorServicer_to_server(
        CallbackExecutorServicer(
            dispatcher, settings, engine, runs=RunsService(recorder, dispatcher, engine.stats)
        ),
        server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [EXECUTOR_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(services, server)
    await server.start()
    recorder.start()
    logger.info("endpoint security: %s", security.describe(settings))
    for service in ("", EXECUTOR_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    logger.info(
        "serving on port %d; supervisor %s; sandbox: %s, %s launcher; languages: %s; slots %d, queue %d",
        port,
        "embedded" if reference else supervisor_address,
        describe_tier(options),
        settings.launcher,
        ",".join(sorted(settings.languages)),
        settings.max_concurrent,
        settings.max_queue,
    )
    engine_tasks = [
        asyncio.create_task(engine.resume_pending()),
        asyncio.create_task(engine.run_timers()),
    ]
    forwarder = None
    if reference is not None:
        # The embedded supervisor talks to us as any supervisor would: over gRPC.
        forwarder = EventForwarder(reference, own_channel)
        engine_tasks.append(asyncio.create_task(forwarder.run()))
    return RunningServer(
        server,
        port,
        dispatcher,
        spawner,
        health_servicer,
        supervisor_channel,
        own_channel,
        supervisor_server,
        options,
        reference,
        engine,
        trigger_store,
        engine_tasks,
        forwarder,
        recorder,
    )


async def serve_forever(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    running = await start(settings)
    # What start-up made (modules, stubs, the server) lives as long as the process: the
    # collector need not walk it again on every full collection while callbacks run.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, running.engine.reload_universal)
    try:
        await stop.wait()
        logger.info("stopping: draining running callbacks")
    finally:
        await running.stop()
