"""A callback's qb reads ask the Supervisor service for no more of a big job's agenda than they need.

A real executor calls a real Supervisor service on loopback (the reference one,
recording each JobInfo): ``qb.jobstatus`` asks for no work item and gets none,
``qb.workstatus`` and a work verb on plain names ask for and get those items; a range
and a full ``qb.jobinfo()`` read every item. Against a supervisor that ignores the
hint (it answers every item), or bends it (a named answer lacks a name), the callback
prints the same.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from executor import server
from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import stack_settings
from tests.helpers.supervisors import (
    CountingSupervisor,
    HintIgnoringSupervisor,
    NameDroppingSupervisor,
    SupervisorEndpoint,
)

pytestmark = pytest.mark.service

FRAMES = 2_000
AGENDA = [*(str(n) for n in range(1, FRAMES + 1)), "1-10"]

CALLBACK = """\
j = qb.jobid()
print(qb.jobstatus(j))
print(qb.subjobstatus('%d.0' % j))
print(qb.workstatus('%d:5' % j))
print(qb.workunblock('%d:5' % j))
print(qb.workblock('%d:5,7' % j))
print(sorted(qb.jobinfo(fields=['status'])[0]))
print(qb.workstatus('%d:1-10' % j))
print(qb.workblock('%d:1-10' % j))
try:
    qb.workblock('%d:9,99999' % j)
except qb.NoSuchWork as err:
    print(err)
print(qb.jobinfo()[0]['todotally']['blocked'])
"""
PRINTED = [
    "pending",
    "pending",
    "pending",
    "0",
    "2",
    "['id', 'status']",
    "pending",
    "1",
    "job 1: no work item '99999'",
    "3",
]


async def run_callback(tmp_path: Path, servicer: type[CountingSupervisor]) -> CountingSupervisor:
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db", servicer)
    (job,) = endpoint.store.submit([{"name": "big", "user": "alice", "agenda": AGENDA}])
    try:
        await endpoint.start()
        settings = stack_settings(tmp_path / "data", supervisor=endpoint.address)
        running = await server.start(settings)
        try:
            async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
                response = await client.execute_callback(
                    language="python", code=CALLBACK, job={"id": job["id"], "user": "alice"}
                )
        finally:
            await running.stop()
    finally:
        await endpoint.stop()
        endpoint.store.close()
    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
    assert response.stdout.splitlines() == PRINTED
    return endpoint.servicer


async def test_reads_of_a_big_job_ask_for_and_get_only_the_items_they_need(
    tmp_path: Path,
) -> None:
    supervisor = await run_callback(tmp_path, CountingSupervisor)
    every = len(AGENDA)
    assert supervisor.job_info_asked == [
        ("AGENDA_SCOPE_NONE", []),  # jobstatus
        ("AGENDA_SCOPE_NONE", []),  # subjobstatus
        ("AGENDA_SCOPE_NAMED", ["5"]),  # workstatus
        ("AGENDA_SCOPE_NAMED", ["5"]),  # workunblock
        ("AGENDA_SCOPE_NAMED", ["5,7", "5", "7"]),  # workblock: an item so named, or both
        ("AGENDA_SCOPE_NONE", []),  # jobinfo(fields=['status'])
        ("AGENDA_SCOPE_NAMED", ["1-10"]),  # workstatus names one item, whatever its name
        ("AGENDA_SCOPE_ALL", []),  # a range, or a chunk so named: only the agenda tells
        ("AGENDA_SCOPE_NAMED", ["9,99999", "9", "99999"]),  # a missing name ...
        ("AGENDA_SCOPE_ALL", []),  # ... is looked for in the whole agenda, as before
        ("AGENDA_SCOPE_ALL", []),  # jobinfo()
    ]
    assert supervisor.job_info_items == [0, 0, 1, 1, 2, 0, 1, every, 1, every, every]


async def test_a_supervisor_that_ignores_the_hint_gives_the_callback_the_same_answers(
    tmp_path: Path,
) -> None:
    supervisor = await run_callback(tmp_path, HintIgnoringSupervisor)
    assert set(supervisor.job_info_items) == {len(AGENDA)}


async def test_a_supervisor_whose_named_answer_lacks_a_name_gives_the_same_answers(
    tmp_path: Path,
) -> None:
    """A named read that comes back without its item is read again in full, as verbs do.

    ``qb.workstatus`` raised NoSuchWork for an item the job has.
    """
    supervisor = await run_callback(tmp_path, NameDroppingSupervisor)
    assert supervisor.job_info_asked[2:4] == [
        ("AGENDA_SCOPE_NAMED", ["5"]),  # workstatus: the answer lacks '5' ...
        ("AGENDA_SCOPE_ALL", []),  # ... so the whole agenda decides
    ]


async def test_an_answer_larger_than_grpc_default_4_mib_reaches_the_callback(
    tmp_path: Path,
) -> None:
    """A big job's JobInfo passes gRPC's default receive limit (4 MiB: ~110,000 frames)."""
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db")
    (job,) = endpoint.store.submit(
        [{"name": "big", "user": "alice", "agenda": ["1"], "notes": "n" * (5 << 20)}]
    )
    try:
        await endpoint.start()
        settings = stack_settings(tmp_path / "data", supervisor=endpoint.address)
        running = await server.start(settings)
        try:
            async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
                response = await client.execute_callback(
                    language="python",
                    code="print(len(qb.jobinfo()[0]['notes']))",
                    job={"id": job["id"], "user": "alice"},
                )
        finally:
            await running.stop()
    finally:
        await endpoint.stop()
        endpoint.store.close()
    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response.failure
    assert response.stdout == f"{5 << 20}\n"
