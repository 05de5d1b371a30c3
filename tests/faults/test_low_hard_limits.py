"""An executor started under low hard rlimits: callbacks run, or are refused by name; none fails.

A real executor (``python -m executor serve``) whose hard RLIMIT_NOFILE, RLIMIT_FSIZE,
RLIMIT_CPU and RLIMIT_NPROC are set below what its callbacks are given (256 files,
64 MiB per file, a request's CPU seconds and processes), as ``prlimit`` or a unit's
``Limit*=`` would. A child sets its rlimits before its uid drop, so with
CAP_SYS_RESOURCE every run gets exactly its limits (``/proc/self/limits``); without it
(as in a container) the server's own ones are lowered to the hard limits, start-up warns,
and a request that needs more is refused INVALID_ARGUMENT naming the rlimit. Every run
used to fail "not allowed to raise maximum limit" (exit 121), on both launch paths and in
both languages.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Final

import grpc
import pytest

from executor.sandbox import host_limits
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, types_pb2
from tests.helpers.executor_process import executor_process

pytestmark = pytest.mark.faults

MIB: Final = 1 << 20
# Hard (and soft) limits of the executor, each below what its callbacks may be given
# (the default max_processes, 64, fits under 80).
LOW: Final = {"NOFILE": 255, "FSIZE": 32 * MIB, "CPU": 100, "NPROC": 80}
LAUNCHER: Final = (
    "-c",
    "import resource, sys\n"
    + "".join(f"resource.setrlimit(resource.RLIMIT_{k}, ({v}, {v}))\n" for k, v in LOW.items())
    + "from executor.cli import main; sys.exit(main())",
)
CODE: Final = {
    "python": "print(open('/proc/self/limits').read())",
    "perl": "open(my $f, '<', '/proc/self/limits') or die; print <$f>;",
}
ROWS: Final = {
    "NOFILE": "Max open files",
    "FSIZE": "Max file size",
    "CPU": "Max cpu time",
    "NPROC": "Max processes",
}


def _seen(stdout: str) -> dict[str, list[str]]:
    """/proc/self/limits' soft and hard value of each row in ROWS."""
    seen = {}
    for line in stdout.splitlines():
        for name, row in ROWS.items():
            if line.startswith(row):
                seen[name] = line[len(row) :].split()[:2]
    return seen


def _request(language: str, **limits: int) -> executor_pb2.ExecuteRequest:
    return executor_pb2.ExecuteRequest(
        invocation_id=str(uuid.uuid4()),
        callback=types_pb2.Callback(language=language, code=CODE[language]),
        context=executor_pb2.JobContext(job=types_pb2.Job(id=1, name="j", user="a")),
        limits=executor_pb2.Limits(**limits),
    )


@pytest.mark.parametrize(
    ("launcher", "language"),
    [("zygote", "python"), ("cold", "python"), ("zygote", "perl"), ("cold", "perl")],
)
async def test_low_hard_limits_of_the_executor_fail_no_callback(
    tmp_path: Path, launcher: str, language: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("the hardened tier (root): RLIMIT_NPROC caps a callback's processes")
    raisable = host_limits.can_raise()
    log = tmp_path / "executor.log"
    env = {"CBEXEC_LAUNCHER": launcher}
    refused: dict[str, str] = {}
    async with (
        executor_process(tmp_path / "data", "", log, env=env, launcher=LAUNCHER) as executor,
        grpc.aio.insecure_channel(executor.address) as channel,
    ):
        stub = executor_pb2_grpc.CallbackExecutorServiceStub(channel)
        default = await stub.Execute(_request(language), timeout=60)
        asked = []
        for name, limits in (("CPU", {"cpu_seconds": 200}), ("NPROC", {"max_processes": 100})):
            try:
                asked.append(await stub.Execute(_request(language, **limits), timeout=60))
            except grpc.aio.AioRpcError as err:
                refused[name] = f"{err.code().name}: {err.details()}"
        text = log.read_text()

    assert default.outcome == executor_pb2.OUTCOME_SUCCEEDED, (default, text)
    seen = _seen(default.stdout)
    if raisable:
        assert seen["NOFILE"] == ["256", "256"]
        assert seen["FSIZE"] == [str(64 * MIB)] * 2
        assert not refused
        assert [_seen(r.stdout)[n] for r, n in zip(asked, ("CPU", "NPROC"), strict=True)] == [
            ["200", "201"],
            ["100", "100"],
        ]
        return
    # Lowered to the executor's hard limits, and said at start-up.
    assert (seen["NOFILE"], seen["FSIZE"]) == (["255", "255"], [str(32 * MIB)] * 2), seen
    assert seen["CPU"] == ["10", "11"]  # the default cpu_seconds fits
    assert (
        "the executor's hard RLIMIT_NOFILE is 255, below the 256 each callback is given: "
        "callbacks get 255 (raise the executor's hard limit (systemd LimitNOFILE=, prlimit) "
        "or give it CAP_SYS_RESOURCE)"
    ) in text
    assert "the executor's hard RLIMIT_FSIZE is 33554432" in text
    assert "max_limits.cpu_seconds = 600 needs RLIMIT_CPU 601" in text
    assert refused == {
        "CPU": "INVALID_ARGUMENT: limits.cpu_seconds = 200 cannot be enforced on this host: it needs RLIMIT_CPU "
        "201, above the executor's hard limit of 100 (raise the executor's hard limit "
        "(systemd LimitCPU=, prlimit) or give it CAP_SYS_RESOURCE)",
        "NPROC": "INVALID_ARGUMENT: limits.max_processes = 100 cannot be enforced on this host: it needs "
        "RLIMIT_NPROC 100, above the executor's hard limit of 80 (raise the executor's hard "
        "limit (systemd LimitNPROC=, prlimit) or give it CAP_SYS_RESOURCE)",
    }
