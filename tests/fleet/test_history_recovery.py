"""The outbox keeps a run's notes until the history has it (delivered or not); start-up rebuilds.

On SQLite and on a fleet's PostgreSQL: what a kill -9 leaves (outbox rows committed and
delivered, no history record) is rebuilt at the next start, and only once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import psycopg
import pytest

from executor.config import Settings
from executor.runs import bookkeeping, run_notes
from executor.runs.callback_log import CallbackLog, log_path
from executor.runs.history import RunHistory
from executor.runs.metrics import Metrics
from executor.runs.outbox import Backoff, Outbox
from executor.runs.recorder import Recorder
from executor.runs.recovery import recover_lost_bookkeeping
from tests.fleet.test_store import RecordingReceiver
from tests.helpers.waiting import eventually
from tests.unit.test_history import invocation, result
from tests.unit.test_recovery import Away, _answered

pytestmark = pytest.mark.service


async def test_runs_a_kill_left_out_of_the_history_are_rebuilt_once(
    either_store: str, tmp_path: Path
) -> None:
    store = either_store if either_store.startswith("postgresql") else str(tmp_path / "outbox.db")
    history_at = either_store if store == either_store else str(tmp_path / "runs.db")
    receiver = RecordingReceiver()
    outbox = Outbox(store, receiver, backoff=Backoff(first_s=0.01, cap_s=0.05), linger_s=0)
    outbox.start()
    try:
        for n, ended_at in ((1, 100.0), (2, 101.0)):
            run = invocation(f"lost-{n}", job_id=77)
            notes = run_notes.encode(run, result(f"lost-{n}"), ended_at)
            await outbox.commit(f"lost-{n}", b"report", ended_at, notes)
        assert await outbox.flush(5)
    finally:
        await outbox.close()  # as a kill -9 would: the history has neither run
    assert sorted(key for key, _ in receiver.sent) == ["lost-1", "lost-2"]

    outbox = Outbox(store, receiver)
    history = RunHistory(history_at, retention_days=1e6, max_runs=1000)
    log = CallbackLog(tmp_path / "logs", 1 << 20)
    try:
        assert recover_lost_bookkeeping(outbox, history, log) == 2
        record = history.get("lost-2")
        assert record is not None and record.result is not None
        assert (record.job_id, record.work_name, record.result.stdout) == (77, "5", "out\n")
        assert record.started_at + record.usage.wall_seconds == pytest.approx(101.0)
        assert outbox.kept_notes() == []
        assert recover_lost_bookkeeping(outbox, history, log) == 0
    finally:
        history.close()
        await outbox.close()
    cb = log_path(tmp_path / "logs", 77).read_text()
    assert (cb.count("invocation=lost-1 "), cb.count("invocation=lost-2 ")) == (1, 1), cb


async def test_a_fleets_notes_go_once_its_history_has_the_run(pg_url: str, tmp_path: Path) -> None:
    # The supervisor away: nothing is delivered, yet the notes go at the history's commit
    # (on delivery's connection: no connection of their own), and a clean stop leaves none.
    settings = dataclasses.replace(
        Settings(),
        data_dir=tmp_path,
        log_dir=str(tmp_path / "logs"),
        report_results=True,
        store=pg_url,
    )
    rec = Recorder.open(
        settings, Metrics(), transport=Away(), encode_report=lambda inv, res, at: b"report"
    )
    rec.start()
    ids = [f"fleet-away-{n}" for n in range(5)]
    for inv_id in ids:
        await _answered(rec, inv_id)

    async def notes_kept() -> int:
        with psycopg.connect(pg_url, autocommit=True) as db:
            row = db.execute(
                "SELECT count(notes) FROM outbox WHERE key = ANY(%s)", (ids,)
            ).fetchone()
        assert row is not None
        return int(row[0])

    assert rec.history.count() >= len(ids)  # a reader flushes the writer

    async def none_kept() -> bool:
        return await notes_kept() == 0

    assert await eventually(none_kept)
    await rec.close(flush_timeout_s=0.1)
    assert await notes_kept() == 0


async def test_a_resends_row_waits_for_the_earlier_runs_bookkeeping(
    either_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probe 155: the resend's row replaces the earlier run's, notes and all. Committed
    # while the writer still held that run, a kill -9 left nothing to rebuild its .cb
    # entry from: the earlier run's entry is written before the resend's commit returns.
    monkeypatch.setattr(bookkeeping, "GATHER_S", 3600.0)  # only a flush or a stop writes
    monkeypatch.setattr(bookkeeping, "GATHER_RUNS", 10**9)
    settings = dataclasses.replace(
        Settings(),
        data_dir=tmp_path,
        log_dir=str(tmp_path / "logs"),
        report_results=True,
        store=either_store if either_store.startswith("postgresql") else "",
    )
    rec = Recorder.open(
        settings, Metrics(), transport=Away(), encode_report=lambda inv, res, at: repr(at).encode()
    )
    rec.start()
    cb = log_path(tmp_path / "logs", 7)
    try:
        await _answered(rec, "resent")
        assert not cb.exists()  # held by the writer
        resent = dataclasses.replace(result("resent"), stdout="second\n")
        committed = rec.on_result(invocation("resent", job_id=7), resent)
        assert committed is not None
        await committed
        assert cb.read_text().count("invocation=resent ") == 1  # the earlier run's
        assert rec.outbox is not None
        assert [row.key for row in rec.outbox.kept_notes()] == ["resent"]  # the resend's
    finally:
        await rec.close(flush_timeout_s=0.1)
    text = cb.read_text()
    assert text.count("invocation=resent ") == 2 and text.index("out\n") < text.index("second\n")
