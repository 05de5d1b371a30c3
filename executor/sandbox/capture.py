"""A child's stdout and stderr, read as they come and kept up to the run's output cap.

Output is capped while reading, not after: the rest is read and dropped, so the child
never blocks on a full pipe and the executor never holds more than the cap.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from typing import Final

READ_CHUNK: Final = 64 << 10


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
        text = self.data.decode("utf-8", errors="replace")
        encoded = text.encode("utf-8")
        if len(encoded) <= self.cap:
            return text
        self.truncated = True
        return encoded[: self.cap].decode("utf-8", errors="ignore")


async def read_stream(fd: int, sink: CapturedStream) -> None:
    """Read the pipe ``fd`` into ``sink`` until EOF (every writer's end is closed)."""
    loop = asyncio.get_running_loop()
    eof = loop.create_future()

    def on_readable() -> None:
        try:
            chunk = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            sink.feed(chunk)
        elif not eof.done():
            eof.set_result(None)

    os.set_blocking(fd, False)
    loop.add_reader(fd, on_readable)
    try:
        await eof
    finally:
        loop.remove_reader(fd)
