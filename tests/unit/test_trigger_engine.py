"""The trigger engine on a real SQLite store, with a recording stand-in for the sandbox runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from pathlib import Path

import pytest

from executor.errors import CapacityError, InvalidRequestError, NotFoundError, UnavailableError
from executor.model import Event, Outcome
from executor.triggers.engine import TriggerEngine
from executor.triggers.journal import EntryKind
from executor.triggers.parsed import check_trigger
from executor.triggers.universal import (
    LAST_GOOD_NAME,
    UniversalCallback,
    UniversalConfigError,
    load_universal,
    save_last_good,
)
from tests.helpers.trigger_engines import (
    Engines,
    Gated,
    Recorder,
    Refusing,
    engine_at,
    finish_firings,
    job,
)

pytestmark = pytest.mark.unit


async def test_and_latches_across_events_and_resets_after_firing(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job(job(3, ("complete-job-1 && complete-job-2", "unblock-self")))

    first, _ = await engine.publish(Event("complete", "job", 1), wait=True)
    second, _ = await engine.publish(Event("complete", "job", 2), wait=True)
    again, _ = await engine.publish(Event("complete", "job", 2), wait=True)

    assert (len(first), len(second), len(again)) == (0, 1, 0)
    assert [run.callback.count for run in recorder.runs] == [1]


async def test_half_latched_and_state_survive_a_new_engine(engines: Engines) -> None:
    recorder = Recorder()
    engines(recorder).register_job(job(3, ("complete-job-1 && complete-job-2", "x")))
    await engines(recorder).publish(Event("complete", "job", 1), wait=True)

    fired, _ = await engines(recorder).publish(Event("complete", "job", 2), wait=True)

    assert len(fired) == 1


async def test_a_decided_firing_runs_once_after_restart(engines: Engines) -> None:
    recorder = Recorder()
    crashed = engines(recorder, start=False)
    crashed.register_job(job(3, ("complete-job-1", "unblock-self")))
    crashed.match(Event("complete", "job", 1), dry=False)  # decided, then "crash"

    await engines(recorder).wait_idle()
    await engines(recorder).wait_idle()
    assert recorder.codes == ["unblock-self"]


async def test_a_restored_firing_reports_the_count_it_was_decided_with(engines: Engines) -> None:
    recorder = Recorder()
    crashed = engines(recorder, start=False)
    crashed.register_job(job(3, ("complete-job-1", "unblock-self")))
    crashed.match(Event("complete", "job", 1), dry=False)  # count 0 -> 1, then "crash"

    await engines(recorder).wait_idle()

    assert [run.callback.count for run in recorder.runs] == [1]


async def test_a_firing_of_a_job_removed_by_the_same_event_runs_after_a_restart(
    engines: Engines,
) -> None:
    recorder = Recorder()
    crashed = engines(recorder, start=False)
    crashed.register_job(job(5, ("removed-job-self", "cleanup")))
    crashed.match(Event("removed", "job", 5), dry=False)  # fires, then deletes the job
    assert crashed._store.callbacks_of(5) == []

    restarted = engines(recorder)
    await restarted.wait_idle()

    assert [(run.callback.code, run.callback.count) for run in recorder.runs] == [("cleanup", 1)]
    assert restarted._store.pending_firings() == []


async def test_a_firing_runs_as_decided_when_its_job_is_registered_again_before_it_runs(
    engines: Engines,
) -> None:
    recorder = Recorder()
    crashed = engines(recorder, start=False)
    crashed.register_job(job(5, ("complete-job-1", "old code")))
    crashed.match(Event("complete", "job", 1), dry=False)
    crashed.register_job(job(5, ("complete-job-1", "new code")))

    await engines(recorder).wait_idle()

    assert recorder.codes == ["old code"]


async def test_a_queued_firing_from_before_snapshots_whose_callback_is_gone_leaves_the_queue(
    tmp_path: Path, engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()
    crashed = engines(recorder, start=False)
    crashed.register_job(job(5, ("complete-job-1", "x"), ("complete-job-2", "y")))
    crashed.match(Event("complete", "job", 1), dry=False)
    crashed.match(Event("complete", "job", 2), dry=False)
    with contextlib.closing(sqlite3.connect(tmp_path / "triggers.db")) as db:
        db.execute("ALTER TABLE firings DROP COLUMN snapshot_json")  # as an earlier version left it
        db.execute("DELETE FROM callbacks WHERE code = 'x'")
        db.commit()

    restarted = engines(recorder)
    await restarted.wait_idle()

    assert [(run.callback.code, run.callback.count) for run in recorder.runs] == [("y", 1)]
    assert restarted._store.pending_firings() == []
    assert "lost its callback" in caplog.text


async def test_done_matches_complete_failed_and_killed(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job(job(5, ("done-job-self", "x")))
    for name in ("complete", "failed", "killed", "running"):
        await engine.publish(Event(name, "job", 5), wait=True)
    assert len(recorder.runs) == 3


async def test_maximum_stops_firing(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job(
        {
            "id": 5,
            "user": "a",
            "callbacks": [
                {"triggers": "complete-work-self-*", "language": "qube", "code": "x", "maximum": 2}
            ],
        }
    )
    for frame in "1234":
        await engine.publish(Event("complete", "work", 5, work_name=frame), wait=True)
    assert [run.work_name for run in recorder.runs] == ["1", "2"]


async def test_labels_parent_and_ids_resolve(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job(job(10, label="render", pgrp=10))
    engine.register_job(
        job(
            11,
            ("complete-work-render-5", "a"),
            ("failed-job-parent", "b"),
            ("running-job-12", "c"),
            pgrp=10,
            pid=20,
        )
    )
    await engine.publish(Event("complete", "work", 10, work_name="4"), wait=True)
    await engine.publish(Event("complete", "work", 10, work_name="5"), wait=True)
    await engine.publish(Event("failed", "job", 20), wait=True)
    await engine.publish(Event("running", "job", 12), wait=True)
    assert [run.callback.code for run in recorder.runs] == ["a", "b", "c"]
    assert recorder.runs[0].work_name == "5"


async def test_firing_order_is_job_then_callback_id(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job(job(8, ("complete-job-1", "eight-a"), ("complete-job-1", "eight-b")))
    engine.register_job(job(7, ("complete-job-1", "seven")))
    await engine.publish(Event("complete", "job", 1), wait=True)
    assert [run.callback.code for run in recorder.runs] == ["seven", "eight-a", "eight-b"]


async def test_dry_run_changes_nothing(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job(job(3, ("complete-job-1 && complete-job-2", "x"), ("complete-job-2", "y")))
    decision = engine.match(Event("complete", "job", 2), dry=True)
    assert [f.callback.code for f in decision.fired] == ["y"]
    assert [(item.callback.code, item.latches) for item in decision.latched] == [
        ("x", (False, True))
    ]
    assert all(not any(cb.latches) and cb.count == 0 for cb in engine._store.callbacks_of(3))


async def test_repeated_event_id_is_ignored(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job(job(3, ("complete-job-1", "x")))
    await engine.publish(Event("complete", "job", 1, event_id="e1"), wait=True)
    _, duplicate = await engine.publish(Event("complete", "job", 1, event_id="e1"), wait=True)
    assert duplicate and len(recorder.runs) == 1


async def test_a_waiting_resend_after_a_restart_answers_once_the_first_firings_ran(
    engines: Engines,
) -> None:
    # The event was applied (its firing decided) and the executor stopped before running it;
    # the publisher, not answered, sends it again with wait after the restart.
    crashed = engines(Recorder(), start=False)
    crashed.register_job(job(3, ("complete-job-1", "unblock-self"), ("complete-job-1", "mail")))
    decided, _ = await crashed.publish(Event("complete", "job", 1, event_id="e1"), wait=False)
    gated = Gated()
    restarted = engines(gated, recorded_result=gated.results.get)

    resend = asyncio.ensure_future(
        restarted.publish(Event("complete", "job", 1, event_id="e1"), wait=True)
    )
    await gated.ran(1)
    gated.open("unblock-self")
    await gated.ran(2)
    assert not resend.done()  # "mail" has not ended yet
    gated.open("mail")
    fired, duplicate = await asyncio.wait_for(resend, timeout=10)

    assert duplicate
    assert [(f.invocation_id, f.callback.callback_id) for f in fired] == [
        (f.invocation_id, f.callback.callback_id) for f in decided
    ]
    assert [f.result for f in fired] == [gated.results[f.invocation_id] for f in decided]
    assert len(gated.runs) == 2  # nothing decided again


async def test_a_waiting_resend_of_an_event_that_fired_nothing_answers_at_once(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(job(3, ("complete-job-2", "x")))
    await engine.publish(Event("complete", "job", 1, event_id="e1"), wait=True)
    fired, duplicate = await engine.publish(Event("complete", "job", 1, event_id="e1"), wait=True)
    assert duplicate and fired == []


def test_duplicate_label_and_bad_trigger_are_refused(tmp_path: Path) -> None:
    engine = engine_at(tmp_path, Recorder())
    engine.register_job(job(1, label="a", pgrp=1))
    with pytest.raises(InvalidRequestError, match="label 'a' is already used by job 1"):
        engine.register_job(job(2, label="a", pgrp=1))
    with pytest.raises(InvalidRequestError, match=r"callbacks\[0\].triggers: .*jb"):
        engine.register_job(job(3, ("complete-jb-self", "x")))


@pytest.mark.parametrize("mode", ["edge", "level"])
@pytest.mark.parametrize("job_id", ["9223372036854775808", "0"])
def test_a_job_id_no_job_can_have_is_refused_at_registration(
    tmp_path: Path, mode: str, job_id: str
) -> None:
    # 2^63 reached SQLite (OverflowError: INTERNAL in level mode, in `why` in edge mode);
    # job 0 was accepted and waited for ever.
    engine = engine_at(tmp_path, Recorder())
    registered = job(1, (f"complete-job-self || complete-job-{job_id}", "unblock-self"))
    registered["callbacks"][0]["mode"] = mode
    with pytest.raises(InvalidRequestError, match=rf"callbacks\[0\].triggers: job id '{job_id}'"):
        engine.register_job(registered)
    with pytest.raises(NotFoundError):
        engine.explain(1)


def _engine_with_one_universal(tmp_path: Path) -> tuple[TriggerEngine, Path]:
    """An engine whose universal directory holds one good line (not loaded yet); the dir."""
    conf = tmp_path / "callback"
    conf.mkdir()
    (conf / "callbacks.conf").write_text("ok.qcb = done-job-self\n")
    (conf / "ok.qcb").write_text("mail-status")
    return engine_at(tmp_path, Recorder(), universal_dirs=[conf]), conf


def test_a_universal_line_naming_a_job_id_no_job_can_have_keeps_the_old_set(
    tmp_path: Path,
) -> None:
    engine, conf = _engine_with_one_universal(tmp_path)
    assert engine.reload_universal() == []
    (conf / "callbacks.conf").write_text(
        "ok.qcb = done-job-self\nok.qcb [level] = complete-job-9223372036854775808\n"
    )

    errors = engine.reload_universal()

    assert len(errors) == 1
    assert errors[0].startswith(f"{conf}/callbacks.conf:2: ")
    assert "job id '9223372036854775808' out of range" in errors[0]
    # The last good set stays, and every job still registers (and explains) with it.
    assert [u.triggers for u in engine.universal] == ["done-job-self"]
    assert len(engine.register_job(job(7, ("complete-job-self", "x"))).callbacks) == 2
    assert len(engine.explain(7).callbacks) == 2


def test_a_universal_line_with_two_policies_keeps_the_old_set(tmp_path: Path) -> None:
    # Before, the reload took it, and the line ran under whichever policy came last.
    engine, conf = _engine_with_one_universal(tmp_path)
    assert engine.reload_universal() == []
    (conf / "callbacks.conf").write_text("ok.qcb [policy=admin, policy=pipe] = done-job-self\n")

    errors = engine.reload_universal()

    assert errors == [
        f"{conf}/callbacks.conf:1: options 'policy=admin' and 'policy=pipe' contradict each "
        "other: a line has one policy"
    ]
    assert [(u.triggers, u.policy) for u in engine.universal] == [("done-job-self", "")]


def test_a_kept_set_line_this_version_refuses_is_left_out_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An older version accepted (and kept) a line naming job 2^63; attached to every job,
    # it made every RegisterJob fail.
    kept = tmp_path / LAST_GOOD_NAME
    lines = [
        UniversalCallback("ok.qcb", "qube", "mail-status", "done-job-self"),
        UniversalCallback("big.qcb", "qube", "x", "complete-job-9223372036854775808", "level"),
    ]
    save_last_good(kept, lines, 1.0)
    engine = engine_at(tmp_path, Recorder(), last_good=kept)

    assert engine.keep_last_good() == 1

    assert [u.source for u in engine.universal] == ["ok.qcb"]
    assert (
        "big.qcb = complete-job-9223372036854775808 left out of the set kept from before: job id"
    ) in caplog.text
    assert len(engine.register_job(job(7, ("complete-job-self", "x"))).callbacks) == 2


def test_a_kept_set_that_cannot_be_written_leaves_no_partial_file(tmp_path: Path) -> None:
    kept = tmp_path / LAST_GOOD_NAME
    kept.mkdir()  # something in its way: the rename over it fails
    with pytest.raises(IsADirectoryError):
        save_last_good(kept, [UniversalCallback("ok.qcb", "qube", "x", "done-job-self")], 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST_GOOD_NAME]


async def test_universal_callbacks_attach_after_the_jobs_own(
    tmp_path: Path, engines: Engines
) -> None:
    conf = tmp_path / "callback"
    conf.mkdir()
    (conf / "callbacks.conf").write_text(
        "# site callbacks\nmail-status.qcb = done-job-self\n\ncheck.py = submit-job-self\n"
    )
    (conf / "mail-status.qcb").write_text("mail-status\n")
    (conf / "check.py").write_text("print(qb.jobid())\n")
    recorder = Recorder()
    engine = engines(recorder, universal_dirs=[conf])
    assert engine.reload_universal() == []
    callbacks = engine.register_job(job(4, ("complete-job-self", "own"))).callbacks
    assert [(c.callback_id, c.universal, c.language) for c in callbacks] == [
        (1, False, "qube"),
        (2, True, "qube"),
        (3, True, "python"),
    ]
    await engine.publish(Event("complete", "job", 4), wait=True)
    assert [run.callback.code for run in recorder.runs] == ["own", "mail-status"]


def test_a_universal_directory_gone_missing_is_warned_about_at_reload(tmp_path: Path) -> None:
    engine, conf = _engine_with_one_universal(tmp_path)
    assert engine.reload_universal() == [] and engine.universal_warnings == []
    conf.rename(tmp_path / "moved")  # an unmounted share, a renamed directory

    assert engine.reload_universal() == [] and engine.universal == []
    assert engine.universal_warnings == [
        f"{conf}: no such directory (universal_callback_path); none of its callbacks is loaded"
    ]


def test_broken_callbacks_conf_is_reported_with_file_and_line_and_keeps_the_old_set(
    tmp_path: Path,
) -> None:
    engine, conf = _engine_with_one_universal(tmp_path)
    assert engine.reload_universal() == []
    (conf / "callbacks.conf").write_text(
        "ok.qcb = done-job-self\nmissing.py = done-job-self\nbad.qcb = complete-jb-self\nnoequals\n"
    )
    (conf / "bad.qcb").write_text("unblock-self")

    errors = engine.reload_universal()

    assert [e.split(": ", 1)[0] for e in errors] == [
        f"{conf}/callbacks.conf:{n}" for n in (2, 3, 4)
    ]
    assert "cannot read missing.py" in errors[0]
    assert "jb" in errors[1]
    assert len(engine.universal) == 1
    with pytest.raises(UniversalConfigError):
        load_universal([conf], check_trigger)


async def test_time_trigger_in_the_past_fires_at_once(engines: Engines) -> None:
    recorder = Recorder()
    now = 1_800_000_000.0
    engine = engines(recorder, start=False, clock=lambda: now)
    qube_past = int(now) - 946702800 - 60
    engine.register_job(job(6, (f"dummy-time-self-{qube_past}", "unblock-self")))
    fired = engine.fire_due_timers()
    assert len(fired) == 1
    assert engine.fire_due_timers() == []


async def test_a_started_engine_fires_due_timers_by_itself(engines: Engines) -> None:
    recorder = Recorder()
    now = 1_800_000_000.0
    engine = engines(recorder, clock=lambda: now)
    qube_past = int(now) - 946702800 - 60
    engine.register_job(job(6, (f"dummy-time-self-{qube_past}", "unblock-self")))
    await recorder.ran(1)
    await engine.wait_idle()
    assert recorder.codes == ["unblock-self"]


async def test_a_timer_firing_runs_with_the_event_stored_with_it(engines: Engines) -> None:
    recorder = Recorder()
    now = 1_800_000_000.0
    engine = engines(recorder, start=False, clock=lambda: now)
    start = int(now) - 946702800 - 60
    engine.register_job(job(6, (f"dummy-repeat-self-{start}-60", "unblock-self")))

    engine.fire_due_timers()
    (stored,) = engine._store.pending_firings()
    engine.start()
    await recorder.ran(1)

    expected = Event("dummy", "repeat", 6, extra=f"{start}-60")
    assert stored.event == expected
    assert recorder.runs[0].event == expected


def _repeat_job(start: int, maximum: int, trigger: str = "") -> dict[str, object]:
    triggers = trigger or f"dummy-repeat-self-{start}-60"
    return {
        "id": 6,
        "user": "a",
        "callbacks": [{"triggers": triggers, "language": "qube", "code": "x", "maximum": maximum}],
    }


async def test_a_repeat_that_reached_its_maximum_is_no_longer_ticked(engines: Engines) -> None:
    recorder = Recorder()
    now = [1_800_000_000.0]
    engine = engines(recorder, start=False, clock=lambda: now[0])
    engine.register_job(_repeat_job(int(now[0]) - 946702800, maximum=2))
    fired = []
    for _ in range(30):  # more ticks than the journal keeps entries
        fired += engine.fire_due_timers()
        finish_firings(engine)
        now[0] += 60
    assert len(fired) == 2
    assert engine._store.next_timer_due() is None
    (explained,) = engine.explain(6, journal_limit=100).callbacks
    assert explained.spent
    assert [entry.kind for entry in explained.journal] == [EntryKind.FIRED, EntryKind.FIRED]


async def test_a_job_registered_again_unchanged_keeps_its_clocks_as_they_run(
    engines: Engines,
) -> None:
    # They were re-armed at every registration: a past one-shot time fired again each
    # time, and a repeat ticked at each registration instead of once a minute.
    recorder = Recorder()
    now = [1_800_000_000.0]
    engine = engines(recorder, start=False, clock=lambda: now[0])
    past = int(now[0]) - 946702800 - 3600
    once = job(6, (f"dummy-time-self-{past}", "unblock-self"))
    repeat = _repeat_job(past, maximum=0)
    repeat["id"] = 7
    for registered in (once, repeat):
        engine.register_job(registered)
    assert len(engine.fire_due_timers()) == 2  # the past time, and the missed ticks as one
    finish_firings(engine)
    for _ in range(3):
        now[0] += 1
        for registered in (once, repeat):
            engine.register_job(registered)
        assert engine.fire_due_timers() == []
    now[0] += 60
    fired = engine.fire_due_timers()  # the repeat's next tick, as before the registrations
    assert [f.callback.job_id for f in fired] == [7]
    counts = {j: engine.explain(j).callbacks[0].callback.count for j in (6, 7)}
    assert counts == {6: 1, 7: 2}


async def test_a_repeat_spent_by_an_event_stops_at_its_next_tick_unrecorded(
    engines: Engines,
) -> None:
    recorder = Recorder()
    now = [1_800_000_000.0]
    engine = engines(recorder, start=False, clock=lambda: now[0])
    start = int(now[0]) - 946702800
    engine.register_job(_repeat_job(start, 1, f"dummy-repeat-self-{start}-60 && complete-job-self"))
    assert engine.fire_due_timers() == []  # latches the repeat
    fired, _ = await engine.publish(Event("complete", "job", 6), wait=False)
    assert len(fired) == 1
    now[0] += 60
    assert engine.fire_due_timers() == []
    assert engine._store.next_timer_due() is None
    (explained,) = engine.explain(6).callbacks
    assert [entry.kind for entry in explained.journal] == [EntryKind.MATCHED, EntryKind.FIRED]


async def test_a_spent_repeat_registered_again_with_a_higher_maximum_ticks_again(
    engines: Engines,
) -> None:
    recorder = Recorder()
    now = [1_800_000_000.0]
    engine = engines(recorder, start=False, clock=lambda: now[0])
    start = int(now[0]) - 946702800
    engine.register_job(_repeat_job(start, maximum=1))
    assert len(engine.fire_due_timers()) == 1
    finish_firings(engine)
    engine.register_job(_repeat_job(start, maximum=1))  # unchanged: still spent
    now[0] += 60
    assert engine.fire_due_timers() == []
    assert engine._store.next_timer_due() is None
    engine.register_job(_repeat_job(start, maximum=2))
    assert len(engine.fire_due_timers()) == 1
    assert engine._store.next_timer_due() is None


async def test_a_work_repeat_stops_once_every_agenda_item_is_spent(engines: Engines) -> None:
    recorder = Recorder()
    now = [1_800_000_000.0]
    engine = engines(recorder, start=False, clock=lambda: now[0])
    start = int(now[0]) - 946702800
    job_dict = _repeat_job(start, 1, f"dummy-repeat-self-{start}-60 && complete-work-self-{{work}}")
    job_dict["agenda"] = [{"name": "1"}, {"name": "2"}]
    engine.register_job(job_dict)
    engine.fire_due_timers()
    await engine.publish(Event("complete", "work", 6, work_name="1"), wait=False)
    now[0] += 60
    engine.fire_due_timers()
    assert engine._store.next_timer_due() is not None  # item 2 may still fire
    await engine.publish(Event("complete", "work", 6, work_name="2"), wait=False)
    now[0] += 60
    engine.fire_due_timers()
    assert engine._store.next_timer_due() is None


async def test_why_for_a_work_item_not_on_the_agenda_shows_the_agenda_escaped(
    engines: Engines,
) -> None:
    engine = engines(Recorder(), start=False)
    job_dict = job(6, ("complete-work-self-{work}", "x"))
    job_dict["agenda"] = [{"name": "1"}, {"name": "f\x1b[2J\u202ered"}]
    engine.register_job(job_dict)
    with pytest.raises(NotFoundError) as raised:
        engine.explain(6, work_name="nosuch")
    # A submitter's name in an error: one line that moves no operator's cursor.
    assert str(raised.value) == (
        "job 6 has no work item 'nosuch' (its agenda: 1, 'f\\x1b[2J\\u202ered')"
    )


async def test_why_takes_any_work_item_of_a_job_registered_without_an_agenda(
    engines: Engines,
) -> None:
    # Its work items are the supervisor's to know: its events may name any (probe 160
    # read the proto's NOT_FOUND as meant for these too; the proto says so now).
    engine = engines(Recorder(), start=False)
    engine.register_job(job(7, ("complete-work-self-{work}", "x")))
    (explained,) = engine.explain(7, work_name="zz").callbacks
    assert explained.callback.callback_id == 1 and explained.per_work
    # But none longer than any name can be (probe 166: 16 MiB asked, 217 MB answered).
    with pytest.raises(NotFoundError) as raised:
        engine.explain(7, work_name="x" * (16 << 20))
    assert str(raised.value) == (
        f"job 7 has no work item '{'x' * 33}…[{(16 << 20) - 33} more characters]': it is"
        " 16777216 characters, and a work item's name is at most 1024"
    )
    assert engine.explain(7, work_name="x" * 1024).callbacks


# -- the firing worker ----------------------------------------------------------------------


async def test_one_events_firings_run_in_turn_and_events_side_by_side(engines: Engines) -> None:
    recorder = Gated()
    engine = engines(recorder, max_parallel_events=2)
    engine.register_job(
        job(
            5,
            ("complete-job-1", "a1"),
            ("complete-job-1", "a2"),
            ("complete-job-2", "b"),
            ("complete-job-3", "c"),
        )
    )
    for upstream in (1, 2, 3):
        await engine.publish(Event("complete", "job", upstream), wait=False)

    await recorder.ran(2)
    assert recorder.codes == ["a1", "b"]  # a2 waits for a1; c for room (two events at once)
    recorder.open("a1")
    await recorder.ran(3)
    assert recorder.codes[2] == "a2"
    recorder.open("b")
    await recorder.ran(4)
    assert recorder.codes[3] == "c"
    for code in ("a2", "c"):
        recorder.open(code)
    await engine.wait_idle()
    assert recorder.most_at_once == 2
    assert engine._store.pending_firings() == []


async def test_a_waiting_publisher_gets_the_results_and_nothing_runs_twice(
    engines: Engines,
) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job(job(5, ("complete-job-1", "a"), ("complete-job-1", "b")))

    fired, duplicate = await engine.publish(Event("complete", "job", 1), wait=True)

    assert not duplicate
    assert [(f.callback.code, f.result and f.result.outcome) for f in fired] == [
        ("a", Outcome.SUCCEEDED),
        ("b", Outcome.SUCCEEDED),
    ]
    assert [f.invocation_id for f in fired] == [run.invocation_id for run in recorder.runs]
    await engine.wait_idle()
    await engines(recorder).wait_idle()  # a restart finds nothing left to run
    assert recorder.codes == ["a", "b"]


async def test_firings_queued_before_the_start_run_first_in_decision_order(
    engines: Engines,
) -> None:
    recorder = Recorder()
    crashed = engines(recorder, start=False)
    crashed.register_job(job(5, ("complete-job-1", "one"), ("complete-job-2", "two")))
    crashed.match(Event("complete", "job", 1), dry=False)
    crashed.match(Event("complete", "job", 2), dry=False)

    restarted = engines(recorder, start=False, max_parallel_events=1)
    queued = [firing.invocation_id for firing in restarted._store.pending_firings()]
    fired = await restarted.publish(Event("complete", "job", 1), wait=False)  # after them
    queued.append(fired[0][0].invocation_id)
    # An Execute may not take their ids (the queue is held in memory, restored ones too).
    assert all(restarted.holds_firing(invocation_id) for invocation_id in queued)
    assert not restarted.holds_firing("another")
    restarted.start()
    await restarted.wait_idle()

    assert recorder.codes == ["one", "two", "one"]
    assert not any(restarted.holds_firing(invocation_id) for invocation_id in queued)


async def test_a_queue_from_before_batches_runs_in_order(tmp_path: Path, engines: Engines) -> None:
    recorder = Gated()
    crashed = engines(recorder, start=False)
    crashed.register_job(job(5, ("complete-job-1", "one"), ("complete-job-2", "two")))
    crashed.match(Event("complete", "job", 1), dry=False)
    crashed.match(Event("complete", "job", 2), dry=False)
    with contextlib.closing(sqlite3.connect(tmp_path / "triggers.db")) as db:
        db.execute("ALTER TABLE firings DROP COLUMN batch")  # as an earlier version left it

    restarted = engines(recorder, max_parallel_events=2)
    await recorder.ran(1)
    recorder.open("one")
    await recorder.ran(2)
    recorder.open("two")
    await restarted.wait_idle()

    assert recorder.codes == ["one", "two"]
    assert recorder.most_at_once == 1  # one batch: one after another, as before batches


async def test_close_ends_runs_in_progress_and_they_run_at_the_next_start(
    engines: Engines,
) -> None:
    recorder = Gated()
    engine = engines(recorder)
    engine.register_job(job(5, ("complete-job-1", "x")))
    waiting = asyncio.create_task(engine.publish(Event("complete", "job", 1), wait=True))
    await recorder.ran(1)

    await engine.close()

    with pytest.raises(UnavailableError, match="runs at its restart"):
        await waiting
    with pytest.raises(UnavailableError, match="stopping"):
        await engine.publish(Event("complete", "job", 1), wait=False)
    after_restart = Recorder()
    await engines(after_restart).wait_idle()
    assert [run.invocation_id for run in after_restart.runs] == [recorder.runs[0].invocation_id]


@pytest.mark.parametrize(
    "refusal",
    [CapacityError("all slots are busy", retry_after_s=1.0), UnavailableError("spawn failed")],
    ids=["capacity", "unavailable"],
)
async def test_a_refused_firing_is_retried_while_the_engine_runs(
    engines: Engines, refusal: Exception
) -> None:
    recorder = Refusing(refusal, times=2)
    engine = engines(recorder)
    engine.register_job(job(5, ("complete-job-1", "a"), ("complete-job-1", "b")))

    fired, _ = await engine.publish(Event("complete", "job", 1), wait=True)

    assert [f.result and f.result.outcome for f in fired] == [Outcome.SUCCEEDED] * 2
    assert recorder.attempts == ["a", "a", "a", "b"]  # b waits its turn behind a
    assert engine._store.pending_firings() == []


async def test_a_firing_whose_run_raised_is_logged_and_not_replayed_at_every_start(
    engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Refusing(RuntimeError("executor bug"), times=1)
    engine = engines(recorder)
    engine.register_job(job(5, ("complete-job-1", "a"), ("complete-job-1", "b")))

    fired, _ = await engine.publish(Event("complete", "job", 1), wait=True)
    await engines(recorder).wait_idle()  # a restart

    assert [f.result and f.result.outcome for f in fired] == [None, Outcome.SUCCEEDED]
    assert recorder.attempts == ["a", "b"]
    assert "executor bug" in caplog.text


async def test_a_stored_trigger_an_older_grammar_took_still_fires_its_other_atoms(
    engines: Engines, tmp_path: Path
) -> None:
    # Registered by an older version, which took job id 0 (and ids past 2^63 - 1): the
    # grammar refusing them now must not fail every event of the job.
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job(job(5, ("complete-job-self || complete-job-7", "unblock-self")))
    with sqlite3.connect(tmp_path / "triggers.db") as db:
        db.execute("UPDATE callbacks SET triggers = 'complete-job-self || complete-job-0'")

    fired, _ = await engines(recorder).publish(Event("complete", "job", 5), wait=True)

    assert len(fired) == 1


async def test_a_stored_time_atom_of_another_context_fires_and_explains_as_its_owners(
    engines: Engines, tmp_path: Path
) -> None:
    # Registered before time atoms had to say `self`: it is still the owner's timer, and
    # `why` no longer resolves it to a parent the job does not have.
    now = 1_800_000_000.0
    engine = engines(Recorder(), start=False, clock=lambda: now)
    past = int(now) - 946702800 - 60
    engine.register_job(job(5, (f"dummy-time-self-{past}", "unblock-self")))
    with sqlite3.connect(tmp_path / "triggers.db") as db:
        db.execute("UPDATE callbacks SET triggers = ?", (f"dummy-time-parent-{past}",))

    (fired,) = engine.fire_due_timers()

    assert fired.callback.job_id == 5
    (explained,) = engine.explain(5).callbacks
    (atom,) = explained.atoms
    assert atom.job_id == 5
    assert atom.resolution.startswith("this job: job 5")
    assert atom.description.endswith("(timer of this job)")


def test_a_time_atom_of_another_context_is_refused_at_registration(tmp_path: Path) -> None:
    engine = engine_at(tmp_path, Recorder())
    with pytest.raises(InvalidRequestError, match=r"callbacks\[0\]\.triggers: a time event's"):
        engine.register_job(job(5, ("dummy-time-parent-100", "unblock-self")))


# -- a repeat slower than its interval (probe 92) ---------------------------------------------


async def test_a_repeat_tick_while_its_last_firing_is_unfinished_is_skipped(
    engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="executor.triggers.timers")
    recorder = Recorder()
    now = [1_800_000_000.0]
    engine = engines(recorder, start=False, clock=lambda: now[0])
    start = int(now[0]) - 946702800
    engine.register_job(_repeat_job(start, maximum=0, trigger=f"dummy-repeat-self-{start}-1"))
    assert len(engine.fire_due_timers()) == 1
    for _ in range(5):  # its firing still queued: every tick is skipped, and counted
        now[0] += 1
        assert engine.fire_due_timers() == []
    assert engine._store.count_firings() == 1
    assert engine.stats.repeat_ticks_skipped == 5
    (firing,) = engine._store.pending_firings()
    said = [r.getMessage() for r in caplog.records if "ticks skipped" in r.getMessage()]
    assert said == [  # once per unfinished firing, not per tick
        f"job 6 callback 1: dummy-repeat-self-{start}-1 ticks skipped while firing "
        f"{firing.invocation_id} of its last tick is queued or running"
    ]
    assert engine._store.next_timer_due() == now[0] + 1  # the clock keeps its grid

    engine.start()
    await engine.wait_idle()
    now[0] += 1
    assert len(engine.fire_due_timers()) == 1  # the run ended: the next tick fires


async def test_a_skipped_tick_writes_no_journal_entry(engines: Engines) -> None:
    recorder = Recorder()
    now = [1_800_000_000.0]
    engine = engines(recorder, start=False, clock=lambda: now[0])
    start = int(now[0]) - 946702800
    engine.register_job(_repeat_job(start, maximum=0, trigger=f"dummy-repeat-self-{start}-1"))
    engine.fire_due_timers()
    for _ in range(30):
        now[0] += 1
        engine.fire_due_timers()
    (explained,) = engine.explain(6).callbacks
    assert [entry.kind for entry in explained.journal] == [EntryKind.FIRED]


async def test_another_events_firing_does_not_skip_a_repeats_tick(engines: Engines) -> None:
    recorder = Recorder()
    now = [1_800_000_000.0]
    engine = engines(recorder, start=False, clock=lambda: now[0])
    start = int(now[0]) - 946702800 + 10
    engine.register_job(_repeat_job(start, 0, f"dummy-repeat-self-{start}-60 || complete-job-self"))
    fired, _ = await engine.publish(Event("complete", "job", 6), wait=False)
    assert len(fired) == 1  # queued, not run (the engine is not started)
    now[0] += 10
    assert len(engine.fire_due_timers()) == 1
    assert engine.stats.repeat_ticks_skipped == 0


async def test_a_live_repeat_in_an_and_keeps_its_fired_entries_in_the_journal(
    engines: Engines,
) -> None:
    recorder = Recorder()
    now = [1_800_000_000.0]
    engine = engines(recorder, clock=lambda: now[0])
    start = int(now[0]) - 946702800
    engine.register_job(
        _repeat_job(start, 0, f"dummy-repeat-self-{start}-1 && complete-work-self-1")
    )
    engine.fire_due_timers()  # latches the repeat
    fired, _ = await engine.publish(Event("complete", "work", 6, work_name="1"), wait=True)
    assert len(fired) == 1
    for _ in range(30):  # each tick: latched once, then "already latched": nothing changes
        now[0] += 1
        engine.fire_due_timers()
    (explained,) = engine.explain(6).callbacks
    assert [entry.kind for entry in explained.journal] == [
        EntryKind.MATCHED,
        EntryKind.FIRED,
        EntryKind.MATCHED,
    ]
    assert explained.journal[1].invocation_id == fired[0].invocation_id


async def test_events_of_several_users_take_turns_each_users_in_decision_order(
    engines: Engines,
) -> None:
    # Probe 136: fired runs started strictly in decision order, so one user's backlog of
    # firings held another user's fired callback for all of it (30 s on 2 slots).
    recorder = Gated()
    engine = engines(recorder, max_parallel_events=1)
    alice = [("complete-job-1", "a1"), ("complete-job-2", "a2"), ("complete-job-3", "a3")]
    engine.register_job(job(5, *alice))
    engine.register_job(job(6, ("complete-job-4", "b1"), ("complete-job-5", "b2"), user="bob"))
    for upstream in (1, 2, 3, 4, 5):
        await engine.publish(Event("complete", "job", upstream), wait=False)

    # a1 took the free place at once; then the round: alice (waiting first), bob, ...
    for ran, code in enumerate(("a1", "a2", "b1", "a3", "b2"), start=1):
        await recorder.ran(ran)
        recorder.open(code)
    await engine.wait_idle()
    assert recorder.codes == ["a1", "a2", "b1", "a3", "b2"]
    # Each run's wait counts from its decision, not from when its turn came.
    decided = dict(zip(recorder.codes, recorder.queued_at, strict=True))
    called = dict(zip(recorder.codes, recorder.called_at, strict=True))
    assert all(decided[code] is not None for code in decided)
    b1_decided = decided["b1"]
    assert b1_decided is not None and b1_decided < called["a2"] < called["b1"]
