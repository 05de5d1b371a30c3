"""Calls within the port's caps (connections x streams) are all served, however many at once.

gRPC's server holds a call that has arrived until the application asks for it, and the
aio server asks for one at a time; past gRPC's default of 1000 such calls it dropped
new ones at random, CANCELLED with no detail and no log line (probe 111: 535-654 of
3000 WaitJobs sent at once on three connections).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from supervisor_client import FarmClient
from supervisor_client.qbcallback.v1 import farm_pb2, farm_pb2_grpc
from tests.conftest import running_stack, stack_settings

pytestmark = pytest.mark.service

CHANNELS = 4
CALLS_PER_CHANNEL = 500  # below max_streams: none is refused before the client knows it


async def test_calls_sent_at_once_on_several_connections_are_all_answered(
    tmp_path: Path,
) -> None:
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        assert stack.settings.max_streams > CALLS_PER_CHANNEL
        async with FarmClient(stack.channel) as farm:
            submitted = await farm.submit_jobs([{"name": "held", "status": "blocked"}])
        job_id = submitted.jobs[0].id
        address = f"127.0.0.1:{stack.running.port}"
        # A pool of its own each: one connection per channel, as separate clients have.
        channels = [
            grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(CHANNELS)
        ]
        try:
            for channel in channels:
                await asyncio.wait_for(channel.channel_ready(), 10)
            request = farm_pb2.WaitJobsRequest(job_ids=[job_id], timeout_seconds=1)
            answers = await asyncio.gather(
                *(
                    farm_pb2_grpc.FarmServiceStub(channels[i % CHANNELS]).WaitJobs(
                        request, timeout=60
                    )
                    for i in range(CHANNELS * CALLS_PER_CHANNEL)
                ),
                return_exceptions=True,
            )
        finally:
            for channel in channels:
                await channel.close()
        failed = [a for a in answers if isinstance(a, BaseException)]
        assert not failed, (
            f"{len(failed)} of {len(answers)} failed, first: {failed[0]!r}"
            f" ({[str(a.code()) for a in failed if isinstance(a, grpc.aio.AioRpcError)][:5]})"
        )
        assert {a.done for a in answers if isinstance(a, farm_pb2.WaitJobsResponse)} == {False}
