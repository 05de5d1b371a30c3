"""A database's ``-shm`` made immutable (``chattr +i``) under a running executor.

SQLite writes the ``-shm`` through a shared memory map; on ext4 a store to a page
written back since is refused with SIGBUS for an immutable file, which ended the
executor at its next statement on that database, without a word (probe 141). Now the
executor refuses the statement, says NOT_SERVING naming the file, goes on once the file
can be written again, and a stop while it still cannot ends cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from supervisor_client import ExecutorClient
from supervisor_client.errors import ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.helpers.executor_process import ExecutorProcess, executor_process
from tests.helpers.health import NOT_SERVING, SERVING, health_status

pytestmark = pytest.mark.faults


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``path`` made immutable for the block; skipped where its filesystem cannot."""
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make a file immutable here (chattr +i): {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def written_back(path: Path) -> None:
    """Write back the file's dirty pages: the executor's next store to its map faults."""
    fd = os.open(path, os.O_RDONLY)  # another process's: the executor's locks stay
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _run(client: ExecutorClient) -> executor_pb2.ExecuteResponse:
    return await client.execute_callback(
        language="python", code="print(1)", job={"id": 7}, invocation_id=str(uuid.uuid4())
    )


async def _until_status(channel: grpc.aio.Channel, status: int, running: ExecutorProcess) -> None:
    deadline = time.monotonic() + 15
    while await health_status(channel) != status:
        assert running.proc.returncode is None, "the executor ended"
        assert time.monotonic() < deadline, f"health never became {status}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("database", ["outbox.db", "runs.db", "triggers.db", "supervisor.db"])
async def test_an_immutable_shm_is_refused_not_a_sigbus(tmp_path: Path, database: str) -> None:
    data = tmp_path / "data"
    log = tmp_path / "executor.log"
    shm = data / f"{database}-shm"
    async with (
        executor_process(data, "", log) as running,
        grpc.aio.insecure_channel(running.address) as channel,
        ExecutorClient(running.address) as client,
    ):
        assert (await _run(client)).outcome == executor_pb2.OUTCOME_SUCCEEDED
        written_back(shm)
        with immutable(shm):
            # Whatever meets it first (this Execute, the delivery, a background task)
            # is refused; the process lives on and says why.
            with contextlib.suppress(ExecutorRpcError):
                await _run(client)
            await _until_status(channel, NOT_SERVING, running)
            said = (
                f"cannot write {data / database}: disk I/O error: this user cannot write {shm.name}"
            )
            assert said in log.read_text()
        await _until_status(channel, SERVING, running)
        assert (await _run(client)).outcome == executor_pb2.OUTCOME_SUCCEEDED

        written_back(shm)
        with immutable(shm):
            await _until_status(channel, NOT_SERVING, running)
            # SQLite's close of the last connection checkpoints through the map.
            running.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(running.proc.wait(), 30) == 0, log.read_text()
    assert "Bus error" not in log.read_text()
    assert f"{shm}: this user cannot write it" in log.read_text(), "its connection left open"
