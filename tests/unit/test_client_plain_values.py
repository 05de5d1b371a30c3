"""Plain values the clients once sent as something else, or refused in words naming nothing.

A float or bool job id went out truncated (``{"id": 41.9}`` registered job 41, and
``True`` job 1); a bool was a number and an int a bool; None went out as the field's
default (``retry_dead_letters(None)`` requeued every dead letter); a key not a str
raised Python's own concatenation error or was turned into a str; field keywords given
with a whole request were dropped; a timeout too large for a float raised a bare
OverflowError, and ``wait_until_serving`` took any timeout, blaming a SERVING executor.
Each is now refused before anything is sent, naming the argument.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from supervisor_client import ExecutorClient, FarmClient, ReferenceSupervisor
from supervisor_client.client import build_execute_request, check_timeout
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2, farm_pb2

pytestmark = pytest.mark.unit

ADDRESS = "127.0.0.1:1"  # nothing listens: every refusal here comes before a call
JOB = {"id": 1}


def _run(**given: Any) -> Any:
    """An ``execute_callback`` call with ``given`` over a minimal valid one."""
    return lambda c: c.execute_callback(**{"language": "python", "code": "", "job": JOB, **given})


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        # A job's integer fields: int() took a fraction's whole part and a bool as 0 or 1.
        (lambda c: c.register_job({"id": 41.9}), ValueError, r"^job field 'id': .* got 41\.9$"),
        (lambda c: c.register_job({"id": True}), ValueError, r"^job field 'id': .* got True$"),
        (lambda c: c.register_job({"id": 1, "priority": False}), ValueError, "'priority'"),
        (lambda c: c.register_job({"id": math.nan}), ValueError, "job field 'id': .* got nan"),
        (_run(job={"id": 3.7}), ValueError, r"^job field 'id': .* got 3\.7$"),
        (
            lambda c: c.register_job({"id": 1, "agenda": [{"name": "1", "count": 2.5}]}),
            ValueError,
            r"^agenda\[0\]\.count: expected an int",
        ),
        (
            lambda c: c.register_job({"id": 1, "subjobs": [{"id": True}]}),
            ValueError,
            r"^subjobs\[0\]\.id: expected an int",
        ),
        # Protobuf takes a bool for a number and an int for a bool.
        (_run(limits={"wall_seconds": True}), TypeError, r"^limits\.wall_seconds: .* got bool$"),
        (
            lambda c: c.publish_event(name="complete", type="job", job_id=1, wait=1),
            TypeError,
            "^wait: expected a bool, got int$",
        ),
        (
            lambda c: c.publish_events(
                [{"name": "complete", "job_id": 1, "host": "a"}, {"wait": 0}]
            ),
            TypeError,
            r"^events\[1\]\.wait: expected a bool, got int$",
        ),
        (lambda c: c.register_job(JOB, strict=1), TypeError, "^strict: expected a bool, got int$"),
        (lambda c: c.list_runs(shadow_only=0), TypeError, "^shadow_only: expected a bool"),
        # A key not a str: Python's "can only concatenate str (not "int") to str".
        (_run(event={1: "x"}), TypeError, "^event: expected str keys, got int 1$"),
        (_run(limits={1: 2}), TypeError, "^limits: expected str keys, got int 1$"),
        (
            lambda c: c.publish_events([{1: "complete"}]),
            TypeError,
            r"^events\[0\]: expected str keys, got int 1$",
        ),
        (
            lambda c: c.register_job({"id": 5, 3: "x"}),
            ValueError,
            "^job: expected str keys, got int 3$",
        ),
        # None: it went out as the field's default.
        (lambda c: c.get_run(None), TypeError, "^invocation_id: expected a str, got NoneType$"),
        (
            lambda c: c.retry_dead_letters(None),
            TypeError,
            "^invocation_ids: expected a sequence of str, got NoneType$",
        ),
        (
            lambda c: c.list_registered_jobs(job_id=None),
            TypeError,
            "^job_id: expected an int .* got NoneType$",
        ),
        (_run(policy=None), TypeError, "^policy: expected a str, got NoneType$"),
        (_run(language=None), TypeError, "^language: expected a str, got NoneType$"),
        (_run(work_name=None), TypeError, "^work_name: expected a str, got NoneType$"),
        (_run(subjob_id=None), TypeError, "^subjob_id: expected an int .* got NoneType$"),
        (_run(event={"name": None}), TypeError, r"^event\.name: expected a str, got NoneType$"),
        (lambda c: c.publish_event(name=None), TypeError, "^name: expected a str, got NoneType$"),
        (lambda c: c.health(None), TypeError, "^service: expected a str, got NoneType$"),
        # A request and field keywords: the keywords were dropped.
        (
            lambda c: c.dry_run(executor_pb2.DryRunRequest(job_id=9001), job_id=5, name="x"),
            ValueError,
            "^job_id, name: give the request or its fields, not both",
        ),
        (
            lambda c: c.publish_event(executor_pb2.PublishEventRequest(job_id=1), wait=True),
            ValueError,
            "^wait: give the request or its fields, not both",
        ),
        (
            lambda c: c.list_runs(executor_pb2.ListRunsRequest(limit=1), job_id=7, outcome="NO"),
            ValueError,
            "^job_id, outcome: give the request or its fields, not both",
        ),
        (
            lambda c: c.register_job(executor_pb2.RegisterJobRequest(), strict=True),
            ValueError,
            "^strict: give the request or its fields, not both",
        ),
    ],
)
async def test_a_value_the_request_would_misread_is_refused_by_name(
    call: Any, error: type[Exception], message: str
) -> None:
    async with ExecutorClient(ADDRESS) as client:
        with pytest.raises(error, match=message):
            await call(client)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda f: f.wait_jobs([1], wait_seconds=True), TypeError, "^wait_seconds: .* got bool$"),
        (lambda f: f.wait_jobs(None), TypeError, "^job_ids: .* got NoneType$"),
        (lambda f: f.list_jobs(status=None), TypeError, "^status: expected a str, got NoneType$"),
        (lambda f: f.take_work(None), TypeError, "^host: expected a str, got NoneType$"),
        (
            lambda f: f.submit_jobs([{"name": "a", 1: "one"}]),
            TypeError,
            r"^jobs\[0\]: expected str keys, got int 1$",
        ),
        (
            lambda f: f.submit_jobs([{"agenda": [{"name": "1", "resultpackage": {2: "x"}}]}]),
            TypeError,
            r"^jobs\[0\]\.agenda\[0\]\.resultpackage: expected str keys, got int 2$",
        ),
        (
            lambda f: f.list_jobs(farm_pb2.ListJobsRequest(), status="running"),
            ValueError,
            "^status: give the request or its fields, not both",
        ),
        (
            lambda f: f.change_work(farm_pb2.ChangeWorkRequest(), job_id=1, work=["1"]),
            ValueError,
            "^job_id, work: give the request or its fields, not both",
        ),
        (
            lambda f: f.change_job(farm_pb2.ChangeJobRequest(), verb="kill"),
            ValueError,
            "^verb: give the request or its fields, not both",
        ),
    ],
)
async def test_a_farm_value_the_request_would_misread_is_refused_by_name(
    call: Any, error: type[Exception], message: str
) -> None:
    async with FarmClient(ADDRESS) as farm:
        with pytest.raises(error, match=message):
            await call(farm)


def test_what_the_clients_take_is_still_taken() -> None:
    """Digits in a str and an integral float for a job's int (Qube's and JSON's dicts)."""
    job = job_from_dict({"id": "7", "priority": 5.0, "agenda": [{"name": "1", "count": "2"}]})
    assert (job.id, job.priority, job.agenda[0].count) == (7, 5, 2)
    request = build_execute_request(
        language="python",
        code="",
        job=JOB,
        event=None,
        limits={"wall_seconds": 5, "cpu_seconds": 1.5},  # seconds as an int or a float
        invocation_id=None,  # a fresh uuid
    )
    assert (request.limits.wall_seconds, request.limits.cpu_seconds) == (5.0, 1.5)
    assert request.invocation_id


def test_a_timeout_too_large_for_a_float_is_refused_as_any_other() -> None:
    with pytest.raises(ValueError, match="more than 0 and at most"):
        check_timeout(10**400)


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (math.nan, ValueError),
        (-1, ValueError),
        ("5", TypeError),
        (True, TypeError),
        (None, TypeError),
        pytest.param(10**400, ValueError, id="10**400"),
    ],
)
async def test_wait_until_serving_checks_its_timeout(timeout: Any, error: type[Exception]) -> None:
    """It raised TimeoutError ("not SERVING within nans") with the executor serving."""
    async with ExecutorClient(ADDRESS) as client:
        with pytest.raises(error, match=r"^timeout: expected seconds"):
            await client.wait_until_serving(timeout)


@pytest.mark.parametrize(
    ("seconds", "error"),
    [
        (math.nan, ValueError),
        (math.inf, ValueError),
        (0, ValueError),
        (-1, ValueError),
        (True, TypeError),
        ("x", TypeError),
        pytest.param(10**400, ValueError, id="10**400"),
    ],
)
def test_the_action_retention_is_checked_as_seconds(seconds: Any, error: type[Exception]) -> None:
    """NaN was taken (nothing was ever pruned), and "x" failed comparing str with int."""
    with pytest.raises(error, match=r"^action_retention_s: expected seconds"):
        ReferenceSupervisor(action_retention_s=seconds)


def test_a_client_made_outside_an_event_loop_says_where_to_make_it() -> None:
    """Once gRPC's "There is no current event loop in thread 'MainThread'"."""
    with pytest.raises(RuntimeError, match="make the client inside the running event loop"):
        ExecutorClient(ADDRESS)
    with pytest.raises(RuntimeError, match="make the client inside the running event loop"):
        FarmClient(ADDRESS)


def test_a_client_used_from_another_event_loop_says_one_client_per_loop() -> None:
    """Once gRPC's "Event loop is closed" (and a warning of a coroutine never awaited)."""

    async def make() -> ExecutorClient:
        return ExecutorClient(ADDRESS)

    client = asyncio.run(make())

    async def use() -> None:
        try:
            with pytest.raises(RuntimeError, match="one client per event loop"):
                await client.health(timeout=1)
        finally:
            await client.close()

    asyncio.run(use())
