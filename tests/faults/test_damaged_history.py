"""A damaged page of runs.db that start-up did not read: its readers name the file, not a bug.

Start-up reads the history as it uses it (schema, count), not every page: it may be
gigabytes. A real executor records runs and stops; the pages holding the runs' rows
are then overwritten on disk, and the executor started again. ``ListRuns``, ``GetRun``
and ``cbexec runs`` meet the damage: DATA_LOSS naming the file and what to do (they
answered INTERNAL with an incident id, the status of a bug).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final

import grpc
import pytest

from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import stack_settings
from tests.faults.helpers import executor
from tests.helpers.cli import cbexec

pytestmark = pytest.mark.faults

RUNS: Final = 12


def _overwrite_the_runs_rows(path: Path) -> None:
    """Random bytes over every leaf page of the runs table; its indexes stay whole."""
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        try:
            pages = [
                int(row[0])
                for row in db.execute(
                    "SELECT pageno FROM dbstat WHERE name = 'runs' AND pagetype = 'leaf'"
                )
            ]
        except sqlite3.OperationalError as err:  # SQLite built without its dbstat table
            pytest.skip(f"cannot find the runs table's pages: {err}")
    finally:
        db.close()
    assert pages, "the runs table fills pages of its own"
    with path.open("r+b") as handle:
        for page in pages:
            handle.seek((page - 1) * page_size)
            handle.write(os.urandom(page_size))


async def test_readers_of_a_damaged_history_name_the_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = stack_settings(data_dir)
    async with (
        executor(settings) as running,
        ExecutorClient(f"127.0.0.1:{running.port}") as client,
    ):
        for n in range(RUNS):
            response = await client.execute_callback(
                language="python", code="print('x' * 1500)", job={"id": 7}, invocation_id=f"r{n}"
            )
            assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
    history = data_dir / "runs.db"
    assert not Path(f"{history}-wal").exists(), "a clean stop leaves no log"
    _overwrite_the_runs_rows(history)

    async with (
        executor(settings) as running,
        ExecutorClient(f"127.0.0.1:{running.port}") as client,
    ):
        for read in (client.list_runs, lambda: client.get_run("r3")):
            with pytest.raises(ExecutorRpcError) as refused:
                await read()
            assert refused.value.code == grpc.StatusCode.DATA_LOSS, refused.value
            assert refused.value.details == (
                f"{history}: database disk image is malformed: the file is damaged (it holds "
                "the run history). Stop the executor, then restore it from a backup, or move "
                "it aside (with its -wal and -shm) to start with an empty one"
            )

        said = await cbexec("runs", address=f"127.0.0.1:{running.port}")

    assert said.code == 3, said
    assert said.err == f"cbexec: DATA_LOSS: {refused.value.details}\n"
