"""Parent<->child frames on the bridge socket: a 4-byte big-endian length, then one UTF-8 JSON object.

Stdlib only: this module runs inside the sandbox (imported as ``protocol``) and in the
executor (as ``executor.child.protocol``). JSON keeps the Perl side to core modules.

Frames, by ``type``:

parent -> child
    ``start``  {language, code, context: {job, event, work_name, subjob_id, callback}}
    ``reply``  {id, ok: true, value} | {id, ok: false, error: {kind, message}}
child -> parent
    ``call``   {id, fn, args: [...], kwargs: {...}}   one qb function call, answered by a reply
    ``done``   {status, exit_code?, exception_type?, message?, traceback?}
               status: ok | exit | exception | memory | rejected
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

HEADER = struct.Struct(">I")
# Child frames are small calls; a larger one is a protocol violation by the callback.
MAX_CHILD_FRAME_BYTES = 1 << 20
# Parent frames carry the start context and jobinfo replies (a pgrp with big agendas).
MAX_PARENT_FRAME_BYTES = 64 << 20


class FrameError(Exception):
    """A frame was malformed, too large, or the peer closed mid-frame."""


def encode(message: dict[str, Any]) -> bytes:
    """Serialise one frame."""
    body = json.dumps(message, separators=(",", ":"), default=str).encode("utf-8")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse one frame body, insisting on a JSON object."""
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # 1 MiB of '[' recurses
        raise FrameError(f"frame is not UTF-8 JSON: {err}") from err
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError("frame is not a JSON object with a 'type'")
    return message


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            raise FrameError("bridge closed mid-frame" if chunks or size != HEADER.size else "eof")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, max_bytes: int = MAX_PARENT_FRAME_BYTES) -> dict[str, Any]:
    """Blocking read of one frame (the child side)."""
    (size,) = HEADER.unpack(_read_exactly(fd, HEADER.size))
    if size > max_bytes:
        raise FrameError(f"frame of {size} bytes exceeds {max_bytes}")
    return decode_body(_read_exactly(fd, size))


def write_frame(fd: int, message: dict[str, Any]) -> None:
    """Blocking write of one frame (the child side)."""
    data = encode(message)
    while data:
        written = os.write(fd, data)
        data = data[written:]
