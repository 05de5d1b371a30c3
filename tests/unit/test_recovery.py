"""Start-up's rebuild of what a kill -9 left unwritten: each .cb entry once, damaged rows skipped."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from executor.runs import run_notes
from executor.runs.callback_log import CallbackLog, log_path
from executor.runs.history import RunHistory
from executor.runs.outbox import Outbox
from executor.runs.recovery import recover_lost_bookkeeping
from tests.unit.test_history import invocation, result

pytestmark = pytest.mark.unit


class Unreached:
    async def deliver(self, key: str, payload: bytes) -> bool:
        raise AssertionError("nothing is delivered here")


def _left_by_a_kill(tmp_path: Path, *ids: str) -> Outbox:
    """Outbox rows with their notes, none of their runs in the history (a kill -9 before it)."""
    outbox = Outbox(str(tmp_path / "outbox.db"), Unreached())
    for n, inv_id in enumerate(ids):
        notes = run_notes.encode(invocation(inv_id, job_id=7), result(inv_id), 100.0 + n)
        assert outbox.put(inv_id, b"report", 100.0 + n, notes)
    return outbox


def test_a_cb_entry_written_before_the_kill_is_not_written_again(tmp_path: Path) -> None:
    outbox = _left_by_a_kill(tmp_path, "logged", "unlogged")
    history = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=1000)
    log = CallbackLog(tmp_path / "logs", 1 << 20)
    # The writer puts a batch's .cb entries first: the kill came after this one's.
    log.append(invocation("logged", job_id=7), result("logged"), 100.0)
    try:
        assert recover_lost_bookkeeping(outbox, history, log) == 2
        assert history.get("logged") is not None and history.get("unlogged") is not None
    finally:
        history.close()
    cb = log_path(tmp_path / "logs", 7).read_text()
    assert (cb.count("invocation=logged "), cb.count("invocation=unlogged ")) == (1, 1), cb


def test_a_damaged_row_neither_stops_the_start_nor_the_rebuild_of_others(
    tmp_path: Path,
) -> None:
    outbox = _left_by_a_kill(tmp_path, "damaged", "sound")
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        db.execute("UPDATE outbox SET ended_at = 'yesterday' WHERE key = 'damaged'")
    history = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=1000)
    try:
        assert (
            recover_lost_bookkeeping(outbox, history, CallbackLog(tmp_path / "logs", 1 << 20)) == 1
        )
        assert history.get("sound") is not None
    finally:
        history.close()


def test_a_history_that_fails_leaves_the_notes_for_the_next_start(tmp_path: Path) -> None:
    outbox = _left_by_a_kill(tmp_path, "waiting")
    history = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=1000)
    history.close()  # every statement now fails
    log = CallbackLog(tmp_path / "logs", 1 << 20)
    assert recover_lost_bookkeeping(outbox, history, log) == 0
    assert [row.key for row in outbox.kept_notes()] == ["waiting"]
