"""What requests waiting for a slot may hold: refused past max_queue_bytes, given back after."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Final

import grpc
import psutil
import pytest

from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, types_pb2
from tests.conftest import running_stack, stack_settings
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

MIB: Final = 1 << 20
# Generous: the test process holds the client's side of the calls too.
PEAK_MARGIN_BYTES: Final = 400 * MIB
BACK_MARGIN_BYTES: Final = 120 * MIB


def rss() -> int:
    return int(psutil.Process().memory_info().rss)


def execute_request(code: str, extra_bytes: int = 0) -> executor_pb2.ExecuteRequest:
    request = executor_pb2.ExecuteRequest(
        callback=types_pb2.Callback(language="python", code=code),
        context=executor_pb2.JobContext(job=types_pb2.Job(id=1)),
    )
    if extra_bytes:
        request.context.job.extra.update({"z": "x" * extra_bytes})
    return request


async def test_waiting_requests_are_refused_past_their_bytes_and_their_memory_comes_back(
    tmp_path: Path,
) -> None:
    settings = stack_settings(tmp_path / "data", max_concurrent=1, max_queue_bytes=32 * MIB)
    async with running_stack(settings) as stack:
        channel = grpc.aio.insecure_channel(
            stack.address, options=[("grpc.max_send_message_length", 32 * MIB)]
        )
        stub = executor_pb2_grpc.CallbackExecutorServiceStub(channel)
        dispatcher = stack.running.dispatcher
        big = execute_request("print('big')", 15 * MIB)
        await stub.Execute(execute_request("print(1)"))
        gc.collect()
        before = rss()

        sleeper = asyncio.ensure_future(
            stub.Execute(execute_request("import time; time.sleep(60)"))
        )
        assert await eventually(lambda: dispatcher.active == 1)
        queued = [asyncio.ensure_future(stub.Execute(big)) for _ in range(2)]
        assert await eventually(lambda: dispatcher.waiting == 2)  # 2 x 15 MiB: within 32
        peak = rss()
        # Each refused request's bytes, parsed message and job dict are let go of at once
        # (they were kept in a reference cycle with gRPC's abort until a collection).
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Execute(big)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "would pass max_queue_bytes (32.0 MiB); retry later" in str(
                refused.value.details()
            )
            assert ("retry-after-s", "1") in tuple(refused.value.trailing_metadata() or ())
            peak = max(peak, rss())
        # 22 requests of 15 MiB were sent; two of them wait, held twice over.
        assert peak - before < PEAK_MARGIN_BYTES, f"{(peak - before) / MIB:.0f} MiB more"

        sleeper.cancel()  # its run is stopped, and the queued ones run
        answers = await asyncio.gather(*queued)
        assert [answer.outcome for answer in answers] == [
            executor_pb2.Outcome.OUTCOME_SUCCEEDED
        ] * 2
        del answers, queued
        await channel.close()
        # Given back within a moment of the last large request (heap_return.HeapTrimmer).
        back = await eventually(lambda: rss() - before < BACK_MARGIN_BYTES, timeout_s=15)
        assert back, f"{(rss() - before) / MIB:.0f} MiB more than before"
