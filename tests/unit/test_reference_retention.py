"""The reference supervisor's results are bounded by age, count and bytes; the history lines stay."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from supervisor_client.reference import ReferenceSupervisor, retention
from supervisor_client.reference.retention import PRUNE_EVERY
from tests.helpers.clock import Clock

pytestmark = pytest.mark.unit

DAY = 86400.0


def ids(sup: ReferenceSupervisor) -> list[str]:
    return [r["invocation_id"] for r in sup.results()]


def result_lines(sup: ReferenceSupervisor, job_id: int) -> list[str]:
    return [line["text"] for line in sup.history(job_id) if "result of" in line["text"]]


def test_the_count_holds_at_every_report_and_the_history_lines_stay() -> None:
    clock = Clock()
    with ReferenceSupervisor(clock=clock, max_results=3) as sup:
        (job,) = sup.submit([{"name": "a", "user": "alice"}])
        for n in range(5):
            clock.now += 1
            sup.report_result(f"inv-{n}", job["id"], {"outcome": "OUTCOME_SUCCEEDED"})
            assert len(sup.results()) == min(n + 1, 3)
        assert ids(sup) == ["inv-2", "inv-3", "inv-4"]
        sup.report_results([(f"batch-{n}", job["id"], {}) for n in range(4)])
        assert ids(sup) == ["batch-1", "batch-2", "batch-3"]
        assert len(result_lines(sup, job["id"])) == 9
        # A report of a result still kept is a duplicate, as before.
        assert sup.report_result("batch-3", job["id"], {}) is True


def test_results_past_their_age_go_at_open_and_while_reports_come(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "supervisor.db"
    with ReferenceSupervisor(path, clock=clock) as unbounded:  # as before: kept for ever
        (job,) = unbounded.submit([{"name": "a", "user": "alice"}])
        unbounded.report_result("old", job["id"], {})
        clock.now += 2 * DAY
        unbounded.report_result("new", job["id"], {})

    with ReferenceSupervisor(path, clock=clock, result_retention_s=DAY) as sup:
        assert ids(sup) == ["new"]
        assert len(result_lines(sup, job["id"])) == 2
        clock.now += 2 * DAY
        for n in range(PRUNE_EVERY - 1):
            sup.report_result(f"inv-{n}", job["id"], {})
        assert "new" in ids(sup), "pruned by age every PRUNE_EVERY results, not at each"
        sup.report_result("last", job["id"], {})
        assert "new" not in ids(sup)
        assert len(ids(sup)) == PRUNE_EVERY


def payload_bytes(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        (total,) = db.execute("SELECT total(length(CAST(payload AS BLOB))) FROM results").fetchone()
    finally:
        db.close()
    return int(total)


def test_the_payloads_bytes_hold_at_every_report_with_the_newest_kept(tmp_path: Path) -> None:
    """Each result holds its run's output: 1,000 of them could take 4 GiB of supervisor.db."""
    clock = Clock()
    path = tmp_path / "supervisor.db"
    with ReferenceSupervisor(path, clock=clock, max_result_bytes=100_000) as sup:
        (job,) = sup.submit([{"name": "a", "user": "alice"}])
        for n in range(10):
            clock.now += 1
            sup.report_result(f"inv-{n}", job["id"], {"stdout": "x" * 30_000})
            assert payload_bytes(path) <= 100_000
        assert ids(sup) == ["inv-7", "inv-8", "inv-9"]
        # A later run of a kept one replaces it: its bytes, not the first run's, count.
        clock.now += 1
        sup.report_result("inv-9", job["id"], {"stdout": "y" * 60_000, "ended_at": 5.0})
        assert ids(sup) == ["inv-8", "inv-9"]
        assert payload_bytes(path) <= 100_000
        # The newest is kept even when it alone is larger; the lines of every run stay.
        clock.now += 1
        sup.report_results(
            [("small", job["id"], {}), ("huge", job["id"], {"stdout": "z" * 200_000})]
        )
        assert ids(sup) == ["huge"]
        assert len(result_lines(sup, job["id"])) == 13

    with ReferenceSupervisor(path, clock=clock, max_result_bytes=100_000) as reopened:
        assert ids(reopened) == ["huge"]  # counted at open: the next report goes in its place
        reopened.report_result("next", job["id"], {})
        assert ids(reopened) == ["next"]


def test_a_supervisor_db_past_the_bytes_is_pruned_at_open(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "supervisor.db"
    with ReferenceSupervisor(path, clock=clock) as unbounded:  # a version without the bound
        for n in range(10):
            clock.now += 1
            unbounded.report_result(f"inv-{n}", 0, {"stdout": "x" * 30_000})
    with ReferenceSupervisor(path, clock=clock, max_result_bytes=100_000) as sup:
        assert ids(sup) == ["inv-7", "inv-8", "inv-9"]
    assert payload_bytes(path) <= 100_000


def size_of(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    finally:
        db.close()
    return int(pages * page_size)


def test_a_file_mostly_freed_by_the_first_prune_is_compacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "COMPACT_FREE_BYTES", 1 << 20)
    path = tmp_path / "supervisor.db"
    output = "y" * 50_000
    with ReferenceSupervisor(path) as unbounded:  # a version that kept every result
        unbounded.report_results([(f"inv-{n}", 0, {"stdout": output}) for n in range(100)])
    assert size_of(path) > 4 << 20

    with ReferenceSupervisor(path, max_results=10) as sup:
        assert len(sup.results()) == 10
    compacted = size_of(path)
    assert compacted < 1 << 20
    with ReferenceSupervisor(path, max_results=5):
        pass  # a prune that frees less than the threshold leaves the file as it is
    assert size_of(path) == compacted


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("max_results", 0, "max_results: expected a count > 0, got 0"),
        ("result_retention_s", -1.0, "result_retention_s: expected seconds > 0, got -1.0"),
        ("max_result_bytes", 0, "max_result_bytes: expected a size > 0, got 0"),
    ],
)
def test_a_bound_that_is_not_positive_is_refused_by_name(
    argument: str, value: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ReferenceSupervisor(**{argument: value})  # type: ignore[arg-type]
