"""A gRPC client that never reads its answers: raw HTTP/2 with a zero flow-control window.

What a gRPC library cannot be made to do (it always reads what a call is sent): it sends
calls on one connection with ``SETTINGS_INITIAL_WINDOW_SIZE`` 0 and never a
WINDOW_UPDATE, so the server can send each call's headers but no byte of its answer,
which it holds. It answers pings and acknowledges SETTINGS, as a live client does, so
keepalive never cuts it. Its headers are HPACK literals without indexing or Huffman
coding (RFC 7541 6.2.2), which need no table; the server's it does not decode: a call
whose stream ends (END_STREAM) before any DATA was answered with a status alone (a
refusal), one whose answer waits for the window never ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from typing import Final

from google.protobuf.message import Message

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0x0, 0x1, 0x4, 0x6, 0x7, 0x8
# HTTP/2's first flow-control window, of a stream and of the connection (RFC 9113 6.9.2).
FIRST_WINDOW: Final = 65535
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4
_INITIAL_WINDOW_SIZE: Final = 0x4


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


def _integer(value: int) -> bytes:
    """HPACK's integer with a 7-bit prefix (RFC 7541 5.1), no Huffman flag."""
    if value < 127:
        return bytes((value,))
    out, value = bytearray((127,)), value - 127
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes((*out, value))


def literal(name: str, value: str) -> bytes:
    """A header field as a literal without indexing, new name (RFC 7541 6.2.2)."""
    raw_name, raw_value = name.encode(), value.encode()
    return b"\x00" + _integer(len(raw_name)) + raw_name + _integer(len(raw_value)) + raw_value


def call_headers(method: str, *extra: tuple[str, str]) -> bytes:
    """The header block of a gRPC call of ``method`` (``/package.Service/Method``), then ``extra``."""
    return b"".join(
        literal(name, value)
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", method),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra,
        )
    )


async def close_connection(pump: asyncio.Future[None], writer: asyncio.StreamWriter) -> None:
    """Stop a peer's reading ``pump`` and close its connection."""
    pump.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pump
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


class UnreadingPeer:
    """One connection's calls, their answers never read; which calls ended (refused)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_stream = 1
        self.ended: set[int] = set()  # streams ended before any answer came (a status alone)
        self.headed: set[int] = set()  # streams answered with headers (held, or ended)
        self.answered: set[int] = set()  # streams whose answer began to come (DATA)
        # What the server lets a stream send it at first (its SETTINGS), and beyond that
        # by stream (WINDOW_UPDATE; 0: the connection's).
        self.first_window = FIRST_WINDOW
        self.granted: dict[int, int] = {}
        self._pump = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, port: int) -> UnreadingPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        settings = struct.pack(">HI", _INITIAL_WINDOW_SIZE, 0)
        writer.write(PREFACE + frame(_SETTINGS, 0, 0, settings))
        await writer.drain()
        return cls(reader, writer)

    async def call(self, method: str, request: Message) -> int:
        """Send one unary call of ``method`` (``/package.Service/Method``); its stream id."""
        stream, self._next_stream = self._next_stream, self._next_stream + 2
        headers = call_headers(method)
        message = request.SerializeToString()
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        self._writer.write(
            frame(_HEADERS, _END_HEADERS, stream, headers) + frame(_DATA, _END_STREAM, stream, body)
        )
        await self._writer.drain()
        return stream

    async def begin(self, method: str, declared: int, sent: int, *extra: tuple[str, str]) -> int:
        """Open a call whose request says it is ``declared`` bytes and send only ``sent`` of them.

        The stream stays open (no END_STREAM): a request the server would wait for.
        """
        stream, self._next_stream = self._next_stream, self._next_stream + 2
        body = b"\x00" + declared.to_bytes(4, "big") + b"\x0a" * sent
        self._writer.write(
            frame(_HEADERS, _END_HEADERS, stream, call_headers(method, *extra))
            + frame(_DATA, 0, stream, body)
        )
        await self._writer.drain()
        return stream

    async def send_within_windows(self, stream: int, sent: int, until: float) -> int:
        """Send ``stream`` more of its request as the server's windows allow, until it ends.

        ``sent``: what the stream has sent already; returns what it has sent in all, once
        the stream has ended or the loop's time has passed ``until`` (one stream alone on
        the connection: their windows are spent together).
        """
        loop = asyncio.get_running_loop()
        while stream not in self.ended and loop.time() < until:
            room = (
                min(
                    self.first_window + self.granted.get(stream, 0),
                    FIRST_WINDOW + self.granted.get(0, 0),
                )
                - sent
            )
            if room > 0:
                piece = min(room, 16384)
                self._writer.write(frame(_DATA, 0, stream, b"\x0a" * piece))
                await self._writer.drain()
                sent += piece
            else:
                await asyncio.sleep(0.01)
        return sent

    async def _read(self) -> None:
        reader, writer = self._reader, self._writer
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readexactly(9)
                length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = await reader.readexactly(length)
                if kind == _SETTINGS and not flags & _ACK:
                    for at in range(0, len(payload) - 5, 6):
                        key, value = struct.unpack(">HI", payload[at : at + 6])
                        if key == _INITIAL_WINDOW_SIZE:
                            self.first_window = value
                    writer.write(frame(_SETTINGS, _ACK, 0))
                elif kind == _PING and not flags & _ACK:
                    writer.write(frame(_PING, _ACK, 0, payload))
                elif kind == _DATA and stream:
                    self.answered.add(stream)
                elif kind == _HEADERS and stream:
                    self.headed.add(stream)
                    if flags & _END_STREAM and stream not in self.answered:
                        self.ended.add(stream)
                elif kind == _WINDOW_UPDATE:  # stream 0: the connection's
                    increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                    self.granted[stream] = self.granted.get(stream, 0) + increment
                elif kind == _GOAWAY:
                    return

    def settled(self, calls: int) -> bool:
        """Whether each of the first ``calls`` calls was answered (its answer held) or refused."""
        return len(self.headed) >= calls

    @property
    def held(self) -> int:
        """Calls whose answer the server holds (it sent their headers, not their end)."""
        return len(self.headed - self.ended)

    async def close(self) -> None:
        """Close the connection: the server lets go of every answer it held for it."""
        await close_connection(self._pump, self._writer)
