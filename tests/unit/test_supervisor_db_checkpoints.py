"""supervisor.db's log is checkpointed as the executor's own databases' are (probe 46 finding 6)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from executor.runs.sqlite_checkpoints import BackgroundCheckpoints
from supervisor_client.reference import ReferenceSupervisor

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
