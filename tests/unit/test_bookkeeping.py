"""The bookkeeping thread on a real history file, real .cb logs and real metrics."""

from __future__ import annotations

import errno
import gc
import os
import sqlite3
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from executor.model import Invocation, RunResult
from executor.runs import bookkeeping
from executor.runs.bookkeeping import GATHER_S, BookkeepingWriter
from executor.runs.callback_log import CallbackLog, log_path
from executor.runs.history import RunHistory, RunIdentity
from executor.runs.metrics import Metrics
from executor.storage import StorageError
from tests.helpers.clock import Clock
from tests.unit.test_history import invocation, result

pytestmark = pytest.mark.unit


class CountedHistory(RunHistory):
    """The real history, counting its transactions."""

    transactions: list[int]

    def record_many(self, runs: Sequence[tuple[Invocation, RunResult, float]]) -> None:
        self.transactions.append(len(runs))
        super().record_many(runs)


@pytest.fixture
def history(tmp_path: Path) -> CountedHistory:
    history = CountedHistory(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    history.transactions = []
    return history


def submit(writer: BookkeepingWriter, inv_id: str) -> None:
    now = time.time()
    writer.submit(invocation(inv_id), result(inv_id), ended_at=now, started_at=now - 0.5)


def test_a_burst_of_runs_is_one_transaction_and_one_entry_each(
    tmp_path: Path, history: CountedHistory
) -> None:
    callback_log = CallbackLog(tmp_path / "logs", 1 << 20)
    writer = BookkeepingWriter(history, callback_log, Metrics())
    for n in range(10):
        submit(writer, f"run-{n}")
    time.sleep(5 * GATHER_S)  # nobody reads: the pause ends on its own
    assert history.transactions == [10]
    assert history.count() == 10
    entries = log_path(callback_log.root, 10).read_text().count("=== ")
    assert entries == 10
    writer.close()


def test_a_reader_does_not_wait_for_the_pause(history: CountedHistory, tmp_path: Path) -> None:
    writer = BookkeepingWriter(history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics())
    for round_ in range(20):
        submit(writer, f"run-{round_}")
        assert writer.flush()
        assert history.get(f"run-{round_}") is not None  # answered, so readable at once
    writer.close()
    assert sum(history.transactions) == 20


def test_close_writes_what_is_queued(history: CountedHistory, tmp_path: Path) -> None:
    writer = BookkeepingWriter(history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics())
    for n in range(5):
        submit(writer, f"run-{n}")
    writer.close()
    assert history.count() == 5


class FullDisk(CountedHistory):
    """The real history, on a disk that is full until told otherwise."""

    full = True

    def record_many(self, runs: Sequence[tuple[Invocation, RunResult, float]]) -> None:
        if self.full:
            raise StorageError("runs.db", "database or disk is full")
        super().record_many(runs)


def test_runs_the_full_disk_refused_reach_the_history_once_it_is_not(tmp_path: Path) -> None:
    history = FullDisk(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    history.transactions = []
    writer = BookkeepingWriter(history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics())
    for n in range(3):
        submit(writer, f"run-{n}")
    assert writer.flush()
    assert history.count() == 0
    history.full = False  # space returns; no new run comes
    deadline = time.monotonic() + 10
    while history.count() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [history.get(f"run-{n}") is not None for n in range(3)] == [True] * 3
    submit(writer, "run-3")
    writer.close()
    assert history.count() == 4  # each once


def database_is_locked(path: Path) -> sqlite3.OperationalError:
    """SQLite's own "database is locked", as a writer meets it past its busy timeout."""
    holder = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as err:
        return err
    finally:
        holder.close()
        other.close()
    raise AssertionError("the second writer got the lock")


class LockedDatabase(CountedHistory):
    """The real history, whose database another connection holds locked until told otherwise."""

    locked: sqlite3.OperationalError | None = None

    def record_many(self, runs: Sequence[tuple[Invocation, RunResult, float]]) -> None:
        if self.locked is not None:
            raise self.locked
        super().record_many(runs)


def test_runs_a_locked_database_refused_reach_the_history_once_it_is_not(tmp_path: Path) -> None:
    history = LockedDatabase(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    history.transactions = []
    history.locked = database_is_locked(tmp_path / "other.db")
    writer = BookkeepingWriter(history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics())
    for n in range(3):
        submit(writer, f"run-{n}")
    assert writer.flush()
    assert history.count() == 0
    history.locked = None  # the other connection is done
    deadline = time.monotonic() + 10
    while history.count() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    assert [history.get(f"run-{n}") is not None for n in range(3)] == [True] * 3


def test_a_run_is_found_by_its_id_while_queued_and_once_written(
    history: CountedHistory, tmp_path: Path
) -> None:
    # An Execute reusing the id of a run not yet written must still meet that run.
    writer = BookkeepingWriter(history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics())
    submit(writer, "run-1")
    queued = writer.pending("run-1")
    assert queued is None or RunIdentity.of(queued) == RunIdentity.of(invocation("run-1"))
    assert writer.flush()
    assert writer.pending("run-1") is None
    assert history.identity("run-1") == RunIdentity.of(invocation("run-1"))
    assert history.identity("run-2") is None
    writer.close()


def test_runs_past_the_retention_age_go_on_a_timer_with_no_run_ending(tmp_path: Path) -> None:
    # Age went only at start and every 50th run: a quiet executor listed runs days past
    # history_retention_days (count pruning, at each commit, held at once).
    clock = Clock()
    history = RunHistory(tmp_path / "runs.db", retention_days=1, max_runs=1000, clock=clock)
    history.record(invocation("old"), result("old"), started_at=clock.now)
    writer = BookkeepingWriter(
        history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics(), prune_every_s=0.05
    )
    try:
        time.sleep(0.2)
        assert history.get("old") is not None, "younger than a day: kept"
        clock.now += 86400 + 1
        deadline = time.monotonic() + 10
        while history.get("old") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert history.get("old") is None and history.count() == 0
    finally:
        writer.close()


def test_a_run_left_out_of_the_history_still_has_its_cb_entry_and_metrics(
    history: CountedHistory, tmp_path: Path
) -> None:
    # A fleet's run fenced off (its replica's claim on the firing lost): the other
    # replica's run is the one in the history.
    callback_log = CallbackLog(tmp_path / "logs", 1 << 20)
    metrics = Metrics()
    writer = BookkeepingWriter(history, callback_log, metrics)
    now = time.time()
    writer.submit(
        invocation("fenced"), result("fenced"), ended_at=now, started_at=now, in_history=False
    )
    assert writer.pending("fenced") is None  # not to be recorded: no run shows under its id
    assert writer.flush()
    writer.close()
    assert history.get("fenced") is None
    assert history.transactions == []
    assert log_path(callback_log.root, 10).read_text().count("=== ") == 1
    assert sum(metrics.snapshot().runs_by_outcome.values()) == 1


class CheckingLogFirst(CountedHistory):
    """The real history, noting whether each run's .cb entry was there before its record."""

    log: CallbackLog
    logged_first: list[bool]

    def record_many(self, runs: Sequence[tuple[Invocation, RunResult, float]]) -> None:
        for run, ran, _ in runs:
            logged = {invocation_id for invocation_id, _ in self.log.logged(run.job_id)}
            self.logged_first.append(ran.invocation_id in logged)
        super().record_many(runs)


def test_a_runs_cb_entry_is_written_before_its_history_record(tmp_path: Path) -> None:
    # A kill -9 between the two then leaves a run the start-up rebuilds (no history
    # record), never a recorded run whose .cb entry nothing would write (recovery.py).
    history = CheckingLogFirst(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    history.transactions, history.logged_first = [], []
    history.log = CallbackLog(tmp_path / "logs", 1 << 20)
    writer = BookkeepingWriter(history, history.log, Metrics())
    for n in range(3):
        submit(writer, f"run-{n}")
    writer.close()
    assert history.logged_first == [True, True, True]


class Bulk:
    """Stands for a job's large contents (an Execute's Struct): a weak reference sees it go."""


def released(ref: weakref.ref[Bulk], timeout_s: float = 5.0) -> bool:
    """Whether ``ref``'s object is let go of within ``timeout_s`` (the thread may still hold it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        gc.collect()
        if ref() is None:
            return True
        time.sleep(0.01)
    return False


def bulky_invocation(inv_id: str) -> tuple[Invocation, weakref.ref[Bulk]]:
    bulk = Bulk()
    return replace(invocation(inv_id), job={"id": 10, "extra": bulk}), weakref.ref(bulk)


def test_a_written_run_is_not_held_while_the_thread_waits_for_the_next(
    history: CountedHistory, tmp_path: Path
) -> None:
    writer = BookkeepingWriter(history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics())
    inv, ref = bulky_invocation("run-big")
    now = time.time()
    writer.submit(inv, result("run-big"), ended_at=now, started_at=now - 0.5)
    del inv
    assert writer.flush()
    # The last batch of a burst was held until the next run ended: its jobs with it.
    assert released(ref)
    writer.close()
    assert history.get("run-big") is not None


def test_a_run_kept_for_a_full_disk_keeps_only_its_jobs_id(tmp_path: Path) -> None:
    history = FullDisk(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    history.transactions = []
    writer = BookkeepingWriter(history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics())
    inv, ref = bulky_invocation("run-big")
    now = time.time()
    writer.submit(inv, result("run-big"), ended_at=now, started_at=now - 0.5)
    del inv
    assert writer.flush()
    assert released(ref)  # waiting for the disk, without the job's contents
    assert history.count() == 0
    history.full = False  # space returns: the run is written at the next try
    deadline = time.monotonic() + 10
    while history.count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    record = history.get("run-big")
    assert record is not None
    assert record.job_id == 10


class FullLogDisk(CallbackLog):
    """The real callback log, on a disk that refuses its writes until told otherwise."""

    full = True

    def append(self, invocation: Invocation, result: RunResult, when: float) -> Path:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().append(invocation, result, when)


def logged_ids(callback_log: CallbackLog, job_id: int = 10) -> list[str]:
    """The invocation ids of the job's .cb entries, in the order they were written."""
    text = log_path(callback_log.root, job_id).read_text()
    return [
        line.split(" invocation=")[1].split(" ")[0]
        for line in text.splitlines()
        if line.startswith("=== ")
    ]


def test_cb_entries_the_full_disk_refused_are_written_once_it_is_not_in_order(
    history: CountedHistory, tmp_path: Path
) -> None:
    # They were lost for good (one WARNING each), where a kill -9 loses none of them.
    callback_log = FullLogDisk(tmp_path / "logs", 1 << 20)
    writer = BookkeepingWriter(history, callback_log, Metrics())
    for n in range(3):
        submit(writer, f"run-{n}")
    assert writer.flush()
    assert not log_path(callback_log.root, 10).exists()
    assert history.count() == 3  # the history's own disk took them
    callback_log.full = False  # space returns; no new run comes
    deadline = time.monotonic() + 10
    while not log_path(callback_log.root, 10).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    submit(writer, "run-3")
    writer.close()
    assert logged_ids(callback_log) == ["run-0", "run-1", "run-2", "run-3"]


def test_a_new_runs_cb_entry_goes_after_those_that_waited(
    history: CountedHistory, tmp_path: Path
) -> None:
    callback_log = FullLogDisk(tmp_path / "logs", 1 << 20)
    writer = BookkeepingWriter(history, callback_log, Metrics())
    submit(writer, "run-0")
    assert writer.flush()
    callback_log.full = False
    submit(writer, "run-1")  # written with the one that waited, after it
    assert writer.flush()
    assert logged_ids(callback_log) == ["run-0", "run-1"]
    writer.close()
    assert logged_ids(callback_log) == ["run-0", "run-1"]  # each once


def test_a_stop_says_which_cb_entries_the_log_never_took(
    history: CountedHistory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    callback_log = FullLogDisk(tmp_path / "logs", 1 << 20)
    writer = BookkeepingWriter(history, callback_log, Metrics())
    submit(writer, "run-0")
    writer.close()
    assert "stopping with 1 .cb entries the callback log did not take (runs run-0)" in caplog.text


def test_a_stop_says_which_runs_the_history_never_took(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Probe 166: a stop while runs.db was locked said nothing; the next start called
    # the runs it rebuilt a crash's.
    history = FullDisk(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    history.transactions = []
    writer = BookkeepingWriter(history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics())
    submit(writer, "run-0")
    writer.close()
    assert (
        "stopping with 1 runs the history did not take (runs run-0): the next start rebuilds"
        " them from the outbox" in caplog.text
    )


def submit_for(writer: BookkeepingWriter, job_id: int, inv_id: str) -> None:
    now = time.time()
    writer.submit(invocation(inv_id, job_id), result(inv_id), ended_at=now, started_at=now - 0.5)


@pytest.fixture
def immutable_log() -> Iterator[Callable[[Path], None]]:
    """Makes ``path`` an empty .cb file, immutable (chattr +i): every write refused, EPERM.

    Whatever a test does, each is made mutable again at its end (else its tmp dir stays).
    """
    made: list[Path] = []

    def make(path: Path) -> None:
        path.parent.mkdir(parents=True, mode=0o750)
        path.touch(mode=0o640)
        if (
            subprocess.run(["chattr", "+i", str(path)], check=False, capture_output=True).returncode
            != 0
        ):
            pytest.skip("chattr +i is not available on this file system")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)


def mend(path: Path) -> None:
    subprocess.run(["chattr", "-i", str(path)], check=True)


def test_one_jobs_log_that_refuses_holds_back_only_its_own_entries(
    history: CountedHistory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    immutable_log: Callable[[Path], None],
) -> None:
    # One job's log stopped every job's (the others' entries kept behind its first).
    callback_log = CallbackLog(tmp_path / "logs", 1 << 20)
    blocked = log_path(callback_log.root, 2001)
    immutable_log(blocked)  # an admin's chattr +i: job 2001's log refuses every write
    writer = BookkeepingWriter(history, callback_log, Metrics())
    try:
        for batch in range(3):
            submit_for(writer, 2001, f"a{batch}")
            submit_for(writer, 2002, f"b{batch}")
            submit_for(writer, 10, f"other-{batch}")
            assert writer.flush()
        assert logged_ids(callback_log, 2002) == ["b0", "b1", "b2"]
        assert logged_ids(callback_log, 10) == ["other-0", "other-1", "other-2"]
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once, not per run
        assert str(blocked) in warnings[0].getMessage()
        assert "other jobs' logs are written" in warnings[0].getMessage()
        mend(blocked)  # its entries follow, in their order, with no new run
        deadline = time.monotonic() + 10
        while not blocked.stat().st_size and time.monotonic() < deadline:
            time.sleep(0.05)
        submit_for(writer, 2001, "a3")
    finally:
        writer.close()
    assert logged_ids(callback_log, 2001) == ["a0", "a1", "a2", "a3"]
    assert logged_ids(callback_log, 2002) == ["b0", "b1", "b2"]  # each once
    assert "stopping with" not in caplog.text


def test_a_refusing_logs_entries_are_bounded_the_oldest_given_up(
    history: CountedHistory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    immutable_log: Callable[[Path], None],
) -> None:
    monkeypatch.setattr(bookkeeping, "MAX_UNLOGGED", 3)
    callback_log = CallbackLog(tmp_path / "logs", 1 << 20)
    blocked = log_path(callback_log.root, 2001)
    immutable_log(blocked)
    writer = BookkeepingWriter(history, callback_log, Metrics())
    try:
        for n in range(5):
            submit_for(writer, 2001, f"a{n}")
            submit_for(writer, 10, f"other-{n}")
            assert writer.flush()
        mend(blocked)
        submit_for(writer, 10, "other-5")
    finally:
        writer.close()
    assert logged_ids(callback_log, 10) == [f"other-{n}" for n in range(6)]
    assert logged_ids(callback_log, 2001) == ["a2", "a3", "a4"]
    assert "given up (the oldest: runs a0)" in caplog.text


class SlowHistory(CountedHistory):
    """The real history, each write of which waits until the test lets it through."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.transactions = []
        self.go = threading.Event()

    def record_many(self, runs: Sequence[tuple[Invocation, RunResult, float]]) -> None:
        self.go.wait(10)
        super().record_many(runs)


def submit_output(writer: BookkeepingWriter, inv_id: str, chars: int) -> None:
    now = time.time()
    big = replace(result(inv_id), stdout="o" * (chars // 2), stderr="e" * (chars - chars // 2))
    writer.submit(invocation(inv_id), big, ended_at=now, started_at=now - 0.5)


def test_the_writer_is_behind_while_its_unwritten_runs_hold_more_output_than_its_bound(
    tmp_path: Path,
) -> None:
    # Probe 153: what the history had not written yet was held without bound.
    history = SlowHistory(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    writer = BookkeepingWriter(
        history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics(), max_behind_chars=1000
    )
    submit_output(writer, "run-0", 600)
    assert writer.behind() == ""
    submit_output(writer, "run-1", 600)  # 1,200 characters unwritten
    assert "hold 0.0 MiB of output (more than 0.0 MiB)" in writer.behind()
    history.go.set()
    assert writer.flush()
    assert writer.behind() == ""
    writer.close()
    assert history.count() == 2


def test_runs_kept_for_a_history_that_refuses_them_count_until_it_takes_them(
    tmp_path: Path,
) -> None:
    history = FullDisk(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    history.transactions = []
    writer = BookkeepingWriter(
        history, CallbackLog(tmp_path / "logs", 1 << 20), Metrics(), max_behind_chars=1000
    )
    for n in range(3):
        submit_output(writer, f"run-{n}", 400)
    assert writer.flush()
    assert history.count() == 0 and writer.behind()  # written nowhere yet: still held
    history.full = False
    deadline = time.monotonic() + 10
    while writer.behind() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.behind() == ""
    writer.close()
    assert history.count() == 3
