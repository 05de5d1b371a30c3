"""Every job a request may carry can have its callbacks run, and taking it in holds no other call.

A job's context is at most what a 16 MiB request holds, but as JSON a work item is far
more than on the wire: ~74 bytes for a 5-byte item named "0", six bytes for each control
character of a name. The whole job in the child's start frame made a job of ~900,000
short items, or of 12,000 long names, a frame the child refuses (64 MiB): accepted, yet
none of its callbacks could ever start. The child reads only the job's id from it.

The 1,000,000-item Execute also took seconds of the event loop to check and convert:
health checks meanwhile each wait less than half of what that conversion costs, measured
in the same run (on the loop they waited for the whole of it). A bound of the machine's
own measure, not a fixed second: under the suite's load a round of checks that shares
the GIL with the converting thread took over a second where the conversion took four.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from executor.api import convert
from executor.model import Limits
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2
from tests.conftest import running_stack, stack_settings
from tests.helpers.health import SERVING, health_status

pytestmark = pytest.mark.service

PRINT_JOB_ID = "import qb\nprint(qb.jobid())"
LIMITS = Limits(10, 30, 512 << 20, 1 << 20, 64, 256 << 20)


@pytest.mark.timeout(120)
async def test_an_execute_of_a_million_work_items_runs_and_holds_no_other_call(
    tmp_path: Path,
) -> None:
    job = types_pb2.Job(id=77, user="alice")
    job.agenda.extend(types_pb2.WorkItem(name=str(n % 10)) for n in range(1_000_000))
    request = executor_pb2.ExecuteRequest(context=executor_pb2.JobContext(job=job))
    request.callback.language, request.callback.code = "python", PRINT_JOB_ID
    convert_s = _timed(  # the hold the loop had when it converted the request itself
        lambda: convert.invocation_from_request(request, default_limits=LIMITS, max_limits=LIMITS)
    )
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        waits: list[float] = []
        answers: list[int] = []
        done = asyncio.Event()

        async def check_health() -> None:
            # The client shares the server's loop: a hold shows in the check or the
            # pause after it, so each round is timed whole.
            while not done.is_set():
                started = time.monotonic()
                answers.append(await health_status(stack.channel))
                await asyncio.sleep(0.05)
                waits.append(time.monotonic() - started)

        checking = asyncio.create_task(check_health())
        try:
            response = await stack.client.execute_callback(
                language="python", code=PRINT_JOB_ID, job=job
            )
        finally:
            done.set()
            await checking
    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response.failure
    assert response.stdout == "77\n"
    slow = [round(wait, 2) for wait in waits if wait >= convert_s / 2]
    assert not slow, f"health waited {slow} of {len(waits)} checks; conversion {convert_s:.2f} s"
    assert len(waits) >= 5
    assert set(answers) == {SERVING}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_registered_job_of_long_work_names_fires_its_callback(
    tmp_path: Path, language: str
) -> None:
    # 12 MB on the wire, ~72 MB as JSON: each control character is written \u0001.
    names = ["\x01" * 1000 + str(n) for n in range(12_000)]
    code = {"python": PRINT_JOB_ID, "perl": "print qb::jobid(), qq(\\n);"}[language]
    job = {
        "id": 78,
        "user": "alice",
        "agenda": names,
        "callbacks": [{"triggers": "complete-job-self", "language": language, "code": code}],
    }
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        await stack.client.register_job(job)
        answer = await stack.client.publish_event(name="complete", type="job", job_id=78, wait=True)
    (fired,) = answer.fired
    assert fired.result.outcome == executor_pb2.OUTCOME_SUCCEEDED, fired.result.failure
    assert fired.result.stdout == "78\n"


@pytest.mark.timeout(120)
async def test_a_firing_of_a_big_registered_job_holds_no_other_call(tmp_path: Path) -> None:
    # A fired run's invocation read the job's whole JSON on the loop (~74 bytes an item);
    # for a million items a second in which no other call was answered. Parsing it on a
    # thread would not help: json.loads holds the GIL throughout.
    job = {
        "id": 79,
        "user": "alice",
        "agenda": [str(n) for n in range(300_000)],
        "callbacks": [
            {"triggers": "complete-job-self", "language": "python", "code": PRINT_JOB_ID}
        ],
    }
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        await stack.client.register_job(job)
        store = stack.running.engine.store
        parse_s = min(_timed(lambda: store.job(79)) for _ in range(2))  # the old read's cost
        lateness: list[float] = []
        done = asyncio.Event()

        async def check_health() -> None:
            # The client shares the server's loop: a hold shows in the check or the
            # pause after it, so each round is timed whole.
            while not done.is_set():
                started = time.monotonic()
                assert await health_status(stack.channel) == SERVING
                await asyncio.sleep(0.01)
                lateness.append(time.monotonic() - started - 0.01)

        checking = asyncio.create_task(check_health())
        try:
            answer = await stack.client.publish_event(
                name="complete", type="job", job_id=79, wait=True
            )
        finally:
            done.set()
            await checking
    (fired,) = answer.fired
    assert fired.result.outcome == executor_pb2.OUTCOME_SUCCEEDED, fired.result.failure
    assert fired.result.stdout == "79\n"
    assert len(lateness) >= 3
    assert max(lateness) < parse_s / 3, (
        f"a health check waited {max(lateness):.3f} s; parse {parse_s:.3f} s"
    )


def _timed(read: Callable[[], object]) -> float:
    started = time.perf_counter()
    read()
    return time.perf_counter() - started
