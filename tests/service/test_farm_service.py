"""The FarmService on the executor's port: submit, read, drive and wait, with callbacks firing."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from executor import server
from executor.api.edge import FARM_SERVICE
from executor.api.farm import STOPPING
from executor.runs.history_size import sqlite_bytes_in_use
from supervisor_client import ExecutorRpcError, FarmClient, InvalidRequestError, RetryableError
from supervisor_client.qbcallback.v1 import farm_pb2, farm_pb2_grpc
from supervisor_client.qbcallback.v1.executor_pb2 import Outcome
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.health import SERVING, health_status
from tests.helpers.supervisors import SupervisorEndpoint
from tests.helpers.waiting import eventually, outbox_drained

pytestmark = pytest.mark.service

FRAMES = ["1", "2", "3"]


def frame_by_frame() -> list[dict[str, object]]:
    """Job B's frame N waits for job A's frame N (the qube form)."""
    return [
        {"name": "jobA", "label": "jobA", "user": "alice", "agenda": FRAMES},
        {
            "name": "jobB",
            "label": "jobB",
            "user": "alice",
            "agenda": [{"name": f, "status": "blocked"} for f in FRAMES],
            "callbacks": [
                {
                    "triggers": f"complete-work-jobA-{f}",
                    "language": "qube",
                    "code": "unblock-work-self",
                }
                for f in FRAMES
            ],
        },
    ]


def agenda(response: farm_pb2.GetJobResponse) -> dict[str, str]:
    return {w.name: w.status for w in response.job.agenda}


async def test_submit_drive_and_read_a_frame_by_frame_dependency(stack_warm: Stack) -> None:
    async with FarmClient(stack_warm.channel) as farm:
        submitted = await farm.submit_jobs(frame_by_frame())
        job_a, job_b = (job.id for job in submitted.jobs)
        assert [j.label for j in submitted.jobs] == ["jobA", "jobB"]
        assert submitted.jobs[1].callbacks[0].triggers == "complete-work-jobA-1"

        done = await farm.change_work(job_id=job_a, work=["2"], change="complete", host="w1")
        assert (done.changed, list(done.selected), done.job_status) == (1, ["2"], "running")
        assert (await farm.wait_jobs([job_a], wait_seconds=0.5)).done is False

        b = await farm.get_job(job_b)
        assert agenda(b) == {"1": "blocked", "2": "pending", "3": "blocked"}
        assert [(cb.id, cb.count, list(cb.latches)) for cb in b.callbacks] == [
            (1, 0, [False]),
            (2, 1, [False]),
            (3, 0, [False]),
        ]
        texts = [h.text for h in b.history]
        assert "[callback] workunblock by alice: work 2:2 -> pending" in texts
        assert any(h.invocation_id for h in b.history)

        rest = await farm.change_work(job_id=job_a, work=["1-3"], change="complete")
        assert (rest.changed, rest.job_status) == (2, "complete")
        assert "work 1:2 is complete" in rest.message
        waited = await farm.wait_jobs([job_a], wait_seconds=30)
        assert waited.done and [(j.job_id, j.status) for j in waited.jobs] == [(1, "complete")]
        assert agenda(await farm.get_job(job_b)) == dict.fromkeys(FRAMES, "pending")

        listing = await farm.list_jobs(status="pending")
        assert [j.id for j in listing.jobs] == [job_b]


async def test_submitted_jobs_are_registered_when_the_submission_is_answered(
    stack_warm: Stack,
) -> None:
    # The first job's submit event fires a slow callback: the next submission's jobs
    # have their callbacks when it is answered, whatever waits in the forwarder's queue.
    slow = {
        "name": "slow",
        "user": "alice",
        "callbacks": [
            {
                "triggers": "submit-job-self",
                "language": "python",
                "code": "import time\ntime.sleep(3)",
            }
        ],
    }
    later = {
        "name": "later",
        "user": "alice",
        "callbacks": [{"triggers": "done-job-self", "language": "python", "code": "pass"}],
    }
    async with FarmClient(stack_warm.channel) as farm:
        await farm.submit_jobs([slow])
        (job,) = (await farm.submit_jobs([later])).jobs
        shown = await farm.get_job(job.id)
        assert [cb.triggers for cb in shown.callbacks] == ["done-job-self"]
        published = await stack_warm.client.publish_event(
            name="complete", type="job", job_id=job.id, wait=True, timeout=10
        )
        assert [f.callback_id for f in published.fired] == [1]


async def test_simulated_worker_calls_and_job_verbs(stack_warm: Stack) -> None:
    async with FarmClient(stack_warm.channel) as farm:
        await farm.submit_jobs(frame_by_frame())
        taken = await farm.take_work("worker-1")
        assert (taken.taken, taken.job_id, taken.work_name, taken.job_name, taken.attempt) == (
            True,
            1,
            "1",
            "jobA",
            1,
        )
        # jobA has one instance and it is busy; jobB's frames are blocked.
        assert (await farm.take_work("worker-2")).taken is False
        await farm.change_work(job_id=1, work=["1"], change="fail")
        retried = await farm.change_work(job_id=1, work=["1"], change="retry")
        assert retried.changed == 1
        again = await farm.take_work("worker-2")
        assert (again.work_name, again.attempt) == ("1", 2)

        killed = await farm.change_job(job_id=2, verb="kill")
        assert (killed.changed, killed.job_status) == (1, "killed")
        noop = await farm.change_job(job_id=2, verb="unblock")
        assert (noop.changed, noop.message) == (
            0,
            "job 2 is killed; unblock applies to blocked jobs",
        )
        removed = await farm.change_job(job_id=2, verb="remove")
        assert (removed.changed, removed.job_status) == (1, "")
        gone = await farm.wait_jobs([2], wait_seconds=5)
        assert gone.done and gone.jobs[0].status == "removed"
        # Probe 177: ended and settled already, a timeout of all but nothing said not done
        # (its settle, timed by what was left of it, timed out before it could look).
        for almost_none in (1e-9, 1e-6):
            assert (await farm.wait_jobs([2], wait_seconds=almost_none)).done


async def test_a_complete_job_a_callback_retries_runs_and_ends_again(stack_warm: Stack) -> None:
    retry_once = {
        "triggers": "complete-job-self",
        "language": "python",
        "code": "qb.retry(qb.jobid())",
        "maximum": 1,
    }
    async with FarmClient(stack_warm.channel) as farm:
        submitted = await farm.submit_jobs(
            [{"name": "again", "user": "alice", "agenda": ["1"], "callbacks": [retry_once]}]
        )
        job_id = submitted.jobs[0].id
        await farm.change_work(job_id=job_id, work=["1"], change="complete")

        async def retried() -> bool:
            return any("retry by alice" in h.text for h in (await farm.get_job(job_id)).history)

        assert await eventually(retried, timeout_s=30)
        job = await farm.get_job(job_id)
        assert (job.job.status, agenda(job)) == ("pending", {"1": "pending"})

        second = await farm.change_work(job_id=job_id, work=["1"], change="complete")
        assert (second.changed, second.job_status) == (1, "complete")
        waited = await farm.wait_jobs([job_id], wait_seconds=30)
        assert waited.done and waited.jobs[0].status == "complete"


async def test_fail_self_ends_the_running_frame_and_its_done_work_callback_fires(
    stack_warm: Stack,
) -> None:
    callbacks = [
        # No language: qube, as RegisterJob takes it.
        {"triggers": "running-work-self-1", "code": "fail-self"},
        {"triggers": "done-work-self-*", "language": "python", "code": "print(qb.workid())"},
    ]
    async with FarmClient(stack_warm.channel) as farm:
        submitted = await farm.submit_jobs(
            [{"name": "fs", "user": "alice", "agenda": ["1", "2"], "callbacks": callbacks}]
        )
        job_id = submitted.jobs[0].id
        assert submitted.jobs[0].callbacks[0].language == "qube"
        await farm.change_work(job_id=job_id, work=["1"], change="start", host="w1")

        async def done_work_ran() -> bool:
            return (await farm.get_job(job_id)).callbacks[1].count == 1

        assert await eventually(done_work_ran, timeout_s=30)
        job = await farm.get_job(job_id)
        assert (job.job.status, agenda(job)) == ("failed", {"1": "failed", "2": "pending"})
        late = await farm.change_work(job_id=job_id, work=["1"], change="complete", host="w1")
        assert (late.changed, late.job_status) == (0, "failed")


async def test_a_frames_callbacks_act_on_the_instance_that_ran_it(stack_warm: Stack) -> None:
    callbacks = [
        {"triggers": "complete-work-self-1", "language": "python", "code": "print(qb.subid())"},
        # Qube's frame timelimit: fail the instance that runs the frame.
        {"triggers": "running-work-self-2", "language": "qube", "code": "fail-subjob-self"},
    ]
    async with FarmClient(stack_warm.channel) as farm:
        submitted = await farm.submit_jobs(
            [{"name": "inst", "user": "alice", "agenda": ["1", "2"], "callbacks": callbacks}]
        )
        job_id = submitted.jobs[0].id
        await farm.change_work(job_id=job_id, work=["1"], change="start", host="w1")
        await farm.change_work(job_id=job_id, work=["1"], change="complete", host="w1")
        await farm.change_work(job_id=job_id, work=["2"], change="start", host="w1")
        waited = await farm.wait_jobs([job_id], wait_seconds=30)
        assert waited.done and waited.jobs[0].status == "failed"
        job = await farm.get_job(job_id)
        assert agenda(job) == {"1": "complete", "2": "failed"}
        assert [(sub.id, sub.status) for sub in job.job.subjobs] == [(0, "failed")]

    runs = {r.callback_id: r for r in (await stack_warm.client.list_runs(job_id=job_id)).runs}
    printed = await stack_warm.client.get_run(runs[1].invocation_id)
    assert printed.result.stdout == "0\n"
    assert runs[2].outcome == Outcome.OUTCOME_SUCCEEDED


async def test_errors_name_what_is_wrong_and_what_exists(stack_warm: Stack) -> None:
    async with FarmClient(stack_warm.channel) as farm:
        await farm.submit_jobs(frame_by_frame())
        cases = [
            (farm.get_job(9), grpc.StatusCode.NOT_FOUND, "no job 9; the farm has jobs 1-2"),
            (
                farm.change_work(job_id=1, work=["4-6"], change="complete"),
                grpc.StatusCode.NOT_FOUND,
                "job 1: no work items in range '4-6'; its agenda is 1-3",
            ),
            (
                farm.change_work(job_id=1, work=["1"], change="kill", actor="mallory"),
                grpc.StatusCode.PERMISSION_DENIED,
                "mallory may not kill job 1 owned by alice",
            ),
            (
                farm.submit_jobs([{"name": "x", "agenda": ["1", "1"]}]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "job 1 of the submission: work name '1' appears twice",
            ),
            (farm.submit_jobs([]), grpc.StatusCode.INVALID_ARGUMENT, "nothing to submit"),
            (
                farm.submit_jobs([{"name": "x", "mailaddress": "<a@b>"}]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "job 1 of the submission: mailaddress '<a@b>': '<a@b>' is not a mail address",
            ),
            (
                farm.submit_jobs([{"name": "x", "mailaddress": "good@x.org a@b..c"}]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "mailaddress 'good@x.org a@b..c': 'a@b..c' is not a mail address",
            ),
            (
                farm.list_jobs(status="done"),
                grpc.StatusCode.INVALID_ARGUMENT,
                "expected one of pending",
            ),
            (farm.wait_jobs([42]), grpc.StatusCode.NOT_FOUND, "no job 42"),
            (
                farm.wait_jobs([1], wait_seconds=-1),
                grpc.StatusCode.INVALID_ARGUMENT,
                "timeout_seconds = -1",
            ),
            (
                farm.change_work(farm_pb2.ChangeWorkRequest(job_id=1, work=["1"])),
                grpc.StatusCode.INVALID_ARGUMENT,
                "change is required; expected one of start, complete, fail",
            ),
            (
                farm.change_work(
                    farm_pb2.ChangeWorkRequest(
                        job_id=1, work=["1"], change=farm_pb2.WorkChange.ValueType(42)
                    )
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "change 42 is not a WorkChange; expected one of start, complete, fail",
            ),
        ]
        for call, code, text in cases:
            with pytest.raises(ExecutorRpcError) as err:
                await call
            assert err.value.code == code, err.value
            assert text in err.value.details, err.value.details
        with pytest.raises(ValueError, match="unknown work change 'finish'"):
            await farm.change_work(job_id=1, work=["1"], change="finish")
        with pytest.raises(TypeError, match=r"^jobs\[1\]\.when: expected a JSON value"):
            await farm.submit_jobs([{"name": "ok"}, {"name": "x", "when": object()}])
        with pytest.raises(InvalidRequestError, match="verb is required"):
            await farm.change_job(farm_pb2.ChangeJobRequest(job_id=1))


async def test_the_farm_is_listed_by_health_and_reflection(stack_warm: Stack) -> None:
    assert await health_status(stack_warm.channel, FARM_SERVICE) == SERVING
    assert FARM_SERVICE in await reflected_services(stack_warm.channel)


async def reflected_services(channel: grpc.aio.Channel) -> set[str]:
    # The reflection stub is typed for sync channels; on an aio one the call streams.
    stub: Any = reflection_pb2_grpc.ServerReflectionStub(channel)  # type: ignore[arg-type]
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for answer in stub.ServerReflectionInfo(iter([request])):
        return {s.name for s in answer.list_services_response.service}
    raise AssertionError("no reflection answer")


async def test_no_farm_with_a_remote_supervisor(tmp_path: Path) -> None:
    endpoint = SupervisorEndpoint(tmp_path / "remote.db")
    await endpoint.start()
    try:
        settings = stack_settings(tmp_path / "data", supervisor=endpoint.address)
        async with running_stack(settings) as stack:
            stub = farm_pb2_grpc.FarmServiceStub(stack.channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListJobs(farm_pb2.ListJobsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert FARM_SERVICE not in await reflected_services(stack.channel)
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await health_status(stack.channel, FARM_SERVICE)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await endpoint.stop()
        endpoint.store.close()


async def test_the_farm_takes_the_executors_token(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data", auth_token="s3cret")
    async with running_stack(settings) as stack:
        async with FarmClient(stack.address) as anonymous:
            with pytest.raises(ExecutorRpcError) as err:
                await anonymous.list_jobs()
            assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        async with FarmClient(stack.address, token="s3cret") as farm:
            assert list((await farm.list_jobs()).jobs) == []


async def test_callbacks_flooding_their_output_leave_the_data_dir_within_history_max_bytes(
    tmp_path: Path,
) -> None:
    """A callback printing megabytes, run often, filled the data dir's disk (runs.db, supervisor.db)."""
    cap = 1 << 20
    settings = stack_settings(
        tmp_path / "data", history_max_bytes=cap, supervisor_max_message_bytes=256 << 10
    )
    async with running_stack(settings) as stack, FarmClient(stack.channel) as farm:
        (job,) = (await farm.submit_jobs([{"name": "flood", "user": "alice"}])).jobs
        ids = []
        for n in range(6):
            answer = await stack.client.execute_callback(
                language="python",
                code=f"print({n}, 'x' * 400_000)",
                job={"id": job.id, "user": "alice"},
            )
            assert answer.outcome == Outcome.OUTCOME_SUCCEEDED
            ids.append(answer.invocation_id)
        assert await outbox_drained(stack.client)
        listed = [run.invocation_id for run in (await stack.client.list_runs()).runs]
        newest = await stack.client.get_run(ids[-1])
        reported = [result["invocation_id"] for result in stack.supervisor.results()]
    assert listed == ids[-1 : -len(listed) - 1 : -1] and 1 <= len(listed) < 6
    assert newest.result.stdout.startswith("5 xxx") and len(newest.result.stdout) > 400_000
    assert reported == ids[-len(reported) :] and 1 <= len(reported) < 6
    data = tmp_path / "data"
    with contextlib.closing(sqlite3.connect(data / "runs.db")) as db:
        assert sqlite_bytes_in_use(db) <= cap
    with contextlib.closing(sqlite3.connect(data / "supervisor.db")) as db:
        (payloads,) = db.execute(
            "SELECT total(length(CAST(payload AS BLOB))) FROM results"
        ).fetchone()
        assert payloads <= cap


async def test_a_result_with_a_large_code_reaches_a_supervisor_at_the_smallest_limit(
    tmp_path: Path,
) -> None:
    # Probe 134 F2: the report was 400 KB, refused RESOURCE_EXHAUSTED until set aside.
    settings = stack_settings(tmp_path / "data", supervisor_max_message_bytes=256 << 10)
    code = "# " + "c" * 400_000 + "\nprint('small')\n"
    async with running_stack(settings) as stack, FarmClient(stack.channel) as farm:
        (job,) = (await farm.submit_jobs([{"name": "big code", "user": "alice"}])).jobs
        answer = await stack.client.execute_callback(
            language="python", code=code, job={"id": job.id, "user": "alice"}
        )
        assert answer.outcome == Outcome.OUTCOME_SUCCEEDED

        def reported() -> list[dict[str, Any]]:
            return [
                r for r in stack.supervisor.results() if r["invocation_id"] == answer.invocation_id
            ]

        assert await eventually(lambda: bool(reported()), timeout_s=15)
        payload = reported()[0]["payload"]
    assert payload["stdout"] == "small\n"
    assert payload["callback"]["code"].startswith("# ccc")
    assert payload["callback"]["code"].endswith(" more bytes]")


async def test_the_embedded_supervisor_keeps_results_within_the_historys_bounds(
    tmp_path: Path,
) -> None:
    """Before, supervisor.db kept every result with its output for ever (110 MB/min busy)."""
    settings = stack_settings(tmp_path / "data", history_max_runs=3)
    async with running_stack(settings) as stack, FarmClient(stack.channel) as farm:
        (job,) = (await farm.submit_jobs([{"name": "reported", "user": "alice"}])).jobs
        for n in range(5):
            await stack.client.execute_callback(
                language="python", code=f"print({n})", job={"id": job.id, "user": "alice"}
            )
        assert await outbox_drained(stack.client)
        kept = stack.supervisor.results()
        history = (await farm.get_job(job.id)).history
    assert len(kept) == 3
    assert sum("result of invocation" in line.text for line in history) == 5


async def test_a_callback_reads_times_as_qubes_client_gives_them(stack_warm: Stack) -> None:
    # Unix seconds; a time not reached yet is Qube's time 0 (qb.QB_TIME_EPOCH_OFFSET).
    code = (
        "j = qb.jobinfo()[0]\n"
        "print(j['timestart'], j['timecomplete'], qb.QB_TIME_EPOCH_OFFSET)\n"
        "print(j['timesubmit'] > qb.QB_TIME_EPOCH_OFFSET)\n"
    )
    job = stack_warm.supervisor.submit([{"name": "t", "user": "bob", "agenda": ["1"]}])[0]
    assert (job["timestart"], job["timecomplete"]) == (946702800, 946702800)

    answer = await stack_warm.client.execute_callback(language="python", code=code, job=job)

    assert answer.outcome == Outcome.OUTCOME_SUCCEEDED, answer.failure
    assert answer.stdout == "946702800 946702800 946702800\nTrue\n"


async def test_the_wire_says_0_for_an_unset_time_and_a_callback_reads_qubes_time_0(
    stack_warm: Stack,
) -> None:
    # types.proto: "Unix seconds; 0 when unset". A client written from it read a pending
    # job's 946702800 as started and completed on 2000-01-01.
    reads = (
        "j = qb.jobinfo()[0]\nprint(j['timestart'] > qb.QB_TIME_EPOCH_OFFSET, j['timecomplete'])\n"
    )
    callback = {"triggers": "running-job-self", "language": "python", "code": reads}
    async with FarmClient(stack_warm.channel) as farm:
        (submitted,) = (
            await farm.submit_jobs(
                [{"name": "t", "user": "bob", "agenda": ["1"], "callbacks": [callback]}]
            )
        ).jobs
        listed = (await farm.list_jobs()).jobs[0]
        shown = (await farm.get_job(submitted.id)).job
        for job in (submitted, listed, shown):
            assert (job.timestart, job.timecomplete) == (0, 0)
            assert job.timesubmit > 946702800
        await farm.change_work(job_id=submitted.id, work=["1"], change="start")

        async def ran() -> bool:
            return bool((await stack_warm.client.list_runs(job_id=submitted.id)).runs)

        # Its callback has run (while the job is running) before the job completes.
        assert await eventually(ran, timeout_s=30)
        await farm.change_work(job_id=submitted.id, work=["1"], change="complete")
        assert (await farm.wait_jobs([submitted.id], wait_seconds=30)).done
        ended = (await farm.get_job(submitted.id)).job
    assert ended.timesubmit <= ended.timestart <= ended.timecomplete
    assert ended.timestart > 946702800
    (run,) = (await stack_warm.client.list_runs(job_id=submitted.id)).runs
    # Started, not complete: the callback's jobinfo says Qube's time 0 for the latter.
    assert (await stack_warm.client.get_run(run.invocation_id)).result.stdout == "True 946702800\n"


async def test_a_stop_ends_an_open_wait_at_once_to_be_asked_again(tmp_path: Path) -> None:
    # Probe 147: an open WaitJobs held every stop for the server's whole grace (5 s), then
    # was cut off ("Cancelling all calls"), as a health Watch had until stops ended it.
    running = await server.start(stack_settings(tmp_path / "data"))
    stopping: asyncio.Task[None] | None = None
    try:
        async with FarmClient(f"127.0.0.1:{running.port}") as farm:
            await farm.submit_jobs([{"name": "frame", "agenda": ["1"]}])
            waiting = asyncio.create_task(farm.wait_jobs([1], wait_seconds=60))
            await asyncio.sleep(0.5)  # in the executor's hands: the frame never ends
            assert not waiting.done()
            started = time.monotonic()
            stopping = asyncio.create_task(running.stop())
            with pytest.raises(RetryableError) as ended:
                await waiting
            await stopping
            took = time.monotonic() - started
    finally:
        await (running.stop() if stopping is None else stopping)
    assert (ended.value.code, ended.value.details) == (grpc.StatusCode.UNAVAILABLE, STOPPING)
    assert took < server.STOP_GRACE_S / 2, took
