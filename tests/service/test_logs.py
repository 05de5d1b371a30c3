"""The per-run log line of a real run, in both formats."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from executor import logs
from supervisor_client import ExecutorClient
from tests.conftest import Stack
from tests.helpers.executor_process import executor_process
from tests.service.test_runs import FAIL, run_py

pytestmark = pytest.mark.service


async def test_a_failed_run_logs_one_line_with_every_field(
    stack_warm: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="executor.dispatcher")
    bad = await run_py(stack_warm, FAIL, 808)

    (record,) = [r for r in caplog.records if r.getMessage().startswith("callback ran")]
    logs.InvocationFilter().filter(record)
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["invocation_id"] == bad.invocation_id
    assert (entry["job_id"], entry["language"], entry["outcome"], entry["source"]) == (
        808,
        "python",
        "FAILED",
        "execute",
    )
    assert entry["wall_seconds"] > 0 and entry["peak_rss_bytes"] > 0
    assert "bad frame range" in entry["failure"]
    assert {"cpu_seconds", "queue_seconds", "callback_id", "actions"} <= set(entry)

    text = record.getMessage()
    assert "job=808" in text and "outcome=FAILED" in text and "bad frame range" in text
    assert "\n" not in text, "the text line stays one line"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("grpc_verbosity", ["", "debug"])
async def test_debug_is_the_executors_own_lines_not_grpcs(
    tmp_path: Path, grpc_verbosity: str
) -> None:
    # 22 of 30 DEBUG lines were gRPC's "[_cygrpc] Loaded running loop", one per call
    # (probe 107); GRPC_VERBOSITY=debug, gRPC's own switch, asks for them.
    log = tmp_path / "executor.log"
    env = {"GRPC_VERBOSITY": grpc_verbosity} if grpc_verbosity else {}
    async with (
        executor_process(
            tmp_path / "data", "", log, extra_args=("--log-level", "DEBUG"), env=env
        ) as running,
        ExecutorClient(running.address) as client,
    ):
        for _ in range(3):
            await client.get_universal_callbacks()
    text = log.read_text()
    assert "serving on port" in text, text
    grpc_lines = [line for line in text.splitlines() if " DEBUG grpc." in line]
    assert bool(grpc_lines) == bool(grpc_verbosity), text
