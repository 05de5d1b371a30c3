"""A ``bind`` other than 127.0.0.1: the executor's own channel reaches it (forwarder, /healthz).

The embedded supervisor's forwarder and the HTTP side port call the executor's own
services; they dialled 127.0.0.1 whatever ``bind`` said, so on ``[::1]`` or
``127.0.0.2`` (as on a farm network's address) no transition ever reached the trigger
engine and /healthz said 503 for good (probe 107).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import running_stack, stack_settings
from tests.service.test_http import fetch

pytestmark = [pytest.mark.service, pytest.mark.timeout(90)]


@pytest.mark.parametrize("bind", ["127.0.0.2:0", "[::1]:0", "localhost:0", "[::]:0"])
async def test_own_channel_reaches_the_bound_address(tmp_path: Path, bind: str) -> None:
    settings = stack_settings(tmp_path / "data", bind=bind, http_bind="127.0.0.1:0")
    async with running_stack(settings) as stack:
        status, _, body = await fetch(f"http://127.0.0.1:{stack.running.http_port}/healthz")
        assert (status, body.strip()) == (
            200,
            '{"status": "SERVING", "storage_problem": "", "slots_problem": ""}',
        )
        stack.supervisor.submit([{"name": "a", "user": "alice", "agenda": ["1"]}])
        forwarder = stack.running.forwarder
        assert forwarder is not None
        # Every transition of the submit reached the trigger engine (none waits unsent).
        await asyncio.wait_for(forwarder.drain(), 20)
