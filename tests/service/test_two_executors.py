"""Two executors in one process (an embedded run beside a service object, or a test) keep apart."""

from __future__ import annotations

from pathlib import Path

import pytest

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
