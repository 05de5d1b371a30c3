"""A clean restart while results wait for the supervisor rebuilds nothing (probe 46).

The supervisor is away, so every result waits in the outbox while the history's byte
bound prunes the older runs and the job's ``.cb`` log rotates. Before, each waiting row
kept its run's notes until delivery, and a clean restart took every such run the
history lacked for one a crash had lost: it rebuilt the pruned runs as the newest (the
bound then dropped the real newest runs), appended their long-rotated ``.cb`` entries
again (pushing the newest out of ``.cb`` and ``.cb.1``), and logged a crash that never
happened.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from pathlib import Path
from typing import Final

import pytest

from supervisor_client import ExecutorClient
from tests.helpers.executor_process import executor_process

pytestmark = pytest.mark.faults

# Nothing listens there: the tests' own range (47750-47799), never bound by a test.
AWAY: Final = "127.0.0.1:47751"
RUNS: Final = 40
JOB_ID: Final = 5
# 1 MiB of history holds about 18 of these runs; 64 KiB of .cb about one.
BOUNDS: Final = {
    "CBEXEC_HISTORY_MAX_BYTES": str(1 << 20),
    "CBEXEC_CALLBACK_LOG_MAX_BYTES": str(64 << 10),
}
CODE: Final = "print('run {n}'); print('z' * 50000)"


async def test_a_clean_restart_keeps_the_newest_runs_and_brings_back_no_pruned_one(
    tmp_path: Path,
) -> None:
    data, log = tmp_path / "data", tmp_path / "executor.log"
    async with executor_process(data, AWAY, log, env=BOUNDS) as first:
        async with ExecutorClient(first.address) as client:
            ids = []
            for n in range(RUNS):
                response = await client.execute_callback(
                    language="python", code=CODE.format(n=n), job={"id": JOB_ID}
                )
                ids.append(response.invocation_id)
            before = {run.invocation_id for run in (await client.list_runs(limit=1000)).runs}
        first.proc.send_signal(signal.SIGTERM)
        assert await first.proc.wait() == 0, log.read_text()
    assert ids[-1] in before and ids[0] not in before, sorted(before)
    # Every run is in the history or was pruned from it: none may lack its record.
    assert _notes_kept(data / "outbox.db") == 0
    cb = data / "logs" / "job" / "0" / str(JOB_ID) / f"{JOB_ID}.cb"
    logged = _logged(cb)
    assert f"run {RUNS - 1}" in logged, logged
    started_at = len(log.read_text())

    async with (
        executor_process(data, AWAY, log, env=BOUNDS) as second,
        ExecutorClient(second.address) as client,
    ):
        after = {run.invocation_id for run in (await client.list_runs(limit=1000)).runs}
    assert after == before, (sorted(before), sorted(after))
    restart = log.read_text()[started_at:]
    assert "rebuilt" not in restart and "crash" not in restart, restart
    assert _logged(cb) == logged


def _notes_kept(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(notes) FROM outbox").fetchone()[0])


def _logged(cb: Path) -> str:
    """The job's .cb log, both generations."""
    old = cb.with_name(cb.name + ".1")
    return (old.read_text() if old.exists() else "") + cb.read_text()
