"""Level mode: registered after its dependency happened, it latches it; edge waits for ever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from executor.cli.explain import entry_effect
from executor.errors import InvalidRequestError
from executor.model import Event
from executor.triggers import states
from executor.triggers.journal import EntryKind
from tests.helpers.trigger_engines import Engines, Recorder

pytestmark = pytest.mark.unit


def waiter(job_id: int, trigger: str, mode: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": 1,
        **extra,
        "callbacks": [{"triggers": trigger, "language": "qube", "code": mode, "mode": mode}],
    }


async def test_a_job_registered_after_its_dependency_completed_fires_once_in_level_mode(
    engines: Engines,
) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job({"id": 10, "pgrp": 1, "label": "jobA", "status": "running"})
    await engine.publish(Event("complete", "job", 10, event_id="a-done"), wait=True)

    level = engine.register_job(waiter(20, "complete-job-jobA", "level"))
    edge = engine.register_job(waiter(21, "complete-job-jobA", "edge"))
    await recorder.ran(1)
    await engine.wait_idle()

    assert [f.callback.job_id for f in level.fired] == [20]
    assert edge.fired == []
    assert recorder.codes == ["level"]
    (run,) = recorder.runs
    assert run.event == Event("complete", "job", 10, event_id="a-done")  # as if it just happened
    assert run.callback.count == 1
    (entry,) = engine.explain(20).callbacks[0].journal
    assert (entry.kind, entry.latched, entry.count) == (EntryKind.LEVEL, ("complete-job-jobA",), 1)


async def test_level_latches_what_happened_and_waits_for_the_rest(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job({"id": 10, "pgrp": 1, "status": "complete"})  # the registration says so

    registration = engine.register_job(waiter(20, "complete-job-10 && complete-job-11", "level"))

    assert registration.fired == []
    (explained,) = engine.explain(20).callbacks
    assert [atom.latched for atom in explained.atoms] == [True, False]
    assert explained.waiting == "complete-job-11"
    fired, _ = await engine.publish(Event("complete", "job", 11), wait=True)
    assert [f.callback.job_id for f in fired] == [20]


async def test_a_level_per_work_callback_fires_the_items_already_done(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    frames = [{"name": n, "status": "pending"} for n in ("1", "2", "3")]
    engine.register_job({"id": 10, "pgrp": 1, "label": "ribgen", "agenda": frames})
    for frame in ("1", "3"):
        await engine.publish(Event("complete", "work", 10, work_name=frame), wait=True)

    registration = engine.register_job(
        waiter(20, "complete-work-ribgen-{work}", "level", agenda=frames)
    )
    await recorder.ran(2)

    assert [f.work_name for f in registration.fired] == ["1", "3"]
    assert [run.work_name for run in recorder.runs] == ["1", "3"]
    fired, _ = await engine.publish(Event("complete", "work", 10, work_name="2"), wait=True)
    assert [f.work_name for f in fired] == ["2"]


@pytest.mark.parametrize("known_from", ["registration", "event"])
async def test_a_level_firing_by_a_work_event_runs_with_its_work_item(
    engines: Engines, known_from: str
) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    status = "complete" if known_from == "registration" else "pending"
    frames = [{"name": "1", "status": status}, {"name": "2", "status": "pending"}]
    engine.register_job({"id": 10, "pgrp": 1, "label": "ribgen", "agenda": frames})
    if known_from == "event":
        await engine.publish(Event("complete", "work", 10, work_name="1"), wait=True)

    level = engine.register_job(waiter(20, "complete-work-ribgen-1", "level"))
    engine.register_job(waiter(21, "complete-work-ribgen-2", "edge"))
    edge, _ = await engine.publish(Event("complete", "work", 10, work_name="2"), wait=True)
    await recorder.ran(2)

    # qb.workid() and *-work-self act on the item, as for the edge firing on a live event.
    assert [f.work_name for f in level.fired] == ["1"]
    assert [f.work_name for f in edge] == ["2"]
    assert [(run.event, run.work_name) for run in recorder.runs] == [
        (Event("complete", "work", 10, work_name="1"), "1"),
        (Event("complete", "work", 10, work_name="2"), "2"),
    ]


async def test_a_level_firing_runs_with_the_latest_events_work_item(engines: Engines) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job({"id": 10, "pgrp": 1, "agenda": [{"name": "1", "status": "complete"}]})
    engine.register_job({"id": 11, "pgrp": 1, "agenda": ["1"]})
    await engine.publish(Event("complete", "work", 11, work_name="1"), wait=True)

    registration = engine.register_job(
        waiter(20, "complete-work-10-1 && complete-work-11-1", "level")
    )
    await recorder.ran(1)

    assert [f.work_name for f in registration.fired] == ["1"]
    (run,) = recorder.runs
    assert (run.event, run.work_name) == (Event("complete", "work", 11, work_name="1"), "1")


async def test_a_universal_level_work_line_fires_with_the_jobs_work_item(
    tmp_path: Path, engines: Engines
) -> None:
    conf = tmp_path / "callback"
    conf.mkdir()
    (conf / "callbacks.conf").write_text("unblock.qcb [level] = complete-work-self-1\n")
    (conf / "unblock.qcb").write_text("unblock-work-self")
    recorder = Recorder()
    engine = engines(recorder, universal_dirs=[conf])
    assert engine.reload_universal() == []

    registration = engine.register_job(
        {"id": 10, "pgrp": 1, "agenda": [{"name": "1", "status": "complete"}]}
    )
    await recorder.ran(1)

    assert [(f.callback.universal, f.work_name) for f in registration.fired] == [(True, "1")]
    assert [run.work_name for run in recorder.runs] == ["1"]


async def test_one_submission_fires_a_level_submit_callback_once(engines: Engines) -> None:
    # Before, it fired at registration and again on the job's own submit event.
    recorder = Recorder()
    engine = engines(recorder)
    own = {
        "id": 10,
        "pgrp": 1,
        "callbacks": [
            {"triggers": "submit-job-self", "language": "qube", "code": "level", "mode": "level"},
            {"triggers": "submit-job-self", "language": "qube", "code": "edge"},
        ],
    }
    earlier = engine.register_job(waiter(9, "submit-job-10", "level"))  # before job 10 is known

    registered = engine.register_job(own)  # the submission, for level mode
    later = engine.register_job(waiter(11, "submit-job-10", "level"))  # after it, before the event
    fired, _ = await engine.publish(Event("submit", "job", 10, event_id="s-10"), wait=True)
    await engine.wait_idle()

    assert earlier.fired == []
    assert sorted((f.callback.job_id, f.callback.callback_id) for f in registered.fired) == [
        (9, 1),
        (10, 1),
    ]
    assert [f.callback.job_id for f in later.fired] == [11]
    assert [(f.callback.job_id, f.callback.callback_id) for f in fired] == [(10, 2)]  # edge only
    assert sorted(recorder.codes) == ["edge", "level", "level", "level"]  # one run each
    # Registering it again (the farm does, see forwarder) is not a new submission either.
    assert engine.register_job(own).fired == []


async def test_the_submission_of_a_job_never_registered_is_its_submit_event(
    engines: Engines,
) -> None:
    # A scheduler registers only the jobs that have callbacks: another job's level
    # callback waiting for a job without any takes its submit event, once.
    recorder = Recorder()
    engine = engines(recorder)
    waiting = engine.register_job(waiter(9, "submit-job-12", "level"))
    fired, _ = await engine.publish(Event("submit", "job", 12, event_id="s-12"), wait=True)
    await engine.wait_idle()
    assert waiting.fired == []
    assert [(f.callback.job_id, f.callback.callback_id) for f in fired] == [(9, 1)]
    await engine.wait_idle()
    assert recorder.codes == ["level"]


async def test_a_level_callback_registered_after_an_unregistered_jobs_submit_event_takes_it(
    engines: Engines,
) -> None:
    # Found by probe 42: the submit event of a job never registered was taken only by
    # level callbacks registered before it; one registered after it waited for ever.
    recorder = Recorder()
    engine = engines(recorder, clock=lambda: 1_800_000_000.0)
    before = engine.register_job(waiter(9, "submit-job-12", "level"))
    fired, _ = await engine.publish(Event("submit", "job", 12, event_id="s-12"), wait=True)
    assert [f.callback.job_id for f in fired] == [9]

    after = engine.register_job(
        {
            "id": 13,
            "pgrp": 1,
            "callbacks": [
                {"triggers": t, "language": "qube", "code": m, "mode": m}
                for t, m in (
                    ("submit-job-12", "level"),
                    ("submit-job-self", "level"),
                    ("submit-job-12", "edge"),
                )
            ],
        }
    )
    by_label = engine.register_job(waiter(14, "submit-job-plates", "level"))

    assert before.fired == []
    assert [(f.callback.callback_id, f.callback.triggers) for f in after.fired] == [
        (1, "submit-job-12"),
        (2, "submit-job-self"),
    ]
    (_, _, edge) = engine.explain(13).callbacks
    # A job is submitted once: it will not fire again (probe 128), and says why.
    assert edge.waiting_for == (
        "it will not fire again: it needs submit-job-12, which will not latch again",
        "submit-job-12: job 12 (not registered here) (already happened; a job is submitted "
        "once, so it will not come again)",
    )
    assert by_label.fired == []  # no job holds the label yet
    # Job 12 registers at last: the same submission, taken only by what could not take it.
    registered = engine.register_job({"id": 12, "pgrp": 1, "label": "plates"})
    assert [f.callback.job_id for f in registered.fired] == [14]
    await engine.wait_idle()
    assert recorder.codes == ["level"] * 4


async def test_a_remembered_submission_goes_with_its_job_and_past_the_newest(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    for job_id in (30, 31, 32):
        await engine.publish(Event("submit", "job", job_id), wait=True)
    await engine.publish(Event("removed", "job", 31), wait=True)
    with engine.store.transaction() as db:
        assert states.prune_submissions(db, keep=1) == 1  # 30, the oldest

    fired = engine.register_job(
        waiter(40, "submit-job-30 || submit-job-31 || submit-job-32", "level")
    ).fired
    (latched,) = engine.explain(40).callbacks[0].journal
    assert [f.callback.job_id for f in fired] == [40]
    assert latched.latched == ("submit-job-32",)


async def test_registering_a_level_callback_again_does_not_fire_it_again(
    engines: Engines,
) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    engine.register_job({"id": 10, "pgrp": 1, "status": "complete"})
    engine.register_job(waiter(20, "complete-job-10", "level"))

    again = engine.register_job(waiter(20, "complete-job-10", "level"))

    assert again.fired == []
    await engine.wait_idle()
    assert recorder.codes == ["level"]


async def test_level_reads_the_last_state_not_every_state_passed(engines: Engines) -> None:
    engine = engines(Recorder())
    engine.register_job({"id": 10, "pgrp": 1})
    await engine.publish(Event("running", "job", 10), wait=True)
    await engine.publish(Event("complete", "job", 10), wait=True)

    running = engine.register_job(waiter(20, "running-job-10", "level"))
    done = engine.register_job(waiter(21, "done-job-10", "level"))

    assert (running.fired, len(done.fired)) == ([], 1)


async def test_level_state_survives_a_restart(engines: Engines) -> None:
    recorder = Recorder()
    first = engines(recorder)
    first.register_job({"id": 10, "pgrp": 1})
    await first.publish(Event("complete", "job", 10), wait=True)

    registration = engines(recorder).register_job(waiter(20, "complete-job-10", "level"))

    assert len(registration.fired) == 1


def test_a_mode_that_is_not_known_is_refused(engines: Engines) -> None:
    engine = engines(Recorder(), start=False)
    with pytest.raises(InvalidRequestError, match=r"callbacks\[0\].mode: 'levle'; expected edge"):
        engine.register_job(waiter(20, "complete-job-10", "levle"))


def waiting_line(engine: Any, job_id: int) -> str:
    (line,) = engine.explain(job_id).callbacks[0].waiting_for
    return str(line)


async def test_why_tells_an_edge_callback_when_level_mode_latches(engines: Engines) -> None:
    # Probe 116 F7: "mode level would have latched it at registration" was false for a
    # job registered after the callback; level mode now latches it then too, and why
    # says when level mode latches rather than that it would have here.
    engine = engines(Recorder())
    engine.register_job({"id": 10, "pgrp": 1, "label": "plates", "status": "complete"})
    engine.register_job(waiter(20, "complete-job-plates", "edge"))

    assert waiting_line(engine, 20) == (
        "complete-job-plates: job 10 'plates' in pgrp 1, job 10 is complete (already happened"
        " before it could latch: edge-triggered, this waits for the next such event; a level"
        " callback latches what has happened when it registers and when the job it names"
        " first registers)"
    )


async def test_why_says_a_level_callback_did_not_latch_a_state_told_after_it(
    engines: Engines,
) -> None:
    # A registration again tells a state without an event: nothing latches it.
    engine = engines(Recorder())
    engine.register_job({"id": 10, "pgrp": 1, "status": "running"})
    assert engine.register_job(waiter(20, "complete-job-10", "level")).fired == []

    assert engine.register_job({"id": 10, "pgrp": 1, "status": "complete"}).fired == []

    assert waiting_line(engine, 20) == (
        "complete-job-10: job 10 in pgrp 1, job 10 is complete (already happened, but not"
        " latched: a level callback latches what has happened when it registers and when"
        " the job it names first registers; this waits for the next such event)"
    )


@pytest.mark.parametrize("submitted", [True, False])
async def test_why_says_the_state_of_a_job_not_registered_is_not_known(
    engines: Engines, submitted: bool
) -> None:
    # Probe 116 F2: its complete event came before the level callback registered.
    engine = engines(Recorder())
    if submitted:
        await engine.publish(Event("submit", "job", 498), wait=True)
    await engine.publish(Event("complete", "job", 498), wait=True)

    assert engine.register_job(waiter(500, "complete-job-498", "level")).fired == []

    then = ", or its registration with that state" if not submitted else ""
    assert waiting_line(engine, 500) == (
        "complete-job-498: job 498 (not registered here) (the engine keeps no state of job"
        " 498, only its submission: a complete event of it from before this callback"
        f" registered is not known; this waits for the next such event{then})"
    )
    # And so it does: registered with that state, it latches unless its events came here.
    registered = engine.register_job({"id": 498, "pgrp": 2, "status": "complete"})
    assert [f.callback.job_id for f in registered.fired] == ([] if submitted else [500])


async def test_why_says_a_job_submitted_before_it_registered_gave_its_id_no_states(
    engines: Engines,
) -> None:
    # Probe 143: its first registration latched nothing, and why said a level callback
    # latches when the job it names first registers; the rule's exception held instead.
    engine = engines(Recorder())
    await engine.publish(Event("submit", "job", 498), wait=True)
    await engine.publish(Event("complete", "job", 498), wait=True)
    by_id = engine.register_job(waiter(500, "complete-job-498", "level", pgrp=2))
    as_parent = engine.register_job(waiter(501, "complete-job-parent", "level", pgrp=2, pid=498))
    by_label = engine.register_job(waiter(502, "complete-job-k", "level", pgrp=2))
    assert (by_id.fired, as_parent.fired, by_label.fired) == ([], [], [])

    registered = engine.register_job({"id": 498, "pgrp": 2, "label": "k", "status": "complete"})

    assert [f.callback.job_id for f in registered.fired] == [502]
    rule = (
        "job 498 is complete (already happened, but not latched: job 498 was submitted"
        " before it first registered, and a level callback naming it {how} had its events"
        " as they came, so that registration latched only those naming it by the label it"
        " registers with; this waits for the next such event)"
    )
    assert waiting_line(engine, 500) == (
        "complete-job-498: job 498 'k' in pgrp 2, " + rule.format(how="by id")
    )
    assert waiting_line(engine, 501) == (
        "complete-job-parent: parent: job 498 'k' in pgrp 2, " + rule.format(how="as a parent")
    )
    # Its registration again latches nothing either, and leaves the reason as it was.
    assert (
        engine.register_job({"id": 498, "pgrp": 2, "label": "k", "status": "complete"}).fired == []
    )
    assert waiting_line(engine, 500).endswith(rule.format(how="by id"))
    # Removed, its id is another job's: one registering first latches by id as the rule says.
    await engine.publish(Event("removed", "job", 498), wait=True)
    again = engine.register_job({"id": 498, "pgrp": 2, "label": "k", "status": "complete"})
    assert sorted(f.callback.job_id for f in again.fired) == [500, 501, 502]


def test_a_level_entry_says_whose_registration_and_whether_it_fired() -> None:
    fired = {
        "kind": "JOURNAL_ENTRY_KIND_LEVEL",
        "latched": ["complete-job-ribgen"],
        "invocation_id": "6c0c",
        "count": 1,
        "reason": "the registration of job 1501",
    }
    assert entry_effect(fired) == (
        "level mode at the registration of job 1501; latched complete-job-ribgen; FIRED as 6c0c"
    )
    # Latched on a callback that had fired before: a count, but no firing now.
    latched = {**fired, "invocation_id": "", "count": 2, "waiting_for": "complete-job-11"}
    assert entry_effect(latched) == (
        "level mode at the registration of job 1501; latched complete-job-ribgen;"
        " still waiting for complete-job-11"
    )
    own = {**fired, "reason": ""}
    assert entry_effect(own).startswith("level mode at registration; latched")
