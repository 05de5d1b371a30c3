"""Start-up's rebuild of what a kill -9 left unwritten: each .cb entry once, damaged rows skipped."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from pathlib import Path

import pytest

from executor.config import Settings
from executor.runs import run_notes
from executor.runs.callback_log import CallbackLog, log_path
from executor.runs.history import RunHistory
from executor.runs.metrics import Metrics
from executor.runs.outbox import Outbox
from executor.runs.outbox_transport import DeliveryError
from executor.runs.recorder import Recorder
from executor.runs.recovery import recover_lost_bookkeeping
from tests.helpers.waiting import eventually
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


def test_a_resends_cb_entry_is_rebuilt_beside_the_earlier_runs(tmp_path: Path) -> None:
    # Probe 155: the earlier run of the id was written, then the kill came before the
    # resend's bookkeeping: an entry of the id is not the resend's (it ended at 100.0).
    outbox = Outbox(str(tmp_path / "outbox.db"), Unreached())
    resent = dataclasses.replace(result("resent"), stdout="second\n")
    notes = run_notes.encode(invocation("resent", job_id=7), resent, 105.0)
    assert outbox.put("resent", b"report", 105.0, notes)
    history = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=1000)
    log = CallbackLog(tmp_path / "logs", 1 << 20)
    history.record(invocation("resent", job_id=7), result("resent"), 99.5)
    log.append(invocation("resent", job_id=7), result("resent"), 100.0)
    try:
        assert recover_lost_bookkeeping(outbox, history, log) == 1
        record = history.get("resent")
        assert record is not None and record.result is not None
        assert record.result.stdout == "second\n"
    finally:
        history.close()
    cb = log_path(tmp_path / "logs", 7).read_text()
    assert cb.count("invocation=resent ") == 2 and cb.index("out\n") < cb.index("second\n"), cb


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


def test_a_run_the_history_pruned_is_not_rebuilt(tmp_path: Path) -> None:
    # Found by probe 46: with the supervisor away, rows of runs the bound had pruned came
    # back at a clean restart as the newest, and the prune then dropped the real newest.
    outbox = _left_by_a_kill(tmp_path, "pruned-1", "pruned-2")
    history = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=1)
    try:
        # Newer runs, of which the history keeps the last: 100.0 and 101.0 went before.
        for n, kept in enumerate(("newer", "newest")):
            history.record(invocation(kept, job_id=7), result(kept), 200.0 + n)
        log = CallbackLog(tmp_path / "logs", 1 << 20)
        assert recover_lost_bookkeeping(outbox, history, log) == 0
        assert [run.invocation_id for run in history.list_runs()] == ["newest"]
    finally:
        history.close()
    assert outbox.kept_notes() == []
    assert not log_path(tmp_path / "logs", 7).exists()


async def test_notes_go_once_the_history_has_the_run_and_a_clean_stop_leaves_none(
    tmp_path: Path,
) -> None:
    # The supervisor away: nothing is delivered, yet the notes must not outlive the
    # history's commit, or a restart takes them for runs a crash lost.
    settings = dataclasses.replace(
        Settings(), data_dir=tmp_path, log_dir=str(tmp_path / "logs"), report_results=True
    )
    rec = Recorder.open(
        settings, Metrics(), transport=Away(), encode_report=lambda inv, res, at: b"report"
    )
    rec.start()
    for n in range(5):
        await _answered(rec, f"away-{n}")
    outbox_path = tmp_path / "outbox.db"
    assert _notes_kept(outbox_path) == 5  # the history has none of them yet
    assert rec.history.count() == 5  # a reader flushes the writer
    assert await eventually(lambda: _notes_kept(outbox_path) == 0)
    await _answered(rec, "last")
    await rec.close(flush_timeout_s=0.1)  # the writer writes it at the stop
    assert _notes_kept(outbox_path) == 0
    with sqlite3.connect(outbox_path) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 6


async def _answered(rec: Recorder, inv_id: str) -> None:
    """A run recorded as an Execute's is: its outbox commit awaited, its history queued."""
    committed = rec.on_result(invocation(inv_id, job_id=7), result(inv_id))
    assert committed is not None
    await committed


class Away:
    async def deliver(self, key: str, payload: bytes) -> bool:
        raise DeliveryError("the supervisor is away", retryable=True, unreachable=True)


def _notes_kept(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(notes) FROM outbox").fetchone()[0])
