"""A kill -9 of the executor ends its running callbacks and everything they started.

A real executor (``python -m executor serve``) runs a callback that starts ``sleep 300``
and then sleeps itself; once that ``sleep`` runs, the executor is killed with SIGKILL,
and within a couple of seconds no process of the suite's sandbox uids is left: none of
the callback's, none of a prepared child's. On both launch paths, for Python and Perl,
with cgroups and without (nothing would sweep a cell then).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Final

import grpc
import psutil
import pytest

from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, types_pb2
from tests.conftest import TEST_UID_BASE
from tests.helpers.executor_process import executor_process

pytestmark = pytest.mark.faults

# Every sandbox uid this suite's executors may give a callback (its uid base is its own).
SANDBOX_UIDS: Final = range(TEST_UID_BASE, TEST_UID_BASE + 100)
CODE: Final = {
    "python": "import subprocess, time\nsubprocess.Popen(['sleep', '300'])\n"
    "while True:\n    time.sleep(1)\n",
    "perl": "system('sleep 300 &'); while (1) { sleep 1 }",
}


def _sandboxed() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["uids", "name"]):
        uids = process.info["uids"]
        if uids is not None and uids.real in SANDBOX_UIDS:
            found.append(process)
    return found


async def _until(condition: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return bool(condition())  # type: ignore[operator]


@pytest.mark.parametrize(
    ("launcher", "language", "cgroup"),
    [
        ("zygote", "python", "auto"),
        ("zygote", "python", "off"),
        ("cold", "python", "off"),
        ("zygote", "perl", "off"),
        ("cold", "perl", "auto"),
    ],
)
async def test_a_kill_9_of_the_executor_ends_its_running_callbacks(
    tmp_path: Path, launcher: str, language: str, cgroup: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("a callback under its own uid needs the hardened tier (root)")
    log = tmp_path / "executor.log"
    env = {"CBEXEC_LAUNCHER": launcher, "CBEXEC_CGROUP": cgroup}
    async with (
        executor_process(tmp_path / "data", "", log, env=env) as executor,
        grpc.aio.insecure_channel(executor.address) as channel,
    ):
        stub = executor_pb2_grpc.CallbackExecutorServiceStub(channel)
        call = stub.Execute(
            executor_pb2.ExecuteRequest(
                invocation_id=str(uuid.uuid4()),
                callback=types_pb2.Callback(language=language, code=CODE[language]),
                context=executor_pb2.JobContext(job=types_pb2.Job(id=1, name="j", user="a")),
            ),
            timeout=60,
        )
        try:
            started = await _until(lambda: any(p.info["name"] == "sleep" for p in _sandboxed()), 30)
            assert started, log.read_text()
            executor.sigkill()
            assert await executor.proc.wait() == -signal.SIGKILL
            gone = await _until(lambda: not _sandboxed(), 3)
            left = [(p.pid, p.info["name"]) for p in _sandboxed()]
        finally:
            call.cancel()
            for process in _sandboxed():  # only this suite's sandbox uids
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
    assert gone, f"still running 3 s after the executor's kill -9: {left}"
