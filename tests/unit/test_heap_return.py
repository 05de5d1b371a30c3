"""Giving back what large calls took: one trim per burst, none for small calls."""

from __future__ import annotations

import asyncio

import pytest

from executor.heap_return import LARGE_CALL_BYTES, HeapTrimmer, keep_large_blocks_apart

pytestmark = pytest.mark.unit


class CountingTrimmer(HeapTrimmer):
    """The real trimmer, with a short delay and glibc's trim counted instead of run."""

    def __init__(self) -> None:
        super().__init__(delay_s=0.01)
        self.pads: list[int] = []
        self._trim = self._count

    def _count(self, pad: int) -> int:
        self.pads.append(pad)
        return 1


async def trims_reach(trimmer: CountingTrimmer, count: int) -> None:
    """Wait (up to 5 s) until ``count`` trims have run."""
    for _ in range(500):
        if len(trimmer.pads) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(trimmer.pads)} trims, not {count}")


async def test_a_burst_of_large_requests_is_followed_by_one_trim() -> None:
    trimmer = CountingTrimmer()
    for _ in range(5):
        trimmer.after_call(LARGE_CALL_BYTES)
    await trims_reach(trimmer, 1)
    await trimmer.close()
    assert trimmer.pads == [0]  # the whole heap, no pad kept
    trimmer.after_call(16 << 20)  # a later one: a trim of its own
    await trims_reach(trimmer, 2)
    await trimmer.close()
    assert trimmer.pads == [0, 0]


async def test_small_requests_trim_nothing() -> None:
    trimmer = CountingTrimmer()
    for _ in range(100):
        trimmer.after_call(LARGE_CALL_BYTES - 1)
    assert trimmer.trims == 0
    assert trimmer._pending is None  # nothing scheduled either


async def test_a_trim_not_started_yet_is_cancelled_at_close() -> None:
    trimmer = CountingTrimmer()
    trimmer._delay_s = 60.0
    trimmer.after_call(LARGE_CALL_BYTES)
    await trimmer.close()
    assert trimmer.pads == []


def test_glibcs_mmap_threshold_is_set() -> None:
    assert keep_large_blocks_apart()  # these machines run glibc
