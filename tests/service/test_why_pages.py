"""`cbexec triggers why` of a job of more callbacks than one ExplainCallbacks answer holds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from executor.api.triggers import TriggerServicer
from supervisor_client.qbcallback.v1 import executor_pb2_grpc
from tests.helpers.cli import cbexec
from tests.helpers.trigger_engines import Recorder, engine_at, job

pytestmark = pytest.mark.service


@pytest.fixture
async def address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """A trigger service whose answers hold two callbacks each, with a job of five."""
    monkeypatch.setattr("executor.api.triggers.MAX_CALLBACKS_EXPLAINED", 2)
    engine = engine_at(tmp_path, Recorder())
    engine.register_job(job(5, *((f"complete-work-self-{n}", "unblock-self") for n in range(5))))
    server = grpc.aio.server()
    executor_pb2_grpc.add_TriggerServiceServicer_to_server(TriggerServicer(engine), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)
        await engine.close()


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
