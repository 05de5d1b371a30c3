"""One executor-wide turn for the big answers read from the history.

GetRun answers with a whole run, up to 2 x 16 MiB of output, read and made into a
message in ~0.25 s of the loop: 20 at once held another user's Execute 7.4 s, and each
answer is held until read (probe 111). A resent ``PublishEvent`` with ``wait`` reads
the results its event's first application fired, as many runs' worth (probe 167). So
these answers take turns, one at a time for the whole executor (measured, 20 GetRuns
of a 2 x 16 MiB run from reading clients: two at a time held that Execute up to 2.6 s
and took 9.3 s in all, one at a time 0.37 s and 8.6 s), the others waiting within
their deadline.

A call takes its turn once its connection's unread answers are below its share
(``AnswerRoom.wait``; refused at the executor's bound), and makes its answer only if no
answer made meanwhile took that room. The method returns its answer in the step its
turn ends, with nothing awaited after it: ``CallGuard`` counts the answer in that same
step, so the next turn's check sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from executor.api.unread_answers import AnswerRoom

# Answers read from the history and made at once; the others wait for a turn.
ANSWERS_AT_ONCE: Final = 1

_T = TypeVar("_T")


class AnswerTurns:
    """The turns of the answers read from the history (GetRun's, a repeated wait's)."""

    def __init__(self, at_once: int = ANSWERS_AT_ONCE) -> None:
        self._turns = asyncio.Semaphore(at_once)

    async def take(self, room: AnswerRoom | None, read: Callable[[], Awaitable[_T]]) -> _T:
        """``await read()`` in a turn, once ``room`` (None: no count) lets its answer be made."""
        while True:
            if room is not None:  # answers made since the call came count now
                await room.wait()
            async with self._turns:
                if room is None or room.free():  # none made while this one took its turn
                    return await read()
