"""StorageHealth told of a failure on a worker thread: the loop's event and listeners hear it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from executor.storage import StorageError, StorageHealth

pytestmark = pytest.mark.unit


async def test_a_failure_met_on_a_worker_thread_is_noted_on_the_loop(tmp_path: Path) -> None:
    health = StorageHealth(tmp_path)
    heard: list[tuple[str, bool]] = []
    health.listeners.append(
        lambda problem: heard.append((problem, threading.current_thread() is main))
    )
    main = threading.current_thread()
    prober = asyncio.get_running_loop().create_task(health.probe_forever())
    await asyncio.sleep(0)  # the prober knows its loop
    try:
        await asyncio.to_thread(health.failed, StorageError(tmp_path / "x.db", "disk full"))
        await asyncio.sleep(0)

        assert "disk full" in health.problem
        assert heard and heard[0][1], "the listener ran on the loop's thread"
    finally:
        prober.cancel()
        await asyncio.gather(prober, return_exceptions=True)
