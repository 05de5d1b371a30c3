"""The executor's metrics in a prometheus_client registry: what happened, and what the parts read now.

Two kinds of number, two ways in:

- What happens (a run ends, a request is refused at capacity): counters and histograms
  the event loop increments as it happens (``observe``, ``note_rejected``).
  prometheus_client's values take a lock per update, so the HTTP thread can expose them
  while the loop writes.
- What *is* (active and prepared children, queue depth, outbox backlog, trigger-store
  size, zygotes, the sandbox tier, the trigger engine's own counts): owned by other
  parts, read on the event loop (``readings.ReadingSources``) and handed over as one
  frozen ``Readings`` (``update``), which a collector yields at each scrape. Read at the
  moment asked, they cannot drift from their owners; handed over frozen, no thread but
  the loop ever touches an owner or its SQLite connection.

``snapshot`` reads the registry back for GetMetrics, so ``cbexec metrics``, the dashboard
and a Prometheus scrape show the same numbers. Labels are bounded (outcome, language,
source, zygote language, sandbox mechanism): never a job, user or invocation id.
A restart resets the counters, as Prometheus expects of counters.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, Counter, ProcessCollector, disable_created_metrics
from prometheus_client import Histogram as PromHistogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from executor import __version__
from executor.model import RUN_SOURCES, Language, Outcome, RunResult
from executor.runs.readings import Readings

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
PREFIX: Final = "cbexec"


@dataclass
class Histogram:
    """Per-bucket counts: ``counts[i]`` observations in (bounds_s[i-1], bounds_s[i]]; last = slower.

    The shape GetMetrics answers; the registry keeps Prometheus' cumulative buckets.
    """

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
    """What GetMetrics answers: the counters now, with the readings taken last."""

    runs_by_outcome: dict[str, int]
    rejected_at_capacity: int
    run_wall: Histogram
    queue: Histogram
    readings: Readings = field(default_factory=Readings)
    # (outcome, language, source) -> runs; runs_by_outcome sums it over language and source.
    runs: dict[tuple[str, str, str], int] = field(default_factory=dict)

    @property
    def active_children(self) -> int:
        return self.readings.active_children

    @property
    def queue_depth(self) -> int:
        return self.readings.queue_depth

    @property
    def outbox_pending(self) -> int:
        return self.readings.outbox_pending

    @property
    def outbox_dead_letters(self) -> int:
        return self.readings.outbox_dead_letters

    @property
    def events_published(self) -> int:
        return self.readings.events_published

    @property
    def callbacks_fired(self) -> int:
        return self.readings.callbacks_fired

    @property
    def storage_problem(self) -> str:
        return self.readings.storage_problem


@dataclass(frozen=True, slots=True)
class _RunSeries:
    """The series one kind of finished run (outcome, language, source) updates."""

    runs: Counter
    wall: PromHistogram
    queue: PromHistogram
    cpu: Counter


class Metrics:
    """The executor's registry; ``observe`` is called once per finished run, on the event loop."""

    def __init__(self, bounds_s: tuple[float, ...] = DEFAULT_BOUNDS_S) -> None:
        if list(bounds_s) != sorted(bounds_s):
            raise ValueError("histogram bounds must be ascending")
        self.bounds_s = bounds_s
        # No *_created series (each counter's and histogram's start time): the README's
        # table is the whole list, and nothing reads them. The switch is the library's,
        # for the process: the executor's metrics are its only ones.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._runs = Counter(
            f"{PREFIX}_runs",
            "Callback runs finished, by outcome, language and source "
            "(execute: the Execute RPC; job or universal: fired by the trigger engine).",
            ("outcome", "language", "source"),
            registry=self.registry,
        )
        self._wall = PromHistogram(
            f"{PREFIX}_run_duration_seconds",
            "Wall time of a run, from the child's start to its end.",
            ("language",),
            buckets=bounds_s,
            registry=self.registry,
        )
        self._queue = PromHistogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a run waited for a free slot before its child started.",
            ("language",),
            buckets=bounds_s,
            registry=self.registry,
        )
        self._cpu = Counter(
            f"{PREFIX}_run_cpu_seconds",
            "CPU time (user + system) of the callbacks' processes.",
            ("language",),
            registry=self.registry,
        )
        self._refused = Counter(
            f"{PREFIX}_refused_at_capacity",
            "Requests the executor refused with RESOURCE_EXHAUSTED, whatever the cause: the"
            " queue full, triggers.db without room, answers not read, too many health watches.",
            registry=self.registry,
        )
        # Every kind of run there can be is exposed at 0 from the start: a series born at 1
        # is no 0 -> 1 step for rate() and increase() (there is no _created to recover it),
        # so the first failure or memory kill of each kind would go uncounted.
        for outcome, language, source in itertools.product(Outcome, Language, RUN_SOURCES):
            self._series(outcome.value, language.value, source)
        # The labelled series of each kind that has run, looked up once per label set
        # (``labels()`` validates and locks on every call, most of what a run's count cost),
        # and all ``snapshot`` reads: the kinds at 0 would make each GetMetrics read them all.
        self._run_series: dict[tuple[str, str, str], _RunSeries] = {}
        self._readings = ReadingsCollector()
        self.registry.register(self._readings)
        # The executor process's own CPU, memory and open files (process_*), as every
        # Prometheus client exposes them: what the run counters cost the host.
        ProcessCollector(registry=self.registry)
        self._read: Callable[[], Readings] | None = None
        # Called before the counters are read: the Recorder's writer counts the runs it
        # holds (never waiting for their write: a scrape must not wait for runs.db).
        self.before_read: Callable[[], object] = lambda: None

    def observe(self, result: RunResult, *, language: str = "", source: str = "execute") -> None:
        """Count one finished run (its outcome, latencies and CPU)."""
        key = (result.outcome.value, language or "unknown", source)
        series = self._run_series.get(key)
        if series is None:
            series = self._run_series[key] = self._series(*key)
        series.runs.inc()
        series.wall.observe(result.usage.wall_seconds)
        series.queue.observe(result.usage.queue_seconds)
        series.cpu.inc(max(0.0, result.usage.cpu_seconds))

    def _series(self, outcome: str, language: str, source: str) -> _RunSeries:
        """The series one kind of run updates, made at 0 if they are not yet."""
        return _RunSeries(
            self._runs.labels(outcome, language, source),
            self._wall.labels(language),
            self._queue.labels(language),
            self._cpu.labels(language),
        )

    def note_rejected(self) -> None:
        """A request was answered RESOURCE_EXHAUSTED (by whichever part refused it)."""
        self._refused.inc()

    def read_from(self, read: Callable[[], Readings]) -> None:
        """Where ``refresh`` takes the readings from (the server's ``ReadingSources.read``)."""
        self._read = read

    def refresh(self) -> Readings:
        """Take the readings now and hand them over (call on the event loop only)."""
        self.before_read()
        if self._read is not None:
            self.update(self._read())
        return self._readings.latest

    def update(self, readings: Readings) -> None:
        """Hand over what the executor's parts read now (from the event loop)."""
        self._readings.latest = readings

    @property
    def readings(self) -> Readings:
        return self._readings.latest

    def snapshot(self) -> MetricsSnapshot:
        """The counters and histograms now, with the last readings handed over."""
        self.before_read()
        ran = self._run_series.copy()  # one step: the bookkeeping thread may add a kind
        runs = {
            key: sum(int(sample.value) for sample in _samples(series.runs, "_total"))
            for key, series in ran.items()
        }
        by_outcome: Tally[str] = Tally()
        for (outcome, _, _), count in runs.items():
            by_outcome[outcome] += count
        refused = sum(int(s.value) for s in _samples(self._refused, "_total"))
        return MetricsSnapshot(
            runs_by_outcome={k: v for k, v in by_outcome.items() if v},
            rejected_at_capacity=refused,
            run_wall=self._histogram({id(s.wall): s.wall for s in ran.values()}.values()),
            queue=self._histogram({id(s.queue): s.queue for s in ran.values()}.values()),
            readings=self._readings.latest,
            runs={k: v for k, v in runs.items() if v},
        )

    def _histogram(self, series: Iterable[PromHistogram]) -> Histogram:
        """Prometheus' cumulative buckets of these label sets, summed and made per-bucket."""
        cumulative = [0] * (len(self.bounds_s) + 1)
        total, sum_s = 0, 0.0
        for sample in itertools.chain.from_iterable(_samples(one, "") for one in series):
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                index = len(self.bounds_s) if math.isinf(bound) else self.bounds_s.index(bound)
                cumulative[index] += int(sample.value)
            elif sample.name.endswith("_count"):
                total += int(sample.value)
            elif sample.name.endswith("_sum"):
                sum_s += sample.value
        counts = [cumulative[0]] + [b - a for a, b in itertools.pairwise(cumulative)]
        return Histogram(self.bounds_s, counts, total, sum_s)


def _samples(metric: Counter | PromHistogram, suffix: str) -> Iterator[_Sample]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield _Sample(sample.name, sample.labels, sample.value)


@dataclass(frozen=True, slots=True)
class _Sample:
    name: str
    labels: dict[str, str]
    value: float


class ReadingsCollector(Collector):
    """Yields the last ``Readings`` handed over; the scrape thread only reads a frozen value."""

    def __init__(self) -> None:
        # Replaced whole by the event loop, read whole by a scrape: one reference, no lock.
        self.latest = Readings()

    def describe(self) -> list[Metric]:
        return list(self._families(Readings()))

    def collect(self) -> Iterator[Metric]:
        return self._families(self.latest)

    @staticmethod
    def _families(r: Readings) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)

        yield InfoMetricFamily(
            f"{PREFIX}_build", "The executor's version.", {"version": __version__}
        )
        yield gauge("active_children", "Runs holding a slot now.", r.active_children)
        yield gauge(
            "slots_kept_for_history",
            "Of those, ended runs keeping their slot until the history and .cb logs catch up"
            " with their output (more than 64 MiB not yet written).",
            r.slots_kept_for_history,
        )
        yield gauge(
            "slots_kept_by_killed_processes",
            "Of those, slots kept by a killed process that has not ended (a cgroup freezer,"
            " state D in the kernel); while they are every slot the executor runs nothing"
            " and health is NOT_SERVING (slots_problem).",
            r.slots_kept_by_killed,
        )
        yield gauge(
            "prepared_children",
            "Children started ahead, confined and waiting for their run (prepare_ahead).",
            r.prepared_children,
        )
        yield gauge("slots", "Runs allowed at once (max_concurrent).", r.slots)
        yield gauge(
            "queue_depth",
            "Runs waiting for a free slot: Execute requests, and fired callbacks given a turn.",
            r.queue_depth,
        )
        yield gauge("queue_limit", "Runs allowed to wait (max_queue).", r.queue_limit)
        yield gauge(
            "outbox_pending",
            "Results waiting in the outbox for the supervisor (in a fleet, the shared outbox's).",
            r.outbox_pending,
        )
        yield gauge(
            "outbox_dead_letters",
            "Results set aside instead of delivered (cbexec outbox dead); in a fleet, the "
            "shared outbox's.",
            r.outbox_dead_letters,
        )
        yield gauge(
            "mail_queued", "Mails handed over by runs, waiting for a mail thread.", r.mail_queued
        )
        yield gauge("mail_sending", "Mails in an exchange with the relay now.", r.mail_sending)
        yield counter(
            "mails_not_sent",
            "Mails the relay refused or could not be reached for, after their run had them queued "
            "(each logged with its Message-ID).",
            r.mails_not_sent,
        )
        yield gauge(
            "storage_degraded",
            "1 while storage_problem says something: a write to the data dir fails, outbox.db"
            " is past outbox_max_bytes, or events wait in the forwarder for triggers.db's room.",
            1 if r.storage_problem else 0,
        )
        yield counter(
            "events_published", "Events applied by the trigger engine.", r.events_published
        )
        yield counter(
            "callbacks_fired",
            "Callbacks the trigger engine fired (events and timers).",
            r.callbacks_fired,
        )
        yield counter(
            "event_ids_forgotten_early",
            "Event ids forgotten before event_id_retention_hours, past event_id_max_count:"
            " a resend of one is applied again.",
            r.event_ids_forgotten_early,
        )
        yield counter(
            "repeat_ticks_skipped",
            "Repeat ticks skipped because the firing of the tick before was still queued or"
            " running (a callback slower than its interval).",
            r.repeat_ticks_skipped,
        )
        yield gauge(
            "trigger_jobs",
            "Jobs registered with the trigger engine (in a fleet, the shared store's).",
            r.trigger_jobs,
        )
        yield gauge(
            "trigger_callbacks",
            "Callbacks registered with the trigger engine (universal copies included; in a "
            "fleet, the shared store's).",
            r.trigger_callbacks,
        )
        yield gauge(
            "firings_queued",
            "Fired callbacks not yet run to their end, waiting for their turn or running "
            "(the trigger store's queue; in a fleet, every replica's).",
            r.firings_queued,
        )
        yield gauge(
            "firings_held",
            "1 while fired runs are held because the supervisor is unreachable (they start "
            "again as soon as it answers).",
            1 if r.firings_held else 0,
        )
        yield gauge(
            "universal_callbacks",
            "Universal callbacks loaded from callbacks.conf.",
            r.universal_callbacks,
        )
        yield gauge(
            "universal_reload_errors",
            "Problems found by the last reload of callbacks.conf (0: it was taken).",
            r.universal_reload_errors,
        )
        up = GaugeMetricFamily(
            f"{PREFIX}_zygote_up", "1 while a language's zygote process runs.", labels=["language"]
        )
        restarts = CounterMetricFamily(
            f"{PREFIX}_zygote_restarts",
            "Times a language's zygote was started again after the first.",
            labels=["language"],
        )
        for zygote in r.zygotes:
            up.add_metric([zygote.language], 1 if zygote.pid else 0)
            restarts.add_metric([zygote.language], zygote.restarts)
        yield up
        yield restarts
        tier = GaugeMetricFamily(
            f"{PREFIX}_sandbox_mechanism",
            "1 for each sandbox mechanism active for every callback on this host, 0 if not.",
            labels=["mechanism"],
        )
        for mechanism, active in r.tier.flags():
            tier.add_metric([mechanism], 1 if active else 0)
        yield tier
