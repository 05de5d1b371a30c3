"""The per-run log line of a real run, in both formats."""

from __future__ import annotations

import json
import logging

import pytest

from executor import logs
from tests.conftest import Stack
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
