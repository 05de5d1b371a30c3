"""Request conversion at the edge: what a message must hold, and what it becomes inside."""

from __future__ import annotations

import math
import re

import pytest

from executor.api import convert, convert_status
from executor.errors import InvalidRequestError
from executor.model import Event, Limits, Outcome, RunResult, Usage
from executor.runs.metrics import Histogram, MetricsSnapshot
from executor.runs.readings import Readings
from executor.triggers.nodes import EventName, EventType
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2

pytestmark = pytest.mark.unit

DEFAULTS = Limits(10, 30, 512 << 20, 1 << 20, 64, 256 << 20)
CAPS = Limits(600, 3600, 16 << 30, 64 << 20, 1024, 16 << 30)


def request(**overrides: object) -> executor_pb2.ExecuteRequest:
    message = executor_pb2.ExecuteRequest(
        invocation_id="inv-1",
        callback=types_pb2.Callback(language=" Python ", code="print(1)", user="alice"),
        context=executor_pb2.JobContext(job=types_pb2.Job(id=12, pgrp=10, user="bob")),
    )
    for path, value in overrides.items():
        target = message
        *parents, name = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return message


def invocation(message: executor_pb2.ExecuteRequest) -> object:
    return convert.invocation_from_request(message, default_limits=DEFAULTS, max_limits=CAPS)


def test_a_request_becomes_an_invocation() -> None:
    got = convert.invocation_from_request(request(), default_limits=DEFAULTS, max_limits=CAPS)
    assert (got.invocation_id, got.job_id, got.actor) == ("inv-1", 12, "alice")
    assert got.callback.language == "python"
    assert got.limits == DEFAULTS
    assert (got.event, got.work_name, got.subjob_id) == (None, "", -1)


def test_a_missing_invocation_id_gets_a_fresh_one() -> None:
    got = convert.invocation_from_request(
        request(invocation_id=""), default_limits=DEFAULTS, max_limits=CAPS
    )
    assert len(got.invocation_id) == 36


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"callback__language": ""}, "callback.language"),
        ({"callback__code": "  "}, "callback.code"),
        ({"callback__code": "x" * ((1 << 20) + 1)}, "callback.code"),
        ({"callback__triggers": "a" * (65 << 10)}, "callback.triggers"),
        ({"context__job__id": 0}, "context.job.id"),
        ({"context__job__id": 1 << 63}, "context.job.id"),
        ({"context__job__pgrp": 1 << 63}, "context.job.pgrp"),
        ({"context__job__pid": (1 << 64) - 1}, "context.job.pid"),
        ({"limits__cpu_seconds": math.nan}, "limits.cpu_seconds"),
        ({"limits__wall_seconds": math.inf}, "limits.wall_seconds"),
        ({"limits__wall_seconds": -1.0}, "limits.wall_seconds"),
        ({"limits__memory_bytes": 32 << 30}, "limits.memory_bytes"),
        # It is written into logs and .cb headers: nothing in it may break a line.
        ({"invocation_id": "x\n=== 2026-01-01 callback=9 outcome=SUCCEEDED"}, "invocation_id"),
        ({"invocation_id": "has space"}, "invocation_id"),
        ({"invocation_id": "x" * 129}, "invocation_id"),
        # A negative instance number is no instance's; -1 is "none", as unset is.
        ({"context__subjob_id": -5}, "context.subjob_id = -5: an instance number is 0 or more"),
        # What PublishEvent, DryRun and `cbexec run --event` refuse, Execute refuses too.
        ({"context__event__name": "bogus"}, "context.event.name: unknown event name 'bogus'"),
        ({"context__event__type": "zzz"}, "context.event.name is required"),
        ({"context__event__name": "complete"}, "context.event.type: unknown event type ''"),
        (
            {"context__event__name": "complete", "context__event__type": "zzz"},
            "context.event.type: unknown event type 'zzz'",
        ),
        (
            {"context__event__name": "killed", "context__event__type": "subjob"}
            | {"context__event__extra": "-5"},
            "context.event.extra: bad subjob id '-5'",
        ),
        # Names are bounded like every name a request gives (executor/bounds.py).
        ({"context__work_name": "w" * 1025}, "context.work_name is 1025 characters; the limit"),
        ({"callback__user": "u" * 1025}, "callback.user is 1025 characters"),
        (
            {"callback__language": "p" * 1025},
            "callback.language is 1025 characters; the limit is 1024",
        ),
        (
            {"context__event__name": "complete", "context__event__type": "work"}
            | {"context__event__extra": "w" * 1025},
            "context.event.extra is 1025 characters",
        ),
        ({"context__job__label": "l" * 1025}, "context.job.label is 1025 characters"),
        (
            {"context__event__name": "complete", "context__event__type": "job"}
            | {"context__event__context": str(1 << 63)},
            f"context.event.context = {1 << 63} is out of range",
        ),
    ],
)
def test_what_a_request_may_not_hold_is_refused_naming_the_field(
    overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(field)):
        invocation(request(**overrides))


@pytest.mark.parametrize(
    ("kind", "extra", "subjob_id", "seen"),
    [
        # Probe 178: a subjob event naming no instance said '-1' beside qb.subid() 1.
        ("subjob", "*", 1, "*"),
        ("subjob", "", 1, ""),
        ("subjob", "2", 2, "2"),
        ("work", "*", -1, "*"),
    ],
)
def test_the_callback_sees_an_item_events_extra_as_written(
    kind: str, extra: str, subjob_id: int, seen: str
) -> None:
    message = request(
        context__event__name="complete", context__event__type=kind, context__event__extra=extra
    )
    message.context.subjob_id = subjob_id
    started = convert.invocation_from_request(message, default_limits=DEFAULTS, max_limits=CAPS)
    event = started.child_context()["event"]
    assert event is not None and started.event is not None
    assert (event["extra"], started.child_context()["subjob_id"]) == (seen, subjob_id)
    assert Event.from_dict(started.event.as_dict()).item == seen  # as its history keeps it


def test_a_job_is_checked_item_by_item_naming_the_field() -> None:
    cases = [
        (types_pb2.Job(agenda=[types_pb2.WorkItem(name="1", subid=-2)]), "agenda[0].subid = -2"),
        (types_pb2.Job(agenda=[types_pb2.WorkItem(name="1", host="h" * 1025)]), "agenda[0].host"),
        (types_pb2.Job(subjobs=[types_pb2.Subjob(id=0), types_pb2.Subjob(id=-1)]), "subjobs[1].id"),
        (types_pb2.Job(subjobs=[types_pb2.Subjob(status="s" * 1025)]), "subjobs[0].status"),
        (types_pb2.Job(callbacks=[types_pb2.Callback(user="u" * 1025)]), "callbacks[0].user"),
    ]
    for job, field in cases:
        message = request()
        message.context.job.MergeFrom(job)
        with pytest.raises(InvalidRequestError, match=re.escape(f"context.job.{field}")):
            invocation(message)
    fine = request()
    fine.context.job.agenda.add(name="w" * 1024, subid=-1)
    fine.context.job.subjobs.add(id=0, host="h" * 1024)
    assert invocation(fine) is not None


@pytest.mark.parametrize(
    ("value", "spelled"), [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")]
)
def test_a_number_json_cannot_hold_is_refused_naming_where_it_is(
    value: float, spelled: str
) -> None:
    # An INTERNAL error with an incident id before: protobuf's conversion refused it.
    message = request()
    message.context.job.extra.update({"a": 1, "deep": {"list": [1, value]}})
    with pytest.raises(InvalidRequestError) as refused:
        invocation(message)
    assert str(refused.value) == (
        f"context.job.extra.deep.list[1]: {spelled} is not a JSON number;"
        " a Struct's numbers must be finite"
    )
    message = request()
    message.context.job.agenda.add(name="1")
    message.context.job.agenda.add(name="2").resultpackage.update({"out path": value})
    with pytest.raises(InvalidRequestError, match=re.escape("agenda[1].resultpackage['out path']")):
        invocation(message)


@pytest.mark.parametrize("subjob_id", [None, -1, 0, 7])
def test_minus_one_is_no_instance_as_unset_is(subjob_id: int | None) -> None:
    message = request()
    if subjob_id is not None:
        message.context.subjob_id = subjob_id
    assert invocation(message).subjob_id == (-1 if subjob_id is None else subjob_id)  # type: ignore[attr-defined]


def test_any_event_the_grammar_knows_is_taken_as_the_triggering_event() -> None:
    for name in EventName:
        for type_ in EventType:
            message = request()
            message.context.event.CopyFrom(types_pb2.Event(name=name, type=type_, extra="*"))
            assert invocation(message).event is not None  # type: ignore[attr-defined]


def test_limits_may_lower_the_defaults_and_zero_means_default() -> None:
    got = convert.invocation_from_request(
        request(limits__wall_seconds=5.0, limits__memory_bytes=0),
        default_limits=DEFAULTS,
        max_limits=CAPS,
    )
    assert (got.limits.wall_seconds, got.limits.memory_bytes) == (5.0, DEFAULTS.memory_bytes)


@pytest.mark.parametrize(
    ("wire", "event"),
    [
        (("complete", "job", "self", ""), Event("complete", "job", 12)),
        (("complete", "work", "12", "5"), Event("complete", "work", 12, work_name="5")),
        (("done", "subjob", "comp", "3"), Event("done", "subjob", 12, subjob_id=3)),  # its label
        (("complete", "job", "parent", ""), Event("complete", "job", 9)),
        (("assigned", "host", "40", "node7"), Event("assigned", "host", 40, host="node7")),
        (("dummy", "time", "", "790000000"), Event("dummy", "time", 12, extra="790000000")),
        (
            ("dummy", "globaltime", "", "790000000"),
            Event("dummy", "globaltime", 0, extra="790000000"),
        ),
        # Not the callback's own job, as they were read: shown as given (the servicer
        # resolves a label registered with the trigger engine).
        (
            ("done", "subjob", "render", "3"),
            Event("done", "subjob", 0, subjob_id=3, unresolved="render"),
        ),
        (("complete", "job", "SELF", ""), Event("complete", "job", 0, unresolved="SELF")),
    ],
)
def test_the_triggering_event_names_its_job_by_id(
    wire: tuple[str, str, str, str], event: Event
) -> None:
    name, type_, context, extra = wire
    message = request(context__job__label="comp", context__job__pid=9)
    message.context.event.CopyFrom(
        types_pb2.Event(name=name, type=type_, context=context, extra=extra)
    )
    got = convert.invocation_from_request(message, default_limits=DEFAULTS, max_limits=CAPS)
    assert got.event == event
    wire_back = convert.event_message(event)
    assert (wire_back.context, wire_back.extra) == (event.context, event.item)


def publish(**fields: object) -> executor_pb2.PublishEventRequest:
    return executor_pb2.PublishEventRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "job", "job_id": 1}, "name is required"),
        ({"name": "done", "type": "job", "job_id": 1}, "'done' is derived"),
        ({"name": "complete", "type": "time", "job_id": 1}, "cannot be published"),
        ({"name": "complete", "type": "job"}, "job_id is required"),
        ({"name": "complete", "type": "job", "job_id": 1 << 63}, "job_id = "),
        ({"name": "complete", "type": "work", "job_id": 1}, "work_name is required"),
        ({"name": "complete", "type": "subjob", "job_id": 1}, "subjob_id is required"),
        ({"name": "complete", "type": "host", "job_id": 1}, "host is required for host events"),
        ({"name": "bogus", "type": "job", "job_id": 1}, "unknown event name 'bogus'; expected"),
        ({"name": "bogus", "type": "work", "job_id": 1, "work_name": "1"}, "'bogus'"),
        ({"name": "dummy", "type": "job", "job_id": 1}, "unknown event name 'dummy'"),
        ({"name": "Complete", "type": "job", "job_id": 1}, "unknown event name 'Complete'"),
        ({"name": "complete", "type": "subjob", "job_id": 1, "subjob_id": -3}, "subjob_id = -3"),
        ({"name": "complete", "type": "subjob", "job_id": 1, "subjob_id": -1}, "is required"),
        (
            {"name": "complete", "type": "work", "job_id": 1, "work_name": "1", "subjob_id": -2},
            "-2",
        ),
        ({"name": "complete", "type": "job", "job_id": 1, "subjob_id": -2}, "subjob_id = -2"),
        (
            {"name": "complete", "type": "work", "job_id": 1, "work_name": "w" * 1025},
            "work_name is",
        ),
        ({"name": "complete", "type": "host", "job_id": 1, "host": "h" * 1025}, "host is 1025"),
        ({"name": "complete", "type": "job", "job_id": 1, "event_id": "e" * 1025}, "event_id is"),
    ],
)
def test_a_published_event_is_checked(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        convert.event_from_request(publish(**fields))


NUL_REFUSAL = "holds a NUL character (U+0000), which no stored text may hold"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"type": "work", "work_name": "w\x00"}, "work_name"),
        ({"type": "host", "host": "h\x00"}, "host"),
        ({"type": "job", "event_id": "e\x00"}, "event_id"),
    ],
)
def test_a_nul_in_an_event_is_refused_naming_the_field(
    fields: dict[str, object], field: str
) -> None:
    # PostgreSQL's text cannot hold it: a fleet answered INTERNAL where SQLite stored it.
    with pytest.raises(InvalidRequestError, match=re.escape(f"{field} {NUL_REFUSAL}")):
        convert.event_from_request(publish(name="complete", job_id=1, **fields))


def test_a_nul_in_what_a_job_stores_is_refused_naming_the_field() -> None:
    cases = [
        (types_pb2.Job(user="al\x00ice"), "user"),
        (types_pb2.Job(agenda=[types_pb2.WorkItem(name="w\x00")]), "agenda[0].name"),
        (types_pb2.Job(subjobs=[types_pb2.Subjob(host="h\x00")]), "subjobs[0].host"),
        (types_pb2.Job(callbacks=[types_pb2.Callback(user="b\x00")]), "callbacks[0].user"),
        (types_pb2.Job(callbacks=[types_pb2.Callback(code="print('\x00')")]), "callbacks[0].code"),
        (
            types_pb2.Job(callbacks=[types_pb2.Callback(triggers="complete-job-self\x00")]),
            "callbacks[0].triggers",
        ),
    ]
    for job, field in cases:
        message = types_pb2.Job(id=7)
        message.MergeFrom(job)
        with pytest.raises(InvalidRequestError, match=re.escape(f"job.{field} {NUL_REFUSAL}")):
            convert.check_job(message, "job")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"context__work_name": "w\x00"}, "context.work_name"),
        ({"callback__user": "a\x00"}, "callback.user"),
        ({"callback__triggers": "complete-job-self\x00"}, "callback.triggers"),
        ({"context__job__name": "n\x00"}, "context.job.name"),
    ],
)
def test_a_nul_in_what_the_history_keeps_of_an_execute_is_refused(
    overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(f"{field} {NUL_REFUSAL}")):
        invocation(request(**overrides))


MAX_ID = (1 << 63) - 1


def test_an_id_no_job_can_have_says_its_range_from_1() -> None:
    # 0 is refused as "required" in these fields: the range they state starts at 1.
    beyond = 1 << 63
    with pytest.raises(InvalidRequestError) as caught:
        convert.event_from_request(publish(name="complete", type="job", job_id=beyond))
    assert str(caught.value) == f"job_id = {beyond} is out of range (1 to {MAX_ID})"
    job = types_pb2.Job(id=beyond)
    with pytest.raises(InvalidRequestError) as caught:
        convert.check_job(job, "job")
    assert str(caught.value) == f"job.id = {beyond} is out of range (1 to {MAX_ID})"
    with pytest.raises(InvalidRequestError, match=r"^job\.id is required$"):
        convert.check_job(types_pb2.Job(id=0), "job")
    with pytest.raises(InvalidRequestError) as caught:
        convert.invocation_from_request(
            request(context__job__id=beyond), default_limits=DEFAULTS, max_limits=CAPS
        )
    assert str(caught.value) == f"context.job.id = {beyond} is out of range (1 to {MAX_ID})"
    # Where 0 means none (a pgrp, a parent) or all (a filter), the range starts at 0.
    with pytest.raises(InvalidRequestError) as caught:
        convert.check_job(types_pb2.Job(id=1, pid=beyond), "job")
    assert str(caught.value) == f"job.pid = {beyond} is out of range (0 to {MAX_ID})"
    assert convert.check_id("before_job_id", 0) == 0


@pytest.mark.parametrize("name", convert.PUBLISHABLE_NAMES)
@pytest.mark.parametrize("type_", sorted(convert.PUBLISHABLE_TYPES))
def test_every_event_qube_raises_is_accepted_with_every_type(name: str, type_: str) -> None:
    # qube-callbacks.md §1.3: the names of Qube's table and timeout; the grammar takes each
    # with job, subjob, work and host.
    item: dict[str, dict[str, object]] = {
        "work": {"work_name": "1"},
        "subjob": {"subjob_id": 0},
        "host": {"host": "w1"},
    }
    event = convert.event_from_request(
        publish(name=name, type=type_, job_id=3, **item.get(type_, {}))
    )
    assert (event.name, event.type) == (name, type_)


def test_the_publishable_names_are_qubes_and_the_grammars() -> None:
    qube = {"complete", "submit", "killed", "blocked", "failed", "running", "waiting"}
    qube |= {"assigned", "removed", "modified", "timeout"}
    assert set(convert.PUBLISHABLE_NAMES) == qube


@pytest.mark.parametrize(
    ("type_", "kept"),
    [
        ("job", {}),
        ("work", {"work_name": "7", "subjob_id": 3, "host": "n1"}),
        ("subjob", {"subjob_id": 3, "host": "n1"}),
        ("host", {"host": "n1"}),
    ],
)
def test_an_event_drops_the_item_fields_its_type_does_not_have(
    type_: str, kept: dict[str, object]
) -> None:
    # Before, a job event's work_name reached the job callback's qb.workid().
    fields = {"work_name": "7", "subjob_id": 3, "host": "n1"}
    event = convert.event_from_request(publish(name="complete", type=type_, job_id=4, **fields))
    assert event == Event("complete", type_, 4, **kept)  # type: ignore[arg-type]


def test_a_published_event_keeps_its_id_a_dry_run_has_none() -> None:
    fields = {"name": "complete", "type": "subjob", "job_id": 4, "subjob_id": 0}
    published = convert.event_from_request(publish(**fields, event_id="e-1"))
    assert published == Event("complete", "subjob", 4, subjob_id=0, event_id="e-1")
    dry = convert.event_from_request(executor_pb2.DryRunRequest(**fields))  # type: ignore[arg-type]
    assert dry.event_id == ""


def test_outcomes_round_trip_and_unknown_numbers_are_refused() -> None:
    for outcome in Outcome:
        assert convert.outcome_from_message(convert.outcome_message(outcome)) is outcome
    assert convert.outcome_from_message(0) is None
    with pytest.raises(InvalidRequestError, match="unknown value 99"):
        convert.outcome_from_message(99)


def test_counts_saturate_instead_of_wrapping() -> None:
    assert convert.saturated(5) == 5
    assert convert.saturated(1 << 40) == (1 << 32) - 1


def test_a_result_and_metrics_on_the_wire() -> None:
    result = RunResult("inv-1", Outcome.CPU_LIMIT, usage=Usage(1.5, 1.0, 4096, 0.25), stdout="x")
    wire = convert.response_from_result(result)
    assert (wire.outcome, wire.usage.queue_seconds, wire.stdout) == (
        executor_pb2.OUTCOME_CPU_LIMIT,
        0.25,
        "x",
    )
    assert not wire.HasField("failure")
    histogram = Histogram((0.1, 1.0))
    histogram.observe(0.5)
    readings = Readings(outbox_pending=3, outbox_dead_letters=6, storage_problem="disk full")
    snapshot = MetricsSnapshot({"SUCCEEDED": 2}, 1, histogram, histogram.copy(), readings)
    metrics = convert_status.metrics_message(snapshot)
    assert (metrics.outbox_pending, metrics.outbox_dead_letters, metrics.storage_problem) == (
        3,
        6,
        "disk full",
    )
    assert list(metrics.run_wall_seconds.counts) == [0, 1, 0]
