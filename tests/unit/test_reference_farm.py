"""The farm over an in-memory reference supervisor: dispatch order, worker changes, messages."""

from __future__ import annotations

import sqlite3

import pytest

from supervisor_client.reference import (
    NoSuchJobError,
    NoSuchWorkError,
    PermissionDeniedError,
    ReferenceSupervisor,
    SubmitError,
    Transition,
)
from supervisor_client.reference.farm import Farm, describe_agenda, describe_ids

pytestmark = pytest.mark.unit


@pytest.fixture
def events() -> list[Transition]:
    return []


@pytest.fixture
def farm(events: list[Transition]) -> Farm:
    return Farm(ReferenceSupervisor(":memory:", listeners=[events.append]))


def statuses(farm: Farm, job_id: int) -> dict[str, str]:
    return {w["name"]: w["status"] for w in farm.job(job_id)["agenda"]}


def test_describe_ids_and_agenda() -> None:
    assert describe_ids([5, 1, 2, 3, 9, 10]) == "1-3, 5, 9-10"
    assert describe_ids([]) == ""
    assert describe_agenda(["1", "2", "3"]) == "1-3"
    assert describe_agenda(["7"]) == "7"
    assert describe_agenda(["1", "3"]) == "1, 3"
    assert describe_agenda(["init", "render"]) == "init, render"
    assert describe_agenda([str(n) for n in range(0, 40, 2)], limit=3) == "0, 2, 4, ... (20 items)"
    # A submitter's name that is not printable is shown as its repr: an error quoting the
    # agenda stays one line and acts on no terminal.
    assert describe_agenda(["1", "f\x1b[2J\u202ered", "a\nb"]) == (
        "1, 'f\\x1b[2J\\u202ered', 'a\\nb'"
    )


def test_submit_returns_the_jobs_with_callbacks(farm: Farm) -> None:
    job_a, job_b = farm.submit(
        [
            {"name": "a", "label": "a", "agenda": ["1", "2"]},
            {
                "name": "b",
                "status": "blocked",
                "callbacks": [{"triggers": "complete-job-a", "language": "qube", "code": "x"}],
            },
        ]
    )
    assert (job_a["id"], job_a["pgrp"], job_b["pgrp"]) == (1, 1, 1)
    assert job_b["callbacks"][0]["triggers"] == "complete-job-a"
    assert [j["id"] for j in farm.jobs(status="blocked")] == [2]
    assert [j["id"] for j in farm.jobs(pgrp=1)] == [1, 2]
    with pytest.raises(ValueError, match="expected one of pending"):
        farm.jobs(status="done")


def test_one_item_at_a_time_per_instance_by_priority_then_age(farm: Farm) -> None:
    farm.submit([{"name": "late", "agenda": ["1", "2"], "priority": 10}])
    farm.submit([{"name": "urgent", "agenda": ["1", "2"], "priority": 1, "cpus": 2}])
    farm.submit([{"name": "held", "agenda": ["1"], "status": "blocked", "priority": 0}])

    taken = [farm.take_work(f"w{n}") for n in range(5)]

    # urgent (priority 1) has two instances: two of its frames at once; late gets one
    # instance, so one frame; the blocked job nothing; then the farm is out of work.
    assert [(t.job_id, t.work_name) if t else None for t in taken] == [
        (2, "1"),
        (2, "2"),
        (1, "1"),
        None,
        None,
    ]
    assert farm.job(2)["agenda"][1]["host"] == "w1"
    assert farm.job(2)["status"] == "running"
    farm.change_work("complete", 1, ["1"])
    nxt = farm.take_work("w9")
    assert nxt is not None and (nxt.job_id, nxt.work_name, nxt.attempt) == (1, "2", 1)


def test_worker_changes_start_pending_items_and_name_the_rest(
    farm: Farm, events: list[Transition]
) -> None:
    (job,) = farm.submit([{"name": "j", "agenda": ["1", "2", {"name": "3", "status": "blocked"}]}])
    done = farm.change_work("complete", job["id"], ["1", "3"], host="h", resultpackage={"x": 1})
    assert done.changed == 1
    assert done.message == (
        "work 1:1 -> complete; work 1:3 is blocked; complete takes pending or running work"
    )
    assert farm.job(1)["agenda"][0]["resultpackage"] == {"x": 1}
    names = [(e.name, e.type, e.work_name) for e in events if e.type != "subjob"]
    assert names == [
        ("submit", "job", ""),
        ("running", "job", ""),
        ("running", "work", "1"),
        ("complete", "work", "1"),
    ]
    assert farm.change_work("start", 1, ["2"]).message == "work 1:2 -> running"
    failed = farm.change_work("fail", 1, ["2"])
    assert (failed.changed, failed.job_status) == (1, "running")
    assert statuses(farm, 1) == {"1": "complete", "2": "failed", "3": "blocked"}


def test_a_worker_change_of_many_frames_is_all_or_nothing(
    farm: Farm, events: list[Transition]
) -> None:
    (job,) = farm.submit([{"name": "j", "agenda": ["1", "2", "3", "4"]}])
    db = farm.supervisor._db
    # The storage refuses the third frame's change (a full disk, say), part-way through.
    db.execute(
        "CREATE TEMP TRIGGER refuse_3 BEFORE UPDATE OF status ON work"
        " WHEN NEW.name = '3' AND NEW.status = 'complete'"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    before = list(events)
    with pytest.raises(sqlite3.IntegrityError, match="disk is full"):
        farm.change_work("complete", job["id"], ["1", "2", "3", "4"])
    assert statuses(farm, job["id"]) == dict.fromkeys("1234", "pending")
    assert farm.job(job["id"])["status"] == "pending"
    assert events == before  # nothing happened, so nobody hears of it
    assert not any("[work]" in line["text"] for line in farm.history(job["id"]))
    db.execute("DROP TRIGGER refuse_3")
    done = farm.change_work("complete", job["id"], ["1", "2", "3", "4"])
    assert (done.changed, done.job_status) == (4, "complete")
    completed = [e.work_name for e in events if e.type == "work" and e.name == "complete"]
    assert completed == ["1", "2", "3", "4"]


def test_inside_together_a_failed_change_is_undone_alone(
    farm: Farm, events: list[Transition]
) -> None:
    supervisor = farm.supervisor
    (job,) = farm.submit([{"name": "j", "agenda": ["1", "2"]}])
    supervisor._db.execute(
        "CREATE TEMP TRIGGER refuse_2 BEFORE UPDATE OF status ON work"
        " WHEN NEW.name = '2' AND NEW.status = 'complete'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    before = len(events)
    with supervisor.together():
        supervisor.start_work(job["id"], "1")
        # A change answers its own transitions, not every one before it in the
        # transaction: a copy of those per frame made a ChangeWork of n frames n squared.
        own = supervisor.start_work(job["id"], "2")
        assert [(t.work_name, t.name) for t in own if t.type == "work"] == [("2", "running")]
        supervisor.complete_work(job["id"], "1", {"frame": 1})
        # Its result package is written before its status is refused: both undone.
        with pytest.raises(sqlite3.IntegrityError, match="refused"):
            supervisor.complete_work(job["id"], "2", {"frame": 2})
        assert len(events) == before  # heard of at the commit, not before
    agenda = {w["name"]: (w["status"], w["resultpackage"]) for w in farm.job(job["id"])["agenda"]}
    assert agenda == {"1": ("complete", {"frame": 1}), "2": ("running", {})}
    frame_events = [(e.work_name, e.name) for e in events[before:] if e.type == "work"]
    assert frame_events == [("1", "running"), ("2", "running"), ("1", "complete")]
    history = [line["text"] for line in farm.history(job["id"])]
    assert "[work] 1 complete" in history and "[work] 2 complete" not in history


def test_together_inside_together_is_a_part_of_it_undone_alone(
    farm: Farm, events: list[Transition]
) -> None:
    # The farm's change_work is one transaction, and its worker changes one inside it.
    supervisor = farm.supervisor
    (job,) = farm.submit([{"name": "j", "agenda": ["1", "2"]}])
    with supervisor.together():
        supervisor.start_work(job["id"], "1")

        def start_both() -> None:
            with supervisor.together():
                supervisor.start_work(job["id"], "2")
                supervisor.start_work(job["id"], "1")  # running already: refused

        with pytest.raises(ValueError, match="only pending work starts"):
            start_both()
        with supervisor.together():
            supervisor.complete_work(job["id"], "1")
    agenda = {w["name"]: w["status"] for w in farm.job(job["id"])["agenda"]}
    assert agenda == {"1": "complete", "2": "pending"}
    assert [(e.work_name, e.name) for e in events if e.type == "work"] == [
        ("1", "running"),
        ("1", "complete"),
    ]


def test_operator_changes_go_through_the_work_verbs(farm: Farm) -> None:
    farm.submit([{"name": "j", "user": "alice", "agenda": ["1", "2"]}])
    farm.change_work("fail", 1, ["1"])
    assert farm.change_work("retry", 1, ["1"]).changed == 1
    assert farm.change_work("block", 1, ["1", "2"]).changed == 2
    assert farm.change_work("unblock", 1, ["2"]).changed == 1
    assert statuses(farm, 1) == {"1": "blocked", "2": "pending"}
    history = [line["text"] for line in farm.history(1)]
    assert "[user] workblock by alice: work 1:1,2 -> blocked" in history
    with pytest.raises(PermissionDeniedError, match="mallory may not kill job 1"):
        farm.change_work("kill", 1, ["2"], actor="mallory")


def test_a_preempted_job_finishes_its_frame_and_takes_no_next_one(farm: Farm) -> None:
    farm.submit([{"name": "j", "user": "alice", "agenda": ["1", "2"]}])
    taken = farm.take_work("w1")
    assert taken is not None and taken.work_name == "1"

    preempted = farm.change_job("preempt", 1)

    assert (preempted.changed, preempted.job_status) == (1, "running")
    assert farm.take_work("w2") is None  # the next frame is not given to anyone
    start = farm.change_work("start", 1, ["2"])
    assert (start.changed, start.message) == (
        0,
        "job 1 is preempted: it starts no new work until its running work has ended and "
        "it is pending again",
    )
    done = farm.change_work("complete", 1, ["1"])
    assert (done.changed, done.job_status) == (1, "pending")
    again = farm.take_work("w3")
    assert again is not None and (again.job_id, again.work_name) == (1, "2")


def test_work_in_a_held_job_does_not_move(farm: Farm) -> None:
    farm.submit([{"name": "j", "status": "blocked", "agenda": ["1"]}])
    result = farm.change_work("complete", 1, ["1"])
    assert (result.changed, result.message) == (
        0,
        "job 1 is blocked; work runs only in pending or running jobs",
    )


def test_errors_name_the_job_or_item_and_what_exists(farm: Farm) -> None:
    farm.submit([{"name": "j", "agenda": ["1", "2", "3"]}])
    farm.submit([{"name": "k"}])
    with pytest.raises(NoSuchJobError, match="no job 7; the farm has jobs 1-2"):
        farm.change_work("complete", 7, ["1"])
    with pytest.raises(NoSuchWorkError, match=r"no work item '9'; its agenda is 1-3"):
        farm.change_work("complete", 1, ["9"])
    with pytest.raises(NoSuchWorkError, match="it has no agenda"):
        farm.change_work("complete", 2, ["1"])
    with pytest.raises(ValueError, match=r"name the work items to complete: .* agenda is 1-3"):
        farm.change_work("complete", 1, [])
    with pytest.raises(ValueError, match="unknown work change 'finish'; expected one of start"):
        farm.change_work("finish", 1, ["1"])
    with pytest.raises(ValueError, match="kill needs work names"):
        farm.change_work("kill", 1, [])
    assert Farm(ReferenceSupervisor()).no_such_job(3).args == ("no job 3; the farm has no jobs",)


def test_a_job_without_agenda_is_run_and_ended_itself(farm: Farm) -> None:
    farm.submit([{"name": "single"}])
    taken = farm.take_work("w")
    assert taken is not None and (taken.job_id, taken.work_name) == (1, "")
    assert farm.take_work("w") is None
    result = farm.change_work("complete", 1, [])
    assert (result.changed, result.job_status) == (1, "complete")
    again = farm.change_work("fail", 1, [])
    assert (again.changed, again.message) == (
        0,
        "job 1 is complete; fail takes pending or running jobs",
    )


def test_job_verbs_and_removal(farm: Farm) -> None:
    farm.submit([{"name": "j", "agenda": ["1"]}])
    blocked = farm.change_job("block", 1)
    assert (blocked.changed, blocked.job_status) == (1, "blocked")
    noop = farm.change_job("retry", 1)
    assert (noop.changed, noop.message) == (0, "job 1 is blocked; retry applies to ended jobs")
    removed = farm.change_job("remove", 1)
    assert (removed.changed, removed.job_status) == (1, "")
    assert farm.status(1) == "removed"
    assert farm.history(1), "history outlives the job"
    (other,) = farm.submit([{"name": "x"}])
    with pytest.raises(ValueError, match="unknown job verb 'explode'"):
        farm.change_job("explode", other["id"])


# -- job and instance verbs leave no frame running that no worker can end ----------------


def running_frame(
    farm: Farm, events: list[Transition], agenda: tuple[str, ...] = ("1", "2")
) -> int:
    (job,) = farm.submit([{"name": "render", "user": "alice", "agenda": list(agenda)}])
    farm.take_work("node1")
    events.clear()
    return int(job["id"])


@pytest.mark.parametrize(
    ("verb", "job_status", "frame_status", "work_events"),
    [
        # Qube: failing a job interrupts its running instances; the frame is marked failed.
        ("fail", "failed", "failed", ["failed"]),
        ("complete", "complete", "complete", ["complete"]),
        ("kill", "killed", "killed", ["killed"]),
        # Blocking interrupts the frame: it goes back to pending (no pending event).
        ("block", "blocked", "pending", []),
        # Suspending pauses it (no suspended event).
        ("suspend", "suspended", "suspended", []),
    ],
)
def test_a_job_verb_stops_the_running_frame_with_its_event(
    farm: Farm,
    events: list[Transition],
    verb: str,
    job_status: str,
    frame_status: str,
    work_events: list[str],
) -> None:
    job_id = running_frame(farm, events)

    farm.change_job(verb, job_id)

    assert statuses(farm, job_id) == {"1": frame_status, "2": "pending"}
    assert farm.status(job_id) == job_status
    assert [e.name for e in events if e.type == "work"] == work_events
    if work_events:
        assert (
            Transition(work_events[0], "work", job_id, work_name="1", subjob_id=0, host="node1")
            in events
        )
    # The worker's report comes too late: refused, and nothing is left running.
    late = farm.change_work("complete", job_id, ["1"], host="node1")
    assert late.changed == 0
    assert "running" not in statuses(farm, job_id).values()


def test_an_unblocked_job_runs_its_interrupted_frame_again(
    farm: Farm, events: list[Transition]
) -> None:
    job_id = running_frame(farm, events)
    farm.change_job("block", job_id)
    farm.change_job("unblock", job_id)

    taken = farm.take_work("node2")

    assert taken is not None
    assert (taken.work_name, taken.attempt) == ("1", 2)
    farm.change_work("complete", job_id, ["1"])
    farm.change_work("complete", job_id, ["2"])
    assert farm.status(job_id) == "complete"


def test_a_failed_job_retried_runs_its_failed_frame_again(
    farm: Farm, events: list[Transition]
) -> None:
    job_id = running_frame(farm, events)
    farm.change_job("fail", job_id)

    farm.change_job("retry", job_id)

    assert statuses(farm, job_id) == {"1": "pending", "2": "pending"}
    assert farm.take_work() is not None


def test_a_resumed_job_runs_its_paused_frame_on(farm: Farm, events: list[Transition]) -> None:
    job_id = running_frame(farm, events)
    farm.change_job("suspend", job_id)
    events.clear()

    farm.change_job("resume", job_id)

    assert statuses(farm, job_id) == {"1": "running", "2": "pending"}
    assert events == []  # the frame goes on: no running event, it started before
    assert farm.change_work("complete", job_id, ["1"]).changed == 1


@pytest.mark.parametrize(("verb", "ended"), [("kill", "killed"), ("fail", "failed")])
def test_an_ended_instance_stops_its_frame_and_takes_no_other(
    farm: Farm, events: list[Transition], verb: str, ended: str
) -> None:
    job_id = running_frame(farm, events)
    sup = farm.supervisor

    result = sup.subjob_action(verb, job_id, [0], "alice")

    assert result.message == (
        f"instance {job_id}.0 running -> {ended} (work {job_id}:1 running -> {ended})"
    )
    assert statuses(farm, job_id) == {"1": ended, "2": "pending"}
    assert Transition(ended, "work", job_id, work_name="1", subjob_id=0, host="node1") in events
    # Its only instance has ended, so the job ends with it, as a job killed or failed does.
    assert farm.status(job_id) == ended
    assert farm.take_work() is None
    assert farm.change_work("complete", job_id, ["1"]).changed == 0


def test_a_job_runs_on_with_the_instances_it_has_left(farm: Farm, events: list[Transition]) -> None:
    (job,) = farm.submit([{"name": "r", "user": "alice", "agenda": ["1", "2", "3"], "cpus": 2}])
    job_id = int(job["id"])
    farm.take_work("node1")  # 1 on instance 0
    farm.take_work("node2")  # 2 on instance 1

    farm.supervisor.subjob_action("kill", job_id, [0], "alice")

    assert statuses(farm, job_id) == {"1": "killed", "2": "running", "3": "pending"}
    assert farm.status(job_id) == "running"
    assert farm.take_work("node3") is None  # instance 1 is busy, instance 0 is killed
    with pytest.raises(ValueError, match=f"instance {job_id}.0 is killed; work runs only on"):
        farm.supervisor.start_work(job_id, "3", subid=0)
    farm.change_work("complete", job_id, ["2"])
    taken = farm.take_work("node3")
    assert taken is not None and taken.work_name == "3"
    assert farm.job(job_id)["agenda"][2]["subid"] == 1
    farm.change_work("complete", job_id, ["3"])
    assert farm.status(job_id) == "killed"  # frame 1 was killed


def test_an_operator_cannot_start_a_frame_without_a_live_instance(farm: Farm) -> None:
    (job,) = farm.submit([{"name": "r", "user": "alice", "agenda": ["1", "2"], "cpus": 2}])
    job_id = int(job["id"])
    farm.supervisor.subjob_action("kill", job_id, [0], "alice")
    farm.supervisor.subjob_action("block", job_id, [1], "alice")

    result = farm.change_work("start", job_id, ["1"])

    assert result.changed == 0
    assert result.message == (
        f"work {job_id}:1 not started: no instance of job {job_id} is pending or running "
        f"(instances {job_id}.0 killed, {job_id}.1 blocked)"
    )
    assert statuses(farm, job_id) == {"1": "pending", "2": "pending"}


def test_a_callback_without_language_is_qube(farm: Farm) -> None:
    (job,) = farm.submit(
        [{"name": "n", "callbacks": [{"triggers": "complete-job-self", "code": "unblock-self"}]}]
    )

    assert job["callbacks"][0]["language"] == "qube"


def test_a_started_frame_goes_to_a_free_instance_and_waits_when_none_is(farm: Farm) -> None:
    """An instance runs one frame at a time, for a worker's start as for TakeWork.

    A start put a frame on a busy instance when none was free: a cpus = 1 job ran all
    its frames at once on instance N.0 (probe 50).
    """
    (job,) = farm.submit(
        [{"name": "r", "user": "alice", "agenda": ["1", "2", "3", "4"], "cpus": 2}]
    )
    job_id = int(job["id"])
    subids: dict[str, int] = {}
    for name in ("1", "2"):
        assert farm.change_work("start", job_id, [name], host="w").changed == 1
        subids[name] = farm.job(job_id, work_names=[name])["agenda"][0]["subid"]
    assert subids == {"1": 0, "2": 1}

    refused = farm.change_work("start", job_id, ["3"], host="w")

    assert refused.changed == 0
    assert refused.message == (
        f"work {job_id}:3 not started: job {job_id} has no free instance, as an instance "
        f"runs one frame at a time ({job_id}.0 runs {job_id}:1, {job_id}.1 runs {job_id}:2)"
    )
    assert statuses(farm, job_id)["3"] == "pending"
    assert farm.supervisor.busy_instances(job_id) == {0, 1}
    farm.change_work("complete", job_id, ["2"])
    assert farm.supervisor.busy_instances(job_id) == {0}
    assert farm.change_work("start", job_id, ["4"], host="w").changed == 1
    assert farm.job(job_id, work_names=["4"])["agenda"][0]["subid"] == 1


def running_on(farm: Farm, job_id: int) -> dict[str, int]:
    """The job's running frames and the instance each runs on."""
    return {w["name"]: w["subid"] for w in farm.job(job_id)["agenda"] if w["status"] == "running"}


def test_a_cpus_1_job_runs_its_frames_one_after_another_when_started_by_hand(
    farm: Farm,
) -> None:
    # `cbexec farm start 14:1` then `14:2` ran both frames at once on instance 14.0.
    (job,) = farm.submit([{"name": "one", "user": "alice", "agenda": ["1", "2", "3"]}])
    job_id = int(job["id"])
    assert farm.change_work("start", job_id, ["1"]).changed == 1

    for second in (["2"], ["2", "3"]):
        refused = farm.change_work("start", job_id, second)
        assert refused.changed == 0
        assert refused.message == (
            f"work {job_id}:{','.join(second)} not started: job {job_id} has no free instance, "
            f"as an instance runs one frame at a time ({job_id}.0 runs {job_id}:1)"
        )
    assert running_on(farm, job_id) == {"1": 0}
    assert farm.take_work() is None

    farm.change_work("complete", job_id, ["1"])
    assert farm.change_work("start", job_id, ["2"]).changed == 1
    assert running_on(farm, job_id) == {"2": 0}


def test_a_start_of_several_frames_takes_a_free_instance_each_or_starts_none(
    farm: Farm, events: list[Transition]
) -> None:
    (job,) = farm.submit(
        [{"name": "two", "user": "alice", "agenda": ["1", "2", "3", "4"], "cpus": 2}]
    )
    job_id = int(job["id"])
    events.clear()

    refused = farm.change_work("start", job_id, ["1", "2", "3"])

    assert refused.changed == 0
    assert refused.message == (
        f"work {job_id}:1,2,3 not started: job {job_id} has 2 free instances ({job_id}.0, "
        f"{job_id}.1) for 3 frames, as an instance runs one frame at a time"
    )
    assert running_on(farm, job_id) == {} and events == []

    started = farm.change_work("start", job_id, ["1", "2"])

    assert (started.changed, started.message) == (2, f"work {job_id}:1,2 -> running")
    assert running_on(farm, job_id) == {"1": 0, "2": 1}  # both went on instance 0 before

    # A frame refused for its status is named; the pending one waits for a free instance.
    mixed = farm.change_work("start", job_id, ["2", "3"])
    assert mixed.changed == 0
    assert mixed.message == (
        f"work {job_id}:2 is running; start takes pending work; work {job_id}:3 not started: "
        f"job {job_id} has no free instance, as an instance runs one frame at a time "
        f"({job_id}.0 runs {job_id}:1, {job_id}.1 runs {job_id}:2)"
    )


def test_an_ended_instance_is_named_beside_the_busy_one(farm: Farm) -> None:
    (job,) = farm.submit([{"name": "r", "user": "alice", "agenda": ["1", "2"], "cpus": 2}])
    job_id = int(job["id"])
    farm.supervisor.subjob_action("kill", job_id, [1], "alice")
    farm.change_work("start", job_id, ["1"])

    refused = farm.change_work("start", job_id, ["2"])

    assert refused.message == (
        f"work {job_id}:2 not started: job {job_id} has no free instance, as an instance runs "
        f"one frame at a time ({job_id}.0 runs {job_id}:1, {job_id}.1 killed)"
    )


def test_after_a_preempt_or_a_resume_a_start_still_waits_for_a_free_instance(
    farm: Farm,
) -> None:
    (job,) = farm.submit([{"name": "p", "user": "alice", "agenda": ["1", "2", "3"]}])
    job_id = int(job["id"])
    farm.change_work("start", job_id, ["1"])
    farm.change_job("preempt", job_id)
    assert "is preempted" in farm.change_work("start", job_id, ["2"]).message
    farm.change_work("complete", job_id, ["1"])  # its running work ended: pending again
    assert farm.status(job_id) == "pending"

    assert farm.change_work("start", job_id, ["2"]).changed == 1
    assert farm.change_work("start", job_id, ["3"]).changed == 0

    farm.change_job("suspend", job_id)
    farm.change_job("resume", job_id)
    assert running_on(farm, job_id) == {"2": 0}
    assert farm.change_work("start", job_id, ["3"]).changed == 0
    assert running_on(farm, job_id) == {"2": 0}


def test_a_complete_of_a_pending_frame_may_use_a_busy_instance(farm: Farm) -> None:
    """It starts and ends the frame at once: no two frames are left running on one instance."""
    (job,) = farm.submit([{"name": "c", "user": "alice", "agenda": ["1", "2"]}])
    job_id = int(job["id"])
    farm.change_work("start", job_id, ["1"])

    done = farm.change_work("complete", job_id, ["2"])

    assert (done.changed, done.message) == (1, f"work {job_id}:2 -> complete")
    assert statuses(farm, job_id) == {"1": "running", "2": "complete"}
    assert running_on(farm, job_id) == {"1": 0}


def test_statuses_of_many_jobs_are_each_one_statement_and_each_job_once(farm: Farm) -> None:
    """WaitJobs reads these on the executor's loop every pass: never one statement per id."""
    ids = [
        job["id"] for job in farm.submit([{"name": f"j{n}", "agenda": ["1"]} for n in range(300)])
    ]
    farm.change_work("complete", ids[1], ["1"])
    farm.change_job("remove", ids[2])  # gone, its history kept
    asked = list(dict.fromkeys([ids[5], 10_000, ids[2], *ids, ids[5]]))
    statements: list[str] = []
    farm.supervisor._db.set_trace_callback(statements.append)

    statuses = farm.statuses(asked)
    ended = (farm.ended(asked), farm.ended(ids[1:3]), farm.ended())
    unknown = (farm.first_unknown(asked), farm.first_unknown(ids), farm.first_unknown([]))

    farm.supervisor._db.set_trace_callback(None)
    assert len(statements) == 7, statements  # one each
    assert list(statuses)[:3] == [ids[5], 10_000, ids[2]]  # as first named, each once
    assert len(statuses) == 301
    assert (statuses[ids[5]], statuses[10_000], statuses[ids[1]]) == (
        "pending",
        "removed",
        "complete",
    )
    assert statuses[ids[2]] == "removed"
    assert ended == (False, True, False)
    assert unknown == (10_000, None, None)  # a removed job with history is known


def test_statuses_of_every_job_are_by_id(farm: Farm) -> None:
    ids = [job["id"] for job in farm.submit([{"name": f"j{n}"} for n in range(3)])]
    for job_id in ids:
        farm.change_work("complete", job_id, [])
    assert farm.statuses() == dict.fromkeys(ids, "complete")
    assert farm.ended()
    assert farm.first_unknown([ids[0], 2**62, ids[1]]) == 2**62


def test_a_submission_above_its_bounds_is_refused_whole(farm: Farm) -> None:
    with pytest.raises(SubmitError, match=r"^jobs: at most 1000 jobs a submission, got 1001;"):
        farm.submit([{"agenda": ["1"]}] * 1001)
    with pytest.raises(SubmitError, match=r"^jobs: at most 100000 work items a submission .*"):
        farm.submit([{"agenda": list(range(50_000))}, {"agenda": list(range(50_001))}])
    assert farm.jobs() == []

    stored = farm.submit([{"agenda": list(range(50_000))}] * 2)  # at the bounds: taken

    assert [len(job["agenda"]) for job in stored] == [50_000, 50_000]


# -- a worker's report ends only the attempt it holds (probe 127, finding 1) -------------


def taken_from_a_then_b(farm: Farm) -> int:
    """Worker A takes frame 1; block and unblock send it back; worker B takes attempt 2."""
    (job,) = farm.submit([{"name": "stale", "agenda": ["1", "2"]}])
    job_id = int(job["id"])
    a = farm.take_work("workerA")
    assert a is not None and (a.work_name, a.attempt) == ("1", 1)
    farm.change_job("block", job_id)
    farm.change_job("unblock", job_id)
    b = farm.take_work("workerB")
    assert b is not None and (b.work_name, b.attempt) == ("1", 2)
    return job_id


@pytest.mark.parametrize("change", ["complete", "fail"])
def test_a_stale_attempts_report_is_left_alone_and_the_holder_ends_the_frame(
    farm: Farm, events: list[Transition], change: str
) -> None:
    job_id = taken_from_a_then_b(farm)
    events.clear()

    stale = farm.change_work(change, job_id, ["1"], host="workerA", attempt=1)

    assert stale.changed == 0
    assert stale.message == (
        f"work {job_id}:1 is running attempt 2 (on workerB); a report of attempt 1 is "
        "stale: that attempt was stopped, the frame is not its to end"
    )
    assert statuses(farm, job_id)["1"] == "running"
    assert stale.job_status == "running"
    assert events == []
    real = farm.change_work("complete", job_id, ["1"], host="workerB", attempt=2)
    assert (real.changed, statuses(farm, job_id)["1"]) == (1, "complete")
    assert farm.job(job_id)["agenda"][0]["host"] == "workerB"


def test_a_report_of_an_attempt_whose_frame_went_back_to_pending_starts_nothing(
    farm: Farm,
) -> None:
    (job,) = farm.submit([{"name": "stale", "agenda": ["1"]}])
    job_id = int(job["id"])
    farm.take_work("workerA")
    farm.change_job("block", job_id)
    farm.change_job("unblock", job_id)  # frame 1 pending again, no worker on it yet

    stale = farm.change_work("complete", job_id, ["1"], host="workerA", attempt=1)

    assert stale.changed == 0
    assert stale.message == (
        f"work {job_id}:1 is pending; a report of attempt 1 is stale: that attempt was "
        "stopped, the frame is not its to end"
    )
    assert statuses(farm, job_id) == {"1": "pending"}
    # Without an attempt (an operator's `farm complete`) it is started and completed.
    assert farm.change_work("complete", job_id, ["1"]).changed == 1


def test_the_attempt_goes_only_with_a_workers_end(farm: Farm) -> None:
    (job,) = farm.submit([{"name": "j", "agenda": ["1"]}])
    job_id = int(job["id"])
    for change in ("start", "kill", "retry"):
        with pytest.raises(ValueError, match="attempt goes with complete or fail"):
            farm.change_work(change, job_id, ["1"], attempt=1)


def test_a_job_without_agenda_counts_its_starts_as_attempts(farm: Farm) -> None:
    (job,) = farm.submit([{"name": "single"}])
    job_id = int(job["id"])
    a = farm.take_work("workerA")
    assert a is not None and a.attempt == 1
    farm.change_job("block", job_id)
    farm.change_job("unblock", job_id)
    b = farm.take_work("workerB")
    assert b is not None and b.attempt == 2

    stale = farm.change_work("complete", job_id, [], host="workerA", attempt=1)

    assert stale.changed == 0
    assert stale.message == (
        f"job {job_id} is running attempt 2; a report of attempt 1 is stale: that attempt "
        "was stopped, the job is not its to end"
    )
    assert farm.status(job_id) == "running"
    assert farm.change_work("complete", job_id, [], attempt=2).changed == 1
    assert farm.status(job_id) == "complete"


def two_frames_running(farm: Farm) -> int:
    """A job of 2 instances and frames 1-3: frames 1 and 2 running, on 0 and 1."""
    (job,) = farm.submit([{"name": "p", "user": "alice", "agenda": ["1", "2", "3"], "cpus": 2}])
    job_id = int(job["id"])
    assert farm.change_work("start", job_id, ["1", "2"]).changed == 2
    return job_id


@pytest.mark.parametrize("change", ["complete", "fail"])
def test_a_preempted_jobs_pending_frame_is_left_alone_and_the_others_change(
    farm: Farm, change: str
) -> None:
    # `cbexec farm complete J:1,3` on a preempted job refused the whole call as
    # INVALID_ARGUMENT, losing frame 1's end with frame 3's start.
    job_id = two_frames_running(farm)
    farm.change_job("preempt", job_id)

    result = farm.change_work(change, job_id, ["1", "3"])

    ended = "complete" if change == "complete" else "failed"
    assert (result.changed, result.message) == (
        1,
        f"work {job_id}:1 -> {ended}; work {job_id}:3 not started: job {job_id} is preempted: "
        "it starts no new work until its running work has ended and it is pending again",
    )
    assert statuses(farm, job_id) == {"1": ended, "2": "running", "3": "pending"}


def test_a_pending_frame_is_not_ended_on_a_preempted_instance(farm: Farm) -> None:
    job_id = two_frames_running(farm)
    farm.supervisor.subjob_action("preempt", job_id, [0, 1], "alice")

    result = farm.change_work("complete", job_id, ["1", "3"])

    assert (result.changed, result.message) == (
        1,
        f"work {job_id}:1 -> complete; work {job_id}:3 not started: the instances of job "
        f"{job_id} that could take it ({job_id}.0, {job_id}.1) are preempted: they take no "
        "new work until their running work has ended",
    )
    assert statuses(farm, job_id) == {"1": "complete", "2": "running", "3": "pending"}
    # With one instance preempted the other takes the frame, started and ended at once.
    job_id = two_frames_running(farm)
    farm.supervisor.subjob_action("preempt", job_id, [0], "alice")
    assert farm.change_work("complete", job_id, ["3"]).changed == 1
    assert running_on(farm, job_id) == {"1": 0, "2": 1}


@pytest.mark.parametrize("verb", ["interrupt", "block", "migrate"])
def test_a_job_none_of_whose_instances_runs_is_pending_and_fires_running_again(
    farm: Farm, events: list[Transition], verb: str
) -> None:
    job_id = two_frames_running(farm)

    result = farm.supervisor.subjob_action(verb, job_id, [], "alice")

    assert result.changed == 2
    assert farm.status(job_id) == "pending"  # as the job-level interrupt leaves it
    assert statuses(farm, job_id) == {"1": "pending", "2": "pending", "3": "pending"}
    history = [line["text"] for line in farm.history(job_id)]
    assert "[job] running -> pending (none of its instances runs)" in history
    if verb == "block":
        farm.supervisor.subjob_action("unblock", job_id, [], "alice")
    events.clear()
    assert farm.take_work("node1") is not None
    assert Transition("running", "job", job_id) in events  # a new start


def test_a_job_whose_last_preempted_instance_is_released_is_pending(farm: Farm) -> None:
    job_id = two_frames_running(farm)
    farm.supervisor.subjob_action("preempt", job_id, [0, 1], "alice")
    farm.change_work("complete", job_id, ["1"])
    assert farm.status(job_id) == "running"  # instance 1 still runs frame 2

    farm.change_work("complete", job_id, ["2"])

    assert farm.status(job_id) == "pending"
    assert [sub["status"] for sub in farm.job(job_id)["subjobs"]] == ["pending", "pending"]


def test_an_instance_retry_reopens_an_ended_job_with_work_left(
    farm: Farm, events: list[Transition]
) -> None:
    (job,) = farm.submit([{"name": "r", "user": "alice", "agenda": ["1", "2"], "cpus": 2}])
    job_id = int(job["id"])
    farm.change_job("kill", job_id)

    result = farm.supervisor.subjob_action("retry", job_id, [0], "alice")

    assert (result.changed, farm.status(job_id)) == (1, "pending")
    assert [sub["status"] for sub in farm.job(job_id)["subjobs"]] == ["pending", "killed"]
    history = [line["text"] for line in farm.history(job_id)]
    assert f"[job] killed -> pending (instance {job_id}.0 retried)" in history
    taken = farm.take_work("node1")
    assert taken is not None and (taken.job_id, taken.work_name) == (job_id, "1")
    farm.change_work("complete", job_id, ["1"])
    farm.change_work("complete", job_id, ["2"])
    assert farm.status(job_id) == "complete"  # from its agenda, as ever


def test_an_instance_retry_of_an_ended_job_with_no_frame_left_changes_nothing(
    farm: Farm,
) -> None:
    (job,) = farm.submit([{"name": "r", "user": "alice", "agenda": ["1"]}])
    job_id = int(job["id"])
    farm.change_work("start", job_id, ["1"])
    farm.supervisor.subjob_action("kill", job_id, [0], "alice")
    assert farm.status(job_id) == "killed"

    result = farm.supervisor.subjob_action("retry", job_id, [0], "alice")

    assert (result.changed, result.message) == (
        0,
        f"instance {job_id}.0 is killed and its job {job_id} is killed with no frame left to "
        f"run: retry the job, or one of its frames",
    )
    assert [sub["status"] for sub in farm.job(job_id)["subjobs"]] == ["killed"]


def test_an_instance_retry_reopens_an_ended_job_without_an_agenda(farm: Farm) -> None:
    (job,) = farm.submit([{"name": "n", "user": "alice"}])
    job_id = int(job["id"])
    farm.change_job("kill", job_id)

    assert farm.supervisor.subjob_action("retry", job_id, [0], "alice").changed == 1

    assert farm.status(job_id) == "pending"
    taken = farm.take_work("node1")
    assert taken is not None and taken.job_id == job_id
