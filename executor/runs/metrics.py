"""In-process metrics: runs by outcome, capacity refusals, latency histograms, live gauges.

Counters live for the life of the process (a restart resets them, as Prometheus
counters do); gauges (active children, queue depth, outbox backlog) and the trigger
engine's own counts are read at the moment of the snapshot from whoever owns them, so
they can never drift. Everything is
touched from the event loop only, so no locks.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from executor.model import RunResult

# Seconds. Spans a warm spawn (a few ms) to a long callback at the default wall cap.
DEFAULT_BOUNDS_S: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


@dataclass
class Histogram:
    """Per-bucket counts: ``counts[i]`` observations in (bounds_s[i-1], bounds_s[i]]; last = slower."""

    bounds_s: tuple[float, ...] = DEFAULT_BOUNDS_S
    counts: list[int] = field(default_factory=list)
    total: int = 0
    sum_s: float = 0.0

    def __post_init__(self) -> None:
        if list(self.bounds_s) != sorted(self.bounds_s):
            raise ValueError("histogram bounds must be ascending")
        if not self.counts:
            self.counts = [0] * (len(self.bounds_s) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds_s, seconds)] += 1
        self.total += 1
        self.sum_s += seconds

    def copy(self) -> Histogram:
        return Histogram(self.bounds_s, list(self.counts), self.total, self.sum_s)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What GetMetrics answers."""

    runs_by_outcome: dict[str, int]
    rejected_at_capacity: int
    active_children: int
    queue_depth: int
    run_wall: Histogram
    queue: Histogram
    outbox_pending: int
    events_published: int
    callbacks_fired: int
    outbox_dead_letters: int = 0
    storage_problem: str = ""


class Metrics:
    """The executor's counters; ``observe`` is called once per finished run."""

    def __init__(self, bounds_s: tuple[float, ...] = DEFAULT_BOUNDS_S) -> None:
        self.runs_by_outcome: Counter[str] = Counter()
        self.rejected_at_capacity = 0
        self.run_wall = Histogram(bounds_s)
        self.queue = Histogram(bounds_s)

    def observe(self, result: RunResult) -> None:
        self.runs_by_outcome[result.outcome.value] += 1
        self.run_wall.observe(result.usage.wall_seconds)
        self.queue.observe(result.usage.queue_seconds)

    def note_rejected(self) -> None:
        """A request was refused with RESOURCE_EXHAUSTED (never reached a slot)."""
        self.rejected_at_capacity += 1

    def snapshot(
        self,
        *,
        active: int,
        queue_depth: int,
        outbox_pending: int,
        events_published: int = 0,
        callbacks_fired: int = 0,
        outbox_dead_letters: int = 0,
        storage_problem: str = "",
    ) -> MetricsSnapshot:
        """The counters now, with the gauges and trigger-engine counts their owners report."""
        return MetricsSnapshot(
            runs_by_outcome=dict(self.runs_by_outcome),
            rejected_at_capacity=self.rejected_at_capacity,
            active_children=active,
            queue_depth=queue_depth,
            run_wall=self.run_wall.copy(),
            queue=self.queue.copy(),
            outbox_pending=outbox_pending,
            events_published=events_published,
            callbacks_fired=callbacks_fired,
            outbox_dead_letters=outbox_dead_letters,
            storage_problem=storage_problem,
        )
