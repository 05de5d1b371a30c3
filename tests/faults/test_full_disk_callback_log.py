"""The ``.cb`` logs on a real disk that fills: entries it refused are written once it takes them.

A small tmpfs for the log directory, filled to the last byte, then given space back:
each run's entry appears once, whole and in order, without a new run to carry it (they
were lost for good, where a ``kill -9`` loses none). A write the full disk took in part
is cut off, so the entry written later is the only one.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from executor.runs.bookkeeping import BookkeepingWriter
from executor.runs.callback_log import CallbackLog, log_path
from executor.runs.history import RunHistory
from executor.runs.metrics import Metrics
from tests.faults.helpers import fill, small_tmpfs
from tests.unit.test_history import invocation, result

pytestmark = pytest.mark.faults


def headers(path: Path) -> list[str]:
    """The invocation ids of the log's entries, in the order they were written."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [
        line.split(" invocation=")[1].split(" ")[0] for line in lines if line.startswith("=== ")
    ]


def test_cb_entries_a_full_disk_refused_are_written_whole_once_it_has_room(
    tmp_path: Path,
) -> None:
    history = RunHistory(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    with small_tmpfs(tmp_path / "logs", 1 << 20) as logs:
        callback_log = CallbackLog(logs, 1 << 20)
        path = log_path(logs, 10)
        writer = BookkeepingWriter(history, callback_log, Metrics())
        try:
            now = time.time()
            writer.submit(invocation("f-0"), result("f-0"), ended_at=now, started_at=now)
            assert writer.flush()
            filler = fill(logs)
            # Larger than what is left of the log's last page: the disk takes a part.
            big = replace(result("f-1"), stdout="x" * 20_000 + "\n")
            for run in (big, result("f-2")):
                inv = run.invocation_id
                writer.submit(invocation(inv), run, ended_at=now, started_at=now)
            assert writer.flush()
            assert headers(path) == ["f-0"]
            assert history.count() == 3  # the history's disk had room
            filler.unlink()  # space returns; no new run comes
            deadline = time.monotonic() + 10
            while headers(path) != ["f-0", "f-1", "f-2"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert headers(path) == ["f-0", "f-1", "f-2"]
            assert path.read_text().count("x" * 20_000 + "\n") == 1  # whole, and once
        finally:
            writer.close()
    history.close()
