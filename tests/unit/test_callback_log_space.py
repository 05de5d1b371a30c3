"""The .cb logs kept within history_retention_days and callback_log_total_max_bytes, on real files.

Before, nothing ever removed a job's ``<id>.cb``/``<id>.cb.1``: 60 jobs printing 1 MiB
each left 121 MB of logs beside a history held to 1 MiB (probe 125), and a soak left a
directory and a log for every job that ever ran.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from executor.runs import callback_log_space
from executor.runs.bookkeeping import BookkeepingWriter
from executor.runs.callback_log import CallbackLog, log_path
from executor.runs.callback_log_space import CallbackLogSpace
from executor.runs.history import RunHistory
from executor.runs.metrics import Metrics
from tests.unit.test_history import invocation, result

pytestmark = pytest.mark.unit

DAY_S = 86400.0

WriterOf = Callable[[CallbackLog], BookkeepingWriter]


def log_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.cb*") if p.is_file())


def write(log: CallbackLog, job_id: int, stdout_bytes: int = 10, inv_id: str = "") -> Path:
    inv_id = inv_id or f"run-{job_id}-{time.monotonic_ns()}"
    done = replace(result(inv_id), stdout="x" * stdout_bytes)
    return log.append(invocation(inv_id, job_id=job_id), done, time.time())


def age(path: Path, days: float) -> None:
    """``path``'s logs (``.cb`` and ``.cb.1``) last written ``days`` ago."""
    then = time.time() - days * DAY_S
    for generation in (path, path.with_name(path.name + ".1")):
        if generation.exists():
            os.utime(generation, (then, then))


def space(root: Path, max_bytes: int = 1 << 30, retention_days: float = 30.0) -> CallbackLogSpace:
    return CallbackLogSpace(root, max_bytes=max_bytes, retention_days=retention_days)


def pruned_until(space_: CallbackLogSpace, done: Callable[[], bool], passes: int = 50) -> bool:
    for _ in range(passes):
        space_.prune()
        if done():
            return True
    return done()


@pytest.fixture
def writer_of(tmp_path: Path) -> Iterator[WriterOf]:
    """A real bookkeeping thread over a CallbackLog with a space, pruning every 50 ms."""
    writers: list[BookkeepingWriter] = []

    def make(log: CallbackLog) -> BookkeepingWriter:
        history = RunHistory(tmp_path / "runs.db", retention_days=30, max_runs=1000)
        writer = BookkeepingWriter(history, log, Metrics(), prune_every_s=0.05)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.close()


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_log_not_written_for_the_retention_goes_whole_on_the_bookkeeping_thread(
    tmp_path: Path, writer_of: WriterOf
) -> None:
    root = tmp_path / "logs"
    # Written before this start (a CallbackLog of an earlier run), two of them long ago.
    before = CallbackLog(root, 1 << 20)
    old = write(before, 1)
    write(before, 1, 600)  # more than one entry, and rotated below
    rotated = CallbackLog(root, 400)
    write(rotated, 1, 300)
    assert old.with_name("1.cb.1").exists()
    age(old, 31)
    old_in_its_own_group = write(before, 1500)
    age(old_in_its_own_group, 31)
    recent = write(before, 2)
    age(recent, 29)

    log = CallbackLog(root, 1 << 20, space=space(root, retention_days=30))
    writer = writer_of(log)
    # Its group's directory, empty, goes too.
    assert wait_for(lambda: not old.parent.exists() and not (root / "job" / "1000").exists())
    assert recent.exists() and (root / "job" / "0").is_dir()
    writer.submit(invocation("new", job_id=3), result("new"), ended_at=time.time(), started_at=0)
    assert writer.flush()
    assert log_path(root, 3).exists() and recent.exists()


def test_past_the_total_the_logs_written_longest_ago_go_whole(
    tmp_path: Path, writer_of: WriterOf
) -> None:
    root = tmp_path / "logs"
    bound = 300_000
    log = CallbackLog(root, 1 << 20, space=space(root, max_bytes=bound))
    writer = writer_of(log)
    for job_id in range(1, 8):
        inv_id = f"run-{job_id}"
        done = replace(result(inv_id), stdout="x" * 90_000)
        writer.submit(invocation(inv_id, job_id=job_id), done, ended_at=time.time(), started_at=0)
        assert writer.flush()
        time.sleep(0.01)  # each job's log written after the one before
    kept = sorted(int(p.name) for p in (root / "job" / "0").iterdir())
    assert kept == [5, 6, 7], "the newest, as many as fit"
    assert log_bytes(root) <= bound


def test_the_log_being_written_is_kept_alone_when_it_alone_passes_the_total(
    tmp_path: Path,
) -> None:
    root = tmp_path / "logs"
    bounded = space(root, max_bytes=50_000)
    log = CallbackLog(root, 1 << 20, space=bounded)
    first = write(log, 1, 100_000)
    bounded.prune()
    assert first.exists(), "the newest log: never removed"
    time.sleep(0.01)
    second = write(log, 2, 100_000)
    bounded.prune()
    assert second.exists() and not first.parent.exists()


def test_logs_on_disk_before_the_start_count_towards_the_total(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    before = CallbackLog(root, 1 << 20)
    paths = []
    for n, job_id in enumerate((1, 2, 2001)):
        paths.append(write(before, job_id, 100_000))
        age(paths[-1], 3 - n)  # 1 written longest ago
    bounded = space(root, max_bytes=250_000)
    assert pruned_until(bounded, lambda: not paths[0].exists())
    assert paths[1].exists() and paths[2].exists()
    assert log_bytes(root) <= 250_000


def test_only_the_logs_go_another_file_keeps_the_job_directory(tmp_path: Path) -> None:
    # log_dir may be Qube's own spool, where a job's directory holds its other logs too.
    root = tmp_path / "logs"
    before = CallbackLog(root, 1 << 20)
    old = write(before, 7)
    age(old, 40)
    qubes = old.with_name("7.out")
    qubes.write_text("qube's own\n")
    os.utime(qubes, (0, 0))
    assert pruned_until(space(root), lambda: not old.exists())
    assert qubes.read_text() == "qube's own\n"


def test_each_pass_walks_a_bounded_part_of_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree of 100,000 jobs takes seconds to walk: the bookkeeping thread must not stall on it."""
    monkeypatch.setattr(callback_log_space, "WALK_PER_PASS", 3)
    root = tmp_path / "logs"
    before = CallbackLog(root, 1 << 20)
    paths = [write(before, job_id) for job_id in range(1, 11)]
    for path in paths:
        age(path, 40)
    walker = space(root)
    walker.prune()
    assert 0 < sum(not p.exists() for p in paths) <= 3
    assert pruned_until(walker, lambda: not any(p.exists() for p in paths), passes=10)
    assert not (root / "job" / "0").exists()


@contextlib.contextmanager
def undeletable(directory: Path) -> Iterator[None]:
    """Nothing in ``directory`` may be removed (immutable as root, not writable otherwise)."""
    if os.geteuid() == 0:
        made = subprocess.run(
            ["chattr", "+i", str(directory)], capture_output=True, text=True, check=False
        )
        if made.returncode:
            pytest.skip(f"cannot make a directory immutable here: {made.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        directory.chmod(0o550)
        try:
            yield
        finally:
            directory.chmod(0o750)


def test_a_log_directory_it_cannot_remove_in_is_warned_of_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callback_log_space, "WALK_PER_PASS", 2)
    root = tmp_path / "logs"
    before = CallbackLog(root, 1 << 20)
    stuck = write(before, 1)
    others = [write(before, job_id) for job_id in (2, 3, 4, 5)]
    for path in (stuck, *others):
        age(path, 40)
    walker = space(root)
    with undeletable(stuck.parent), caplog.at_level(logging.DEBUG, "executor.runs"):
        for _ in range(20):  # several rounds of the walk, each finding it again
            walker.prune()
        assert stuck.exists()
    assert not any(p.exists() for p in others)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert str(stuck.parent) in warnings[0].getMessage()
    walker.prune()
    walker.prune()
    assert not stuck.exists(), "removed once it can be"
