"""Giving the memory large requests and answers used back to the system (glibc's malloc).

A request of many MiB (an Execute with a large ``context.job``, up to 16 MiB) is held
several times over while it is received, decoded, converted and run: gRPC's receive
buffers, the bytes, the parsed message, the job dict. Freed, that memory stayed with the
process: glibc raises its mmap threshold to the size of each large block freed (up to
32 MiB), so the next ones come from its heaps, and gRPC's many small receive buffers
leave its threads' heaps with free pages it keeps. Measured on the 2-core development
VM: 30 queued requests of 15 MiB took the executor from 59 to about 1.6 GB, and 490 to
820 MiB of it stayed after every call had been answered.

So, at start, ``keep_large_blocks_apart`` fixes the mmap threshold at 1 MiB: a block of
1 MiB or more is its own mapping, given back when it is freed (as glibc does before its
first large free; a trivial call allocates no such block). And once a call with a large
request or a large answer has ended (an Execute answer of up to 2 x 16 MiB of output
goes through gRPC's send buffers the same way) ``HeapTrimmer`` has glibc give back the
free pages of every heap (``malloc_trim``), once
for a burst of them, off the event loop. A trim that gave back ~100 MiB took 25-50 ms of
its thread; one with nothing to give back, 0.2 ms. Elsewhere than glibc, both do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable
from typing import Final

logger = logging.getLogger(__name__)

# A call whose request or answer is at least this large is followed by a trim.
LARGE_CALL_BYTES: Final = 1 << 20
# The trim waits this long after the large call: gRPC has dropped its bytes by
# then, and the other requests of a burst are answered within it, so one trim gives back
# what all of them took.
TRIM_DELAY_S: Final = 1.0
# glibc's mallopt parameter for the mmap threshold (malloc.h); setting it stops the
# threshold's own rises.
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD_BYTES: Final = 1 << 20


def _libc_function(name: str) -> Callable[..., int] | None:
    """The C library's function ``name``, or None where it has none (not glibc)."""
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (AttributeError, OSError):
        return None
    return function


def keep_large_blocks_apart() -> bool:
    """Fix glibc's mmap threshold at 1 MiB, so a large block is given back once freed.

    False where there is no glibc (nothing changed).
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class HeapTrimmer:
    """Trims the process's heaps a moment after large calls, one trim per burst."""

    def __init__(self, delay_s: float = TRIM_DELAY_S) -> None:
        self._delay_s = delay_s
        self._trim = _libc_function("malloc_trim")
        self._pending: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[int] | None = None
        self.trims = 0  # trims started (tests and curiosity)

    def after_call(self, largest_bytes: int) -> None:
        """A call whose request or answer took ``largest_bytes`` has ended (on the event loop)."""
        if largest_bytes < LARGE_CALL_BYTES or self._trim is None or self._pending is not None:
            return
        loop = asyncio.get_running_loop()
        self._pending = loop.call_later(self._delay_s, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pending = None
        if self._trim is None or (self._running is not None and not self._running.done()):
            return  # the one running gives back this burst's pages too
        self.trims += 1
        # In a thread: ctypes lets go of the GIL, and the kernel's work of taking the
        # pages back (tens of ms for hundreds of MiB) is not the event loop's.
        self._running = loop.run_in_executor(None, self._trim, 0)

    async def close(self) -> None:
        """Cancel a trim not started yet; wait for one running (before its loop closes)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._running is not None:
            await self._running
