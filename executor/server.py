"""Assemble and run the gRPC server: sandbox probe, dispatcher, services, graceful stop.

With no ``supervisor`` address configured, the embedded reference supervisor (SQLite in
the data dir) is served on the same port and the executor talks to it over loopback,
the same code path a site's remote supervisor takes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import site
import subprocess
import sys
from dataclasses import dataclass
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from executor.config import Settings
from executor.dispatcher import Dispatcher
from executor.errors import ConfigError
from executor.qube_language import QubeInterpreter
from executor.sandbox.cgroup import PidsCgroups
from executor.sandbox.process import SandboxOptions, SandboxRunner
from executor.sandbox.spawners import ColdSpawner, Spawner, ZygoteSpawner
from executor.servicer import CallbackExecutorServicer
from executor.supervisor_link import GrpcSupervisor
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, supervisor_pb2
from supervisor_client.reference import ReferenceSupervisor, add_reference_supervisor

logger = logging.getLogger(__name__)

EXECUTOR_SERVICE: Final = executor_pb2.DESCRIPTOR.services_by_name["CallbackExecutor"].full_name
SUPERVISOR_SERVICE: Final = supervisor_pb2.DESCRIPTOR.services_by_name["Supervisor"].full_name
_PROBE_PID_NAMESPACE: Final = (
    "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
    "os._exit(0 if libc.unshare(0x20000000) == 0 else 1)"
)


def probe_pid_namespace(python: str) -> bool:
    """Whether a child may unshare a PID namespace here (root, or unprivileged userns)."""
    probe = subprocess.run(  # noqa: S603 - fixed argv
        [python, "-I", "-S", "-c", _PROBE_PID_NAMESPACE], check=False, capture_output=True
    )
    return probe.returncode == 0


def sandbox_options(settings: Settings) -> SandboxOptions:
    """Probe the host once and decide the sandbox tier; 'on' settings must be satisfiable."""
    python = sys.executable
    pid_namespace = settings.pid_namespace != "off" and probe_pid_namespace(python)
    if settings.pid_namespace == "on" and not pid_namespace:
        raise ConfigError("pid_namespace: 'on' but this host does not allow a PID namespace")
    if not settings.network and not pid_namespace:
        raise ConfigError("network: false needs namespaces, which this host does not allow")
    cgroups = None if settings.cgroup == "off" else PidsCgroups.create(settings.max_concurrent)
    if settings.cgroup == "on" and cgroups is None:
        raise ConfigError("cgroup: 'on' but no writable pids cgroup was found")
    return SandboxOptions(
        site_paths=tuple(p for p in site.getsitepackages() if os.path.isdir(p)),
        pid_namespace=pid_namespace,
        network=settings.network,
        grace_s=settings.grace_seconds,
        cgroups=cgroups,
    )


@dataclass
class RunningServer:
    """A started executor; ``port`` is the bound port (useful with ':0')."""

    server: grpc.aio.Server
    port: int
    dispatcher: Dispatcher
    spawner: Spawner
    health: health.aio.HealthServicer
    supervisor_channel: grpc.aio.Channel
    options: SandboxOptions
    reference: ReferenceSupervisor | None

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, end running callbacks (killing their children), stop serving."""
        for service in ("", EXECUTOR_SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.dispatcher.drain()
        await self.server.stop(grace_s)
        await self.spawner.close()
        await self.supervisor_channel.close()
        if self.options.cgroups is not None:
            self.options.cgroups.close()
        if self.reference is not None:
            self.reference.close()


def describe_tier(options: SandboxOptions) -> str:
    """One line saying which sandbox mechanisms are active."""
    parts = [
        "rlimits(cpu,as,fsize,nofile,core)",
        "pid namespace" if options.pid_namespace else "NO pid namespace (same-uid kill risk)",
        "pids cgroup" if options.cgroups else "RLIMIT_NPROC process cap (ignored for root)",
        "host network" if options.network else "private network namespace",
    ]
    return ", ".join(parts)


async def start(settings: Settings) -> RunningServer:
    """Build and start everything the settings describe."""
    options = sandbox_options(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    server = grpc.aio.server()
    reference = None
    if not settings.supervisor:
        reference = ReferenceSupervisor(str(settings.data_dir / "supervisor.db"))
        add_reference_supervisor(server, reference)
    port = server.add_insecure_port(settings.bind)
    if port == 0:
        raise ConfigError(f"bind: could not listen on {settings.bind}")
    supervisor_address = settings.supervisor or f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(supervisor_address)
    spawner: Spawner = (
        ZygoteSpawner(sys.executable) if settings.launcher == "zygote" else ColdSpawner(sys.executable)
    )
    dispatcher = Dispatcher(
        runner=SandboxRunner(options, spawner),
        supervisor=GrpcSupervisor(channel, settings.supervisor_timeout_seconds),
        qube=QubeInterpreter(settings.mail),
        languages=settings.languages,
        max_concurrent=settings.max_concurrent,
        max_queue=settings.max_queue,
    )
    executor_pb2_grpc.add_CallbackExecutorServicer_to_server(
        CallbackExecutorServicer(dispatcher, settings), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [EXECUTOR_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if reference is not None:
        services.append(SUPERVISOR_SERVICE)
    reflection.enable_server_reflection(services, server)
    await server.start()
    for service in ("", EXECUTOR_SERVICE):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    logger.info(
        "serving on port %d; supervisor %s; sandbox: %s, %s launcher; languages: %s; slots %d, queue %d",
        port, "embedded" if reference else supervisor_address, describe_tier(options), settings.launcher,
        ",".join(sorted(settings.languages)), settings.max_concurrent, settings.max_queue,
    )
    return RunningServer(
        server, port, dispatcher, spawner, health_servicer, channel, options, reference
    )


async def serve_forever(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    import signal

    running = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        logger.info("stopping: draining running callbacks")
    finally:
        await running.stop()
