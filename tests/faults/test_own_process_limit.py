"""The executor's own process limit: spent is a capacity refusal, never a wedged service.

A real executor (``python -m executor serve``) moved, with its zygotes, into a pids
cgroup of this test's whose ``pids.max`` is below what they already hold: no fork and
no thread more. Every run is refused RESOURCE_EXHAUSTED with ``retry-after-s`` (gRPC's fork
handlers once made the first fork wait for good, and the event loop with it), health
answers meanwhile, a side-port connection without a thread is closed, runs go again once
the limit is raised, and a SIGTERM still ends the process cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import grpc
import psutil
import pytest

from executor import process_limit
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, types_pb2
from tests.conftest import TEST_UID_BASE
from tests.helpers.cli import check_config
from tests.helpers.executor_process import executor_process
from tests.helpers.health import SERVING, health_status

pytestmark = pytest.mark.faults

REFUSALS: Final = 3
LIMIT: Final = 1
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")


@contextlib.contextmanager
def pids_cgroup(name: str) -> Iterator[Path]:
    """A pids cgroup of this test's (v2, or v1's pids hierarchy); removed at the end."""
    v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
    parent = CGROUP_ROOT if v2 else CGROUP_ROOT / "pids"
    if v2 and "pids" not in (CGROUP_ROOT / "cgroup.subtree_control").read_text().split():
        pytest.skip("cgroup v2 without the pids controller for its children")
    if not os.access(parent, os.W_OK):
        pytest.skip(f"{parent} is not writable here")
    cgroup = parent / name
    cgroup.mkdir()
    try:
        yield cgroup
    finally:
        # Whatever is left (the executor is killed by then) goes back to the root.
        for pid in (cgroup / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (parent / "cgroup.procs").write_text(pid)
        cgroup.rmdir()


def _move_family(pid: int, cgroup: Path) -> None:
    """The executor and every process it started so far (its zygotes) into ``cgroup``."""
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(ProcessLookupError):  # a finished run's child, gone since
            (cgroup / "cgroup.procs").write_text(str(process.pid))


async def _execute(
    stub: executor_pb2_grpc.CallbackExecutorServiceStub, language: str, code: str
) -> grpc.aio.Call:
    """An Execute of a trivial callback; the call (its status and trailers)."""
    call = stub.Execute(
        executor_pb2.ExecuteRequest(
            invocation_id=str(uuid.uuid4()),
            callback=types_pb2.Callback(language=language, code=code),
            context=executor_pb2.JobContext(job=types_pb2.Job(id=1, name="j", user="alice")),
        ),
        timeout=60,
    )
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call
    return call


def _http_get(url: str) -> str:
    """The body, or why there was none (a connection closed unanswered)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
            return str(answer.read().decode())
    except OSError as err:
        return f"no answer: {err}"


@pytest.mark.parametrize("launcher", ["zygote", "cold"])
async def test_a_run_the_process_limit_refuses_is_a_capacity_refusal(
    tmp_path: Path, launcher: str
) -> None:
    log = tmp_path / "executor.log"
    env = {"CBEXEC_LAUNCHER": launcher, "CBEXEC_PREPARE_AHEAD": "false"}
    with pids_cgroup(f"cbexec-test-{os.getpid()}-{launcher}") as cgroup:
        async with executor_process(
            tmp_path / "data", "", log, env=env, extra_args=("--http", "127.0.0.1:0")
        ) as executor:
            pid = executor.proc.pid
            (http_port,) = re.findall(r"HTTP side port on 127\.0\.0\.1:(\d+)", log.read_text())
            async with grpc.aio.insecure_channel(executor.address) as channel:
                stub = executor_pb2_grpc.CallbackExecutorServiceStub(channel)
                for language, code in (("python", "print('ok')"), ("perl", 'print "ok\\n";')):
                    warm = await _execute(stub, language, code)  # zygotes up, threads made
                    assert await warm.code() == grpc.StatusCode.OK, await warm.details()
                _move_family(pid, cgroup)
                # Below what they hold (a finished run's child may still be on its way
                # out): what runs keeps running, and no fork or thread more is had.
                (cgroup / "pids.max").write_text(str(LIMIT))
                try:
                    refused = [
                        await _execute(stub, language, code)
                        for language, code in [("python", "print('ok')"), ("perl", "1;")] * REFUSALS
                    ]
                    status = await health_status(channel)
                    page = await asyncio.to_thread(
                        _http_get, f"http://127.0.0.1:{http_port}/healthz"
                    )
                finally:
                    (cgroup / "pids.max").write_text("max")
                again = await _execute(stub, "python", "print('ok')")
                again_code = await again.code()
            executor.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):  # a wedged executor never ends
                returncode = await executor.proc.wait()

    for call in refused:
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, await call.details()
        assert await call.details() == (
            "the executor could not start a process (its process limit: pids.max of its "
            f"cgroup {cgroup} is {LIMIT}); retry later"
        )
        assert ("retry-after-s", "1") in tuple(await call.trailing_metadata() or ())
    assert status == SERVING
    # With no thread to answer it, the side port closes the connection (or, where the
    # connection's thread was to be had, answers as ever).
    assert page.startswith("no answer") or '"SERVING"' in page, page
    assert again_code == grpc.StatusCode.OK, await again.details()
    assert returncode == 0
    text = log.read_text()
    assert text.count("runs refused: the executor could not start a process") == 1, text
    assert "Traceback" not in text
    assert "internal error" not in text
    assert "zygote failed" not in text  # the limit's doing, not the zygote's


def test_check_config_weighs_the_process_limit_against_the_slots(tmp_path: Path) -> None:
    low = process_limit.wanted(4) - 1
    with pids_cgroup(f"cbexec-test-{os.getpid()}-check") as cgroup:
        (cgroup / "pids.max").write_text(str(low))
        joins = f"import sys; open({str(cgroup / 'cgroup.procs')!r}, 'w').write('0');"
        said = check_config(
            ("-c", f"{joins} from executor.cli import main; sys.exit(main())"),
            tmp_path / "data",
            TEST_UID_BASE,
        )

    assert said.code == 0, said.err
    assert (
        f"processes: limit {low} (pids.max of its cgroup {cgroup}); max_concurrent = 4 may "
        f"want ~{low + 1} tasks"
    ) in said.out
    assert (
        f"  WARNING: the executor's own process limit (pids.max of its cgroup {cgroup}) is "
        f"{low}, below the ~{low + 1} tasks max_concurrent = 4 may want"
    ) in said.out
    assert "systemd TasksMax=" in said.out
