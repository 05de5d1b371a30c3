"""outbox.db while the supervisor is away: bounded, no run starts past it, its space given back."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from executor.errors import UnavailableError
from executor.runs.outbox import DeliveryError, Outbox
from tests.unit.test_dispatcher import Harness

pytestmark = pytest.mark.unit

KIB = 1 << 10


class Switchable:
    """A supervisor away until ``back`` is set, then taking everything."""

    def __init__(self) -> None:
        self.back = False
        self.taken: list[str] = []

    async def deliver(self, key: str, payload: bytes) -> bool:
        if not self.back:
            raise DeliveryError("the supervisor is away", retryable=True, unreachable=True)
        self.taken.append(key)
        return False


async def test_past_the_bound_no_run_starts_until_delivery_makes_room_and_the_space_goes_back(
    tmp_path: Path,
) -> None:
    # Found by probe 46: 60 results of 2 MB made outbox.db 128 MB with the supervisor
    # away (history_max_bytes bounded runs.db at 1 MiB), and it kept 143 MB after delivery.
    path = tmp_path / "outbox.db"
    supervisor = Switchable()
    outbox = Outbox(path, supervisor, max_bytes=256 * KIB, compact_free_bytes=64 * KIB)
    try:
        outbox.put("run-0", b"x" * (64 * KIB), 100.0)
        assert outbox.refusal() == ""
        for n in range(1, 8):  # runs admitted before the bound was reached are recorded
            outbox.put(f"run-{n}", b"x" * (64 * KIB), 100.0 + n)
        refusal = outbox.refusal()
        assert "not taken 8 results" in refusal and "outbox_max_bytes = 0.2 MiB" in refusal
        assert outbox.pending() == 8  # nothing was refused or lost
        harness = Harness(slots=1, queue=1)
        harness.dispatcher._refusal = outbox.refusal
        with pytest.raises(UnavailableError, match="has not taken"):
            await harness.execute("print(1)")
        with pytest.raises(UnavailableError, match="has not taken"):
            await harness.execute("print(1)", fired=True)  # its firing stays queued
        assert harness.runner.started == []
        peak = _file_bytes(path)
        supervisor.back = True
        outbox.start()
        assert await outbox.flush(10.0)
        assert outbox.refusal() == ""
        assert len(supervisor.taken) == 8
    finally:
        await outbox.close()
    assert _file_bytes(path) < peak / 4
    assert os.path.getsize(path) < peak / 4  # the file itself, once its log is copied


def _file_bytes(path: Path) -> int:
    """The database's size as SQLite sees it (its log's pages included)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        (count,) = db.execute("PRAGMA page_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
    return int(count * size)
