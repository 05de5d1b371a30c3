"""An executor holding more than 1024 descriptors: runs, fired callbacks and the side port work.

select() cannot watch a descriptor numbered 1024 or more (FD_SETSIZE); the executor's
descriptors get there with ~1000 client connections or ~70 slots' prepared children,
and its open-file limit is raised precisely to allow that. Here the test process (the
executor's, in-process) fills every number below 1100, so each descriptor the executor
opens while it runs (pidfds, accepted connections, pipes) is numbered above 1023.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supervisor_client.qbcallback.v1.executor_pb2 import Outcome
from tests.conftest import running_stack, stack_settings
from tests.helpers.descriptors import descriptors_past_fd_setsize
from tests.service.test_http import port_filled, raw_exchange

pytestmark = pytest.mark.service


async def test_runs_fired_callbacks_and_the_side_port_s_503_work_past_1024_descriptors(
    tmp_path: Path,
) -> None:
    settings = stack_settings(tmp_path / "data", http_bind="127.0.0.1:0")
    async with running_stack(settings) as stack:
        client = stack.client
        await client.register_job(
            {
                "id": 71,
                "name": "many fds",
                "callbacks": [
                    {
                        "triggers": "complete-job-self",
                        "language": "python",
                        "code": "print('fired')",
                    }
                ],
            }
        )
        with descriptors_past_fd_setsize():
            # Twice the slots: each run past the first round takes the child its cell
            # prepared after its last run, checking that it is still alive (a pidfd).
            for n in range(2 * settings.max_concurrent):
                result = await client.execute_callback(
                    language="python", code=f"print('run {n}')", job={"id": 70, "user": "alice"}
                )
                assert result.outcome == Outcome.OUTCOME_SUCCEEDED, result
                assert result.stdout == f"run {n}\n"

            reply = await client.publish_event(name="complete", type="job", job_id=71, wait=True)
            (fired,) = reply.fired
            assert fired.result.outcome == Outcome.OUTCOME_SUCCEEDED, fired
            assert fired.result.stdout == "fired\n"

            port = stack.running.http_port or 0
            async with port_filled(port):
                line, _, _ = await asyncio.to_thread(
                    raw_exchange, port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                )
                assert line.startswith("HTTP/1.1 503 "), line
