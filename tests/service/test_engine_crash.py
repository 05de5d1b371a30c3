"""kill -9 between the two halves of an &&: after a restart the callback fires exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from supervisor_client import ExecutorClient
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc
from tests.helpers.processes import wait_until_no_sandboxed_processes

pytestmark = pytest.mark.service


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def executor_process(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A real `cbexec serve`, killed and reaped on the way out whatever happened."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "executor",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(data_dir),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        # Whatever it had started dies with it (PDEATHSIG through the zygote).
        assert not wait_until_no_sandboxed_processes(executor_pid=proc.pid)


async def wait_serving(channel: grpc.aio.Channel, proc: subprocess.Popen[bytes]) -> None:
    try:
        await ExecutorClient(channel).wait_until_serving(timeout=20)
    except TimeoutError:
        raise AssertionError(
            f"the executor never became SERVING (exit status {proc.poll()})"
        ) from None


def publish(job_id: int) -> executor_pb2.PublishEventRequest:
    return executor_pb2.PublishEventRequest(name="complete", type="job", job_id=job_id, wait=True)


async def test_sigkill_between_the_halves_of_an_and(tmp_path: Path) -> None:
    port = free_port()
    job = {
        "id": 30,
        "name": "waiter",
        "user": "alice",
        "callbacks": [
            {
                "triggers": "complete-job-10 && complete-job-11",
                "language": "python",
                "code": "print('fired for', qb.jobid())",
            }
        ],
    }

    with executor_process(tmp_path, port) as first:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, first)
            stub = executor_pb2_grpc.TriggerServiceStub(channel)
            await stub.RegisterJob(executor_pb2.RegisterJobRequest(job=job_from_dict(job)))
            half = await stub.PublishEvent(publish(10))
        assert list(half.fired) == []
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    with executor_process(tmp_path, port) as second:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, second)
            stub = executor_pb2_grpc.TriggerServiceStub(channel)
            fired = await stub.PublishEvent(publish(11))
            again = await stub.PublishEvent(publish(11))

    (firing,) = fired.fired
    assert firing.result.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED
    assert firing.result.stdout == "fired for 30\n"
    assert list(again.fired) == []


async def explain(channel: grpc.aio.Channel, job_id: int) -> executor_pb2.ExplainCallbacksResponse:
    return await ExecutorClient(channel).explain_callbacks(job_id)


async def test_sigkill_keeps_the_journal_work_items_checks_and_known_states(
    tmp_path: Path,
) -> None:
    """Everything the explanations read is as durable as the latches it explains."""
    port = free_port()
    frames = [{"name": frame, "status": "pending"} for frame in ("1", "2", "3")]
    jobs = [
        {"id": 10, "pgrp": 10, "label": "ribgen", "user": "alice", "agenda": frames},
        {"id": 11, "pgrp": 10, "label": "render", "user": "alice", "agenda": frames},
        {
            "id": 12,
            "pgrp": 10,
            "label": "comp",
            "user": "alice",
            "agenda": frames,
            "callbacks": [
                {
                    "triggers": "complete-work-ribgen-{work} && complete-work-render-{work}",
                    "language": "python",
                    "code": "print('frame', qb.workid())",
                },
                {"triggers": "complete-job-ribgn", "language": "qube", "code": "unblock-self"},
            ],
        },
        {"id": 30, "pgrp": 30, "user": "alice", "status": "running"},
    ]

    with executor_process(tmp_path, port) as first:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, first)
            client = ExecutorClient(channel)
            for job in jobs:
                await client.register_job(job)
            await client.publish_event(
                name="complete", type="work", job_id=10, work_name="2", event_id="ribgen-2"
            )
            await client.publish_event(name="complete", type="job", job_id=30, wait=True)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    with executor_process(tmp_path, port) as second:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await wait_serving(channel, second)
            client = ExecutorClient(channel)
            before = await explain(channel, 12)
            # A label registered after the restart resolves the check kept through it.
            await client.register_job({"id": 13, "pgrp": 10, "label": "ribgn", "user": "bob"})
            after = await explain(channel, 12)
            # Known states kept through the restart: a level callback sees job 30 complete.
            level = await client.register_job(
                {
                    "id": 31,
                    "user": "alice",
                    "callbacks": [
                        {
                            "triggers": "complete-job-30",
                            "language": "python",
                            "code": "print('level')",
                            "mode": "level",
                        }
                    ],
                }
            )
            fired = await client.publish_event(
                name="complete", type="work", job_id=11, work_name="2", wait=True
            )

    per_frame, typo = before.callbacks
    (two,) = [item for item in per_frame.work_items if list(item.work_names) == ["2"]]
    assert list(two.latches) == [True, False]
    assert two.atoms[0].latched_by.event_id == "ribgen-2"
    assert two.waiting == "complete-work-render-2"
    (entry,) = per_frame.journal
    assert (entry.work_name, list(entry.latched)) == ("2", ["complete-work-ribgen-2"])
    (check,) = typo.checks
    assert check.kind == executor_pb2.TRIGGER_CHECK_KIND_UNKNOWN_LABEL and not check.resolved
    assert after.callbacks[1].checks[0].resolved.startswith("label 'ribgn' names job 13")
    assert [firing.work_name for firing in level.fired] == [""]
    assert [firing.job_id for firing in level.fired] == [31]
    (firing,) = fired.fired
    assert (firing.work_name, firing.result.stdout) == ("2", "frame 2\n")
