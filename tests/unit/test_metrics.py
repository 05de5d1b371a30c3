"""Metrics: the registry's counters and histograms, the readings, and the snapshot GetMetrics answers."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from executor.cli import build_parser
from executor.cli.metrics import format_metrics
from executor.model import RUN_SOURCES, Language, Outcome, RunResult, Usage
from executor.runs.metrics import Histogram, Metrics
from executor.runs.readings import Readings, ReadingSources, TierFlags
from executor.sandbox.spawners import ZygoteStatus
from supervisor_client.qbcallback.v1 import executor_pb2

pytestmark = pytest.mark.unit


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client's own parser."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


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
    with pytest.raises(ValueError, match="ascending"):
        Metrics((1.0, 0.5))


def test_runs_by_outcome_and_latencies() -> None:
    metrics = Metrics(bounds_s=(0.01, 1.0))
    metrics.observe(
        RunResult("a", Outcome.SUCCEEDED, usage=Usage(wall_seconds=0.5, queue_seconds=0.001)),
        language="python",
    )
    metrics.observe(
        RunResult("b", Outcome.SUCCEEDED, usage=Usage(wall_seconds=2.0, queue_seconds=0.5)),
        language="perl",
        source="job",
    )
    metrics.observe(
        RunResult("c", Outcome.WALL_TIMEOUT, usage=Usage(wall_seconds=30.0)), language="python"
    )
    metrics.note_rejected()
    metrics.update(Readings(active_children=3, queue_depth=7, outbox_pending=11))
    snapshot = metrics.snapshot()
    assert snapshot.runs_by_outcome == {"SUCCEEDED": 2, "WALL_TIMEOUT": 1}
    assert snapshot.runs == {
        ("SUCCEEDED", "python", "execute"): 1,
        ("SUCCEEDED", "perl", "job"): 1,
        ("WALL_TIMEOUT", "python", "execute"): 1,
    }
    assert snapshot.rejected_at_capacity == 1
    assert (snapshot.active_children, snapshot.queue_depth, snapshot.outbox_pending) == (3, 7, 11)
    assert snapshot.run_wall.counts == [0, 1, 2]
    assert snapshot.run_wall.total == 3
    assert snapshot.run_wall.sum_s == pytest.approx(32.5)
    assert snapshot.queue.counts == [2, 1, 0]


def test_snapshot_is_a_copy() -> None:
    metrics = Metrics()
    snapshot = metrics.snapshot()
    metrics.observe(RunResult("a", Outcome.FAILED))
    assert snapshot.run_wall.total == 0
    assert snapshot.runs_by_outcome == {}


def test_a_scrape_shows_counters_cumulative_buckets_and_readings() -> None:
    metrics = Metrics(bounds_s=(0.01, 1.0))
    metrics.observe(
        RunResult("a", Outcome.FAILED, usage=Usage(wall_seconds=0.5, cpu_seconds=0.25)),
        language="python",
    )
    metrics.read_from(
        ReadingSources(
            load=_Load(active=2, waiting=5, kept_for_history=1),
            slots=4,
            queue_limit=64,
            tier=TierFlags("tier", "zygote", (("pid_namespace", True), ("memory_cgroup", False))),
            outbox=lambda: (3, 1),
            storage_problem=lambda: "disk full",
            trigger_counts=lambda: (10, 4, 6, 9),
            trigger_store=lambda: (2, 3, 7),
            zygotes=lambda: (ZygoteStatus("python", pid=123, restarts=2),),
        ).read
    )
    assert metrics.refresh().queue_depth == 5

    samples = scrape(metrics)

    lang = (("language", "python"),)
    assert samples[("cbexec_runs_total", (*lang, ("outcome", "FAILED"), ("source", "execute")))]
    assert samples[("cbexec_run_duration_seconds_bucket", (*lang, ("le", "0.01")))] == 0
    assert samples[("cbexec_run_duration_seconds_bucket", (*lang, ("le", "1.0")))] == 1
    assert samples[("cbexec_run_duration_seconds_bucket", (*lang, ("le", "+Inf")))] == 1
    assert samples[("cbexec_run_cpu_seconds_total", lang)] == 0.25
    assert samples[("cbexec_active_children", ())] == 2
    assert samples[("cbexec_slots_kept_for_history", ())] == 1
    assert samples[("cbexec_queue_depth", ())] == 5
    assert samples[("cbexec_slots", ())] == 4
    assert samples[("cbexec_outbox_pending", ())] == 3
    assert samples[("cbexec_outbox_dead_letters", ())] == 1
    assert samples[("cbexec_storage_degraded", ())] == 1
    assert samples[("cbexec_events_published_total", ())] == 10
    assert samples[("cbexec_callbacks_fired_total", ())] == 4
    assert samples[("cbexec_event_ids_forgotten_early_total", ())] == 6
    assert samples[("cbexec_repeat_ticks_skipped_total", ())] == 9
    assert samples[("cbexec_trigger_jobs", ())] == 2
    assert samples[("cbexec_firings_queued", ())] == 7
    assert samples[("cbexec_zygote_up", lang)] == 1
    assert samples[("cbexec_zygote_restarts_total", lang)] == 2
    assert samples[("cbexec_sandbox_mechanism", (("mechanism", "pid_namespace"),))] == 1
    assert samples[("cbexec_sandbox_mechanism", (("mechanism", "memory_cgroup"),))] == 0
    assert samples[("cbexec_sandbox_mechanism", (("mechanism", "zygote_launcher"),))] == 1


def test_every_kind_of_run_has_its_series_at_zero_from_the_start() -> None:
    # A series born at 1 is no 0 -> 1 step for rate() and increase(): without _created,
    # the first failure, timeout or memory kill of each kind after a start went uncounted
    # on the dashboard and in alerts (probe 175).
    metrics = Metrics(bounds_s=(0.01, 1.0))
    samples = scrape(metrics)
    for outcome, language, source in itertools.product(Outcome, Language, RUN_SOURCES):
        labels = (("language", language), ("outcome", outcome), ("source", source))
        assert samples[("cbexec_runs_total", labels)] == 0, labels
    for language in Language:
        lang = (("language", language.value),)
        assert samples[("cbexec_run_cpu_seconds_total", lang)] == 0, language
        for histogram in ("cbexec_run_duration_seconds", "cbexec_queue_wait_seconds"):
            assert samples[(f"{histogram}_count", lang)] == 0, (histogram, language)
            assert samples[(f"{histogram}_bucket", (*lang, ("le", "+Inf")))] == 0
    runs = {labels for name, labels in samples if name == "cbexec_runs_total"}
    assert len(runs) == len(Outcome) * len(Language) * len(RUN_SOURCES)
    assert metrics.snapshot().runs == {}, "GetMetrics still lists only the kinds that ran"

    metrics.observe(RunResult("a", Outcome.MEMORY_LIMIT), language="perl", source="universal")
    after = scrape(metrics)
    killed = (("language", "perl"), ("outcome", "MEMORY_LIMIT"), ("source", "universal"))
    assert after[("cbexec_runs_total", killed)] == 1
    assert metrics.snapshot().runs == {("MEMORY_LIMIT", "perl", "universal"): 1}


def test_the_commands_a_help_text_names_exist() -> None:
    text = generate_latest(Metrics().registry).decode()
    named = re.findall(r"\(cbexec ([a-z][a-z -]*)\)", text)
    assert "outbox dead" in named
    parser = build_parser()
    for command in named:
        try:
            parser.parse_args(command.split())
        except SystemExit:
            pytest.fail(f"a HELP text names `cbexec {command}`, which is no command")


def test_labels_are_bounded() -> None:
    """No label may carry a job, user or invocation id: only the known, bounded names."""
    metrics = Metrics()
    metrics.observe(RunResult("an-invocation-id", Outcome.SUCCEEDED), language="qube")
    metrics.update(Readings(zygotes=(ZygoteStatus("perl"),), tier=TierFlags()))
    label_names = {name for _, labels in scrape(metrics) for name, _ in labels}
    assert label_names <= {"outcome", "language", "source", "le", "mechanism", "version"}
    assert not any(
        "an-invocation-id" in value for _, labels in scrape(metrics) for _, value in labels
    )


class _Load:
    def __init__(self, *, active: int, waiting: int, kept_for_history: int = 0) -> None:
        self.active = active
        self.waiting = waiting
        self.kept_for_history = kept_for_history


# Each family a scrape of /metrics shows, and the GetMetricsResponse field that carries it
# (None: /metrics only). A new metric must be placed here, and the README then says which.
GET_METRICS_FIELD: dict[str, str | None] = {
    "cbexec_runs": "runs",
    "cbexec_run_duration_seconds": "run_wall_seconds",  # every language together
    "cbexec_queue_wait_seconds": "queue_seconds",  # every language together
    "cbexec_run_cpu_seconds": None,
    "cbexec_refused_at_capacity": "rejected_at_capacity",
    "cbexec_active_children": "active_children",
    "cbexec_slots_kept_for_history": None,
    "cbexec_slots_kept_by_killed_processes": None,  # slots_problem says when they are all
    "cbexec_slots": "slots",
    "cbexec_prepared_children": "prepared_children",
    "cbexec_queue_depth": "queue_depth",
    "cbexec_queue_limit": "queue_limit",
    "cbexec_firings_queued": "firings_queued",
    "cbexec_firings_held": "firings_held",  # why, with how long and how many wait
    "cbexec_outbox_pending": "outbox_pending",
    "cbexec_outbox_dead_letters": "outbox_dead_letters",
    "cbexec_storage_degraded": "storage_problem",
    "cbexec_mail_queued": None,
    "cbexec_mail_sending": None,
    "cbexec_mails_not_sent": None,
    "cbexec_events_published": "events_published",
    "cbexec_callbacks_fired": "callbacks_fired",
    "cbexec_event_ids_forgotten_early": "event_ids_forgotten_early",
    "cbexec_repeat_ticks_skipped": "repeat_ticks_skipped",
    "cbexec_trigger_jobs": "trigger_jobs",
    "cbexec_trigger_callbacks": "trigger_callbacks",
    "cbexec_universal_callbacks": "universal_callbacks",
    "cbexec_universal_reload_errors": "universal_reload_errors",
    "cbexec_zygote_up": "zygotes",  # a zygote's pid, 0 while it does not run
    "cbexec_zygote_restarts": "zygotes",
    "cbexec_sandbox_mechanism": "sandbox",
    "cbexec_build": None,
}


def test_the_readme_says_which_metrics_getmetrics_does_not_carry() -> None:
    families = {family.name for family in Metrics().registry.collect()}
    own = {name for name in families if not name.startswith("process_")}
    assert own == set(GET_METRICS_FIELD), "place each new metric in GET_METRICS_FIELD"
    fields = set(executor_pb2.GetMetricsResponse.DESCRIPTOR.fields_by_name)
    assert {f for f in GET_METRICS_FIELD.values() if f} <= fields
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    only = re.search(r"([^.]*) are on `/metrics` only\.", " ".join(readme.split()))
    assert only, "the README names the metrics GetMetrics does not carry"
    shown = {
        "cbexec_run_cpu_seconds": "cbexec_run_cpu_seconds_total",
        "cbexec_build": "cbexec_build_info",
        "cbexec_mails_not_sent": "cbexec_mails_not_sent_total",
    }
    for name in (n for n, f in GET_METRICS_FIELD.items() if f is None):
        assert f"`{shown.get(name, name)}`" in only.group(1), name
    assert "`process_*`" in only.group(1) and "per-language histograms" in only.group(1)


def test_cbexec_metrics_says_event_ids_forgotten_early_only_when_there_were_some() -> None:
    def engine_line(response: executor_pb2.GetMetricsResponse) -> str:
        (line,) = [x for x in format_metrics(response).splitlines() if "trigger engine" in x]
        return line

    assert "forgotten" not in engine_line(executor_pb2.GetMetricsResponse())
    assert engine_line(executor_pb2.GetMetricsResponse(event_ids_forgotten_early=5)).endswith(
        "; 5 event ids forgotten early (event_id_max_count)"
    )


def test_cbexec_metrics_says_fired_runs_are_held_only_while_they_are() -> None:
    held = "the supervisor has been unreachable for 12 s (UNAVAILABLE: x); 3 fired runs wait"
    assert "HELD" not in format_metrics(executor_pb2.GetMetricsResponse())
    lines = format_metrics(executor_pb2.GetMetricsResponse(firings_held=held)).splitlines()
    assert f"{'fired runs':<16}HELD: {held}" in lines


def test_cbexec_metrics_says_the_slots_are_stuck_only_while_they_are() -> None:
    stuck = "every slot (1) is held by a killed process that has not ended (process 7, x)"
    assert "STUCK" not in format_metrics(executor_pb2.GetMetricsResponse())
    lines = format_metrics(executor_pb2.GetMetricsResponse(slots=1, slots_problem=stuck))
    (line,) = [x for x in lines.splitlines() if x.startswith("slots ")]
    assert line.endswith(f"prepared ahead; STUCK: {stuck}")


def test_cbexec_metrics_counts_one_of_a_thing_in_the_singular() -> None:
    # Found by a tester: "the last reload found 1 problems", "1 jobs, 3 callbacks registered".
    one = executor_pb2.GetMetricsResponse(
        events_published=1,
        callbacks_fired=1,
        trigger_jobs=1,
        trigger_callbacks=3,
        firings_queued=1,
        universal_callbacks=1,
        universal_reload_errors=1,
        outbox_dead_letters=1,
        prepared_children=1,
        zygotes=[executor_pb2.Zygote(language="perl", pid=7, restarts=1, warm=True)],
    )
    text = format_metrics(one)
    assert "1 event, 1 firing; 1 job, 3 callbacks registered; 1 firing queued" in text
    assert "the last reload found 1 problem\n" in text
    assert "0 pending, 1 dead letter\n" in text
    assert "1 child prepared ahead" in text
    assert "pid 7, 1 restart" in text
    assert "0 runs, mean" in text
    # Any RESOURCE_EXHAUSTED answer, not the queue's alone: "at capacity" said less.
    refused = format_metrics(executor_pb2.GetMetricsResponse(rejected_at_capacity=1))
    assert "allowed; 1 call refused for lack of room\n" in refused
    many = format_metrics(
        executor_pb2.GetMetricsResponse(trigger_jobs=2, universal_reload_errors=2)
    )
    assert "0 events, 0 firings; 2 jobs, 0 callbacks registered" in many
    assert "the last reload found 2 problems" in many
