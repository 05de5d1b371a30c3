"""The executor as a real process (``python -m executor serve``), always killed and reaped."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class ExecutorProcess:
    proc: asyncio.subprocess.Process
    address: str

    def sigkill(self) -> None:
        """SIGKILL the executor process itself (what it started is left to fend for itself)."""
        os.kill(self.proc.pid, signal.SIGKILL)


@asynccontextmanager
async def executor_process(
    data_dir: Path,
    supervisor: str,
    log: Path,
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    launcher: Sequence[str] = ("-m", "executor"),
) -> AsyncIterator[ExecutorProcess]:
    """`python -m executor serve` in its own session, logging to ``log``; always killed and reaped.

    ``env`` is added to this process's environment (e.g. a fleet replica's uid range).
    ``launcher``: python's arguments before ``serve`` (``-c`` code that patches a module
    of the executor, then runs ``executor.cli.main``).
    """
    start = log.stat().st_size if log.exists() else 0  # a restart appends to the same log
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *launcher,
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
            "--supervisor",
            supervisor,
            "--max-concurrent",
            "4",
            "--max-queue",
            "256",
            *extra_args,
            env={**os.environ, **(env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    family = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"serving on port (\d+)", log.read_text()[start:])):
            assert proc.returncode is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        yield ExecutorProcess(proc, f"127.0.0.1:{found.group(1)}")
    finally:
        await kill_family(proc, family)


async def kill_family(proc: asyncio.subprocess.Process, family: psutil.Process) -> None:
    """SIGKILL the executor (if still alive) and everything it started; reap it."""
    descendants: list[psutil.Process] = []
    with suppress(psutil.NoSuchProcess):
        descendants = family.children(recursive=True)
    if proc.returncode is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    # Helpers in their own sessions (the zygote) end on their own when their pipe closes.
    _, alive = psutil.wait_procs(descendants, timeout=5)
    for leftover in alive:
        with suppress(psutil.NoSuchProcess):
            leftover.kill()
    psutil.wait_procs(alive, timeout=5)
