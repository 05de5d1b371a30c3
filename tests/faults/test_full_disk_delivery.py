"""A full data disk after the callbacks ran: nothing is sent or run twice while the executor runs.

The outbox keeps what the supervisor acknowledged but could not be marked delivered in
memory, and sends it no more; a fired callback whose result cannot be recorded waits for
the storage instead of running again (SQLite: one executor, nobody else to take over);
and a stop does not wait for the storage.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from executor.runs.outbox import Backoff, DeliveryError, Outbox
from executor.storage import StorageHealth
from tests.faults.helpers import fill, small_tmpfs
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.faults


class CountingReceiver:
    """Takes every result (batches too), counting how often each was sent."""

    def __init__(self) -> None:
        self.down = True
        self.sent: Counter[str] = Counter()

    async def deliver(self, key: str, payload: bytes) -> bool:
        return (await self.deliver_many([(key, payload)]))[0]

    async def deliver_many(self, messages: list[tuple[str, bytes]]) -> list[bool]:
        await asyncio.sleep(0)
        if self.down:
            raise DeliveryError("UNAVAILABLE: down", retryable=True, unreachable=True)
        duplicates = [self.sent[key] > 0 for key, _ in messages]
        self.sent.update(key for key, _ in messages)
        return duplicates


@pytest.mark.parametrize("batch_size", [64, 1], ids=["batches", "one by one"])
async def test_results_acknowledged_while_the_disk_is_full_are_sent_once(
    tmp_path: Path, batch_size: int
) -> None:
    with small_tmpfs(tmp_path / "disk", 4 << 20) as disk:
        receiver = CountingReceiver()
        health = StorageHealth(disk)
        outbox = Outbox(
            disk / "outbox.db",
            receiver,
            backoff=Backoff(first_s=0.01, cap_s=0.05),
            batch_size=batch_size,
            health=health,
        )
        keys = [f"result-{n:02}" for n in range(20)]
        for key in keys:
            outbox.put(key, b"x" * 200)
        outbox.start()
        filler = fill(disk)
        receiver.down = False

        assert await eventually(lambda: set(receiver.sent) == set(keys), timeout_s=10)
        await asyncio.sleep(1.0)  # many backoffs of the delivery task, which fail to mark

        assert health.problem, "the marks did fail"
        assert receiver.sent == Counter(dict.fromkeys(keys, 1))
        assert outbox.pending() == 0, "nothing waits to be sent"
        filler.unlink()
        assert await eventually(lambda: outbox.stats().delivered == len(keys), timeout_s=10)
        assert receiver.sent == Counter(dict.fromkeys(keys, 1))
        await outbox.close()
