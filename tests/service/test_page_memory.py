"""The memory a big run's page took is given back once the side port is done with it.

The page is made and sent after the GetRun it read has ended, so the trim that call
armed (``heap_return``) may come before the page's memory is let go of: the side port
has the heap trimmed after such a page too (probe 111's F5).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Final

import grpc
import pytest

from executor.heap_return import HeapTrimmer
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, types_pb2
from tests.conftest import running_stack, stack_settings
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

MIB: Final = 1 << 20


def big_run() -> executor_pb2.ExecuteRequest:
    return executor_pb2.ExecuteRequest(
        invocation_id="bigpage-1",
        callback=types_pb2.Callback(language="python", code="print('x' * (15 << 20))"),
        context=executor_pb2.JobContext(job=types_pb2.Job(id=1)),
        limits=executor_pb2.Limits(output_bytes=16 * MIB),
    )


async def test_a_page_of_a_big_run_is_followed_by_a_trim_once_it_is_done(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data", http_bind="127.0.0.1:0")
    async with running_stack(settings) as stack:
        trimmer = stack.running.trimmer
        assert isinstance(trimmer, HeapTrimmer)
        options = [("grpc.max_receive_message_length", 64 * MIB)]
        async with grpc.aio.insecure_channel(stack.address, options=options) as channel:
            stub = executor_pb2_grpc.CallbackExecutorServiceStub(channel)
            ran = await stub.Execute(big_run(), timeout=60)
            assert ran.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED
        # A client that asks for the 15 MiB stream and reads none of it: the side port is
        # still sending the page when the trim its GetRun armed has run.
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect(("127.0.0.1", stack.running.http_port or 0))
        before = trimmer.trims
        reader.sendall(b"GET /runs/bigpage-1?stream=stdout HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert await eventually(lambda: trimmer.trims > before, timeout_s=5)
        before = trimmer.trims
        # It goes: the page is let go of (its send failed), and the heap trimmed after it.
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        reader.close()
        assert await eventually(lambda: trimmer.trims > before, timeout_s=5), trimmer.trims
