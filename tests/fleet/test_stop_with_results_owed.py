"""A replica's stop with results not yet delivered says who delivers them: the fleet does.

A real replica (``python -m executor serve --store postgresql://...``) whose supervisor is
not there. Its results wait in the fleet's outbox, which every replica delivers from: the
stop promised them "after the next start", as a single executor's does, though another
replica running sends them first (probe 71).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from supervisor_client import ExecutorClient
from tests.conftest import TEST_UID_BASE
from tests.helpers.executor_process import executor_process

pytestmark = pytest.mark.faults

# Nothing listens there: every result waits in the outbox.
ABSENT_SUPERVISOR = "127.0.0.1:9"


async def test_a_replicas_stop_says_the_fleet_delivers_what_it_owes(
    tmp_path: Path, pg_url: str
) -> None:
    log = tmp_path / "replica.log"
    async with executor_process(
        tmp_path / "data",
        ABSENT_SUPERVISOR,
        log,
        extra_args=["--store", pg_url],
        env={"CBEXEC_SANDBOX_UID_BASE": str(TEST_UID_BASE + 400)},
    ) as replica:
        async with ExecutorClient(replica.address) as client:
            await client.execute_callback(language="python", code="print('owed')", job={"id": 1})
        replica.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            await replica.proc.wait()

    text = log.read_text()
    assert (
        "stopping with 1 results not yet delivered; another replica delivers them, "
        "or this one after its next start"
    ) in text
    assert "they go out after the next start" not in text
