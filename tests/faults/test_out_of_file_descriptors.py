"""The executor's open-file limit: spent is a capacity refusal, and start-up raises and weighs it.

A real executor (``python -m executor serve``) whose RLIMIT_NOFILE this test lowers
(``prlimit``) to just above the descriptors it holds: a run that finds none left to start
its child is refused RESOURCE_EXHAUSTED with ``retry-after-s``, never INTERNAL, leaves
nothing open or running, is logged once without a traceback, and runs again once the
limit is back.
"""

from __future__ import annotations

import contextlib
import os
import resource
import uuid
from pathlib import Path
from typing import Final

import grpc
import psutil
import pytest

from executor import open_files
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, types_pb2
from tests.conftest import TEST_UID_BASE
from tests.helpers.cli import check_config
from tests.helpers.executor_process import executor_process

pytestmark = pytest.mark.faults

REFUSALS: Final = 3


def _open_fds(pid: int) -> set[str]:
    """What each of the process's descriptors is open on (``pipe:[inode]``, a path, ...)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


async def _execute(stub: executor_pb2_grpc.CallbackExecutorServiceStub) -> grpc.aio.Call:
    """An Execute of a trivial Python callback; the call (its status and trailers)."""
    call = stub.Execute(
        executor_pb2.ExecuteRequest(
            invocation_id=str(uuid.uuid4()),
            callback=types_pb2.Callback(language="python", code="print('ok')"),
            context=executor_pb2.JobContext(job=types_pb2.Job(id=1, name="j", user="alice")),
        ),
        timeout=60,
    )
    with contextlib.suppress(grpc.aio.AioRpcError):
        await call
    return call


@pytest.mark.parametrize(
    ("launcher", "free"),
    [
        ("zygote", 1),  # the child's first pipe is made, the second is not
        ("cold", 1),
        ("cold", 6),  # its pipes and bridge are made, the cold shim's report pipe is not
    ],
)
async def test_a_run_that_finds_no_descriptor_left_is_refused_at_capacity(
    tmp_path: Path, launcher: str, free: int
) -> None:
    log = tmp_path / "executor.log"
    env = {"CBEXEC_LAUNCHER": launcher, "CBEXEC_PREPARE_AHEAD": "false"}
    async with executor_process(tmp_path / "data", "", log, env=env) as executor:
        pid = executor.proc.pid
        async with grpc.aio.insecure_channel(executor.address) as channel:
            stub = executor_pb2_grpc.CallbackExecutorServiceStub(channel)
            warm = await _execute(stub)  # the zygote started, the connection made
            assert await warm.code() == grpc.StatusCode.OK
            children = {
                p.pid for p in psutil.Process(pid).children(recursive=True)
            }  # a finished run's may be ending
            held = _open_fds(pid)
            _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            limit = len(os.listdir(f"/proc/{pid}/fd")) + free
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, hard))
            try:
                refused = [await _execute(stub) for _ in range(REFUSALS)]
                held_after = _open_fds(pid)
                children_after = {p.pid for p in psutil.Process(pid).children(recursive=True)}
            finally:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))
            again = await _execute(stub)
            again_code = await again.code()
            # Read before the executor is killed (its zygote's end is not this test's).
            text = log.read_text()

    for call in refused:
        assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, await call.details()
        assert await call.details() == (
            "the executor is out of file descriptors (its limit, RLIMIT_NOFILE, is "
            f"{limit}); retry later"
        )
        assert ("retry-after-s", "1") in tuple(await call.trailing_metadata() or ())
    # Nothing of the refused runs left open (gRPC may have closed some of its own).
    assert held_after <= held
    assert children_after <= children  # nor running
    assert again_code == grpc.StatusCode.OK
    assert text.count("runs refused: the executor is out of file descriptors") == 1, text
    assert "Traceback" not in text
    assert "internal error" not in text


def _rlimit_then_cbexec(soft: int, hard: int) -> tuple[str, ...]:
    """Python's arguments: set RLIMIT_NOFILE as systemd's LimitNOFILE would, then run cbexec."""
    return (
        "-c",
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}));"
        " from executor.cli import main; sys.exit(main())",
    )


# Four slots (the tests' executors') want more than this: a warning, not a refusal.
LOW_HARD_LIMIT: Final = open_files.wanted(4, "zygote")[1] - 1


async def test_start_up_raises_the_soft_limit_and_warns_when_the_hard_one_is_too_low(
    tmp_path: Path,
) -> None:
    log = tmp_path / "executor.log"
    launcher = _rlimit_then_cbexec(200, LOW_HARD_LIMIT)
    async with executor_process(tmp_path / "data", "", log, launcher=launcher) as executor:
        limits = Path(f"/proc/{executor.proc.pid}/limits").read_text()

    (open_files_line,) = [line for line in limits.splitlines() if "open files" in line]
    assert open_files_line.split()[3:5] == [str(LOW_HARD_LIMIT)] * 2
    text = log.read_text()
    assert f"open-file limit raised from 200 to the hard limit, {LOW_HARD_LIMIT}" in text
    assert (
        f"the open-file limit (RLIMIT_NOFILE) is {LOW_HARD_LIMIT}, below the "
        f"~{LOW_HARD_LIMIT + 1} descriptors max_concurrent = 4 wants"
    ) in text
    assert "systemd LimitNOFILE=" in text


def test_check_config_says_the_same(tmp_path: Path) -> None:
    said = check_config(_rlimit_then_cbexec(200, LOW_HARD_LIMIT), tmp_path / "data", TEST_UID_BASE)

    assert said.code == 0, said.err
    assert (
        f"open files: limit {LOW_HARD_LIMIT} (start-up raises the soft limit, 200 here, to it);"
        f" max_concurrent = 4 wants ~{LOW_HARD_LIMIT + 1}"
    ) in said.out
    assert f"  WARNING: the open-file limit (RLIMIT_NOFILE) is {LOW_HARD_LIMIT}" in said.out
