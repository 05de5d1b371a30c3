"""A stop with results not yet delivered says where they are: kept, or lost with a deleted outbox.

A real executor (``python -m executor serve``) whose supervisor is not there, so its
results wait in ``outbox.db``. Its stop promised them "after the next start" even when
the file had been deleted under it, and the next start then had none (probe 61).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from supervisor_client import ExecutorClient
from tests.helpers.executor_process import executor_process

pytestmark = pytest.mark.faults

# Nothing listens there: every result waits in the outbox.
ABSENT_SUPERVISOR = "127.0.0.1:9"


@pytest.mark.parametrize("deleted", [False, True])
async def test_the_stop_says_whether_undelivered_results_are_kept(
    tmp_path: Path, deleted: bool
) -> None:
    log = tmp_path / "executor.log"
    data = tmp_path / "data"
    async with executor_process(data, ABSENT_SUPERVISOR, log) as executor:
        async with ExecutorClient(executor.address) as client:
            await client.execute_callback(language="python", code="print('kept?')", job={"id": 1})
        if deleted:
            for file in data.glob("outbox.db*"):
                file.unlink()
        executor.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            await executor.proc.wait()

    text = log.read_text()
    if deleted:
        assert (
            "stopping with 1 results not yet delivered, lost unless the file now at the "
            "outbox's path is a copy of the one written: the database was deleted"
        ) in text
        assert "go out after the next start" not in text
    else:
        assert "stopping with 1 results not yet delivered; they go out after the next start" in (
            text
        )
