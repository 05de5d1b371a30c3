"""RunHistory on a real SQLite file: record, filters, GetRun payload, retention."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
from pathlib import Path
from typing import Final

import pytest

from executor.model import (
    ActionRecord,
    CallbackSpec,
    Event,
    Failure,
    Invocation,
    Limits,
    Outcome,
    RunResult,
    Usage,
)
from executor.runs import history as history_module
from executor.runs.history import RunHistory, RunIdentity, result_from_json, result_to_json
from tests.helpers.clock import Clock
from tests.helpers.sqlite_memory import sqlite_memory_used

pytestmark = pytest.mark.unit

LIMITS = Limits(1, 1, 1 << 20, 1 << 10, 4, 1 << 20)


def invocation(inv_id: str, job_id: int = 10, callback_id: int = 1) -> Invocation:
    return Invocation(
        invocation_id=inv_id,
        callback=CallbackSpec("python", "print(1)", "complete-job-self", callback_id),
        job={"id": job_id},
        limits=LIMITS,
        event=Event("complete", "job", 10),
        work_name="5",
    )


def result(inv_id: str, outcome: Outcome = Outcome.SUCCEEDED) -> RunResult:
    failure = None if outcome is Outcome.SUCCEEDED else Failure("boom", "ValueError", "tb")
    return RunResult(
        inv_id,
        outcome,
        exit_code=0 if failure is None else 1,
        stdout="out\n",
        stderr="err",
        failure=failure,
        usage=Usage(0.5, 0.25, 4096, 0.01),
        actions=(ActionRecord("unblock", "10", True, "ok"),),
    )


@pytest.fixture
def history(tmp_path: Path) -> RunHistory:
    return RunHistory(tmp_path / "runs.db", retention_days=1, max_runs=100)


def test_result_json_round_trip() -> None:
    original = result("a", Outcome.FAILED)
    assert result_from_json(result_to_json(original)) == original
    assert result_from_json(result_to_json(result("b"))) == result("b")


def test_record_and_get_keeps_everything(history: RunHistory) -> None:
    history.record(invocation("a"), result("a", Outcome.FAILED), started_at=1000.0)
    run = history.get("a")
    assert run is not None
    assert (run.job_id, run.callback_id, run.triggers, run.language) == (
        10,
        1,
        "complete-job-self",
        "python",
    )
    assert run.outcome is Outcome.FAILED
    assert run.started_at == 1000.0
    assert run.usage == Usage(0.5, 0.25, 4096, 0.01)
    assert run.event == Event("complete", "job", 10)
    assert run.work_name == "5"
    assert run.result == result("a", Outcome.FAILED)
    assert history.get("nope") is None


def test_list_filters_and_order(history: RunHistory) -> None:
    history.record(invocation("old", job_id=1), result("old"), started_at=100.0)
    history.record(invocation("mid", job_id=2), result("mid", Outcome.FAILED), started_at=200.0)
    history.record(invocation("new", job_id=1), result("new", Outcome.FAILED), started_at=300.0)
    assert [r.invocation_id for r in history.list_runs()] == ["new", "mid", "old"]
    assert [r.invocation_id for r in history.list_runs(job_id=1)] == ["new", "old"]
    assert [r.invocation_id for r in history.list_runs(outcome=Outcome.FAILED)] == ["new", "mid"]
    assert [r.invocation_id for r in history.list_runs(since=200.0)] == ["new", "mid"]
    assert [r.invocation_id for r in history.list_runs(job_id=1, outcome=Outcome.FAILED)] == ["new"]
    assert [r.invocation_id for r in history.list_runs(limit=1)] == ["new"]
    assert all(r.result is None for r in history.list_runs())


def test_history_survives_reopen(tmp_path: Path) -> None:
    first = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=10)
    first.record(invocation("a"), result("a"), started_at=5.0)
    first.close()
    second = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=10)
    assert [r.invocation_id for r in second.list_runs()] == ["a"]
    second.close()


def test_retention_by_age(tmp_path: Path) -> None:
    clock = Clock(10 * 86_400.0)
    history = RunHistory(tmp_path / "runs.db", retention_days=2, max_runs=100, clock=clock)
    history.record(invocation("ancient"), result("ancient"), started_at=1 * 86_400.0)
    history.record(invocation("recent"), result("recent"), started_at=9 * 86_400.0)
    assert history.prune() == 1
    assert [r.invocation_id for r in history.list_runs()] == ["recent"]


def test_retention_by_count_runs_as_runs_are_recorded(tmp_path: Path) -> None:
    history = RunHistory(
        tmp_path / "runs.db", retention_days=1e6, max_runs=3, clock=Clock(1e6), prune_every=2
    )
    for n in range(6):
        history.record(invocation(f"r{n}"), result(f"r{n}"), started_at=float(n))
    assert history.count() == 3
    assert [r.invocation_id for r in history.list_runs()] == ["r5", "r4", "r3"]


def test_a_small_cap_holds_after_every_commit(tmp_path: Path) -> None:
    """``history_max_runs = 5`` means five, not five until the next prune 50 runs later."""
    history = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=5, clock=Clock(1e6))
    for n in range(20):
        history.record(invocation(f"r{n:02}"), result(f"r{n:02}"), started_at=float(n))
        assert history.count() == min(n + 1, 5)
    history.record_many(
        [(invocation(f"s{n}"), result(f"s{n}"), 100.0 + n) for n in range(8)]
        + [(invocation("s7"), result("s7"), 200.0)]  # the same run again: one row
    )
    assert [r.invocation_id for r in history.list_runs(limit=100)] == [
        "s7",
        "s6",
        "s5",
        "s4",
        "s3",
    ]
    history.close()
    reopened = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=5, clock=Clock(1e6))
    reopened.record(invocation("t"), result("t"), started_at=300.0)
    assert reopened.count() == 5
    reopened.close()


def test_a_replaced_run_counts_once_toward_the_limit(tmp_path: Path) -> None:
    history = RunHistory(
        tmp_path / "runs.db", retention_days=1e6, max_runs=2, clock=Clock(1e6), prune_every=1
    )
    history.record(invocation("a"), result("a"), started_at=1.0)
    history.record(invocation("b"), result("b"), started_at=2.0)
    history.record(invocation("b"), result("b"), started_at=3.0)  # the same run, recorded again
    assert [r.invocation_id for r in history.list_runs()] == ["b", "a"]
    history.close()


def test_a_repeated_id_keeps_the_run_that_ended_last(history: RunHistory) -> None:
    """Two runs of one id written out of order (two replicas) keep the later one's record."""
    history.record(invocation("twice"), result("twice"), started_at=10.0)
    history.record(invocation("twice"), result("twice", Outcome.KILLED), started_at=5.0)
    kept = history.get("twice")
    assert kept is not None and kept.outcome is Outcome.SUCCEEDED and kept.started_at == 10.0
    history.record(invocation("twice"), result("twice", Outcome.FAILED), started_at=20.0)
    kept = history.get("twice")
    assert kept is not None and kept.outcome is Outcome.FAILED
    assert history.count() == 1


def test_the_limit_holds_across_a_reopen(tmp_path: Path) -> None:
    first = RunHistory(tmp_path / "runs.db", retention_days=1e6, max_runs=10, clock=Clock(1e6))
    for n in range(3):
        first.record(invocation(f"r{n}"), result(f"r{n}"), started_at=float(n))
    first.close()
    second = RunHistory(
        tmp_path / "runs.db", retention_days=1e6, max_runs=3, clock=Clock(1e6), prune_every=1
    )
    second.record(invocation("r3"), result("r3"), started_at=3.0)
    assert [r.invocation_id for r in second.list_runs()] == ["r3", "r2", "r1"]
    second.close()


def test_a_universal_callbacks_file_is_kept_and_an_old_history_gains_the_column(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "runs.db"
    with sqlite3.connect(path) as db:  # the table as it was before ``source``
        db.execute(
            "CREATE TABLE runs (invocation_id TEXT PRIMARY KEY, job_id INTEGER NOT NULL,"
            " callback_id INTEGER NOT NULL, triggers TEXT NOT NULL, language TEXT NOT NULL,"
            " outcome TEXT NOT NULL, started_at REAL NOT NULL, wall_seconds REAL NOT NULL,"
            " cpu_seconds REAL NOT NULL, peak_rss_bytes INTEGER NOT NULL,"
            " queue_seconds REAL NOT NULL, event TEXT, work_name TEXT NOT NULL,"
            " result TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO runs VALUES ('old', 1, 1, 't', 'python', 'SUCCEEDED', 1e12, 0, 0, 0, 0,"
            " NULL, '', ?)",
            (result_to_json(result("old")),),
        )
    history = RunHistory(path, retention_days=1e6, max_runs=10)
    try:
        spec = CallbackSpec("qube", "mail-status", "done-job-self", 5, source="/cb/mail-status.qcb")
        history.record(Invocation("new", spec, {"id": 1}, LIMITS), result("new"), started_at=2e12)
        listed = {r.invocation_id: r.source for r in history.list_runs()}
        assert listed == {"new": "/cb/mail-status.qcb", "old": ""}
        got = history.get("new")
        assert got is not None and got.source == "/cb/mail-status.qcb"
    finally:
        history.close()


def test_the_history_keeps_whether_a_run_was_fired_and_old_runs_read_as_not(
    tmp_path: Path,
) -> None:
    # An Execute may not repeat a fired run (the engine made its id): the history must
    # say which runs were fired, and a history from before it kept that gains the column.
    path = tmp_path / "runs.db"
    first = RunHistory(path, retention_days=1e6, max_runs=10)
    first.close()
    with sqlite3.connect(path) as db:  # the table as it was before ``fired``
        db.execute("ALTER TABLE runs DROP COLUMN fired")
        db.execute(
            "INSERT INTO runs (invocation_id, job_id, callback_id, triggers, language, outcome,"
            " started_at, wall_seconds, cpu_seconds, peak_rss_bytes, queue_seconds, event,"
            " work_name, result) VALUES ('old', 10, 1, 'complete-job-self', 'python',"
            " 'SUCCEEDED', 1e12, 0, 0, 0, 0, NULL, '', ?)",
            (result_to_json(result("old")),),
        )
    history = RunHistory(path, retention_days=1e6, max_runs=10)
    try:
        fired = dataclasses.replace(invocation("fired"), source="job")
        history.record(fired, result("fired"), started_at=2e12)
        history.record(invocation("executed"), result("executed"), started_at=2e12)
        answers = {name: history.identity(name) for name in ("fired", "executed", "old")}
        assert {name: got and got.fired for name, got in answers.items()} == {
            "fired": True,
            "executed": False,
            "old": False,  # which old runs were fired was not kept
        }
        assert answers["fired"] == RunIdentity.of(fired) != RunIdentity.of(invocation("fired"))
        assert answers["old"] == RunIdentity.of(invocation("old"))
    finally:
        history.close()


def test_a_write_waits_for_another_connections_write_lock(tmp_path: Path) -> None:
    # As the checkpoint thread's TRUNCATE holds it: the write must wait for the lock,
    # not fail at once ("database is locked") when it would upgrade a read to a write.
    history = RunHistory(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    history.record(invocation("earlier"), result("earlier"), 1.0)
    holder = sqlite3.connect(tmp_path / "runs.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        history.record(invocation("later"), result("later"), 2.0)
    finally:
        release.join()
        holder.close()
    assert history.get("later") is not None
    history.close()


def test_the_repeated_id_check_reads_while_a_write_is_under_way(history: RunHistory) -> None:
    # Execute makes this read on the event loop: it must never wait for the bookkeeping
    # thread, which holds the history's connection while it writes a group of runs.
    history.record(invocation("a"), result("a"), started_at=1000.0)
    with history._lock:  # the writer's hold on its connection, as during record_many
        answers: list[RunIdentity | None] = []
        reader = threading.Thread(target=lambda: answers.append(history.identity("a")))
        reader.start()
        reader.join(timeout=5)
        assert answers, "identity waited for the writer's connection"
    assert answers[0] is not None and answers[0].job_id == 10


def test_the_repeated_id_check_sees_what_was_committed_since_it_last_read(
    history: RunHistory,
) -> None:
    assert history.identity("b") is None
    history.record(invocation("b", job_id=11), result("b"), started_at=1000.0)
    identity = history.identity("b")
    assert identity is not None and identity.job_id == 11


# -- the byte bound (history_max_bytes) -------------------------------------------------

MIB = 1 << 20


def flood(inv_id: str, size: int) -> RunResult:
    """A run that printed ``size`` bytes, as a callback flooding its output does."""
    return dataclasses.replace(result(inv_id), stdout="x" * size)


def file_bytes(path: Path) -> int:
    """runs.db as large as it is (its pages, those in its log included)."""
    db = sqlite3.connect(path)
    try:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    finally:
        db.close()
    return int(pages * page_size)


def kept(history: RunHistory) -> list[str]:
    return [r.invocation_id for r in history.list_runs(limit=1000)]


def test_runs_with_large_outputs_leave_the_history_under_its_bytes_newest_first(
    tmp_path: Path,
) -> None:
    """~40 runs that flooded their output made a 1.2 GB runs.db: max_bytes holds at every commit."""
    history = RunHistory(
        tmp_path / "runs.db", retention_days=1e6, max_runs=1000, max_bytes=4 * MIB, clock=Clock(1e6)
    )
    for n in range(20):
        history.record(invocation(f"big{n:02}"), flood(f"big{n:02}", MIB), started_at=float(n))
        assert history.stored_bytes() <= 4 * MIB
        assert kept(history)[0] == f"big{n:02}"
    # The oldest went, as few as needed: 4 MiB holds three runs of 1 MiB and their pages.
    assert kept(history) == ["big19", "big18", "big17"]
    newest = history.get("big19")
    assert newest is not None and newest.result == flood("big19", MIB)
    # A group of runs, some small, in one commit: the bound holds after it too.
    history.record_many(
        [(invocation(f"s{n}"), result(f"s{n}"), 100.0 + n) for n in range(5)]
        + [(invocation("big20"), flood("big20", 2 * MIB), 200.0)]
    )
    assert history.stored_bytes() <= 4 * MIB
    assert kept(history)[:6] == ["big20", "s4", "s3", "s2", "s1", "s0"]
    # Room is made before a commit's runs are written: they take the pages freed, so the
    # file stays near the bound instead of growing by each commit's runs.
    assert file_bytes(tmp_path / "runs.db") <= 4 * MIB + MIB // 4
    history.close()


def test_a_group_of_runs_is_written_one_runs_row_at_a_time(
    history: RunHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probe 157: a run's JSON can be six times its output (a control character is
    # \u0001); a group of 2 x 16 MiB runs built every row first, 1.6 GB at once.
    steps: list[str] = []
    build_row = history_module._row

    def row(invocation: Invocation, result: RunResult, started_at: float) -> tuple[object, ...]:
        steps.append(f"row {result.invocation_id}")
        return build_row(invocation, result, started_at)

    class Watched:
        def __init__(self, db: sqlite3.Connection) -> None:
            self._db = db

        def execute(self, sql: str, parameters: object = ()) -> sqlite3.Cursor:
            if sql.startswith("INSERT"):
                steps.append(f"insert {parameters[0]}")  # type: ignore[index]
            return self._db.execute(sql, parameters)  # type: ignore[arg-type]

    monkeypatch.setattr(history_module, "_row", row)
    monkeypatch.setattr(history, "_db", Watched(history._db))  # type: ignore[arg-type]
    history.record_many([(invocation(name), result(name), 1.0) for name in ("a", "b", "c")])
    assert steps == ["row a", "insert a", "row b", "insert b", "row c", "insert c"]
    monkeypatch.undo()
    assert history.count() == 3


def test_the_newest_run_is_kept_even_when_it_alone_is_larger_than_the_bound(
    tmp_path: Path,
) -> None:
    history = RunHistory(
        tmp_path / "runs.db", retention_days=1e6, max_runs=1000, max_bytes=MIB, clock=Clock(1e6)
    )
    history.record(invocation("small"), result("small"), started_at=1.0)
    history.record(invocation("huge"), flood("huge", 3 * MIB), started_at=2.0)
    assert kept(history) == ["huge"]
    assert history.prune() == 0  # pruning again never takes the last run
    assert kept(history) == ["huge"]
    history.record(invocation("after"), result("after"), started_at=3.0)
    assert kept(history) == ["after"]
    assert history.stored_bytes() <= MIB
    history.close()


OLD_RUNS_TABLE: Final = (  # runs.db as versions before policies and sizes made it
    "CREATE TABLE runs (invocation_id TEXT PRIMARY KEY, job_id INTEGER NOT NULL,"
    " callback_id INTEGER NOT NULL, triggers TEXT NOT NULL, language TEXT NOT NULL,"
    " outcome TEXT NOT NULL, started_at REAL NOT NULL, wall_seconds REAL NOT NULL,"
    " cpu_seconds REAL NOT NULL, peak_rss_bytes INTEGER NOT NULL,"
    " queue_seconds REAL NOT NULL, event TEXT, work_name TEXT NOT NULL,"
    " result TEXT NOT NULL)"
)


def test_a_history_larger_than_the_bound_is_pruned_at_open_and_its_file_stops_growing(
    tmp_path: Path,
) -> None:
    """A runs.db an older version let grow, its runs' sizes unknown, is bounded at the first start."""
    path = tmp_path / "runs.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(OLD_RUNS_TABLE)
        for n in range(12):
            db.execute(
                "INSERT INTO runs VALUES (?, 1, 1, 't', 'python', 'SUCCEEDED', ?, 0, 0, 0, 0,"
                " NULL, '', ?)",
                (f"r{n:02}", float(n), result_to_json(flood(f"r{n:02}", MIB))),
            )
    grown = file_bytes(path)
    assert grown > 12 * MIB

    history = RunHistory(
        path, retention_days=1e6, max_runs=1000, max_bytes=5 * MIB, clock=Clock(1e6)
    )
    assert history.stored_bytes() <= 5 * MIB
    assert kept(history) == ["r11", "r10", "r09", "r08"]
    opened = file_bytes(path)  # the runs and the indexes this version adds
    assert grown <= opened < grown + 64 * 1024
    for n in range(12, 40):
        history.record(invocation(f"r{n:02}"), flood(f"r{n:02}", MIB), started_at=float(n))
    assert history.stored_bytes() <= 5 * MIB
    assert kept(history)[0] == "r39"
    history.close()
    assert file_bytes(path) == opened  # SQLite does not shrink the file; it stops growing


def test_as_few_runs_go_as_bring_the_history_under_its_bytes(tmp_path: Path) -> None:
    """Many small runs, then large ones: the small ones go first, then only the large ones needed."""
    history = RunHistory(
        tmp_path / "runs.db", retention_days=1e6, max_runs=10_000, clock=Clock(1e6)
    )
    history.record_many(
        [(invocation(f"s{n:04}"), result(f"s{n:04}"), float(n)) for n in range(2000)]
    )
    history.record_many(
        [(invocation(f"big{n}"), flood(f"big{n}", MIB), 3000.0 + n) for n in range(8)]
    )
    history.close()
    bounded = RunHistory(
        tmp_path / "runs.db",
        retention_days=1e6,
        max_runs=10_000,
        max_bytes=6 * MIB,
        clock=Clock(1e6),
    )
    left = kept(bounded)
    assert not any(name.startswith("s") for name in left)
    assert left == [f"big{n}" for n in range(7, 7 - len(left), -1)]
    # One more of them would not have fitted: none went that did not have to.
    assert bounded.stored_bytes() <= 6 * MIB < bounded.stored_bytes() + MIB
    bounded.close()


def test_a_large_output_is_not_kept_by_sqlite_once_recorded(history: RunHistory) -> None:
    # A kept prepared statement kept the values it was last given: a run's 2 x 16 MiB of
    # output stayed in SQLite's memory until the next run was recorded (probe 105).
    before = sqlite_memory_used()
    large = dataclasses.replace(result("a"), stdout="\ufffd" * (4 << 20), stderr="x" * (4 << 20))
    history.record(invocation("a"), large, started_at=1000.0)
    assert sqlite_memory_used() - before < 4 << 20  # its page cache: 2 MiB
