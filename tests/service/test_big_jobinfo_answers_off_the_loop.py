"""A big JobInfo answer is made into job dicts on a worker thread, whatever makes it big.

Found by probe 104: only an answer whose agendas held 1,000 work items went to a thread;
a job whose ``extra`` had a million keys (21 MB) was converted on the event loop, 2-4 s
per ``qb.jobinfo``, and a pgrp of 200,000 small jobs 5.3 s, while every other call
(Execute, health) waited. A trivial answer stays on the loop: the hot path.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from executor.api import supervisor as supervisor_module
from executor.api.supervisor import GrpcSupervisor
from supervisor_client import ReferenceSupervisor, SupervisorServicer
from supervisor_client.qbcallback.v1 import supervisor_pb2, supervisor_pb2_grpc, types_pb2

pytestmark = pytest.mark.service


class FixedAnswers(SupervisorServicer):
    """The reference supervisor, its JobInfo answering what the test set."""

    def __init__(self, store: ReferenceSupervisor) -> None:
        super().__init__(store)
        self.answer = supervisor_pb2.JobInfoResponse()

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        return self.answer


@pytest.fixture
async def served() -> AsyncIterator[tuple[FixedAnswers, GrpcSupervisor]]:
    store = ReferenceSupervisor()
    answers = FixedAnswers(store)
    server = grpc.aio.server()
    supervisor_pb2_grpc.add_SupervisorServiceServicer_to_server(answers, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=supervisor_module.SUPERVISOR_CHANNEL_OPTIONS
    )
    try:
        yield answers, GrpcSupervisor(channel, timeout_s=30.0)
    finally:
        await channel.close()
        await server.stop(None)
        store.close()


@pytest.fixture
def converting_threads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each conversion to job dicts ran on the event loop's thread (the real one runs)."""
    on_loop: list[bool] = []
    convert = supervisor_module.job_dicts
    loop_thread = threading.get_ident()

    def noted(jobs: Iterable[types_pb2.Job], **kwargs: Any) -> list[dict[str, Any]]:
        on_loop.append(threading.get_ident() == loop_thread)
        return convert(jobs, **kwargs)

    monkeypatch.setattr(supervisor_module, "job_dicts", noted)
    return on_loop


def _job(job_id: int, *, extra_keys: int = 0, items: int = 0) -> types_pb2.Job:
    job = types_pb2.Job(id=job_id, name=f"job{job_id}", status="running", user="alice", pgrp=7)
    if extra_keys:
        extra = struct_pb2.Struct()
        extra.update({f"k{n}": n for n in range(extra_keys)})
        job.extra.CopyFrom(extra)
    for n in range(items):
        job.agenda.add(name=str(n), status="blocked")
    return job


async def _read(supervisor: GrpcSupervisor, *, pgrp: int | None = None) -> list[dict[str, Any]]:
    return await supervisor.job_info(
        job_id=None if pgrp else 7, pgrp=pgrp, include_callbacks=False, actor="alice"
    )


async def test_a_wide_struct_is_converted_on_a_worker_thread(
    served: tuple[FixedAnswers, GrpcSupervisor], converting_threads: list[bool]
) -> None:
    answers, supervisor = served
    answers.answer = supervisor_pb2.JobInfoResponse(jobs=[_job(7, extra_keys=20_000)])
    (job,) = await _read(supervisor)
    assert job["k19999"] == 19999
    assert converting_threads == [False]


async def test_a_pgrp_of_many_small_jobs_is_converted_on_a_worker_thread(
    served: tuple[FixedAnswers, GrpcSupervisor], converting_threads: list[bool]
) -> None:
    answers, supervisor = served
    answers.answer = supervisor_pb2.JobInfoResponse(jobs=[_job(n) for n in range(1, 501)])
    assert len(await _read(supervisor, pgrp=7)) == 500
    assert converting_threads == [False]


async def test_a_big_agenda_still_goes_to_a_thread_and_a_small_answer_stays_on_the_loop(
    served: tuple[FixedAnswers, GrpcSupervisor], converting_threads: list[bool]
) -> None:
    answers, supervisor = served
    answers.answer = supervisor_pb2.JobInfoResponse(jobs=[_job(7, items=5000)])
    assert len((await _read(supervisor))[0]["agenda"]) == 5000
    answers.answer = supervisor_pb2.JobInfoResponse(jobs=[_job(7, extra_keys=10, items=10)])
    assert len((await _read(supervisor))[0]["agenda"]) == 10
    assert converting_threads == [False, True]
