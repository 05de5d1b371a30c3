"""The sandbox in one line: GetMetrics says it as the start-up log does (tier.describe_sandbox)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.conftest import running_stack, stack_settings

pytestmark = pytest.mark.service


@pytest.mark.parametrize("launcher", ["zygote", "cold"])
async def test_get_metrics_describes_the_sandbox_as_the_start_up_log_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, launcher: str
) -> None:
    caplog.set_level(logging.INFO, logger="executor.server")
    async with running_stack(stack_settings(tmp_path / "data", launcher=launcher)) as stack:
        metrics = await stack.client.get_metrics()
    (line,) = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("serving on port")
    ]
    logged = line.split("; sandbox: ", 1)[1].split("; languages: ", 1)[0]
    assert logged.endswith(f", {launcher} launcher")
    assert metrics.sandbox.description == logged
    assert metrics.sandbox.launcher == launcher
