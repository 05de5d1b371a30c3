"""Shared fixtures: a full executor stack on loopback, and the leak check every test ends with."""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest

from executor import server
from executor.config import Settings
from supervisor_client import ExecutorClient, ReferenceSupervisor
from supervisor_client.qbcallback.v1 import executor_pb2_grpc
from tests.helpers.processes import wait_until_no_sandboxed_processes

# The suite's own knob, not a setting: a `cbexec` child a test starts reads every CBEXEC_*
# variable as one and would refuse it. Its children get the same uids through the setting.
# The default keeps clear of a service started with the defaults (sandbox_uid_base 64000),
# such as the quick start's, which may run beside the suite.
# Without the knob, each process of a suite that runs tests (the one process, or each of
# pytest-xdist's workers) takes the first of these bases no other holds on the host (a
# lock held for the whole session), so workers, and two checkouts tested side by side,
# keep apart. With it, worker N takes the given base plus N thousand.
DEFAULT_TEST_UID_BASES = range(62000, 49999, -1000)
SUITE_LOCKS = Path("/run/cbexec/test-suites")
_CHOSEN_UID_BASE = os.environ.pop("CBEXEC_TEST_UID_BASE", None)
_suite_lock: int | None = None


def _hold_suite_lock(base: int) -> bool:
    """Hold ``base``'s suite lock for the session; False when another suite holds it."""
    global _suite_lock  # noqa: PLW0603 -- one lock per process, released by a lead process
    SUITE_LOCKS.mkdir(parents=True, exist_ok=True)
    fd = os.open(SUITE_LOCKS / f"{base}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _suite_lock = fd  # stays open: the lock lasts as long as this session
    return True


def _suite_uid_base() -> int:
    if _CHOSEN_UID_BASE is not None:  # by hand: used as given, and kept from automatic choices
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
        base = int(_CHOSEN_UID_BASE) + 1000 * int(worker.removeprefix("gw"))
        _hold_suite_lock(base)
        return base
    for base in DEFAULT_TEST_UID_BASES:
        if _hold_suite_lock(base):
            return base
    raise RuntimeError(f"every test uid base in {DEFAULT_TEST_UID_BASES} is held by a suite")


def pytest_configure(config: pytest.Config) -> None:
    """A pytest-xdist lead process runs no test: its base goes to the workers it starts."""
    global _suite_lock  # noqa: PLW0603
    leads_workers = getattr(config.option, "numprocesses", None) and not hasattr(
        config, "workerinput"
    )
    if leads_workers and _suite_lock is not None:
        os.close(_suite_lock)
        _suite_lock = None
        if _CHOSEN_UID_BASE is not None:  # the workers read it (and drop it) as this did
            os.environ["CBEXEC_TEST_UID_BASE"] = _CHOSEN_UID_BASE


def _without_the_shells_settings() -> None:
    """Drop the ``CBEXEC_*`` settings of the shell the suite runs in (its own knobs stay).

    A shell that configures a service beside the suite (``CBEXEC_SANDBOX_UID_BASE``,
    ``CBEXEC_DATA_DIR``, ...) gave them to every executor a test starts: the service's
    uids and data dir, refused as held (probe 164). Each test sets what it needs.
    """
    for name in [n for n in os.environ if n.startswith("CBEXEC_")]:
        if not name.startswith("CBEXEC_TEST_"):
            del os.environ[name]


TEST_UID_BASE = _suite_uid_base()
_without_the_shells_settings()
os.environ["CBEXEC_SANDBOX_UID_BASE"] = str(TEST_UID_BASE)


@dataclass
class Stack:
    """A running executor with the embedded supervisor, and clients for it."""

    running: server.RunningServer
    client: ExecutorClient
    stub: executor_pb2_grpc.CallbackExecutorServiceStub
    triggers: executor_pb2_grpc.TriggerServiceStub
    channel: grpc.aio.Channel
    settings: Settings

    @property
    def supervisor(self) -> ReferenceSupervisor:
        assert self.running.reference is not None
        return self.running.reference

    async def settle(self) -> None:
        """Wait until the embedded supervisor's transitions, and what they fired, are done."""
        await self.running.settle()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"


def stack_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings for tests: loopback, ephemeral port, short grace."""
    base = Settings(
        bind="127.0.0.1:0",
        data_dir=data_dir,
        max_concurrent=4,
        max_queue=64,
        grace_seconds=0.3,
        # Two suites run side by side on one host (two checkouts) keep their sandbox uids apart.
        sandbox_uid_base=TEST_UID_BASE,
    )
    return base.replace(**overrides)


@asynccontextmanager
async def running_stack(settings: Settings) -> AsyncIterator[Stack]:
    """Start an executor (with the embedded supervisor) and clients; stop it all after."""
    running = await server.start(settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield Stack(
            running,
            ExecutorClient(channel),
            executor_pb2_grpc.CallbackExecutorServiceStub(channel),
            executor_pb2_grpc.TriggerServiceStub(channel),
            channel,
            settings,
        )
    finally:
        await channel.close()
        await running.stop()


@pytest.fixture(params=["zygote", "cold"])
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """Every test using it runs on the warm (zygote) and the cold (fork+exec) path."""
    async with running_stack(stack_settings(tmp_path / "data", launcher=request.param)) as s:
        yield s


@pytest.fixture
async def stack_warm(tmp_path: Path) -> AsyncIterator[Stack]:
    """The default (zygote) path only, for tests that are not about how children start."""
    async with running_stack(stack_settings(tmp_path / "data")) as s:
        yield s


@pytest.fixture
def umask_000() -> Iterator[None]:
    """The process umask 000 for the test: what the executor makes must not depend on it."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail a test that leaves a child of ours, or any sandboxed process, alive."""
    yield
    survivors = wait_until_no_sandboxed_processes()
    children = [
        c for c in psutil.Process().children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE
    ]
    assert not survivors, f"sandboxed processes survived: {survivors}"
    assert not children, f"child processes survived: {children}"
