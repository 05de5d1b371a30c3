"""Run history, metrics, callback logs and the `cbexec runs` / `cbexec run` commands, over gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import grpc
import pytest

from executor import server
from executor.cli.runs import format_run
from executor.runs.callback_log import log_path
from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.waiting import eventually, outbox_drained
from tests.unit.test_history import invocation, result

pytestmark = pytest.mark.service

FAIL = "print('about to fail')\nraise ValueError('bad frame range')"


def ids(response: executor_pb2.ListRunsResponse) -> list[str]:
    return [r.invocation_id for r in response.runs]


async def run_py(
    stack: Stack, code: str, job_id: int, **kwargs: Any
) -> executor_pb2.ExecuteResponse:
    return await stack.client.execute_callback(
        language="python", code=code, job={"id": job_id, "user": "alice"}, **kwargs
    )


async def cbexec(
    *argv: str, timeout_s: float = 60.0, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the cbexec command as a real process (the server shares this event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "executor",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "CBEXEC_ADDRESS": "", "CBEXEC_AUTH_TOKEN": "", **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_list_runs_filters_newest_first(stack: Stack) -> None:
    ok_a = await run_py(
        stack,
        "print('a')",
        101,
        event={"name": "complete", "type": "job", "context": "self"},
        work_name="7",
    )
    bad_a = await run_py(stack, FAIL, 101)
    ok_b = await run_py(stack, "print('b')", 202)

    everything = await stack.client.list_runs()
    assert ids(everything) == [ok_b.invocation_id, bad_a.invocation_id, ok_a.invocation_id]
    first = everything.runs[2]
    assert (first.job_id, first.language, first.work_name) == (101, "python", "7")
    assert (first.event.name, first.event.type, first.event.context) == ("complete", "job", "101")
    assert first.outcome == executor_pb2.OUTCOME_SUCCEEDED
    assert first.usage.wall_seconds > 0 and first.usage.peak_rss_bytes > 0
    assert abs(first.started_at - time.time()) < 60
    assert not first.HasField("result"), "ListRuns leaves the output to GetRun"

    by_job = await stack.client.list_runs(executor_pb2.ListRunsRequest(job_id=101))
    assert ids(by_job) == [bad_a.invocation_id, ok_a.invocation_id]
    failed = await stack.client.list_runs(
        executor_pb2.ListRunsRequest(outcome=executor_pb2.OUTCOME_FAILED)
    )
    assert ids(failed) == [bad_a.invocation_id]
    assert ids(await stack.client.list_runs(executor_pb2.ListRunsRequest(limit=1))) == [
        ok_b.invocation_id
    ]
    future = executor_pb2.ListRunsRequest(since=time.time() + 3600)
    assert ids(await stack.client.list_runs(future)) == []


async def test_get_run_has_the_whole_result(stack: Stack) -> None:
    bad = await run_py(stack, FAIL, 303)
    run = await stack.client.get_run(bad.invocation_id)
    assert run.job_id == 303
    assert run.result.stdout == "about to fail\n"
    assert run.result.outcome == executor_pb2.OUTCOME_FAILED
    assert "bad frame range" in run.result.failure.message
    with pytest.raises(ExecutorRpcError) as refused:
        await stack.client.get_run("no-such-run")
    assert refused.value.code == grpc.StatusCode.NOT_FOUND


async def test_an_invocation_id_of_another_run_is_refused_a_retry_reruns(stack: Stack) -> None:
    await stack.client.register_job(
        {
            "id": 7701,
            "user": "alice",
            "callbacks": [
                {"triggers": "complete-job-self", "language": "python", "code": "print('fired')"}
            ],
        }
    )
    reply = await stack.client.publish_event(name="complete", type="job", job_id=7701, wait=True)
    fired_id = reply.fired[0].invocation_id

    # Before, this replaced the fired run's record with job 1's (the supervisor kept the first).
    with pytest.raises(ExecutorRpcError) as refused:
        await run_py(stack, "raise SystemExit(3)", 1, invocation_id=fired_id)
    assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert f"invocation_id {fired_id!r} is a fired callback's run (job 7701, " in (
        refused.value.details
    )
    kept = await stack.client.get_run(fired_id)
    assert (kept.job_id, kept.result.stdout) == (7701, "fired\n")

    first = await run_py(stack, "print('try 1')", 1, invocation_id="retry-1")
    again = await run_py(stack, "print('try 2')", 1, invocation_id="retry-1")
    assert first.invocation_id == again.invocation_id == "retry-1"
    assert (await stack.client.get_run("retry-1")).result.stdout == "try 2\n"
    with pytest.raises(ExecutorRpcError) as other_job:
        await run_py(stack, "print('try 3')", 2, invocation_id="retry-1")
    assert other_job.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert "invocation_id 'retry-1' is already recorded for another run (job 1, " in (
        other_job.value.details
    )


async def test_an_execute_naming_a_fired_runs_id_and_identity_is_refused_its_record_kept(
    stack_warm: Stack,
) -> None:
    # Before, an Execute that matched an ended fired run's job, callback id, language and
    # trigger text was taken for its repeat: it ran its own code and replaced the fired
    # run's record, in the history and at the supervisor. The engine made that id: no
    # caller's retry sends it.
    stack = stack_warm
    await stack.client.register_job(
        {
            "id": 7703,
            "user": "alice",
            "callbacks": [
                {"triggers": "complete-job-self", "language": "python", "code": "print('fired')"}
            ],
        }
    )
    reply = await stack.client.publish_event(name="complete", type="job", job_id=7703, wait=True)
    fired = reply.fired[0]
    assert await eventually(lambda: stack.supervisor.result(fired.invocation_id) is not None)

    def execute(callback_id: int) -> executor_pb2.ExecuteRequest:
        return executor_pb2.ExecuteRequest(
            invocation_id=fired.invocation_id,
            callback=types_pb2.Callback(
                id=callback_id,
                triggers=fired.triggers,
                language=fired.language.upper(),  # any case
                code="print('other code')",
            ),
            context=executor_pb2.JobContext(job=types_pb2.Job(id=7703, user="alice")),
        )

    for callback_id in (fired.callback_id, fired.callback_id + 1):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.stub.Execute(execute(callback_id))
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert refused.value.details() == (
            f"invocation_id {fired.invocation_id!r} is a fired callback's run (job 7703,"
            f" callback {fired.callback_id} (python, triggers 'complete-job-self'));"
            " an Execute cannot repeat it; choose a new invocation_id"
        )
    assert (await stack.client.get_run(fired.invocation_id)).result.stdout == "fired\n"
    stored = stack.supervisor.result(fired.invocation_id)
    assert stored is not None and stored["payload"].get("stdout") == "fired\n"

    # A repeat of an Execute's run is still a retry: it runs again and replaces the record.
    executed = execute(fired.callback_id)
    executed.invocation_id = "execute-7703"
    await stack.stub.Execute(executed)
    executed.callback.code = "print('retried')"
    repeat = await stack.stub.Execute(executed)
    assert (repeat.outcome, repeat.stdout) == (executor_pb2.OUTCOME_SUCCEEDED, "retried\n")
    assert (await stack.client.get_run("execute-7703")).result.stdout == "retried\n"


async def test_the_invocation_id_of_a_fired_callback_not_yet_run_is_refused(
    tmp_path: Path,
) -> None:
    # Found by a re-test: an Execute that took a queued firing's id ran first, and the
    # supervisor then took the fired callback's actions for repeats of its own.
    async with running_stack(stack_settings(tmp_path / "data", max_concurrent=1)) as stack:
        await stack.client.register_job(
            {
                "id": 7702,
                "user": "alice",
                "callbacks": [
                    {
                        "triggers": "complete-work-self-*",
                        "language": "python",
                        "code": "import time; time.sleep(1.5)",
                    }
                ],
            }
        )
        fired = [
            await stack.client.publish_event(
                name="complete", type="work", job_id=7702, work_name=str(n)
            )
            for n in (1, 2)
        ]
        waiting_id = fired[1].fired[0].invocation_id  # behind the first, in the one slot
        with pytest.raises(ExecutorRpcError) as refused:
            await run_py(stack, "print('intruder')", 1, invocation_id=waiting_id)
        assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert "is a fired callback's, which has not run to its end yet" in refused.value.details

        async def ran() -> bool:
            runs = await stack.client.list_runs(executor_pb2.ListRunsRequest(job_id=7702))
            return waiting_id in {r.invocation_id for r in runs.runs}

        assert await eventually(ran, timeout_s=30)
        assert (await stack.client.get_run(waiting_id)).job_id == 7702


async def test_fired_callbacks_waiting_for_their_turn_show_in_firings_queued(
    tmp_path: Path,
) -> None:
    # Before, 8 firings on 4 slots showed as 4 active and nothing queued anywhere.
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        slots = stack.settings.max_concurrent
        await stack.client.register_job(
            {
                "id": 7801,
                "user": "alice",
                "callbacks": [
                    {
                        "triggers": "complete-work-self-*",
                        "language": "python",
                        "code": "import time; time.sleep(60)",
                    }
                ],
            }
        )
        for frame in range(2 * slots):
            await stack.client.publish_event(
                name="complete", type="work", job_id=7801, work_name=str(frame)
            )

        async def backlog_shows() -> bool:
            m = await stack.client.get_metrics()
            return (m.active_children, m.queue_depth, m.firings_queued) == (slots, 0, 2 * slots)

        assert await eventually(backlog_shows)


async def test_results_reach_the_supervisor_and_the_callback_log(stack: Stack) -> None:
    done = await run_py(stack, "print('frame 1 ok')", 5042)
    assert await eventually(lambda: stack.supervisor.result(done.invocation_id) is not None)
    stored = stack.supervisor.result(done.invocation_id)
    assert stored is not None and stored["job_id"] == 5042
    cb_file = log_path(stack.settings.data_dir / "logs", 5042)
    entry = f"outcome=SUCCEEDED invocation={done.invocation_id}"
    # Written by the bookkeeping thread, after the answer (not in step with the delivery).
    assert await eventually(lambda: cb_file.exists() and entry in cb_file.read_text())
    text = cb_file.read_text()
    assert "frame 1 ok\n" in text
    assert await outbox_drained(stack.client)


async def test_a_cut_callback_log_entry_keeps_why_the_callback_failed(tmp_path: Path) -> None:
    # Found by a tester: past callback_log_max_bytes the entry kept the head of stdout
    # and lost stderr, the failure line and the traceback.
    code = (
        "import sys\n"
        "print('X' * 6000)\n"
        "print('warning: cache cold', file=sys.stderr)\n"
        "raise RuntimeError('boom')\n"
    )
    settings = stack_settings(tmp_path / "data", callback_log_max_bytes=4096)
    async with running_stack(settings) as stack:
        done = await run_py(stack, code, 6100)
        cb_file = log_path(settings.data_dir / "logs", 6100)
        assert await eventually(lambda: cb_file.exists() and cb_file.stat().st_size > 0)
        text = cb_file.read_text()
    assert len(text.encode()) <= 4096
    lines = text.splitlines()
    assert lines[0].startswith("=== ") and f"invocation={done.invocation_id}" in lines[0]
    assert lines[2].startswith("[... ") and lines[2].endswith(" bytes of stdout left out ...]")
    assert "--- stderr" in lines and "warning: cache cold" in lines
    assert "--- failure: RuntimeError: boom" in lines
    assert lines[-1] == "RuntimeError: boom", "the traceback's end"


async def test_the_callback_logs_of_many_jobs_keep_within_callback_log_total_max_bytes(
    tmp_path: Path,
) -> None:
    # Probe 125: 60 jobs each printing 1 MiB left 121 MB of .cb logs beside a history held
    # to 1 MiB; nothing ever removed a job's log.
    bound = 1 << 20
    settings = stack_settings(tmp_path / "data", callback_log_total_max_bytes=bound)
    code = "import sys\nsys.stdout.write('o' * 300_000); sys.stderr.write('e' * 100_000)"
    async with running_stack(settings) as stack:
        for job_id in range(7001, 7011):
            done = await run_py(stack, code, job_id)
            assert done.outcome == executor_pb2.OUTCOME_SUCCEEDED
        await stack.client.list_runs()  # waits for the bookkeeping thread
        logs = settings.data_dir / "logs"
        kept = sorted(int(p.name) for p in (logs / "job" / "7000").iterdir())
        on_disk = sum(p.stat().st_size for p in logs.rglob("*.cb*"))
    assert kept == [7009, 7010], "the newest as many as fit, each whole"
    assert on_disk <= bound


async def test_metrics_count_outcomes_latencies_and_gauges(stack: Stack) -> None:
    await run_py(stack, "pass", 1)
    await run_py(stack, FAIL, 1)
    await run_py(stack, "pass", 1)
    # A run answered at its child's end mark holds its slot until the child is reaped.
    assert await eventually(lambda: stack.running.dispatcher.active == 0)
    slow = asyncio.create_task(run_py(stack, "import time; time.sleep(1.5)", 1))
    assert await eventually(lambda: stack.running.dispatcher.active == 1)
    metrics = await stack.client.get_metrics()
    assert dict(metrics.runs_by_outcome) == {"SUCCEEDED": 2, "FAILED": 1}
    assert metrics.active_children == 1
    assert metrics.queue_depth == 0
    wall = metrics.run_wall_seconds
    assert wall.total == 3 and sum(wall.counts) == 3
    assert len(wall.counts) == len(wall.bounds_seconds) + 1
    assert wall.sum_seconds > 0
    assert metrics.queue_seconds.total == 3
    await slow
    after = await stack.client.get_metrics()
    assert after.runs_by_outcome["SUCCEEDED"] == 3

    async def idle() -> bool:
        return (await stack.client.get_metrics()).active_children == 0

    assert await eventually(idle)


@pytest.fixture
async def one_slot(tmp_path: Path) -> AsyncIterator[ExecutorClient]:
    """An executor with one slot and no queue: the second concurrent run is refused."""
    running = await server.start(stack_settings(tmp_path / "data", max_concurrent=1, max_queue=0))
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            yield client
    finally:
        await running.stop()


async def test_metrics_count_refusals_at_capacity(one_slot: ExecutorClient) -> None:
    job = {"id": 9}
    slow = asyncio.create_task(
        one_slot.execute_callback(language="python", code="import time; time.sleep(1)", job=job)
    )
    for _ in range(200):
        if (await one_slot.get_metrics()).active_children == 1:
            break
        await asyncio.sleep(0.02)
    with pytest.raises(ExecutorRpcError) as refused:
        await one_slot.execute_callback(language="python", code="pass", job=job)
    assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    await slow
    metrics = await one_slot.get_metrics()
    assert metrics.rejected_at_capacity == 1
    assert dict(metrics.runs_by_outcome) == {"SUCCEEDED": 1}


async def test_metrics_count_registrations_refused_for_the_trigger_stores_room(
    tmp_path: Path,
) -> None:
    # Every RESOURCE_EXHAUSTED counts, not only Execute's at the queue (probe 175, F1).
    settings = stack_settings(tmp_path / "data", triggers_max_bytes=1 << 20)
    async with running_stack(settings) as stack:
        code = "# " + "x" * 300_000
        codes = []
        for job_id in range(1, 10):
            job = {
                "id": job_id,
                "name": "big",
                "callbacks": [{"triggers": "done-job-self", "language": "python", "code": code}],
            }
            try:
                await stack.client.register_job(job)
            except ExecutorRpcError as refused:
                codes.append(refused.code)
        assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        refusals = len(codes)
        assert refusals >= 2, "triggers.db took every job"
        assert (await stack.client.get_metrics()).rejected_at_capacity == refusals


@pytest.fixture
async def one_slot_queued(tmp_path: Path) -> AsyncIterator[ExecutorClient]:
    """An executor with one slot and a queue: a second concurrent run waits for its slot."""
    running = await server.start(stack_settings(tmp_path / "data", max_concurrent=1, max_queue=4))
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            yield client
    finally:
        await running.stop()


async def test_get_run_of_a_run_in_progress_says_so(one_slot_queued: ExecutorClient) -> None:
    client = one_slot_queued
    slow = "import time; time.sleep(4)"

    async def metric(name: str, value: int) -> bool:
        return bool(getattr(await client.get_metrics(), name) == value)

    def execute(invocation_id: str, code: str) -> asyncio.Task[executor_pb2.ExecuteResponse]:
        return asyncio.create_task(
            client.execute_callback(
                language="python", code=code, job={"id": 9}, invocation_id=invocation_id
            )
        )

    async def refusal(invocation_id: str) -> str:
        with pytest.raises(ExecutorRpcError) as refused:
            await client.get_run(invocation_id)
        assert refused.value.code == grpc.StatusCode.NOT_FOUND
        return refused.value.details

    running = execute("slow-run", slow)
    assert await eventually(lambda: metric("active_children", 1))
    queued = execute("queued-run", "print('second')")
    assert await eventually(lambda: metric("queue_depth", 1))
    assert await refusal("slow-run") == (
        "run 'slow-run' is in progress (running) at this executor: its record is made when it ends"
    )
    assert await refusal("queued-run") == (
        "run 'queued-run' is in progress (waiting for a slot) at this executor: its record"
        " is made when it ends"
    )
    assert "unknown, or pruned" in await refusal("no-such-run")
    await asyncio.gather(running, queued)

    # A repeat in progress: the record shown is the previous run's, and says so.
    repeat = execute("queued-run", slow)
    assert await eventually(lambda: metric("active_children", 1))
    previous = await client.get_run("queued-run")
    assert previous.result.stdout == "second\n" and previous.newer_run_in_progress
    assert "\nnewer run: in progress (this record is the previous run's;" in format_run(previous)
    listed = {run.invocation_id: run for run in (await client.list_runs()).runs}
    assert listed["queued-run"].newer_run_in_progress
    assert not listed["slow-run"].newer_run_in_progress
    await repeat
    assert not (await client.get_run("queued-run")).newer_run_in_progress


async def test_an_execute_whose_deadline_passed_while_queued_is_no_run(
    one_slot_queued: ExecutorClient,
) -> None:
    client = one_slot_queued
    running = asyncio.create_task(
        client.execute_callback(language="python", code="import time; time.sleep(3)", job={"id": 9})
    )

    async def active() -> bool:
        return (await client.get_metrics()).active_children == 1

    assert await eventually(active)
    with pytest.raises(ExecutorRpcError) as late:
        await client.execute_callback(
            language="python",
            code="print('ran')",
            job={"id": 9},
            invocation_id="queued-late",
            timeout=0.5,
        )
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    await running

    # It never started: neither recorded nor counted (nor reported), as at a stop.
    with pytest.raises(ExecutorRpcError) as unknown:
        await client.get_run("queued-late")
    assert "unknown, or pruned" in unknown.value.details
    assert dict((await client.get_metrics()).runs_by_outcome) == {"SUCCEEDED": 1}
    # So a resend under the id runs as a first attempt.
    again = await client.execute_callback(
        language="python", code="print('ran')", job={"id": 9}, invocation_id="queued-late"
    )
    assert again.stdout == "ran\n"


async def test_cbexec_runs_lists_filters_and_shows(stack: Stack) -> None:
    ok = await run_py(stack, "print('hello from 77')", 77)
    bad = await run_py(stack, FAIL, 78)
    code, out, err = await cbexec("runs", "--address", stack.address)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:8] == [
        "STARTED",
        "INVOCATION",
        "JOB",
        "CB",
        "TRIGGER",
        "LANG",
        "POLICY",
        "OUTCOME",
    ]
    assert [row.split()[1] for row in rows] == [bad.invocation_id, ok.invocation_id]
    assert all(" job " in row for row in rows), "Execute requests run under the job policy"

    code, out, _ = await cbexec(
        "runs", "--address", stack.address, "--outcome", "failed", "--since", "1h"
    )
    assert code == 0
    assert bad.invocation_id in out and ok.invocation_id not in out

    code, out, _ = await cbexec("runs", "--address", stack.address, "--job", "77", "--json")
    assert code == 0
    assert [json.loads(line)["invocation_id"] for line in out.splitlines()] == [ok.invocation_id]

    code, out, _ = await cbexec("runs", "show", ok.invocation_id, "--address", stack.address)
    assert code == 0
    assert "outcome: SUCCEEDED" in out and "hello from 77" in out
    assert "policy: job" in out

    code, _, err = await cbexec("runs", "--address", stack.address, "show", "nope")
    assert code == 3 and "NOT_FOUND" in err


async def test_cbexec_run_through_a_running_executor(stack: Stack, tmp_path: Path) -> None:
    job = stack.supervisor.submit([{"name": "shot", "user": "alice", "status": "blocked"}])[0]
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    script = tmp_path / "unblock.py"
    script.write_text("print('unblocking', qb.jobid())\nqb.unblock(qb.jobid())\n")
    code, out, err = await cbexec(
        "run",
        str(script),
        "--job",
        str(job_file),
        "--event",
        "complete-job-self",
        "--address",
        stack.address,
    )
    assert code == 0, out + err
    assert "outcome: SUCCEEDED" in out
    assert f"unblock {job['id']}: ok" in out
    assert f"unblocking {job['id']}" in out
    assert stack.supervisor.job(job["id"])["status"] == "pending"

    code, out, _ = await cbexec(
        "run",
        "--code",
        FAIL,
        "--lang",
        "python",
        "--job",
        str(job_file),
        "--address",
        stack.address,
    )
    assert code == 1
    assert "outcome: FAILED" in out and "bad frame range" in out


async def test_cbexec_run_drops_a_qcb_files_byte_order_mark(
    stack_warm: Stack, tmp_path: Path
) -> None:
    # Probe 99: '\ufeffunblock-self' was an unknown code string.
    job = stack_warm.supervisor.submit([{"name": "bom", "user": "alice", "status": "blocked"}])[0]
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    script = tmp_path / "unblock.qcb"
    script.write_bytes("\ufeff# saved by Windows Notepad\r\nunblock-self\r\n".encode())
    code, out, err = await cbexec(
        "run", str(script), "--job", str(job_file), "--address", stack_warm.address
    )
    assert code == 0, out + err
    assert "outcome: SUCCEEDED" in out
    assert stack_warm.supervisor.job(job["id"])["status"] == "pending"


async def run_embedded(
    stack: Stack, tmp_path: Path, job: dict[str, Any], *args: str
) -> tuple[int, str, str]:
    """``cbexec run --embedded --lang python --job <job> ARGS``: exit code, stdout, stderr.

    A service runs on this host (``stack``, holding the suite's uid range): the throwaway
    executor takes the next free range instead of refusing to start.
    """
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    env = {"CBEXEC_SANDBOX_UID_BASE": str(stack.settings.sandbox_uid_base)}
    return await cbexec(
        "run", "--embedded", "--lang", "python", "--job", str(job_file), *args, env=env
    )


async def test_cbexec_run_embedded(stack: Stack, tmp_path: Path) -> None:
    job = {"id": 4000, "name": "x", "user": "bob", "status": "running"}
    code, out, err = await run_embedded(
        stack, tmp_path, job, "--code", "print(qb.jobinfo('-id', qb.jobid())[0]['name'])"
    )
    assert code == 0, out + err
    assert "job 4000 held as given (running)" in out
    assert "\nx\n" in out


ENDED_JOB: Final = {
    "id": 12,
    "name": "emb",
    "user": "alice",
    "status": "failed",
    "agenda": [
        {"name": "1", "status": "complete", "subid": 0, "host": "node7", "count": 1},
        {"name": "2", "status": "failed", "subid": 0, "host": "node7", "count": 2},
    ],
    "subjobs": [{"id": 0, "status": "failed", "host": "node7"}],
    "todotally": {"complete": 1, "failed": 1},
}
SHOW_JOB: Final = """\
info = qb.jobinfo("-id", qb.jobid())[0]
print(qb.jobid(), qb.jobstatus(qb.jobid()), info["status"])
print([(w["name"], w["status"], w["count"]) for w in info["agenda"]])
"""


async def test_cbexec_run_embedded_runs_in_the_job_as_jobinfo_gave_it(
    stack: Stack, tmp_path: Path
) -> None:
    # An ended job (a failed-job-self or done-work-self-* callback is tried on one) was
    # refused as a submission ("status must be 'pending' or 'blocked'"), and an accepted
    # one became a pending job 1.
    code, out, err = await run_embedded(
        stack, tmp_path, ENDED_JOB, "--event", "failed-job-self", "--code", SHOW_JOB
    )
    assert code == 0, out + err
    assert "job 12 held as given (failed)" in out
    assert "\n12 failed failed\n[('1', 'complete', 1), ('2', 'failed', 2)]\n" in out


async def test_cbexec_run_embedded_carries_a_job_field_named_extra(
    stack: Stack, tmp_path: Path
) -> None:
    # A job file's "extra" was dropped on the way to the callback, while "cluster" came.
    job = {"id": 4001, "user": "bob", "extra": {"shot": "sq10"}, "cluster": "/render"}
    show = "info = qb.jobinfo()[0]\nprint(info.get('extra'), info.get('cluster'))"
    code, out, err = await run_embedded(stack, tmp_path, job, "--code", show)
    assert code == 0, out + err
    assert "\n{'shot': 'sq10'} /render\n" in out, out


async def test_cbexec_run_embedded_names_a_malformed_field(stack: Stack, tmp_path: Path) -> None:
    code, out, err = await run_embedded(
        stack,
        tmp_path,
        {**ENDED_JOB, "agenda": [{"name": "1", "status": "dying"}]},
        "--code",
        "pass",
    )
    assert code == 2, out + err
    assert err.startswith("cbexec: --job: job 12, work 1: status must be one of pending, ")
    assert "got 'dying'" in err and "submission" not in err and "Traceback" not in err


async def test_cbexec_run_embedded_refuses_a_job_whose_trigger_does_not_parse(
    stack: Stack, tmp_path: Path
) -> None:
    callback = {"triggers": "complete-jb-self", "language": "python", "code": "pass"}
    code, out, err = await run_embedded(
        stack,
        tmp_path,
        {"id": 4000, "name": "x", "callbacks": [callback]},
        "--code",
        "pass",
    )
    assert code == 2, out + err
    assert "unknown event type 'jb'" in err and "Traceback" not in err


@pytest.mark.parametrize("embedded", [True, False], ids=["embedded", "against-an-executor"])
async def test_cbexec_run_refuses_a_job_file_that_is_not_utf8_in_one_line(
    stack_warm: Stack, tmp_path: Path, embedded: bool
) -> None:
    # A UnicodeDecodeError traceback, exit 1, on either path.
    job_file = tmp_path / "job.json"
    job_file.write_bytes(b"\xff\xfe{}")
    where = ["--embedded"] if embedded else ["--address", stack_warm.address]
    env = {"CBEXEC_SANDBOX_UID_BASE": str(stack_warm.settings.sandbox_uid_base)}

    code, out, err = await cbexec(
        "run", "--code", "pass", "--lang", "python", "--job", str(job_file), *where, env=env
    )

    assert code == 2, out + err
    assert err == (
        f"cbexec: --job: {job_file} is not UTF-8 text: 'utf-8' codec can't decode byte 0xff "
        "in position 0: invalid start byte\n"
    )


async def test_cbexec_run_embedded_names_a_field_that_is_not_utf8(
    stack_warm: Stack, tmp_path: Path
) -> None:
    # JSON's "\ud800" is a lone surrogate: a UnicodeEncodeError traceback from the
    # supervisor's store, exit 1 (a running executor's path refused it by name already).
    job = {"id": 3, "name": "a\ud800b", "user": "alice"}

    code, out, err = await run_embedded(stack_warm, tmp_path, job, "--code", "pass")

    assert code == 2, out + err
    assert err == (
        "cbexec: --job: job 3: name is not UTF-8 text: 'utf-8' codec can't encode character "
        "'\\ud800' in position 1: surrogates not allowed\n"
    )


async def test_cbexec_run_refuses_a_callback_file_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text('{"id": 3}')
    (tmp_path / "hook.py").write_bytes(b"print('caf\xe9')\n")  # Latin-1

    code, out, err = await cbexec(
        "run",
        str(tmp_path / "hook.py"),
        "--job",
        str(tmp_path / "job.json"),
        "--address",
        "127.0.0.1:1",
    )

    assert code == 2, out + err
    assert err.startswith(f"cbexec: FILE: {tmp_path / 'hook.py'} is not UTF-8 text: ")
    assert len(err.splitlines()) == 1, err


async def test_cbexec_run_usage_errors(tmp_path: Path) -> None:
    code, _, err = await cbexec(
        "run",
        "--code",
        "pass",
        "--lang",
        "python",
        "--job",
        str(tmp_path / "missing.json"),
        "--address",
        "127.0.0.1:1",
    )
    assert code == 2 and "missing.json" in err
    code, _, err = await cbexec("run", "--address", "127.0.0.1:1", "--job", "x.json")
    assert code == 2 and "FILE or with --code" in err


TERMINAL_TRICKS = (
    "import sys\n"
    "print('\\x1b]0;owned\\x07\\x1b]52;c;ZWNobyBoaQ==\\x07\\x1b[2Jafter clear')\n"
    "sys.stderr.write('err\\x1b[31m red\\n')\n"
    "raise ValueError('\\x1b[2K\\rFAKE: OUTCOME_SUCCEEDED')\n"
)


async def test_cbexec_prints_a_callbacks_control_characters_as_escapes(
    stack_warm: Stack, tmp_path: Path
) -> None:
    # Raw, they set the terminal's title, wrote its clipboard, cleared it, and made the
    # failure line read "FAKE: OUTCOME_SUCCEEDED".
    tricky = await run_py(stack_warm, TERMINAL_TRICKS, 79)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"id": 79, "user": "alice"}))
    shown = [
        await cbexec("runs", "show", tricky.invocation_id, "--address", stack_warm.address),
        await cbexec(
            "run",
            "--code",
            TERMINAL_TRICKS,
            "--lang",
            "python",
            "--job",
            str(job_file),
            "--address",
            stack_warm.address,
        ),
    ]
    for code, out, err in shown:
        assert code == 1 or (code == 0 and "outcome: FAILED" in out), err
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out
        assert r"\x1b]0;owned\x07\x1b]52;c;ZWNobyBoaQ==\x07\x1b[2Jafter clear" in out
        assert r"failure: ValueError: \x1b[2K\x0dFAKE: OUTCOME_SUCCEEDED" in out
        assert r"err\x1b[31m red" in out

    code, out, _ = await cbexec("runs", "--address", stack_warm.address, "--job", "79", "--json")
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]  # JSON still, escapes its own
    assert listed[-1]["invocation_id"] == tricky.invocation_id


FORGER = (
    "import sys\n"
    "print('bold \\x1b[1m, and typed: \\\\x1b')\n"
    "print('--- stderr: (empty)')\n"
    "sys.stderr.write('real err\\n')\n"
    "sys.exit('boom\\noutcome: SUCCEEDED\\nexit: code 0')\n"
)


async def test_runs_show_keeps_the_callbacks_lines_from_passing_for_its_own(
    stack_warm: Stack,
) -> None:
    # Probe 134 F5: stdout printed a "--- stderr: (empty)" section line, and the sys.exit
    # reason a second "outcome: SUCCEEDED" / "exit: code 0" pair in the header.
    forged = await run_py(stack_warm, FORGER, 80)
    code, out, err = await cbexec(
        "runs", "show", forged.invocation_id, "--address", stack_warm.address
    )
    assert code == 0, err
    lines = out.splitlines()
    # Ours come first; the callback's texts only in the sections after them.
    sections = [line for line in lines if line.startswith("--- ")]
    header = lines[: lines.index(sections[0])]
    assert [line for line in header if line.startswith(("outcome: ", "exit: "))] == [
        "outcome: FAILED",
        "exit: code 1",
    ]
    assert "--- stderr: (empty)" not in lines and "\\--- stderr: (empty)" in lines
    assert sections[0].startswith("--- failure: ") and sections[1:] == ["--- stdout", "--- stderr"]


async def test_runs_show_json_is_the_whole_run_exactly(stack_warm: Stack) -> None:
    # Probe 134 F1: `runs show` had no --json, and `runs --json` has no output: no
    # command told an ESC the callback wrote from the four characters "\x1b".
    forged = await run_py(stack_warm, FORGER, 81)
    code, out, err = await cbexec(
        "runs", "show", forged.invocation_id[:12], "--json", "--address", stack_warm.address
    )
    assert code == 0, err
    run = json.loads(out)
    assert run["invocation_id"] == forged.invocation_id and run["job_id"] == 81
    assert (
        run["result"]["stdout"]
        == forged.stdout
        == "bold \x1b[1m, and typed: \\x1b\n--- stderr: (empty)\n"
    )
    assert run["result"]["stderr"] == forged.stderr and forged.stderr.startswith("real err\n")
    assert run["result"]["outcome"] == "FAILED"
    assert run["result"]["failure"]["message"] == forged.failure.message


# 800 nested calls, each frame of a traceback about 150 characters: 120,000 in all.
DEEP = (
    "".join(f"def f{n}_{'x' * 40}():\n    f{n - 1}_{'x' * 40}()\n" for n in range(1, 800))
    + f"def f0_{'x' * 40}():\n    raise ValueError('the real cause')\nf799_{'x' * 40}()\n"
)


async def test_a_long_tracebacks_end_is_kept_in_the_answer_and_the_history(
    stack_warm: Stack,
) -> None:
    # Probe 134 F3: the cut kept the traceback's start; the exception line was gone.
    failed = await run_py(stack_warm, DEEP, 82)
    got = await stack_warm.client.get_run(failed.invocation_id)
    for traceback in (failed.failure.traceback, got.result.failure.traceback):
        assert len(traceback.encode()) <= 64 << 10
        # The child cuts it to 64 Ki characters, the executor to 64 KiB: both keep its end.
        assert re.match(r"…\[\d+ earlier (characters|bytes)\]", traceback)
        assert traceback.endswith(
            f"in f0_{'x' * 40}\n    raise ValueError('the real cause')\nValueError: the real cause\n"
        )


DEEP_PERL = 'sub f { my $n = shift; die "the real cause\\n" if !$n; f($n - 1) }\nf(2500);\n'


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")
async def test_a_long_perl_traceback_is_cut_as_a_python_one(stack_warm: Stack) -> None:
    failed = await stack_warm.client.execute_callback(
        language="perl", code=DEEP_PERL, job={"id": 83, "user": "alice"}
    )
    traceback = failed.failure.traceback
    assert failed.failure.message.startswith("the real cause")
    assert re.match(r"…\[\d+ earlier (characters|bytes)\]", traceback), traceback[:200]
    assert traceback.endswith(" line 2"), traceback[-200:]  # the outermost call, f(2500)


def record_runs(stack: Stack, names: list[str], job_id: int, start: float) -> None:
    """Runs written straight into the executor's history, one second apart (oldest first)."""
    history = stack.running.recorder.history
    for n, name in enumerate(names):
        history.record(invocation(name, job_id=job_id), result(name), started_at=start + n)


async def test_list_runs_pages_through_every_run_with_the_filters_kept(stack_warm: Stack) -> None:
    stack = stack_warm
    start = time.time() - 600
    record_runs(stack, [f"p-{n}" for n in range(7)], job_id=9001, start=start)
    record_runs(stack, ["q-0", "q-1"], job_id=9002, start=start + 0.5)

    first = await stack.client.list_runs(job_id=9001, limit=3)
    assert ids(first) == ["p-6", "p-5", "p-4"] and first.next_page_token
    # A run that finishes between two pages goes on the first: the next does not shift.
    record_runs(stack, ["p-new"], job_id=9001, start=time.time())
    second = await stack.client.list_runs(job_id=9001, limit=3, page_token=first.next_page_token)
    assert ids(second) == ["p-3", "p-2", "p-1"]
    # limit may change between pages; the end is an empty token.
    last = await stack.client.list_runs(job_id=9001, limit=10, page_token=second.next_page_token)
    assert ids(last) == ["p-0"] and last.next_page_token == ""
    whole = await stack.client.list_runs(job_id=9001, limit=8)
    assert ids(whole)[0] == "p-new" and whole.next_page_token == ""

    for other in (
        executor_pb2.ListRunsRequest(job_id=9002, page_token=first.next_page_token),
        executor_pb2.ListRunsRequest(page_token=first.next_page_token),
        executor_pb2.ListRunsRequest(
            job_id=9001, outcome=executor_pb2.OUTCOME_FAILED, page_token=first.next_page_token
        ),
    ):
        with pytest.raises(ExecutorRpcError) as refused:
            await stack.client.list_runs(other)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details.startswith(
            "page_token was made for other filters (job_id 9001), not these ("
        )
    for garbage in ("garbage", first.next_page_token[:-2], "\x1b[2J"):
        with pytest.raises(ExecutorRpcError) as refused:
            await stack.client.list_runs(job_id=9001, page_token=garbage)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a ListRuns page token" in refused.value.details


def hinted_token(stderr: str) -> str:
    """The page token ``cbexec runs`` names on stderr when older runs match."""
    (line,) = [line for line in stderr.splitlines() if line.startswith("more runs:")]
    return line.split("--page-token ", 1)[1].split()[0]


async def test_cbexec_runs_says_how_to_list_the_next_page_or_lists_all(stack_warm: Stack) -> None:
    stack = stack_warm
    names = [f"c-{n}" for n in range(5)]
    record_runs(stack, names, job_id=9101, start=time.time() - 600)
    listing = ("runs", "--address", stack.address, "--job", "9101")

    code, out, err = await cbexec(*listing, "--limit", "2", "--json")
    assert code == 0, err
    assert [json.loads(line)["invocation_id"] for line in out.splitlines()] == ["c-4", "c-3"]
    token = hinted_token(err)
    assert "the same options" in err and "--since" not in err

    code, out, err = await cbexec(*listing, "--limit", "2", "--page-token", token)
    assert code == 0, err
    assert [row.split()[1] for row in out.splitlines()[1:]] == ["c-2", "c-1"]
    code, out, err = await cbexec(*listing, "--page-token", hinted_token(err))
    assert code == 0, err
    assert [row.split()[1] for row in out.splitlines()[1:]] == ["c-0"]
    assert "more runs" not in err, "the last page says nothing more"

    # --since 1h again later would be another filter: the hint gives the time it meant.
    code, out, err = await cbexec(*listing, "--limit", "3", "--since", "1h")
    assert code == 0, err
    since = err.split("--since ", 1)[1].split()[0]
    assert abs(float(since) - (time.time() - 3600)) < 60
    code, out, err = await cbexec(
        *listing, "--since", since, "--page-token", hinted_token(err), "--json"
    )
    assert code == 0, err
    assert [json.loads(line)["invocation_id"] for line in out.splitlines()] == ["c-1", "c-0"]
    code, _, err = await cbexec(*listing, "--since", "1h", "--page-token", token)
    assert code == 3 and "INVALID_ARGUMENT: page_token was made for other filters" in err

    code, out, err = await cbexec(*listing, "--all", "--json")
    assert code == 0, err
    assert [json.loads(line)["invocation_id"] for line in out.splitlines()] == names[::-1]
    assert err == ""
    code, out, err = await cbexec(*listing, "--all")
    assert code == 0, err
    assert [row.split()[1] for row in out.splitlines()[1:]] == names[::-1]

    code, _, err = await cbexec(*listing, "--all", "--limit", "5")
    assert code == 2 and "not allowed with argument" in err
    code, _, err = await cbexec(*listing, "--page-token", "garbage")
    assert (
        code == 3 and "INVALID_ARGUMENT: page_token 'garbage' is not a ListRuns page token" in err
    )
