"""``cbexec farm`` as a user runs it: submit files and scripts, read, change, workers, wait."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from executor.api.farm import STOPPING
from executor.cli import farm_workers
from executor.cli.farm_workers import WorkerPlan, fails
from executor.server import STOP_GRACE_S
from supervisor_client import ExecutorRpcError, FarmClient, RetryableError
from supervisor_client.qbcallback.v1 import farm_pb2
from tests.conftest import Stack
from tests.helpers.cli import ROOT, cbexec, cli_env
from tests.helpers.executor_process import executor_process
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service


async def test_submit_a_json_and_a_toml_job_file(stack_warm: Stack, tmp_path: Path) -> None:
    listing = tmp_path / "jobs.json"
    listing.write_text(
        json.dumps({"jobs": [{"name": "plate", "agenda": [1, 2]}, {"name": "comp", "pgrp": 0}]})
    )
    said = await cbexec("farm", "submit", str(listing), "--user", "ann", address=stack_warm.address)
    assert said.code == 0, said.err
    assert said.out.splitlines() == [
        "submitted job 1 'plate' (label qube0, pgrp 1): pending, 2 frames",
        "submitted job 2 'comp' (label qube1, pgrp 1): pending",
    ]
    assert stack_warm.supervisor.job(1)["user"] == "ann"

    single = tmp_path / "one.toml"
    single.write_text('name = "solo"\nstatus = "blocked"\nagenda = ["a", "b"]\n')
    said = await cbexec("farm", "submit", str(single), address=stack_warm.address)
    assert said.out.strip() == "submitted job 3 'solo' (label qube0, pgrp 3): blocked, 2 frames"


async def test_submit_prints_what_the_checks_found_in_the_callbacks(
    stack_warm: Stack, tmp_path: Path
) -> None:
    def cb(trigger: str) -> dict[str, str]:
        return {"triggers": trigger, "language": "qube", "code": "unblock-self"}

    jobs = tmp_path / "jobs.json"
    jobs.write_text(
        json.dumps(
            [
                # Waits for a label a later job of the same submission carries: fine.
                {"name": "comp", "callbacks": [cb("complete-job-render")]},
                {"name": "render", "label": "render", "agenda": ["1"]},
                # A typo: the label is nowhere, and nothing would ever fire.
                {"name": "late", "callbacks": [cb("complete-job-rendr")]},
            ]
        )
    )
    said = await cbexec("farm", "submit", str(jobs), address=stack_warm.address)

    assert said.code == 0, said.err
    warnings = [line for line in said.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, said.err
    assert warnings[0].startswith("warning: job 3 callback 1: complete-job-rendr: label 'rendr'")


async def test_submit_warns_of_a_trigger_on_an_event_the_farm_never_raises(
    stack_warm: Stack, tmp_path: Path
) -> None:
    # Qube's agenda_timelimit pattern: the farm raises no timeout, so it would wait for ever.
    jobs = tmp_path / "tmo.json"
    jobs.write_text(
        json.dumps(
            {
                "name": "tmo",
                "agenda": ["1"],
                "callbacks": [
                    {"triggers": "timeout-work-self-*", "language": "qube", "code": "fail-self"},
                    {"triggers": "done-work-self-*", "language": "qube", "code": "fail-self"},
                ],
            }
        )
    )
    said = await cbexec("farm", "submit", str(jobs), address=stack_warm.address)

    assert said.code == 0, said.err
    warnings = [line for line in said.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, said.err
    assert warnings[0].startswith("warning: job 1 callback 1: timeout-work-self-*: the scheduler")
    assert "no 'timeout-work' event will come" in warnings[0]


async def test_submit_and_why_tell_of_a_qube_code_string_that_is_none(
    stack_warm: Stack, tmp_path: Path
) -> None:
    jobs = tmp_path / "fly.json"
    jobs.write_text(
        json.dumps(
            {
                "name": "fly",
                "callbacks": [
                    {"triggers": "complete-job-self", "language": "qube", "code": "fly-self"}
                ],
            }
        )
    )
    said = await cbexec("farm", "submit", str(jobs), address=stack_warm.address)

    assert said.code == 0, said.err
    warnings = [line for line in said.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, said.err
    assert warnings[0].startswith(
        "warning: job 1 callback 1: each firing would be REJECTED: "
        "unknown qube code string 'fly-self'; expected one of: unblock-self,"
    )
    why = await cbexec("triggers", "why", "1", address=stack_warm.address)
    assert "callback 1: each firing would be REJECTED: " in why.out
    assert why.out.count("[unknown code]") == 1


async def test_a_submission_script_gets_qb_and_its_arguments(
    stack_warm: Stack, tmp_path: Path
) -> None:
    script = tmp_path / "submit.py"
    script.write_text(
        "import sys\n"
        "import qb\n"
        "job = qb.Job(name='shot' + sys.argv[1], agenda=qb.genframes('1-9x4'))\n"
        "job['callbacks'] = [{'triggers': 'complete-job-self', 'language': 'qube',"
        " 'code': 'mail-status'}]\n"
        "[stored] = qb.submit(job)\n"
        "print('got id', stored['id'], [w['name'] for w in stored['agenda']])\n"
        "print('status', qb.jobstatus(stored['id']), len(qb.jobinfo('-pgrp', stored['pgrp'])))\n"
        "print('blocked', qb.block(stored['id']), qb.jobinfo(id=stored['id'])[0]['status'])\n"
        "print('chunks', [w['name'] for w in qb.genchunks(2, '1-5')])\n"
        # Qube's client reads an unset time as its time 0 (the wire says 0).
        "print('times', stored['timestart'] == qb.QB_TIME_EPOCH_OFFSET,"
        " qb.jobinfo(id=stored['id'])[0]['timecomplete'] == qb.QB_TIME_EPOCH_OFFSET)\n"
    )
    said = await cbexec("farm", "submit", str(script), "042", address=stack_warm.address)
    assert said.code == 0, said.err
    assert said.out.splitlines() == [
        "got id 1 ['1', '5', '9']",
        "status pending 1",
        "blocked 1 blocked",
        "chunks ['1-2', '3-4', '5']",
        "times True True",
        "submitted job 1 'shot042' (label qube0, pgrp 1): pending, 3 frames, 1 callback",
    ]


async def test_a_failing_script_names_its_line_and_keeps_what_it_submitted(
    stack_warm: Stack, tmp_path: Path
) -> None:
    script = tmp_path / "half.py"
    script.write_text("import qb\nqb.submit([{'name': 'first'}])\nqb.genframes('1-x')\n")
    said = await cbexec("farm", "submit", str(script), address=stack_warm.address)
    assert said.code == 1
    assert said.out.strip() == "submitted job 1 'first' (label qube0, pgrp 1): pending"
    assert said.err.strip() == (
        f"cbexec: {script}:3: ValueError: genframes: '1-x' is not a frame spec (5, 1-10 or 1-10x2)"
    )
    # A call the farm refuses, uncaught, is the script's error too: before, exit 3 and
    # the bare refusal, the job already submitted never named, nor the call refused.
    refused = tmp_path / "refused.py"
    refused.write_text(
        "import qb\nqb.submit([{'name': 'first'}])\nqb.submit([{'name': 'x', 'status': 'done'}])\n"
    )
    said = await cbexec("farm", "submit", str(refused), address=stack_warm.address)
    assert said.code == 1
    assert said.out.strip() == "submitted job 2 'first' (label qube0, pgrp 2): pending"
    assert said.err.strip() == (
        f"cbexec: {refused}:3: InvalidRequestError: qb.submit: INVALID_ARGUMENT: job 1 of "
        "the submission: status must be 'pending' or 'blocked' (or, in a job dict read back, "
        "any state it shows: it starts pending), got 'done'"
    )
    missing = tmp_path / "missing.py"
    missing.write_text("import qb\n\nqb.kill(99)\n")
    said = await cbexec("farm", "submit", str(missing), address=stack_warm.address)
    assert (said.code, said.out) == (1, "")
    assert said.err.startswith(f"cbexec: {missing}:3: ExecutorRpcError: qb.kill: NOT_FOUND: ")


async def test_jobs_show_and_changes(stack_warm: Stack) -> None:
    address = stack_warm.address
    example = ROOT / "scripts" / "examples" / "job-c-waits-for-a-and-b" / "qube.py"
    assert (await cbexec("farm", "submit", str(example), address=address)).code == 0
    await stack_warm.settle()

    done = await cbexec("farm", "complete", "1:1", "2:2", address=address)
    assert (done.code, done.out.splitlines()) == (
        0,
        ["work 1:1 -> complete", "work 2:2 -> complete"],
    )
    await stack_warm.settle()

    table = await cbexec("farm", "jobs", address=address)
    assert table.code == 0
    rows = [line.split() for line in table.out.splitlines()]
    assert rows[0] == ["ID", "NAME", "LABEL", "PGRP", "STATUS", "USER", "FRAMES"]
    assert [row[:5] for row in rows[1:]] == [
        ["1", "ribgen", "ribgen", "1", "running"],
        ["2", "render", "render", "1", "running"],
        ["3", "jobC", "jobC", "1", "pending"],
    ]
    assert table.out.splitlines()[3].endswith("5 blocked")

    shown = await cbexec("farm", "show", "3", address=address)
    assert shown.code == 0
    text = shown.out
    assert text.startswith("job 3 'jobC': pending  (label jobC, pgrp 1, user ")
    assert "agenda: 5 blocked" in text
    assert "[x] complete-work-ribgen-1, [ ] complete-work-render-1" in text
    assert "[ ] complete-work-ribgen-2, [x] complete-work-render-2" in text
    assert "[job] submitted by" in text
    assert "(what each waits for and why: cbexec triggers why 3)" in text

    plain = json.loads((await cbexec("farm", "show", "3", "--json", address=address)).out)
    assert plain["job"]["id"] == 3 and len(plain["job"]["callbacks"]) == 5
    assert plain["callbacks"][0]["latches"] == [True, False]
    assert plain["callbacks"][0]["job_id"] == 3  # a number, not protobuf's JSON string
    lines = (await cbexec("farm", "jobs", "--json", "--status", "pending", address=address)).out
    assert [json.loads(line)["name"] for line in lines.splitlines()] == ["jobC"]
    # Qube job dicts: a time not reached yet is Qube's time 0, as its client gives it.
    assert plain["job"]["timecomplete"] == json.loads(lines)["timestart"] == 946702800

    partly = await cbexec("farm", "complete", "1:1-2", address=address)
    assert partly.code == 1
    assert partly.out.strip() == (
        "work 1:2 -> complete; work 1:1 is complete; complete takes pending or running work"
    )
    blocked = await cbexec("farm", "block", "3", address=address)
    assert (blocked.code, blocked.out.strip()) == (0, "job 3 pending -> blocked")
    again = await cbexec("farm", "block", "3", address=address)
    assert (again.code, again.out.strip()) == (1, "job 3 is already blocked")
    killed = await cbexec("farm", "kill", "2:3-5", address=address)
    assert (killed.code, killed.out.strip()) == (0, "work 2:3,4,5 -> killed")
    retried = await cbexec("farm", "retry", "2:3", address=address)
    assert retried.code == 0
    removed = await cbexec("farm", "remove", "3", address=address)
    assert (removed.code, removed.out.strip()) == (0, "job 3 removed")
    waited = await cbexec("farm", "wait", "3", address=address)
    assert (waited.code, waited.out.strip()) == (0, "job 3: removed")
    waiting = await cbexec("farm", "wait", "1", "--wait-timeout", "0.3", address=address)
    assert (waiting.code, waiting.out.strip()) == (1, "job 1: running")
    assert "still waiting after 0.3s" in waiting.err


async def test_show_counts_a_work_callbacks_latches_per_frame(
    stack_warm: Stack, tmp_path: Path
) -> None:
    # It showed "[ ] complete-work-sA-{work}, [ ] complete-work-sB-{work}" while frames 2
    # and 3 were half latched: the callback's own latches, not its frames' (probe 50).
    address = stack_warm.address
    jobs = tmp_path / "jobs.json"
    trigger = "complete-work-sA-{work} && complete-work-sB-{work}"
    sc = {
        "name": "sC",
        "label": "sC",
        "agenda": ["1", "2", "3", "4", "5", "6"],
        "callbacks": [{"triggers": trigger, "language": "qube", "code": "unblock-work-self"}],
    }
    sa, sb = ({"name": n, "label": n, "agenda": sc["agenda"]} for n in ("sA", "sB"))
    jobs.write_text(json.dumps([sa, sb, sc]))
    assert (await cbexec("farm", "submit", str(jobs), address=address)).code == 0
    assert (await cbexec("farm", "complete", "1:1-3", "2:1", address=address)).code == 0
    await stack_warm.settle()

    shown = await cbexec("farm", "show", "3", address=address)
    assert shown.code == 0, shown.err
    assert (
        "[2/6] complete-work-sA-{work}, [0/6] complete-work-sB-{work}; half latched: 2-3"
        in shown.out
    )
    # As JSON too: each frame's latches, which the callback's own do not say.
    (callback,) = json.loads((await cbexec("farm", "show", "3", "--json", address=address)).out)[
        "callbacks"
    ]
    latched = {
        name: item["latches"] for item in callback["work_items"] for name in item["work_names"]
    }
    assert latched == {
        "1": [False, False],  # fired: both ends seen, then unblocked
        "2": [True, False],
        "3": [True, False],
        **{name: [False, False] for name in ("4", "5", "6")},
    }, callback["work_items"]
    assert next(i for i in callback["work_items"] if "1" in i["work_names"])["count"] == 1


async def test_control_characters_a_submitter_chose_cannot_forge_lines(
    stack_warm: Stack, tmp_path: Path
) -> None:
    # A name with CR/LF once printed raw in `farm jobs` and `triggers why`: a forged row.
    address = stack_warm.address
    forged = "999  fake-job  fake  999  complete  admin  1 complete"
    job = {
        "name": f"real\n{forged}",
        "label": "lab\r\nel",
        "agenda": ["a\nb", "2"],
        "callbacks": [
            {"triggers": "complete-work-self-*", "language": "qube", "code": "unblock-self"}
        ],
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    said = await cbexec("farm", "submit", str(tmp_path / "job.json"), address=address)
    assert said.code == 0, said.err
    stack_warm.supervisor.start_work(1, "a\nb", host="h\x1b[2Jost")
    stack_warm.supervisor.complete_work(1, "a\nb")
    await stack_warm.settle()

    table = await cbexec("farm", "jobs", address=address)
    shown = await cbexec("farm", "show", "1", address=address)
    why = await cbexec("triggers", "why", "1", address=address)
    runs = await cbexec("runs", "--job", "1", address=address)

    assert [t.code for t in (table, shown, why, runs)] == [0, 0, 0, 0]
    rows = table.out.splitlines()
    assert len(rows) == 2  # the header and job 1: nothing forged
    assert rows[1].startswith(f"1   {job['name']!r}  'lab\\r\\nel'  1     running")
    for out in (table.out, shown.out, why.out, runs.out, said.out):
        assert not any(line.startswith("999") for line in out.splitlines()), out
        assert "\x1b" not in out and "\r" not in out
    assert shown.out.startswith(f"job 1 {job['name']!r}: running  (label 'lab\\r\\nel', ")
    assert "  'a\\nb'  complete  'h\\x1b[2Jost'  1" in shown.out  # the agenda table
    assert "[work] a\\nb running on h\\x1b[2Jost" in shown.out  # a history line
    assert why.out.splitlines()[0] == f"job 1 'lab\\r\\nel' ({job['name']!r}) in pgrp 1"
    assert "[work a\\nb]: latched complete-work-self-*" in why.out
    (run,) = [
        json.loads(line)
        for line in (await cbexec("runs", "--json", "--job", "1", address=address)).out.splitlines()
    ]
    one = await cbexec("runs", "show", run["invocation_id"], address=address)
    assert "event: complete-work-1-a\\nb  work: a\\nb" in one.out.splitlines()


async def start_workers(address: str, *argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "executor",
        "farm",
        "workers",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(address),
    )


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    """SIGTERM, then wait for it to drain (killed if it does not); its code and output."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_workers_fail_exactly_the_attempts_their_seed_says(stack_warm: Stack) -> None:
    frames = [str(n) for n in range(1, 21)]
    stack_warm.supervisor.submit([{"name": "many", "cpus": 4, "agenda": frames}])
    proc = await start_workers(
        stack_warm.address, "3", "--frame-seconds", "0", "--fail-rate", "0.5", "--seed", "11"
    )
    try:
        waited = await cbexec("farm", "wait", "1", address=stack_warm.address)
        assert waited.code == 0, waited.err
    finally:
        code, out, err = await stop(proc)
    assert code == 0, err
    plan = WorkerPlan(3, 0.0, 0.5, 11)
    expected = {f for f in frames if fails(plan, 1, f, 1)}
    agenda = stack_warm.supervisor.job(1)["agenda"]
    assert {w["name"] for w in agenda if w["status"] == "failed"} == expected
    assert 0 < len(expected) < len(frames)
    assert out.splitlines()[0] == (
        f"3 workers on {stack_warm.address}: 0s a frame, fail rate 0.5, seed 11 (Ctrl-C to stop)"
    )
    assert {w["host"] for w in agenda} <= {"worker-1", "worker-2", "worker-3"}
    assert out.splitlines()[-1] == "stopped after 20 items"


async def test_a_stopped_worker_finishes_its_frame_first(stack_warm: Stack) -> None:
    stack_warm.supervisor.submit([{"name": "slow", "agenda": ["1", "2"]}])
    proc = await start_workers(stack_warm.address, "2", "--frame-seconds", "1.5")
    try:

        def running() -> bool:
            return bool(stack_warm.supervisor.job(1)["agenda"][0]["status"] == "running")

        assert await eventually(running, timeout_s=20)
    finally:
        code, out, err = await stop(proc)
    assert code == 0, err
    assert "stopping: finishing the items in flight" in out
    assert "worker-1: 1:1 complete" in out or "worker-2: 1:1 complete" in out
    statuses = [w["status"] for w in stack_warm.supervisor.job(1)["agenda"]]
    assert statuses == ["complete", "pending"], "frame 2 was never taken"


async def test_a_second_stop_names_the_frames_it_left_running_as_its_own_doing(
    stack_warm: Stack,
) -> None:
    """The executor answered all along: the message must not say to wait for it (probe 50)."""
    stack_warm.supervisor.submit([{"name": "slow", "cpus": 2, "agenda": ["1", "2", "3"]}])
    proc = await start_workers(stack_warm.address, "2", "--frame-seconds", "60")
    try:
        await read_until(proc, "took 1:")
        await read_until(proc, "took 1:")
        proc.send_signal(signal.SIGTERM)
        await read_until(proc, "stopping: finishing the items in flight")
    finally:
        code, out, err = await stop(proc)  # the second SIGTERM
    assert code == 0, err
    assert out.splitlines()[-2:] == [
        "left running (stopped before their end was reported): 1:1 1:2; end them with: "
        "cbexec farm complete 1:1 1:2 (or fail, or kill then retry)",
        "stopped after 0 items",
    ]
    statuses = [w["status"] for w in stack_warm.supervisor.job(1)["agenda"]]
    assert statuses == ["running", "running", "pending"]


async def test_abandoned_workers_name_their_frames_apart_from_a_refused_end() -> None:
    """A frame whose end was refused keeps its words; those in flight are the user's doing."""

    class Slow:
        def __init__(self) -> None:
            self.frames = ["1", "2"]

        async def take_work(self, host: str) -> farm_pb2.TakeWorkResponse:
            if not self.frames:
                return farm_pb2.TakeWorkResponse(taken=False)
            return farm_pb2.TakeWorkResponse(
                taken=True, job_id=4, work_name=self.frames.pop(0), job_name="j", attempt=1
            )

        async def change_work(self, **call: Any) -> farm_pb2.ChangeWorkResponse:
            if call["work"] == ["1"]:
                raise ExecutorRpcError(grpc.StatusCode.INTERNAL, "internal error (incident 3)")
            await asyncio.Event().wait()  # never answers: still reporting 4:2
            raise AssertionError

    out = io.StringIO()
    workers = farm_workers.Workers(Slow(), WorkerPlan(1, 0.0, 0.0, 1), out)  # type: ignore[arg-type]
    running = asyncio.create_task(workers.run())
    assert await eventually(lambda: list(workers.in_flight.values()) == ["4:2"], timeout_s=5)
    workers.abandon()
    running.cancel()
    await asyncio.wait([running])
    assert out.getvalue().splitlines()[-2:] == [
        "left running (stopped before their end was reported): 4:2; end them with: "
        "cbexec farm complete 4:2 (or fail, or kill then retry)",
        "left running (taken, their end never reported): 4:1; once the executor answers, "
        "end them with: cbexec farm complete 4:1 (or fail, or kill then retry)",
    ]


def test_worker_failures_depend_only_on_seed_job_frame_and_attempt() -> None:
    plan = WorkerPlan(2, 1.0, 0.3, seed=5)
    first = [fails(plan, 7, str(n), 1) for n in range(200)]
    assert first == [fails(WorkerPlan(9, 0.0, 0.3, seed=5), 7, str(n), 1) for n in range(200)]
    assert 30 < sum(first) < 90
    assert first != [fails(WorkerPlan(2, 1.0, 0.3, seed=6), 7, str(n), 1) for n in range(200)]
    assert not any(fails(WorkerPlan(2, 1.0, 0.0, seed=5), 7, str(n), 1) for n in range(200))
    assert all(fails(WorkerPlan(2, 1.0, 1.0, seed=5), 7, str(n), 1) for n in range(200))


async def test_a_frame_rendered_while_the_executor_restarts_is_reported_after(
    tmp_path: Path,
) -> None:
    """The worker reports the frame's end again until the executor is back (it exited 3)."""
    log = tmp_path / "executor.log"
    async with executor_process(tmp_path / "data", "", log) as first:
        async with FarmClient(first.address) as farm:
            await farm.submit_jobs([{"name": "frame", "agenda": ["1"]}])
        proc = await start_workers(first.address, "1", "--frame-seconds", "2")
        stopped: tuple[int, str, str] | None = None
        try:
            async with FarmClient(first.address) as farm:

                async def running() -> bool:
                    job = await farm.get_job(1)
                    return bool(job.job.agenda[0].status == "running")

                assert await eventually(running, timeout_s=20)
            first.sigkill()
            await first.proc.wait()
            seen = await read_until(proc, "cannot report yet (UNAVAILABLE)")
            async with (
                executor_process(
                    tmp_path / "data", "", log, extra_args=["--bind", first.address]
                ) as second,
                FarmClient(second.address) as farm,
            ):

                async def complete() -> bool:
                    job = await farm.get_job(1)
                    return bool(job.job.agenda[0].status == "complete")

                assert await eventually(complete, timeout_s=30)
                # Stopped while the executor serves: its next poll would meet it going.
                stopped = await stop(proc)
        finally:
            if stopped is None:
                stopped = await stop(proc)
    code, out, err = stopped
    assert code == 0, err
    assert "worker-1: cannot report yet (UNAVAILABLE)" in seen, seen
    assert "worker-1: 1:1 complete" in out, seen + out


async def read_until(proc: asyncio.subprocess.Process, text: str) -> str:
    """The process's output up to the line holding ``text`` (within 30 s)."""
    assert proc.stdout is not None
    seen = ""
    async with asyncio.timeout(30):
        while text not in seen:
            line = await proc.stdout.readline()
            assert line, seen
            seen += line.decode()
    return seen


async def test_workers_that_cannot_report_name_what_is_left_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The executor stays away: each frame in flight is named, with the command that ends it."""
    monkeypatch.setattr(farm_workers, "REPORT_RETRY_S", 0.3)
    monkeypatch.setattr(farm_workers, "REPORT_BACKOFF_S", (0.05, 0.1))
    away = RetryableError(grpc.StatusCode.UNAVAILABLE, "connection refused")

    class Gone:
        """A farm that hands out two frames, then cannot be reached."""

        def __init__(self) -> None:
            self.frames = ["1", "2"]

        async def take_work(self, host: str) -> farm_pb2.TakeWorkResponse:
            if not self.frames:
                raise away
            return farm_pb2.TakeWorkResponse(
                taken=True, job_id=4, work_name=self.frames.pop(0), job_name="j", attempt=1
            )

        async def change_work(self, **_: object) -> farm_pb2.ChangeWorkResponse:
            raise away

    out = io.StringIO()
    workers = farm_workers.Workers(Gone(), WorkerPlan(2, 0.1, 0.0, 1), out)  # type: ignore[arg-type]
    with pytest.raises(RetryableError):
        await workers.run()
    said = out.getvalue()
    assert "worker-1: cannot report yet (UNAVAILABLE)" in said, said
    assert said.splitlines()[-1] == (
        "left running (taken, their end never reported): 4:1 4:2; once the executor "
        "answers, end them with: cbexec farm complete 4:1 4:2 (or fail, or kill then retry)"
    )


async def test_workers_ride_out_a_full_disk_and_finish_every_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """UNAVAILABLE for a while (a full data dir) on taking and reporting: waited out, not fatal."""
    monkeypatch.setattr(farm_workers, "REPORT_BACKOFF_S", (0.02, 0.05))
    full = RetryableError(grpc.StatusCode.UNAVAILABLE, "cannot write /d/supervisor.db: full")

    class FullForAWhile:
        """Hands out three frames; each call is refused the first two times it is made."""

        def __init__(self) -> None:
            self.frames = ["1", "2", "3"]
            self.refusals = {"take": 2, "change": 2}
            self.completed: list[str] = []

        def _refuse(self, call: str) -> None:
            if self.refusals[call]:
                self.refusals[call] -= 1
                raise full

        async def take_work(self, host: str) -> farm_pb2.TakeWorkResponse:
            self._refuse("take")
            if not self.frames:
                workers.stop()  # the workload is done: drain
                return farm_pb2.TakeWorkResponse(taken=False)
            return farm_pb2.TakeWorkResponse(
                taken=True, job_id=4, work_name=self.frames.pop(0), job_name="j", attempt=1
            )

        async def change_work(self, **call: Any) -> farm_pb2.ChangeWorkResponse:
            self._refuse("change")
            self.completed += call["work"]
            return farm_pb2.ChangeWorkResponse(changed=1)

    farm = FullForAWhile()
    out = io.StringIO()
    workers = farm_workers.Workers(farm, WorkerPlan(1, 0.01, 0.0, 1), out)  # type: ignore[arg-type]
    await workers.run()
    said = out.getvalue()
    assert sorted(farm.completed) == ["1", "2", "3"], said
    assert "worker-1: cannot take work yet (UNAVAILABLE)" in said, said
    assert "worker-1: cannot report yet (UNAVAILABLE)" in said, said
    assert "left running" not in said, said


async def test_a_frame_whose_end_is_refused_as_a_bug_is_named_at_the_end() -> None:
    """INTERNAL on a report: the frame may still be running, so it is named with its command."""

    class Broken:
        def __init__(self) -> None:
            self.frames = ["7"]

        async def take_work(self, host: str) -> farm_pb2.TakeWorkResponse:
            if not self.frames:
                raise ExecutorRpcError(grpc.StatusCode.INTERNAL, "internal error (incident 1)")
            return farm_pb2.TakeWorkResponse(
                taken=True, job_id=4, work_name=self.frames.pop(0), job_name="j", attempt=1
            )

        async def change_work(self, **_: object) -> farm_pb2.ChangeWorkResponse:
            raise ExecutorRpcError(grpc.StatusCode.INTERNAL, "internal error (incident 2)")

    out = io.StringIO()
    workers = farm_workers.Workers(Broken(), WorkerPlan(1, 0.01, 0.0, 1), out)  # type: ignore[arg-type]
    with pytest.raises(ExecutorRpcError):
        await workers.run()
    assert out.getvalue().splitlines()[-1] == (
        "left running (taken, their end never reported): 4:7; once the executor "
        "answers, end them with: cbexec farm complete 4:7 (or fail, or kill then retry)"
    )


async def test_farm_wait_rides_out_a_restart(tmp_path: Path) -> None:
    """Probe 127 F4: `farm wait` met the restart as exit 3, `UNAVAILABLE: Cancelling all calls`.

    It asks again until the executor is back, as the workers do, within its --wait-timeout.
    Probe 147: the stop ends its wait at once, UNAVAILABLE, instead of being held by it
    for the server's whole 5 s grace.
    """
    log = tmp_path / "executor.log"
    async with executor_process(tmp_path / "data", "", log) as first:
        async with FarmClient(first.address) as farm:
            await farm.submit_jobs([{"name": "frame", "agenda": ["1"]}])
        waiting = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "executor", "farm", "wait", "1", "--wait-timeout", "60"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(first.address),
        )
        try:
            port = int(first.address.rpartition(":")[2])

            def connected() -> bool:  # its WaitJobs is in the executor's hands
                return any(
                    c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
                    for c in psutil.Process(waiting.pid).net_connections("tcp")
                )

            assert await eventually(connected, timeout_s=20)
            started = time.monotonic()
            first.proc.send_signal(signal.SIGTERM)
            await first.proc.wait()
            stop_s = time.monotonic() - started
            async with (
                executor_process(
                    tmp_path / "data", "", log, extra_args=["--bind", first.address]
                ) as second,
                FarmClient(second.address) as farm,
            ):
                await farm.change_work(job_id=1, work=["1"], change="complete")
                out, err = await asyncio.wait_for(waiting.communicate(), 60)
        finally:
            if waiting.returncode is None:
                waiting.kill()
                await waiting.wait()
    assert (waiting.returncode, out.decode()) == (0, "job 1: complete\n"), err.decode()
    assert (
        f"cbexec: {first.address} cannot answer now (UNAVAILABLE: {STOPPING}); asking again for "
    ) in err.decode()
    assert stop_s < STOP_GRACE_S / 2, stop_s


async def test_farm_wait_gives_up_in_its_own_words(tmp_path: Path) -> None:
    """An executor that stays away ends the wait at its --wait-timeout, exit 3, saying so."""
    with socket.socket() as nobody:  # a port no one listens on: every call is refused
        nobody.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{nobody.getsockname()[1]}"
        said = await cbexec("farm", "wait", "1", "--wait-timeout", "1.5", address=address)
    assert said.code == 3, said
    assert said.out == ""
    last = said.err.splitlines()[-1]
    assert last.startswith(
        f"cbexec: gave up waiting after 1.5s: {address} could not be reached (UNAVAILABLE: "
    ), said.err


async def test_a_workers_end_of_a_frame_taken_from_it_is_left_alone(stack_warm: Stack) -> None:
    """Probe 127 finding 1: the worker's report names its attempt, so a stale one ends nothing.

    The worker renders frame 1 (attempt 1); the job is blocked and unblocked meanwhile, and
    another worker takes the frame (attempt 2). The first worker's end is then left alone:
    the frame stays running on the other worker, which completes it.
    """
    stack_warm.supervisor.submit([{"name": "stale", "agenda": ["1"]}])
    out = io.StringIO()
    async with FarmClient(stack_warm.channel) as farm:
        workers = farm_workers.Workers(farm, WorkerPlan(1, 3.0, 0.0, 1), out)
        running = asyncio.create_task(workers.run())
        try:
            assert await eventually(lambda: list(workers.in_flight.values()) == ["1:1"], 10)
            await farm.change_job(job_id=1, verb="block")
            await farm.change_job(job_id=1, verb="unblock")
            taken = await farm.take_work("other")
            assert (taken.work_name, taken.attempt) == ("1", 2)
            assert await eventually(lambda: not workers.in_flight, 10)
            workers.stop()
            await asyncio.wait_for(running, 10)
        finally:
            running.cancel()
        said = out.getvalue()
        assert "worker-1: 1:1 left alone: work 1:1 is running attempt 2 (on other)" in said, said
        assert stack_warm.supervisor.job(1)["agenda"][0]["status"] == "running"
        done = await farm.change_work(
            job_id=1, work=["1"], change="complete", host="other", attempt=2
        )
        assert (done.changed, done.job_status) == (1, "complete")


async def test_a_preempted_jobs_pending_frame_is_left_alone_with_exit_1(
    stack_warm: Stack,
) -> None:
    """Probe 156 finding 1: its running frame's end in the same call is not lost (was exit 3)."""
    address = stack_warm.address
    stack_warm.supervisor.submit([{"name": "p", "cpus": 2, "agenda": ["1", "2", "3"]}])
    assert (await cbexec("farm", "start", "1:1-2", address=address)).code == 0
    owner = stack_warm.supervisor.job(1)["user"]
    assert stack_warm.supervisor.job_action("preempt", 1, owner).changed == 1  # qb.preempt

    done = await cbexec("farm", "complete", "1:1,3", address=address)

    assert (done.code, done.out.strip()) == (
        1,
        "work 1:1 -> complete; work 1:3 not started: job 1 is preempted: it starts no new "
        "work until its running work has ended and it is pending again",
    )
    agenda = stack_warm.supervisor.job(1)["agenda"]
    assert [w["status"] for w in agenda] == ["complete", "running", "pending"]
