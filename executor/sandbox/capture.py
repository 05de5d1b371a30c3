"""A child's stdout and stderr, read as they come and kept up to the run's output cap.

Output is capped while reading, not after: the rest is read and dropped, so the child
never blocks on a full pipe for long and the executor never holds more than the cap.
A run's pipes are read at its end, and as output comes only once it has lasted a
moment (``process.PIPES_WATCHED_AFTER_S``): until then a pipe holds 64 KiB.
"""

from __future__ import annotations

import asyncio
import codecs
import fcntl
import os
from dataclasses import dataclass, field
from typing import Final

READ_CHUNK: Final = 64 << 10
DECODE_CHUNK: Final = 1 << 20  # output with invalid UTF-8 is decoded in pieces this size


@dataclass(slots=True)
class CapturedStream:
    """Output kept up to a cap; the rest is read and dropped so the child never blocks."""

    cap: int
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if len(chunk) > room:
            self.truncated = True
            chunk = chunk[: max(room, 0)]
        self.data += chunk

    def tail(self, max_bytes: int) -> str:
        """The last ``max_bytes`` of the output as text, invalid UTF-8 replaced."""
        return bytes(self.data[-max_bytes:]).decode("utf-8", "replace")

    def text(self) -> str:
        """The output as text: at most ``cap`` bytes of UTF-8, whatever the child wrote.

        Invalid UTF-8 is replaced (U+FFFD), which takes three bytes for each bad one: a
        megabyte of 0xff would come back as three. So the text is cut again to the cap
        after decoding (and ``truncated`` set), and ``output_bytes`` bounds what returns.
        """
        try:
            return self.data.decode("utf-8")  # the common case: nothing to replace
        except UnicodeDecodeError:
            pass
        # A piece at a time, and no further than the cap: of 16 MiB of bad bytes only the
        # first third is ever decoded, and the event loop is held a third as long.
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        parts: list[str] = []
        room = self.cap
        with memoryview(self.data) as data:
            for start in range(0, len(data), DECODE_CHUNK):
                end = start + DECODE_CHUNK
                piece = decoder.decode(data[start:end], final=end >= len(data))
                encoded = piece.encode("utf-8")
                if len(encoded) > room:
                    self.truncated = True
                    parts.append(encoded[:room].decode("utf-8", errors="ignore"))
                    break
                parts.append(piece)
                room -= len(encoded)
        return "".join(parts)


class PipeReader:
    """Reads the pipe ``fd`` into ``sink``, once watched from an event loop reader callback, until EOF.

    A plain callback, not a task per pipe: a run has two pipes, and a task each cost
    more than the reading. Until ``watch`` the pipe is read only by ``drain``: most
    callbacks end before they write a pipe's 64 KiB, and a reader that is never
    registered costs the event loop nothing (with uvloop, registering and removing one
    are ~8 system calls, and its EOF after the run a wake-up of its own).
    ``eof`` is done once every writer's end is closed (seen only while watched).
    """

    __slots__ = ("_fd", "_loop", "_sink", "_watched", "eof")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, sink: CapturedStream) -> None:
        self._loop = loop
        self._fd = fd
        self._sink = sink
        self._watched = False
        self.eof: asyncio.Future[None] = loop.create_future()
        os.set_blocking(fd, False)

    def watch(self) -> None:
        """Read as output comes, from now until EOF (again is harmless)."""
        if not self._watched and not self.eof.done():
            self._watched = True
            self._loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        self._read_once()

    def _read_once(self) -> bool:
        """One read; False when there is nothing more to read now."""
        try:
            chunk = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return False
        self._sink.feed(chunk)
        return True

    def drain(self, max_reads: int = 64) -> None:
        """Read what the pipe holds now (a full pipe is one read), without waiting for more."""
        for _ in range(max_reads):
            if self.eof.done() or not self._read_once():
                return

    def finish(self) -> None:
        """Read all the pipe holds, then stop: for when nothing can write to it any more.

        Once every process that could write is dead, its content is final, whoever
        still holds a write end (one in flight in a unix socket never delivered, a
        process outside the run's cell): no EOF need be waited for. It holds at most
        its capacity (``F_GETPIPE_SZ``, which its writer may have raised).
        """
        if not self.eof.done():
            try:
                capacity = fcntl.fcntl(self._fd, fcntl.F_GETPIPE_SZ)
            except OSError:
                self.drain()  # not a pipe: as much as a default pipe holds, and more
            else:
                self.drain(max_reads=capacity // READ_CHUNK + 2)  # and the read that ends it
        self.close()

    def close(self) -> None:
        """Stop reading (EOF, or given up); the fd stays open, it is the caller's."""
        if not self.eof.done():
            self.eof.set_result(None)
            if self._watched:
                self._loop.remove_reader(self._fd)
