"""The executor's end of a child's bridge: send the start frame, answer qb calls, keep the done frame.

Every frame the child sends is checked (``protocol.parse_child_frame``) before it is
believed; a length beyond the child's frame limit is refused before anything is read
into memory. Whatever the callback writes on its bridge may end its own run's bridge
(``bridge_error``), never the executor: the socket is shut down, so a qb call after
garbage fails at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Final

from executor.child import protocol
from executor.child.protocol import CallFrame, ChildFrame, ReplyFrame
from executor.sandbox.exit_status import ChildExit

READ_CHUNK: Final = 64 << 10

# Answers one qb call of the child (the run's HostApi.serve_frame).
CallHandler = Callable[[CallFrame], Awaitable[ReplyFrame]]


class BridgeViolation(Exception):
    """The child broke the bridge protocol (the message says how)."""


def send_now(sock: socket.socket, frame: bytes) -> bytes:
    """Write what the socket takes without blocking; returns the rest.

    The start frame goes out before any task is scheduled, so a prepared child starts
    on the callback while the executor is still setting up its readers.
    """
    try:
        return frame[sock.send(frame, socket.MSG_DONTWAIT) :]
    except (BlockingIOError, InterruptedError):
        return frame
    except OSError:
        return frame  # the child is gone; the bridge task meets the same error and stops


async def _next_frame(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, buffer: bytearray
) -> ChildFrame | None:
    """The child's next frame, checked (what is read beyond it stays in ``buffer``); None at its end.

    The bridge ending between frames, or inside a header, is the callback ending.
    """
    header = protocol.HEADER.size
    size = -1
    while True:
        if size < 0 and len(buffer) >= header:
            (size,) = protocol.HEADER.unpack_from(buffer)
            if size > protocol.MAX_CHILD_FRAME_BYTES:
                raise BridgeViolation(f"frame of {size} bytes exceeds the 1 MiB frame limit")
        if 0 <= size <= len(buffer) - header:
            body = bytes(buffer[header : header + size])
            del buffer[: header + size]
            return protocol.parse_child_frame(body)
        chunk = await loop.sock_recv(sock, READ_CHUNK)
        if not chunk:
            if size >= 0:
                raise protocol.FrameError("the bridge closed inside a frame")
            return None
        buffer += chunk


async def serve_bridge(
    sock: socket.socket,
    unsent: bytes,
    on_call: CallHandler,
    result: ChildExit,
    on_violation: Callable[[str], object],
) -> None:
    """Finish sending the start frame, answer calls, keep the done frame; stop on EOF or garbage.

    A frame that breaks the protocol is a violation: it is kept as ``bridge_error`` and
    ``on_violation`` hears of it (the runner ends the run: a callback that forges frames
    gets no further say). On the socket itself, not asyncio streams: a run exchanges
    one or two frames, and a transport with its reader and writer cost more.
    """
    loop = asyncio.get_running_loop()
    buffer = bytearray()
    try:
        if unsent:
            await loop.sock_sendall(sock, unsent)
        while (frame := await _next_frame(loop, sock, buffer)) is not None:
            if frame["type"] == "call":
                result.calls += 1
                await loop.sock_sendall(sock, protocol.encode(await on_call(frame)))
            elif result.done is not None:
                raise BridgeViolation("a second done frame")
            else:
                result.done = frame
    except BridgeViolation as err:
        result.bridge_error = str(err)
    except protocol.FrameError as err:
        result.bridge_error = f"malformed frame: {err}"
    except (ConnectionError, BrokenPipeError):
        pass  # the callback went away mid-reply
    finally:
        # The child sees EOF: a qb call after garbage fails at once instead of waiting.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    if result.bridge_error:
        on_violation(f"the callback broke the bridge protocol: {result.bridge_error}")
