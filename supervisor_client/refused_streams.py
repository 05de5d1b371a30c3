"""Calls the executor's gRPC server refused unseen (RST_STREAM REFUSED_STREAM), sent again.

An executor takes at most ``max_streams`` calls at once on one connection and tells
clients so (HTTP/2's ``SETTINGS_MAX_CONCURRENT_STREAMS``). gRPC's client holds most calls
past it, but some are sent before it has seen a call end, and gRPC's server refuses
those with RST_STREAM REFUSED_STREAM (HTTP/2 error code 7): UNAVAILABLE, "Stream
removed (RST_STREAM (Received RST_STREAM with error code 7))" (probe 105: 12 of 1200
calls at the default 1000, 44 of 200 at 2). RFC 9113 §8.7: a stream refused so was not
processed, so sending the request again is safe for every call, even one that starts a
callback. gRPC's own transparent retry sends one again once at most; this keeps on, with
a short growing pause, within the call's deadline.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import grpc

from supervisor_client.errors import ExecutorRpcError

_Response = TypeVar("_Response")

# gRPC's words for a stream the server refused unseen (chttp2's RST_STREAM handling).
REFUSED_STREAM_TEXT: Final = "RST_STREAM with error code 7)"
FIRST_PAUSE_S: Final = 0.01
LONGEST_PAUSE_S: Final = 1.0
# Without a deadline, at most this many sends (about 25 s of pauses).
MAX_SENDS: Final = 32


def refused_unseen(err: ExecutorRpcError) -> bool:
    """Whether the server refused the call before any of it was processed (REFUSED_STREAM)."""
    return err.code == grpc.StatusCode.UNAVAILABLE and REFUSED_STREAM_TEXT in err.details


async def sent_again_while_refused(
    send: Callable[[float | None], Awaitable[_Response]], timeout_s: float | None
) -> _Response:
    """``send(timeout)``'s answer, sending again while the server refuses the call unseen.

    Each send gets what is left of ``timeout_s``; the last refusal is raised when no time
    (or, without a deadline, no send) is left.
    """
    loop = asyncio.get_running_loop()
    end = None if timeout_s is None else loop.time() + timeout_s
    pause_s = FIRST_PAUSE_S
    sends = 0
    while True:
        left = None if end is None else end - loop.time()
        try:
            return await send(left)
        except ExecutorRpcError as err:
            sends += 1
            if not refused_unseen(err):
                raise
            # Jittered: the calls refused together should not all come back together.
            wait_s = pause_s * random.uniform(0.5, 1.0)
            out_of_time = end is not None and end - loop.time() <= wait_s
            if out_of_time or (end is None and sends >= MAX_SENDS):
                raise
            await asyncio.sleep(wait_s)
            pause_s = min(pause_s * 2, LONGEST_PAUSE_S)
