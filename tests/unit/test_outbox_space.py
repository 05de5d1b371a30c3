"""outbox.db while the supervisor is away: bounded, no run starts past it, its space given back."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from executor.errors import UnavailableError
from executor.runs.outbox import Outbox
from executor.runs.outbox_transport import DeliveryError
from tests.helpers.waiting import eventually
from tests.unit.test_dispatcher import Harness

pytestmark = pytest.mark.unit

KIB = 1 << 10


class Switchable:
    """A supervisor away until ``back`` is set, then taking everything."""

    def __init__(self) -> None:
        self.back = False
        self.taken: list[str] = []

    async def deliver(self, key: str, payload: bytes) -> bool:
        if not self.back:
            raise DeliveryError("the supervisor is away", retryable=True, unreachable=True)
        self.taken.append(key)
        return False


async def test_past_the_bound_no_run_starts_until_delivery_makes_room_and_the_space_goes_back(
    tmp_path: Path,
) -> None:
    # Found by probe 46: 60 results of 2 MB made outbox.db 128 MB with the supervisor
    # away (history_max_bytes bounded runs.db at 1 MiB), and it kept 143 MB after delivery.
    path = tmp_path / "outbox.db"
    supervisor = Switchable()
    outbox = Outbox(path, supervisor, max_bytes=256 * KIB, compact_free_bytes=64 * KIB)
    try:
        outbox.put("run-0", b"x" * (64 * KIB), 100.0)
        assert outbox.refusal() == ""
        for n in range(1, 8):  # runs admitted before the bound was reached are recorded
            outbox.put(f"run-{n}", b"x" * (64 * KIB), 100.0 + n)
        refusal = outbox.refusal()
        assert "not taken 8 results" in refusal and "outbox_max_bytes = 0.2 MiB" in refusal
        assert outbox.pending() == 8  # nothing was refused or lost
        harness = Harness(slots=1, queue=1)
        harness.dispatcher._refusal = outbox.refusal
        with pytest.raises(UnavailableError, match="has not taken"):
            await harness.execute("print(1)")
        with pytest.raises(UnavailableError, match="has not taken"):
            await harness.execute("print(1)", fired=True)  # its firing stays queued
        assert harness.runner.started == []
        peak = _file_bytes(path)
        supervisor.back = True
        outbox.start()
        assert await outbox.flush(10.0)
        assert outbox.refusal() == ""
        assert len(supervisor.taken) == 8
    finally:
        await outbox.close()
    assert _file_bytes(path) < peak / 4
    assert os.path.getsize(path) < peak / 4  # the file itself, once its log is copied


def _file_bytes(path: Path) -> int:
    """The database's size as SQLite sees it (its log's pages included)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (count,) = db.execute("PRAGMA page_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
    return int(count * size)


class Refusing:
    """A supervisor that answers and refuses every result for good (INVALID_ARGUMENT)."""

    def __init__(self) -> None:
        self.taking = False
        self.taken: list[str] = []

    async def deliver(self, key: str, payload: bytes) -> bool:
        if not self.taking:
            raise DeliveryError("INVALID_ARGUMENT: not a result of ours", retryable=False)
        self.taken.append(key)
        return False


async def test_dead_letters_do_not_count_against_the_bound_nor_stop_runs_after_a_restart(
    tmp_path: Path,
) -> None:
    # Found by probe 67: four refused results of 300 KB filled a 1 MiB bound; every
    # Execute was refused for good, citing results "not taken" though none was pending,
    # and a restart let one run through before refusing again.
    path = tmp_path / "outbox.db"
    supervisor = Refusing()
    outbox = Outbox(path, supervisor, max_bytes=256 * KIB)
    try:
        outbox.start()
        # Five letters of 50 KiB: within the dead letters' own bound, and with what else
        # outbox.db holds past outbox_max_bytes.
        for n in range(5):
            outbox.put(f"run-{n}", b"x" * (50 * KIB), 100.0 + n)
            assert await outbox.flush(10.0)
        assert (outbox.pending(), outbox.dead()) == (0, 5)
        assert outbox.refusal() == ""
        assert {letter.key for letter in outbox.dead_letters()} == {f"run-{n}" for n in range(5)}
    finally:
        await outbox.close()
    reopened = Outbox(path, supervisor, max_bytes=256 * KIB)
    try:
        assert reopened.refusal() == ""
        # Queued again, they wait for delivery once more: the bound counts them, said truly.
        supervisor.taking = False
        assert reopened.retry_dead() == 5
        assert "has not taken 5 results" in reopened.refusal()
        supervisor.taking = True
        reopened.start()
        assert await reopened.flush(10.0)
        assert reopened.refusal() == ""
        assert sorted(supervisor.taken) == [f"run-{n}" for n in range(5)]
    finally:
        await reopened.close()


async def test_a_refusal_is_measured_again_when_its_results_are_set_aside(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", Refusing(), max_bytes=256 * KIB)
    try:
        for n in range(5):  # not delivered yet: they wait, past the bound with the rest
            outbox.put(f"run-{n}", b"x" * (50 * KIB), 100.0 + n)
        assert "has not taken 5 results" in outbox.refusal()
        outbox.start()  # the supervisor refuses each for good
        assert await outbox.flush(10.0)
        assert outbox.dead() == 5
        assert outbox.refusal() == ""
    finally:
        await outbox.close()


async def test_dead_letters_past_the_bound_drop_the_oldest_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, Refusing(), max_bytes=256 * KIB)
    try:
        outbox.start()
        for n in range(6):
            outbox.put(f"run-{n}", b"x" * (100 * KIB), 100.0 + n)
            assert await outbox.flush(10.0)
        # 256 KiB keep two letters of 100 KiB: the newest two.
        assert [letter.key for letter in outbox.dead_letters()] == ["run-5", "run-4"]
        assert outbox.refusal() == ""
    finally:
        await outbox.close()
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 4, dropped
    assert dropped[0].startswith("outbox: dead letter run-0 dropped")
    # The history has its own bounds: it may have dropped the run already, or will.
    assert dropped[0].endswith(
        "the oldest go first; its result was not delivered, and its run is in the history"
        " only as long as the history's own bounds keep it (history_max_runs,"
        " history_max_bytes, history_retention_days)"
    ), dropped[0]
    assert all(r.levelname == "WARNING" for r in caplog.records if "dropped" in r.getMessage())


async def test_the_bound_lifts_once_delivered_results_drop_their_notes(tmp_path: Path) -> None:
    # Found by probe 104: three big runs were delivered, but their rows still held their
    # notes (the history had not committed them yet), so the last measure was past the
    # bound; the notes were then dropped without measuring again, and every Execute was
    # refused for minutes ("has not taken 0 results") until an unrelated commit.
    supervisor = Switchable()
    supervisor.back = True
    outbox = Outbox(tmp_path / "outbox.db", supervisor, max_bytes=256 * KIB)
    runs = [(f"run-{n}", 100.0 + n) for n in range(3)]
    try:
        for key, ended_at in runs:
            outbox.put(key, b"x" * KIB, ended_at, notes="n" * (150 * KIB))
        assert "has not taken 3 results" in outbox.refusal()
        outbox.start()
        assert await outbox.flush(10.0)
        # Taken, but their runs are not in the history yet: said so, not "0 results".
        refusal = outbox.refusal()
        assert "has not taken" not in refusal
        assert "the history has not recorded" in refusal, refusal
        outbox.notes_written(runs)
        assert await eventually(lambda: not outbox.kept_notes())
        assert outbox.refusal() == ""
    finally:
        await outbox.close()


async def test_the_bound_lifts_when_a_start_up_drops_the_notes_of_recorded_runs(
    tmp_path: Path,
) -> None:
    # A stop before the history had them leaves delivered rows with their notes; the
    # next start finds them in the history and drops the notes (``recovery``).
    path = tmp_path / "outbox.db"
    supervisor = Switchable()
    supervisor.back = True
    outbox = Outbox(path, supervisor, max_bytes=256 * KIB)
    try:
        for n in range(3):
            outbox.put(f"run-{n}", b"x" * KIB, 100.0 + n, notes="n" * (150 * KIB))
        outbox.start()
        assert await outbox.flush(10.0)
    finally:
        await outbox.close()
    reopened = Outbox(path, supervisor, max_bytes=256 * KIB)
    try:
        kept = reopened.kept_notes()
        assert len(kept) == 3
        assert reopened.refusal() != ""
        reopened.forget_notes([row.seq for row in kept])
        assert reopened.refusal() == ""
    finally:
        await reopened.close()
