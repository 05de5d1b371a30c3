"""The embedded farm on a full data disk: UNAVAILABLE naming supervisor.db, nothing half-done.

Against a real executor whose data dir is a small tmpfs filled to the last byte: every
farm call that writes is refused as the executor's own storage failures are (not as a
bug), changes nothing, and works once the space returns; the change it could not make
is made then, with its event, exactly once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from supervisor_client import FarmClient, RetryableError
from supervisor_client.qbcallback.v1 import supervisor_pb2, supervisor_pb2_grpc
from tests.conftest import stack_settings
from tests.faults.helpers import executor, fill, small_tmpfs
from tests.helpers.health import NOT_SERVING, SERVING, health_status
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.faults


async def test_farm_calls_on_a_full_disk_are_unavailable_and_change_nothing(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "disk", 16 << 20) as disk:
        async with executor(stack_settings(disk / "data")) as running:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
            async with FarmClient(channel) as farm:
                submitted = await farm.submit_jobs(
                    [{"name": "shot", "user": "alice", "cpus": 2, "agenda": ["1", "2"]}]
                )
                job_id = submitted.jobs[0].id
                taken = await farm.take_work("w1")
                assert (taken.job_id, taken.work_name) == (job_id, "1")

                filler = fill(disk)
                refused: list[RetryableError] = []
                calls: list[Callable[[], Awaitable[object]]] = [
                    lambda: farm.change_work(
                        job_id=job_id, work=["1"], change="complete", host="w1"
                    ),
                    lambda: farm.take_work("w2"),  # the job's second instance is free
                    lambda: farm.submit_jobs([{"name": "more", "user": "alice"}]),
                ]
                for call in calls:
                    with pytest.raises(RetryableError) as err:
                        await call()
                    refused.append(err.value)
                # The SupervisorService the executor calls for a callback's qb verbs and
                # its reports, on the private socket, answers the same.
                socket = disk / "data" / "supervisor.sock"
                async with grpc.aio.insecure_channel(f"unix:{socket}") as private:
                    stub = supervisor_pb2_grpc.SupervisorServiceStub(private)
                    with pytest.raises(grpc.aio.AioRpcError) as verb:
                        await stub.JobAction(
                            supervisor_pb2.JobActionRequest(
                                verb=supervisor_pb2.JOB_VERB_BLOCK, job_id=job_id, actor="alice"
                            )
                        )
                    refused.append(RetryableError(verb.value.code(), verb.value.details() or ""))
                assert [e.code for e in refused] == [grpc.StatusCode.UNAVAILABLE] * 4
                for e in refused:
                    assert f"cannot write {disk / 'data' / 'supervisor.db'}" in e.details, e
                    assert "disk is full" in e.details, e
                assert await eventually(lambda: _health_is(channel, NOT_SERVING), timeout_s=5), (
                    "a storage failure of the farm must show in health as the executor's own"
                )
                # Nothing of the refused calls happened, and no event waits for them.
                job = await farm.get_job(job_id)
                assert {w.name: w.status for w in job.job.agenda} == {
                    "1": "running",
                    "2": "pending",
                }
                assert [j.id for j in (await farm.list_jobs()).jobs] == [job_id]
                assert job.job.status == "running"

                filler.unlink()
                assert await eventually(lambda: _health_is(channel, SERVING), timeout_s=15)
                done = await farm.change_work(
                    job_id=job_id, work=["1"], change="complete", host="w1"
                )
                assert done.changed == 1
                taken = await farm.take_work("w2")
                assert taken.work_name == "2"
                await farm.change_work(job_id=job_id, work=["2"], change="complete", host="w2")
                waited = await farm.wait_jobs([job_id], wait_seconds=20)
                assert waited.done, waited
                # Each change once: none of the refused calls left a line behind.
                history = [line.text for line in (await farm.get_job(job_id)).history]
                assert history[1:] == [
                    "[work] 1 running on w1 (instance 1.0)",
                    "[work] 1 complete",
                    "[work] 2 running on w2 (instance 1.0)",
                    "[work] 2 complete",
                    "[job] running -> complete (from its agenda)",
                ]
            await channel.close()


async def _health_is(channel: grpc.aio.Channel, status: int) -> bool:
    return await health_status(channel) == status
