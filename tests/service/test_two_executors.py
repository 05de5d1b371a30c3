"""Two executors in one process (an embedded run beside a service object, or a test) keep apart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from executor import server
from executor.data_dir_lock import LOCK_FILE
from executor.errors import ConfigError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import TEST_UID_BASE, running_stack, stack_settings

pytestmark = pytest.mark.service


async def test_stopping_one_executor_leaves_the_others_cells_working(tmp_path: Path) -> None:
    first = stack_settings(tmp_path / "a", max_concurrent=1, launcher="cold")
    second = stack_settings(
        tmp_path / "b", max_concurrent=1, launcher="cold", sandbox_uid_base=TEST_UID_BASE + 8
    )
    async with running_stack(second) as survivor:
        async with running_stack(first) as stopped:
            reply = await stopped.client.execute_callback(
                language="python", code="print(1)", job={"id": 1}
            )
            assert reply.outcome == executor_pb2.OUTCOME_SUCCEEDED, reply

        reply = await survivor.client.execute_callback(
            language="python", code="print(2)", job={"id": 2}
        )

        assert reply.outcome == executor_pb2.OUTCOME_SUCCEEDED, reply.failure
        assert reply.stdout == "2\n"


async def test_a_second_executor_on_the_same_data_dir_is_refused_naming_the_first(
    tmp_path: Path,
) -> None:
    # It started without a word, and its stop removed the first one's supervisor socket:
    # every qb call of the first failed from then on, its health still SERVING (probe 55).
    data = tmp_path / "data"
    second = stack_settings(data, sandbox_uid_base=TEST_UID_BASE + 8)
    async with running_stack(stack_settings(data)) as first:
        with pytest.raises(
            ConfigError,
            match=rf"^data_dir: {data} is in use by another executor \(pid {os.getpid()}\): "
            "give each executor its own data dir",
        ):
            await server.start(second)
        (job,) = first.supervisor.submit([{"name": "still-served"}])
        reply = await first.client.execute_callback(
            language="python", code="print(qb.jobinfo()[0]['name'])", job=job
        )
        assert reply.outcome == executor_pb2.OUTCOME_SUCCEEDED, reply
        assert reply.stdout == "still-served\n"  # through its supervisor's socket
    async with running_stack(second) as after:  # the first let go as it stopped
        reply = await after.client.execute_callback(language="python", code="pass", job={"id": 1})
        assert reply.outcome == executor_pb2.OUTCOME_SUCCEEDED, reply


async def test_a_second_executor_is_refused_though_the_lock_file_was_deleted(
    tmp_path: Path,
) -> None:
    # The lock was the file's alone: a second executor started, and ran the first one's
    # firing in flight a second time (probe 61).
    data = tmp_path / "data"
    second = stack_settings(data, sandbox_uid_base=TEST_UID_BASE + 8)
    async with running_stack(stack_settings(data)):
        (data / LOCK_FILE).unlink()
        with pytest.raises(
            ConfigError, match=rf"^data_dir: {data} is in use by another executor: give each"
        ):
            await server.start(second)
