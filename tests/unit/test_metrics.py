"""Metrics counters and histograms."""

from __future__ import annotations

import pytest

from executor.model import Outcome, RunResult, Usage
from executor.runs.metrics import Histogram, Metrics

pytestmark = pytest.mark.unit


def test_histogram_buckets_are_upper_inclusive_with_an_overflow_bucket() -> None:
    histogram = Histogram((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 3.0, 99.0):
        histogram.observe(seconds)
    assert histogram.counts == [2, 2, 2]
    assert histogram.total == 6
    assert histogram.sum_s == pytest.approx(103.65)


def test_histogram_rejects_unsorted_bounds() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Histogram((1.0, 0.5))


def test_runs_by_outcome_and_latencies() -> None:
    metrics = Metrics(bounds_s=(0.01, 1.0))
    metrics.observe(
        RunResult("a", Outcome.SUCCEEDED, usage=Usage(wall_seconds=0.5, queue_seconds=0.001))
    )
    metrics.observe(
        RunResult("b", Outcome.SUCCEEDED, usage=Usage(wall_seconds=2.0, queue_seconds=0.5))
    )
    metrics.observe(RunResult("c", Outcome.WALL_TIMEOUT, usage=Usage(wall_seconds=30.0)))
    metrics.note_rejected()
    snapshot = metrics.snapshot(
        active=3, queue_depth=7, outbox_pending=11, events_published=1, callbacks_fired=2
    )
    assert snapshot.runs_by_outcome == {"SUCCEEDED": 2, "WALL_TIMEOUT": 1}
    assert snapshot.rejected_at_capacity == 1
    assert (snapshot.active_children, snapshot.queue_depth, snapshot.outbox_pending) == (3, 7, 11)
    assert snapshot.run_wall.counts == [0, 1, 2]
    assert snapshot.queue.counts == [2, 1, 0]
    assert (snapshot.events_published, snapshot.callbacks_fired) == (1, 2)


def test_snapshot_is_a_copy() -> None:
    metrics = Metrics()
    snapshot = metrics.snapshot(active=0, queue_depth=0, outbox_pending=0)
    metrics.observe(RunResult("a", Outcome.FAILED))
    assert snapshot.run_wall.total == 0
    assert snapshot.runs_by_outcome == {}
