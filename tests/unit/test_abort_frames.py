"""Letting go of an aborted call's frames never ends another coroutine (probe 74)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from executor.api.interceptors import _let_go_of_frames

pytestmark = pytest.mark.unit


class Held:
    """What an ended frame held (a refused request, say)."""


async def test_an_error_raised_in_two_tasks_lets_go_of_ended_frames_and_no_waiting_one() -> None:
    # One error object raised in several tasks (callers of one failed shared commit) holds
    # each one's frames in its traceback; clearing them all closed a task still waiting in
    # its frame: an owed result's retry ended without a word and the stop waited forever.
    shared = RuntimeError("the storage refused the shared commit")
    again = asyncio.Event()

    async def waiting() -> str:
        try:
            raise shared
        except RuntimeError:
            pass
        await again.wait()
        return "went on"

    def ended(held: Held) -> None:
        raise shared

    other = asyncio.create_task(waiting())
    await asyncio.sleep(0)  # it has met the error and waits
    held = Held()
    with contextlib.suppress(RuntimeError):
        ended(held)
    frames = []
    tb = shared.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    assert [f.f_code.co_name for f in frames].count("waiting") == 1
    del held

    _let_go_of_frames(shared)

    ended_frame = next(f for f in frames if f.f_code.co_name == "ended")
    assert ended_frame.f_locals == {}, "an ended frame lets go of what it held"
    again.set()
    assert await asyncio.wait_for(other, 2) == "went on"
