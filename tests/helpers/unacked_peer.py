"""A raw HTTP/2 client that never acknowledges the server's SETTINGS.

gRPC applies its bound on a call's headers only from that acknowledgement on, so this
peer shows what the executor does before it (``executor/api/header_bound.py``). It sends
HTTP/2's preface and an empty SETTINGS, then calls whose header block is split into
HEADERS and CONTINUATION frames of 16 KiB (HPACK literals, as ``unreading_peer`` sends),
without END_STREAM: no request follows. It tells which streams the server ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from tests.helpers.unreading_peer import PREFACE, call_headers, close_connection, frame

_HEADERS, _SETTINGS, _CONTINUATION, _GOAWAY = 0x1, 0x4, 0x9, 0x7
_END_STREAM, _END_HEADERS = 0x1, 0x4
FRAME_BYTES: Final = 16 * 1024  # HTTP/2's default SETTINGS_MAX_FRAME_SIZE


class UnackedPeer:
    """One connection whose SETTINGS acknowledgement never comes; its ended streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_stream = 1
        self.ended: dict[int, bytes] = {}  # stream: the block of the headers that ended it
        self.closed = asyncio.Event()
        self._pump = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, port: int) -> UnackedPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(PREFACE + frame(_SETTINGS, 0, 0))
        await writer.drain()
        return cls(reader, writer)

    async def call(self, method: str, header_value_bytes: int) -> int:
        """Open a call of ``method`` with an ``x-big`` header of that many bytes; its stream."""
        stream, self._next_stream = self._next_stream, self._next_stream + 2
        block = call_headers(method, ("x-big", "x" * header_value_bytes))
        chunks = [block[i : i + FRAME_BYTES] for i in range(0, len(block), FRAME_BYTES)]
        frames = [
            frame(
                _HEADERS if n == 0 else _CONTINUATION,
                _END_HEADERS if n == len(chunks) - 1 else 0,
                stream,
                chunk,
            )
            for n, chunk in enumerate(chunks)
        ]
        self._writer.write(b"".join(frames))
        await self._writer.drain()
        return stream

    async def _read(self) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await self._reader.readexactly(9)
                length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = await self._reader.readexactly(length)
                if kind == _HEADERS and flags & _END_STREAM:
                    self.ended[stream] = payload
                elif kind == _GOAWAY:
                    break
        self.closed.set()

    async def close(self) -> None:
        await close_connection(self._pump, self._writer)
