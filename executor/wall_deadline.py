"""A run's wall-clock deadline, which the executor's own stalls do not use up.

The wall limit is the callback's time. While the executor itself is held up (its process
stopped: SIGSTOP, a paused VM; its event loop blocked by something synchronous), a
callback waiting for the answer to a ``qb`` call is waiting for the executor, and one
that has ended is not seen to end: neither is the callback's doing. So a deadline moves
on by as long as the executor was held up during its run, and the run is judged once the
executor can see what it did: a callback whose ``qb`` call was sent in time, and
answered only when the executor woke, ends as it would have.

The holds are measured with a tick (``_Stalls``): a timer every ``TICK_S`` while a
deadline is waited on; a tick that fires more than ``HELD_AFTER_S`` late adds its lateness to
the held-up time. Shorter delays (a busy loop's ordinary jitter) count as the run's own.

A hold is the loop's, not a run's: who caused it cannot be told, and every run waited
on meanwhile is credited with it. So a callback that could make the executor hold its
loop (its ``qb`` calls on a 100,000-frame job did, until they were moved off it) would
buy itself time past its limit, twice it and more. The credit is therefore capped: a
deadline moves on by at most its own wall limit, and never less than ``MIN_CREDIT_S``
(a run of 1 s limit held 1.5 s by a stopped executor still ends as it would have).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import weakref
from collections.abc import AsyncIterator
from typing import Final

TICK_S: Final = 0.25
HELD_AFTER_S: Final = 0.25
# The most a deadline moves on is its wall limit, or this for a shorter limit.
MIN_CREDIT_S: Final = 10.0


class _Stalls:
    """How long one event loop has been held up, in total, while deadlines were waited on."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held = 0.0
        self._watchers = 0
        self._due = math.inf
        self._tick_handle: asyncio.TimerHandle | None = None

    def held(self) -> float:
        """The held-up time so far, the hold under way included (its tick is still late)."""
        late = self._loop.time() - self._due
        return self._held + (late if late > HELD_AFTER_S else 0.0)

    def watch(self) -> None:
        self._watchers += 1
        if self._watchers == 1:
            self._schedule()

    def unwatch(self) -> None:
        self._watchers -= 1
        if self._watchers == 0 and self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
            self._due = math.inf

    def _schedule(self) -> None:
        self._due = self._loop.time() + TICK_S
        self._tick_handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        late = self._loop.time() - self._due
        if late > HELD_AFTER_S:
            self._held += late
        self._schedule()


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Stalls] = (
    weakref.WeakKeyDictionary()
)


def _stalls(loop: asyncio.AbstractEventLoop) -> _Stalls:
    stalls = _by_loop.get(loop)
    if stalls is None:
        stalls = _by_loop[loop] = _Stalls(loop)
    return stalls


class WallDeadline:
    """``wall_s`` from its making, plus the time the executor was held up while it was waited on.

    That time counts up to ``max(wall_s, MIN_CREDIT_S)`` (see the module doc).

    The holds are measured only while a ``scope`` of it is open: the run's waits. What
    the executor does between them is synchronous: a hold there could not be told apart.
    """

    def __init__(self, wall_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._stalls = _stalls(self._loop)
        self._held_before = self._stalls.held()
        self._due = self._loop.time() + wall_s
        self._max_credit = max(wall_s, MIN_CREDIT_S)

    def held(self) -> float:
        """How long the executor has been held up since the deadline was made, as credited (capped)."""
        return min(self._stalls.held() - self._held_before, self._max_credit)

    def remaining(self) -> float:
        """Seconds left (0 or less once it has passed)."""
        return self._due + self.held() - self._loop.time()

    @contextlib.asynccontextmanager
    async def scope(self) -> AsyncIterator[asyncio.Timeout]:
        """A cancel scope (``asyncio.timeout``) that expires once the deadline has passed.

        TimeoutError out of it then, as from ``asyncio.timeout``; ``reschedule`` on the
        scope ends it sooner (a stop).
        """
        handle: asyncio.TimerHandle | None = None
        # What ``check`` reaches the scope through, emptied at the end: the scope holds its
        # task, the task the run's result (2 x 16 MiB of output at most), and ``check``
        # holding the scope made a cycle only the collector freed, which an idle executor
        # may not run for minutes (32 MB a run, probe 85).
        scopes: list[asyncio.Timeout] = []
        self._stalls.watch()
        try:
            async with asyncio.timeout(None) as scope:
                scopes.append(scope)

                def check() -> None:
                    nonlocal handle
                    left = self.remaining()
                    if left > 0:
                        handle = self._loop.call_later(left, check)
                    elif scopes and scopes[0].when() is None:  # not ended sooner by a stop
                        scopes[0].reschedule(self._loop.time())

                check()
                try:
                    yield scope
                finally:
                    if handle is not None:
                        handle.cancel()
                    scopes.clear()
        finally:
            self._stalls.unwatch()
