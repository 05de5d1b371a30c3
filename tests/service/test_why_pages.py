"""`cbexec triggers why` of a job of more callbacks than one ExplainCallbacks answer holds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from executor.api.errors import Context
from executor.api.triggers import TriggerServicer
from executor.triggers.engine import TriggerEngine
from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc
from tests.helpers.cli import cbexec
from tests.helpers.trigger_engines import Recorder, engine_at, job

pytestmark = pytest.mark.service


def five(job_id: int = 5) -> dict[str, Any]:
    """The job of five callbacks, as first registered."""
    return job(job_id, *((f"complete-work-self-{n}", "unblock-self") for n in range(5)))


def three_others(job_id: int = 5) -> dict[str, Any]:
    """The same job registered again (a farm's retry) with three callbacks of other triggers."""
    return job(job_id, *((f"done-work-self-{n}", "unblock-self") for n in range(3)))


class RegisteringBetweenPages(TriggerServicer):
    """A trigger service that registers the job again right after answering a first page.

    ``times`` first pages are followed so, as a farm retrying the job then would: what
    ``why`` asks for next is then of a registration the first page did not describe.
    """

    def __init__(self, engine: TriggerEngine) -> None:
        super().__init__(engine)
        self.engine = engine
        self.times = 0
        self.registrations = 0

    async def ExplainCallbacks(
        self, request: executor_pb2.ExplainCallbacksRequest, context: Context
    ) -> executor_pb2.ExplainCallbacksResponse:
        answer = await super().ExplainCallbacks(request, context)
        if request.after_callback_id == 0 and self.registrations < self.times:
            self.registrations += 1
            again = three_others() if self.registrations % 2 else five()
            self.engine.register_job(again)
        return answer


@dataclass
class Service:
    address: str
    servicer: RegisteringBetweenPages


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    """A trigger service whose answers hold two callbacks each, with a job of five."""
    monkeypatch.setattr("executor.api.triggers.MAX_CALLBACKS_EXPLAINED", 2)
    engine = engine_at(tmp_path, Recorder())
    engine.register_job(five())
    servicer = RegisteringBetweenPages(engine)
    server = grpc.aio.server()
    executor_pb2_grpc.add_TriggerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Service(f"127.0.0.1:{port}", servicer)
    finally:
        await server.stop(0)
        await engine.close()


@pytest.fixture
def address(service: Service) -> str:
    return service.address


async def test_why_asks_for_every_page_and_prints_them_as_one_answer(address: str) -> None:
    said = await cbexec("triggers", "why", "5", address=address)
    assert (said.code, said.err) == (0, "")
    headings = [line for line in said.out.splitlines() if line.startswith("callback ")]
    assert [h.split(" (")[0] for h in headings] == [f"callback {n}" for n in range(1, 6)]

    said = await cbexec("triggers", "why", "5", "--json", address=address)
    assert (said.code, said.err) == (0, "")
    answer = json.loads(said.out)
    assert [cb["callback"]["id"] for cb in answer["callbacks"]] == [1, 2, 3, 4, 5]
    assert (answer["total_callbacks"], answer["next_after_callback_id"]) == (5, 0)


async def test_a_page_of_a_registration_the_job_no_longer_has_is_refused(
    service: Service,
) -> None:
    engine = service.servicer.engine
    async with ExecutorClient(service.address) as client:
        first = await client.explain_callbacks(5)
        assert first.registration > 0
        assert (first.total_callbacks, first.next_after_callback_id) == (5, 2)
        # The same registration: its pages follow on.
        second = await client.explain_callbacks(
            5, after_callback_id=2, registration=first.registration
        )
        assert [cb.callback.id for cb in second.callbacks] == [3, 4]
        assert second.registration == first.registration

        engine.register_job(three_others())  # registered again between two pages
        with pytest.raises(ExecutorRpcError) as refused:
            await client.explain_callbacks(5, after_callback_id=2, registration=first.registration)
        assert refused.value.code == grpc.StatusCode.ABORTED
        assert "job 5 was registered again since the first page was read" in refused.value.details
        assert "start over from the first page" in refused.value.details

        # A number the job never had (numbers only grow) is the request's mistake.
        with pytest.raises(ExecutorRpcError) as never:
            await client.explain_callbacks(5, registration=first.registration + 10**6)
        assert never.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "job 5 has never been at it" in never.value.details

        # A client from before the field asks without it: each page as the job is now.
        old = await client.explain_callbacks(5, after_callback_id=2)
        assert [cb.callback.triggers for cb in old.callbacks] == ["done-work-self-2"]
        assert old.total_callbacks == 3 and old.registration > first.registration

        # Even a job removed and registered again is another registration.
        engine.register_job(five())
        again = await client.explain_callbacks(5)
        assert again.registration not in (0, first.registration, old.registration)


async def test_why_reads_every_page_of_one_registration_when_the_job_is_registered_again(
    service: Service,
) -> None:
    service.servicer.times = 1  # after the first page: the job of three callbacks
    said = await cbexec("triggers", "why", "5", "--json", address=service.address)
    assert (said.code, said.err) == (0, "")
    answer = json.loads(said.out)
    # Read again from the first page: the three callbacks the job has now, and only them.
    assert [cb["callback"]["triggers"] for cb in answer["callbacks"]] == [
        f"done-work-self-{n}" for n in range(3)
    ]
    assert (answer["total_callbacks"], answer["next_after_callback_id"]) == (3, 0)
    assert service.servicer.registrations == 1


async def test_why_says_so_when_the_job_is_registered_again_at_every_read(
    service: Service,
) -> None:
    service.servicer.times = 100
    said = await cbexec("triggers", "why", "5", address=service.address)
    assert said.code == 3 and said.out == ""
    assert said.err == (
        "cbexec: job 5 was registered again while its pages were read, 3 times in a row, so "
        "no answer describes one registration of it: ask again later, or for one callback "
        "(JOB:CALLBACK)\n"
    )
    assert service.servicer.registrations == 3
