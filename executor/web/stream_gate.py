"""How many whole output streams the side port fetches, builds and sends at once.

A ``?stream=`` answer is the whole stream (up to 16 MiB), read from the executor's
loop as a whole run record (~0.25 s of the loop for 2 x 16 MiB) and held until the
client has read it. Clients that asked and never read held one each: 120 of them took
the executor to 3 GB, and 60 arriving at once held gRPC calls for seconds. So at most
``MAX_STREAMS_AT_ONCE`` are fetched or sent at a time across the port; a request beyond
them waits ``STREAM_WAIT_S`` for one to end, then is answered 503 with Retry-After. A
client that does not read is dropped by the write timeout (``server.WRITE_TIMEOUT_S``).
"""

from __future__ import annotations

import threading
from typing import Final

MAX_STREAMS_AT_ONCE: Final = 2
STREAM_WAIT_S: Final = 2.0


class StreamGate:
    """Slots for whole streams being fetched and sent: ``enter`` one, ``leave`` it once sent."""

    def __init__(self, at_once: int = MAX_STREAMS_AT_ONCE, wait_s: float = STREAM_WAIT_S) -> None:
        if at_once < 1:
            raise ValueError(f"at_once must be at least 1, not {at_once}")
        self.at_once = at_once
        self.wait_s = wait_s
        self._slots = threading.BoundedSemaphore(at_once)

    def enter(self) -> bool:
        """Take a slot, waiting up to ``wait_s`` for one; False when none came free."""
        return self._slots.acquire(timeout=self.wait_s)

    def leave(self) -> None:
        self._slots.release()
