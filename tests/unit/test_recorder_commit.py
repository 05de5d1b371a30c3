"""A fired callback's result waits for the storage; an Execute caller is told at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from executor.runs import recorder
from executor.sql import StoreUnavailable

pytestmark = pytest.mark.unit


class FlakyOutbox:
    """Refuses the first ``refusals`` commits, as PostgreSQL restarting would."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.committed: list[str] = []

    async def commit(
        self, key: str, payload: bytes, ended_at: float | None = None, notes: str | None = None
    ) -> None:
        if self.refusals:
            self.refusals -= 1
            raise StoreUnavailable("PostgreSQL store unreachable: restarting")
        self.committed.append(key)


async def test_a_fired_runs_result_waits_for_the_store_instead_of_running_again() -> None:
    # Found by fault injection: a 1 s outage made a finished firing run a second time.
    outbox: Any = FlakyOutbox(refusals=2)
    await recorder.Recorder._commit(outbox, "fired-1", b"report", ended_at=1.0, wait_s=5.0)
    assert outbox.committed == ["fired-1"]


async def test_an_execute_callers_result_is_refused_at_once() -> None:
    outbox: Any = FlakyOutbox(refusals=1)
    with pytest.raises(StoreUnavailable):
        await recorder.Recorder._commit(outbox, "execute-1", b"report", ended_at=1.0, wait_s=0.0)
    assert outbox.committed == []


async def test_a_store_away_longer_than_the_wait_gives_the_firing_back() -> None:
    outbox: Any = FlakyOutbox(refusals=100)
    with pytest.raises(StoreUnavailable):
        await recorder.Recorder._commit(outbox, "fired-2", b"report", ended_at=1.0, wait_s=0.5)


async def test_without_a_bound_the_result_waits_as_long_as_the_storage_refuses() -> None:
    # SQLite: one executor, nobody else would run the firing; it must not run twice.
    outbox: Any = FlakyOutbox(refusals=3)  # 0.25 + 0.5 + 1 s of waiting
    await recorder.Recorder._commit(outbox, "fired-3", b"report", ended_at=1.0, wait_s=None)
    assert outbox.committed == ["fired-3"]


async def test_a_stop_ends_the_wait_at_once() -> None:
    outbox: Any = FlakyOutbox(refusals=100)
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, stopping.set)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await recorder.Recorder._commit(
            outbox, "fired-4", b"report", ended_at=1.0, wait_s=None, stopping=stopping
        )
    assert time.monotonic() - started < 1.0
    assert outbox.committed == []


async def test_a_result_whose_claim_no_longer_holds_is_not_committed() -> None:
    # A fleet's replica that stalled past its lease: another replica's run is the firing's.
    outbox: Any = FlakyOutbox(refusals=0)
    kept = await recorder.Recorder._commit(
        outbox, "fired-5", b"report", ended_at=1.0, wait_s=5.0, claim=lambda: False
    )
    assert (kept, outbox.committed) == (False, [])


async def test_the_claim_is_checked_again_before_each_try() -> None:
    # The store away at the first look, the claim taken over by the next.
    looks: Iterator[bool | Exception] = iter(
        [StoreUnavailable("PostgreSQL store unreachable: restarting"), False]
    )

    def claim() -> bool:
        answer = next(looks)
        if isinstance(answer, Exception):
            raise answer
        return answer

    outbox: Any = FlakyOutbox(refusals=0)
    kept = await recorder.Recorder._commit(
        outbox, "fired-6", b"report", ended_at=1.0, wait_s=5.0, claim=claim
    )
    assert (kept, outbox.committed) == (False, [])


async def test_a_claim_that_holds_commits() -> None:
    outbox: Any = FlakyOutbox(refusals=1)
    kept = await recorder.Recorder._commit(
        outbox, "fired-7", b"report", ended_at=1.0, wait_s=5.0, claim=lambda: True
    )
    assert (kept, outbox.committed) == (True, ["fired-7"])
