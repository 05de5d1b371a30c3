"""The text of `cbexec triggers why` / `dry-run` / `register`, from the engine's own answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from executor.api.explanations import explanation_message, journal_message
from executor.api.triggers import TriggerServicer
from executor.cli.explain import format_dry_run, format_explanation
from executor.cli.farm import format_job
from executor.cli.triggers import parse_target
from executor.errors import ConfigError
from executor.model import Event
from executor.triggers.explain import describe_due
from executor.triggers.nodes import QB_TIME_EPOCH_OFFSET
from supervisor_client.client import as_plain
from supervisor_client.qbcallback.v1 import executor_pb2, farm_pb2, types_pb2
from tests.helpers.trigger_engines import Engines, Recorder

pytestmark = pytest.mark.unit


def frames(*names: str, status: str = "pending") -> list[dict[str, str]]:
    return [{"name": name, "status": status} for name in names]


def cb(triggers: str, **extra: Any) -> dict[str, Any]:
    return {"triggers": triggers, "language": "qube", "code": "unblock-work-self", **extra}


@pytest.mark.parametrize(("text", "target"), [("12", (12, 0)), ("12:3", (12, 3))])
def test_a_target_is_a_job_and_maybe_a_callback(text: str, target: tuple[int, int]) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["", "x", "12:", "12:x", "-1", "12:1:2", "²", "12:²"])
def test_a_bad_target_says_what_would_do(text: str) -> None:
    with pytest.raises(ConfigError, match="expected JOB or JOB:CALLBACK"):
        parse_target(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "JOB: expected 1 to 9223372036854775807, got 0"),
        ("99999999999999999999999", "JOB: expected 1 to 9223372036854775807, got 9999"),
        ("5:4294967296", "CALLBACK: expected 0 to 4294967295, got 4294967296"),
    ],
)
def test_a_target_beyond_the_wire_types_is_a_usage_error(text: str, message: str) -> None:
    # These were a ValueError traceback from the request (exit 1).
    with pytest.raises(ConfigError, match=message):
        parse_target(text)


async def test_why_reads_as_the_readme_shows(engines: Engines) -> None:
    engine = engines(Recorder())
    engine.register_job({"id": 12, "pgrp": 3, "label": "ribgen", "agenda": frames("1", "2", "3")})
    engine.register_job({"id": 14, "pgrp": 3, "label": "render", "agenda": frames("1", "2", "3")})
    engine.register_job(
        {
            "id": 15,
            "pgrp": 3,
            "label": "comp",
            "agenda": frames("1", "2", "3", status="blocked"),
            "callbacks": [
                cb("complete-work-ribgen-{work} && complete-work-render-{work}"),
                cb("complete-work-ribgn-*", code="unblock-self"),
            ],
        }
    )
    for job_id, name, frame in [(12, "complete", "1"), (14, "running", "1")]:
        await engine.publish(Event(name, "work", job_id, work_name=frame), wait=True)

    text = format_explanation(explanation_message(engine.explain(15)))

    lines = text.splitlines()
    assert lines[0] == "job 15 'comp' in pgrp 3"
    assert (
        "callback 1 (qube, edge): complete-work-ribgen-{work} && complete-work-render-{work}"
        in text
    )
    assert "  work 1:" in lines
    assert "      complete-work-render-1: job 14 'render' in pgrp 3, work 1 is running" in lines
    assert (
        "  work items (2) 2-3: waiting for "
        "complete-work-ribgen-{work} && complete-work-render-{work}" in lines
    )
    assert (
        "    callback 2 complete-work-ribgn-*: label 'ribgn' names no job in pgrp 3 yet "
        "(labels there: comp, render, ribgen); did you mean 'ribgen'? [unknown label]"
    ) in lines
    assert any(
        "complete-work-12-1: near miss of complete-work-ribgn-*: label 'ribgn'" in line
        for line in lines
    )
    # --json prints the same data: the text is made from it.
    plain = as_plain(explanation_message(engine.explain(15)))
    assert format_explanation(plain) == text
    assert plain["callbacks"][0]["callback"]["per_work_item"] is True


async def test_why_says_when_a_time_trigger_is_due(engines: Engines) -> None:
    now = 1_800_000_000  # 2027-01-15 08:00:00 UTC
    qube = now - QB_TIME_EPOCH_OFFSET
    engine = engines(Recorder())
    engine.register_job(
        {
            "id": 20,
            "pgrp": 20,
            "callbacks": [
                cb(f"dummy-time-self-{qube + 3600}"),
                cb(f"dummy-repeat-self-{qube + 60}-3600 && complete-job-self"),
            ],
        }
    )

    text = format_explanation(explanation_message(engine.explain(20)), now_unix=now)

    lines = text.splitlines()
    this_job = "this job: job 20 in pgrp 20"
    once = f"dummy-time-self-{qube + 3600}"
    assert f"    [0] {once}  ->  due 2027-01-15 09:00:00 UTC (in 3600 s); {this_job}" in lines
    assert f"    {once}: due 2027-01-15 09:00:00 UTC (in 3600 s); {this_job}" in lines
    repeat = f"dummy-repeat-self-{qube + 60}-3600"
    first_tick = "first tick 2027-01-15 08:01:00 UTC (in 60 s), then every 3600 s"
    assert f"    [0] {repeat}  ->  {first_tick}; {this_job}" in lines
    assert f"    {repeat}: {first_tick}; {this_job}" in lines
    # The other atom of that callback says no time.
    assert f"    complete-job-self: {this_job}" in lines
    # --json is unchanged: the time is worked out from the atom as the text is printed.
    plain = as_plain(explanation_message(engine.explain(20)))
    assert "(in 3600 s)" not in str(plain)
    assert format_explanation(plain, now_unix=now) == text


async def test_why_gives_no_next_tick_of_a_spent_repeat(engines: Engines) -> None:
    # A spent callback's repeat is not ticked again.
    now = 1_800_000_000
    engine = engines(Recorder(), start=False, clock=lambda: now)
    start = now - QB_TIME_EPOCH_OFFSET - 60
    engine.register_job(
        {"id": 21, "pgrp": 21, "callbacks": [cb(f"dummy-repeat-self-{start}-3600", maximum=1)]}
    )
    engine.fire_due_timers()

    text = format_explanation(explanation_message(engine.explain(21)), now_unix=now)

    assert "  spent: it has fired its maximum (1)" in text.splitlines()
    assert "tick" not in text


@pytest.mark.parametrize(
    ("atom", "due_qube", "due"),
    [
        ("dummy-time-self-1000", 1000, "due 2000-01-01 05:16:40 UTC (40 s ago)"),
        ("globaltime-1000", 1000, "due 2000-01-01 05:16:40 UTC (40 s ago)"),
        ("dummy-time-self-1040", 1040, "due 2000-01-01 05:17:20 UTC (now)"),
        # A repeat past its start: its timer's next tick.
        (
            "dummy-repeat-self-1000-30",
            1060,
            "next tick 2000-01-01 05:17:40 UTC (in 20 s), every 30 s",
        ),
        ("globalrepeat-1000-25", 1050, "next tick 2000-01-01 05:17:30 UTC (in 10 s), every 25 s"),
        (
            "globalrepeat-1100-25",
            1100,
            "first tick 2000-01-01 05:18:20 UTC (in 60 s), then every 25 s",
        ),
        # No timer (it fired, or its clock was stopped): the explanation's state says why.
        ("dummy-time-self-1000", 0, ""),
        ("complete-job-self", 1000, ""),
        ("global", 0, ""),
    ],
)
def test_a_clock_atoms_due_time_for_people(atom: str, due_qube: int, due: str) -> None:
    now = 1040 + QB_TIME_EPOCH_OFFSET
    due_unix = due_qube + QB_TIME_EPOCH_OFFSET if due_qube else 0

    assert describe_due(atom, due_unix, now) == due


# 400 Gregorian years: the calendar's cycle.
CYCLE_S = 146097 * 86400


@pytest.mark.parametrize(
    ("due_unix", "when"),
    [
        (253402300799, "9999-12-31 23:59:59 UTC"),
        (253402300800, "10000-01-01 00:00:00 UTC"),
        # 2026-12-06 10:00:00 UTC, 8000 years on.
        (1796551200 + 20 * CYCLE_S, "10026-12-06 10:00:00 UTC"),
    ],
)
def test_a_due_time_past_the_year_9999_is_a_date_too(due_unix: int, when: str) -> None:
    # It was "ValueError: year 10026 is out of range", a traceback from `triggers why`.
    now = 253402300799 - 100

    assert describe_due("dummy-repeat-self-0-60", due_unix, now) == (
        f"next tick {when} (in {due_unix - now} s), every 60 s"
    )


async def test_why_shows_a_next_tick_past_the_year_9999(engines: Engines) -> None:
    # T + interval is at most the year 9999, but a tick after that one is not (probe 92).
    start = 253370764800  # 9999-01-01 00:00:00 UTC
    interval = 363 * 86400  # its second tick: 9999-12-30
    now = start + 2 * interval - 363 * 86400 + 43200  # 9999-12-30 12:00:00 UTC
    engine = engines(Recorder(), start=False, clock=lambda: now)
    trigger = f"dummy-repeat-self-{start - QB_TIME_EPOCH_OFFSET}-{interval}"
    engine.register_job({"id": 30, "pgrp": 30, "callbacks": [cb(trigger)]})
    assert len(engine.fire_due_timers()) == 1  # the missed ticks coalesce: the next is past 9999

    text = format_explanation(explanation_message(engine.explain(30)), now_unix=now)

    tick = "next tick 10000-12-27 00:00:00 UTC (in 31320000 s), every 31363200 s"
    assert f"    [0] {trigger}  ->  {tick}; this job: job 30 in pgrp 30" in text.splitlines()
    plain = as_plain(explanation_message(engine.explain(30)))
    assert plain["callbacks"][0]["atoms"][0]["next_due_unix"] == start + 2 * interval


async def test_why_says_a_time_that_fired_will_not_come_again(engines: Engines) -> None:
    now = 1_800_000_000
    engine = engines(Recorder(), clock=lambda: now)
    once = f"dummy-time-self-{now - QB_TIME_EPOCH_OFFSET - 5}"
    engine.register_job({"id": 31, "pgrp": 31, "callbacks": [cb(f"{once} && complete-job-self")]})
    engine.fire_due_timers()

    text = format_explanation(explanation_message(engine.explain(31)), now_unix=now)

    fired = "its clock has fired (a time fires once)"
    assert f"    [0] {once}  ->  this job: job 31 in pgrp 31, {fired}" in text
    assert "due" not in text and "ago" not in text

    await engine.publish(Event("complete", "job", 31), wait=True)  # fires; the latches reset
    text = format_explanation(explanation_message(engine.explain(31)), now_unix=now)

    assert "  fired once, no maximum" in text.splitlines()
    # It was "due 2027-01-15 07:59:55 UTC (5 s ago)", as if overdue (probe 92).
    assert (
        f"    {once}: this job: job 31 in pgrp 31, {fired}; it will not latch again"
    ) in text.splitlines()
    assert "due" not in text and "ago" not in text
    (explained,) = explanation_message(engine.explain(31)).callbacks
    assert explained.atoms[0].next_due_unix == 0
    # It went on "waiting for" the time as if it could come (probe 101).
    assert explained.waiting_for[0] == (
        f"it will not fire again: it needs {once}, which will not latch again"
    )


async def test_why_leaves_a_fired_time_out_of_what_a_trigger_waits_for(engines: Engines) -> None:
    now = 1_800_000_000
    engine = engines(Recorder(), clock=lambda: now)
    once = f"dummy-time-self-{now - QB_TIME_EPOCH_OFFSET - 5}"
    trigger = f"({once} && complete-job-self) || (failed-job-self && {once}) || killed-job-self"
    engine.register_job({"id": 33, "pgrp": 33, "callbacks": [cb(trigger), cb(once)]})
    engine.fire_due_timers()  # the first latches it; the second fires, its latch reset
    await engine.publish(Event("complete", "job", 33), wait=True)  # the first fires

    either, alone = explanation_message(engine.explain(33)).callbacks

    assert either.waiting == "killed-job-self"
    assert [line.split(":")[0] for line in either.waiting_for] == ["killed-job-self"]
    assert alone.waiting == once
    assert alone.waiting_for[0] == (
        f"it will not fire again: it needs {once}, which will not latch again"
    )


async def test_why_says_a_removed_universal_lines_clock_is_stopped(
    tmp_path: Path, engines: Engines
) -> None:
    now = 1_800_000_000
    conf = tmp_path / "callback"
    conf.mkdir()
    (conf / "tick.py").write_text("print('tick')\n")
    repeat = f"globalrepeat-{now - QB_TIME_EPOCH_OFFSET - 10}-2"
    (conf / "callbacks.conf").write_text(f"tick.py = {repeat}\n")
    engine = engines(Recorder(), start=False, clock=lambda: now, universal_dirs=[conf])
    assert engine.reload_universal() == []
    engine.register_job({"id": 32, "pgrp": 32})
    assert len(engine.fire_due_timers()) == 1
    text = format_explanation(explanation_message(engine.explain(32)), now_unix=now)
    assert f"{repeat}: next tick 2027-01-15 08:00:02 UTC (in 2 s), every 2 s" in text

    (conf / "callbacks.conf").write_text("")
    assert engine.reload_universal() == []
    text = format_explanation(explanation_message(engine.explain(32)), now_unix=now)

    # It was "next tick ... (in 2 s), every 2 s" with nothing said of the line (probe 92).
    assert "tick 2027" not in text
    stopped = "its clock is stopped: its callbacks.conf line was removed by a reload"
    assert any(
        line.startswith(f"    {repeat}: no job (a global atom), {stopped}")
        for line in text.splitlines()
    )
    # Not "it will not fire again" alone: a reload that restores the line restarts it (probe 116).
    assert (
        "    it will not fire again unless a reload brings its callbacks.conf line back: it "
        f"needs {repeat}, which will not latch again"
    ) in text.splitlines()


async def test_why_names_the_universal_lines_loaded_since_the_job_registered(
    tmp_path: Path, engines: Engines
) -> None:
    conf = tmp_path / "callback"
    conf.mkdir()
    names = "abcdefgh"
    for name in names:
        (conf / f"{name}.py").write_text(f"print({name!r})\n")
    (conf / "callbacks.conf").write_text("a.py = submit-job-self\n")
    engine = engines(Recorder(), universal_dirs=[conf])
    assert engine.reload_universal() == []
    own = {"id": 40, "pgrp": 40, "callbacks": [cb("complete-job-self"), cb("done-job-self")]}
    engine.register_job(own)
    assert engine.explain(40).universal_not_attached == ""
    (conf / "callbacks.conf").write_text(
        "".join(f"{name}.py = done-job-self\n" for name in names[1:]) + "a.py = submit-job-self\n"
    )
    assert engine.reload_universal() == []

    text = format_explanation(explanation_message(engine.explain(40)))

    # Bounded: the first five lines it does not hold named, the others counted.
    named = ", ".join(f"{conf}/{name}.py = done-job-self" for name in "bcdef")
    note = (
        f"universal lines loaded after this job's registration are not attached to it: {named}"
        " and 2 more; a job takes the current set when it is registered again"
    )
    assert text.splitlines()[:3] == [
        "job 40 in pgrp 40",
        f"  {note}",
        "",
    ]
    assert "callback 3 (universal, " in text  # the line it holds is explained as before
    # After a restart the set loaded at start-up is compared with what the job holds.
    restarted = engines(Recorder(), universal_dirs=[conf])
    assert restarted.reload_universal() == []
    assert restarted.explain(40).universal_not_attached == note
    # One page of one callback says it too: it is of the job.
    assert restarted.explain(40, 1).universal_not_attached == note
    # Registered again, the job takes the set loaded now.
    restarted.register_job(own)
    assert restarted.explain(40).universal_not_attached == ""
    assert len(restarted.explain(40).callbacks) == 2 + len(names)


async def test_a_dry_run_says_why_per_callback(engines: Engines) -> None:
    engine = engines(Recorder())
    engine.register_job(
        {"id": 3, "callbacks": [cb("complete-job-1 && complete-job-2"), cb("complete-job-2")]}
    )
    decision = engine.match(Event("complete", "job", 2), dry=True)
    reply = executor_pb2.DryRunResponse(
        explanations=[journal_message(entry) for entry in decision.entries]
    )
    reply.would_fire.add(job_id=3, callback_id=2, language="qube", triggers="complete-job-2")

    assert format_dry_run(reply).splitlines() == [
        "would fire: job 3 callback 2 (qube) complete-job-2",
        "why:",
        "  job 3 callback 1: would latch complete-job-2; still waiting for complete-job-1",
        "  job 3 callback 2: would latch complete-job-2; would fire (count 1)",
    ]


def test_a_dry_run_says_how_many_it_left_out() -> None:
    reply = executor_pb2.DryRunResponse(
        would_fire_left_out=3, would_latch_left_out=1, explanations_left_out=4
    )
    reply.would_fire.add(job_id=3, callback_id=2, language="qube", triggers="complete-job-2")
    reply.explanations.add(
        job_id=3, callback_id=2, kind=executor_pb2.JOURNAL_ENTRY_KIND_FIRED, count=1
    )

    assert format_dry_run(reply).splitlines() == [
        "would fire: job 3 callback 2 (qube) complete-job-2",
        "and 3 more would fire (not in the answer)",
        "and 1 more would latch (not in the answer)",
        "why:",
        "  job 3 callback 2: would fire (count 1)",
        "  and 4 more (not in the answer)",
    ]


def test_every_trigger_rpc_is_served() -> None:
    service = executor_pb2.DESCRIPTOR.services_by_name["TriggerService"]
    for method in service.methods:
        assert callable(getattr(TriggerServicer, method.name, None)), method.name


def test_farm_show_gives_a_work_callbacks_maximum_per_frame() -> None:
    # "2/1" for a {work} callback that fired once on each of two frames read as an overrun.
    reply = farm_pb2.GetJobResponse(
        job=types_pb2.Job(id=4, name="comp"),
        callbacks=[
            executor_pb2.RegisteredCallback(
                id=1,
                language="qube",
                triggers="complete-work-self-{work}",
                count=2,
                maximum=1,
                latches=[False],
                per_work_item=True,
            ),
            executor_pb2.RegisteredCallback(
                id=2, language="qube", triggers="done-job-self", count=1, maximum=3, latches=[False]
            ),
        ],
    )
    shown = format_job(reply)
    assert " 2 (max 1 per frame) " in shown
    assert " 1/3 " in shown
    assert "2/1" not in shown


def test_farm_show_counts_a_work_callbacks_latches_per_frame() -> None:
    # Its own latches are only what a frame no event has named starts from: shown as its
    # latches, "[ ] complete-work-sA-{work}, [ ] ..." hid two half-latched frames (probe 50).
    trigger = "complete-work-sA-{work} && complete-work-sB-{work}"
    reply = farm_pb2.GetJobResponse(
        job=types_pb2.Job(id=3, name="sC"),
        callbacks=[
            executor_pb2.RegisteredCallback(
                id=1,
                language="qube",
                triggers=trigger,
                count=1,
                latches=[False, False],
                per_work_item=True,
            )
        ],
    )
    items = [
        executor_pb2.WorkItemExplanation(work_names=["2"], latches=[True, False]),
        executor_pb2.WorkItemExplanation(work_names=["3"], latches=[True, False]),
        executor_pb2.WorkItemExplanation(work_names=["4", "5", "6"], latches=[False, False]),
        executor_pb2.WorkItemExplanation(work_names=["1"], count=1, latches=[False, False]),
    ]
    shown = format_job(reply, {1: items})
    assert (
        "[2/6] complete-work-sA-{work}, [0/6] complete-work-sB-{work}; half latched: 2-3" in shown
    )
    assert "[ ] complete-work-sA-{work}" not in shown

    nothing_half = format_job(reply, {1: items[2:]})
    row = next(line for line in nothing_half.splitlines() if line.startswith("  1 "))
    assert row.endswith("[0/4] complete-work-sA-{work}, [0/4] complete-work-sB-{work}")
    unknown = format_job(reply, {1: None})
    assert "[?] complete-work-sA-{work}, [?] complete-work-sB-{work} (latched per frame)" in unknown
