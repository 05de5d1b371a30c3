"""supervisor.db's log is checkpointed as the executor's own databases' are (probe 46 finding 6)."""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from executor.runs.sqlite_checkpoints import BackgroundCheckpoints
from executor.storage import LOOP_BUSY_TIMEOUT_S
from supervisor_client.reference import ReferenceSupervisor
from supervisor_client.reference.farm import Farm, Taken

pytestmark = pytest.mark.unit


def test_the_log_is_cut_back_once_checkpointed(tmp_path: Path) -> None:
    # SQLite's own checkpoints left a 15.6 MB supervisor.db-wal for 25 minutes.
    path = tmp_path / "supervisor.db"
    reference = ReferenceSupervisor(
        str(path),
        checkpoints=functools.partial(BackgroundCheckpoints, max_log_bytes=64 << 10),
    )
    try:
        jobs = [{"name": f"job {n}", "user": "u", "cmdline": "x" * 20000} for n in range(200)]
        for start in range(0, len(jobs), 20):
            reference.submit(jobs[start : start + 20])
        checkpoints = reference._checkpoints
        assert isinstance(checkpoints, BackgroundCheckpoints)
        # The last submit's commit may have come while a checkpoint ran (none started for
        # it): one more, after it, copies everything.
        checkpoints.wait()
        checkpoints.committed()
        checkpoints.wait()
        reference.submit([{"name": "after", "user": "u"}])  # the log restarts, cut back
        assert os.path.getsize(f"{path}-wal") <= 256 << 10
    finally:
        reference.close()


def test_a_worker_waits_for_a_write_lock_held_briefly(tmp_path: Path) -> None:
    # Probe 127 F2: with 30 workers, TakeWork and ChangeWork were answered UNAVAILABLE
    # ("another process holds its write lock") while only the checkpoint's connection had
    # it, for a few ms of a TRUNCATE. Their transaction read before it wrote, and SQLite
    # refuses at once, without waiting the busy timeout, a read that turns into a write
    # while another connection holds the lock. Here the holder lets go after 50 ms.
    path = tmp_path / "supervisor.db"
    reference = ReferenceSupervisor(str(path), busy_timeout_s=LOOP_BUSY_TIMEOUT_S)
    farm = Farm(reference)
    try:
        farm.submit([{"name": "j", "agenda": ["1"]}])
        for step in ("take", "complete"):
            holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            holder.execute("BEGIN IMMEDIATE")
            letting_go = threading.Timer(0.05, holder.execute, ("ROLLBACK",))
            letting_go.start()
            try:
                if step == "take":
                    assert farm.take_work("w1") == Taken(1, "1", "j", 1)
                else:
                    assert farm.change_work("complete", 1, ["1"], host="w1").changed == 1
            finally:
                letting_go.join()
                holder.close()
        assert farm.job(1)["status"] == "complete"
    finally:
        reference.close()
