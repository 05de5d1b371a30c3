"""A loopback SMTP relay whose greeting can be held back: a slow relay on cue, in the test's loop.

Just enough SMTP (RFC 5321) for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT.
While ``held`` it accepts connections and says nothing (a relay that is slow or
unreachable past the TCP handshake); ``release()`` lets every waiting exchange go on.
"""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from email.message import Message
from typing import Final


@dataclass
class HeldRelay:
    port: int
    # Exchanges that have connected (each mail is one), and the messages accepted.
    connections: int = 0
    accepted: list[Message] = field(default_factory=list)
    _open: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _serving: set[asyncio.Task[None]] = field(default_factory=set)
    _closing: bool = False

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    async def _note(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, *, connections: int = 0, accepted: int = 0) -> None:
        """Until at least that many exchanges connected and messages were accepted."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self.connections >= connections and len(self.accepted) >= accepted
            )

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        await self._note()
        try:
            await self._open.wait()
            if not self._closing:
                await self._exchange(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._serving.discard(task)
            self._writers.discard(writer)
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(line: str) -> None:
            writer.write(f"{line}\r\n".encode())
            await writer.drain()

        await reply("220 held ESMTP")
        while line := await reader.readline():
            verb = line.decode("ascii", "replace").strip().split(" ")[0].split(":")[0].upper()
            if verb == "EHLO":
                await reply("250-held")
                await reply("250 8BITMIME")
            elif verb in ("HELO", "MAIL", "RCPT", "RSET", "NOOP"):
                await reply("250 ok")
            elif verb == "DATA":
                await reply("354 go on")
                lines: list[bytes] = []
                while (data := await reader.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                self.accepted.append(email.message_from_bytes(b"".join(lines)))
                await self._note()
                await reply("250 accepted")
            elif verb == "QUIT":
                await reply("221 bye")
                return
            else:
                await reply("502 not here")


@asynccontextmanager
async def held_relay(*, held: bool = True) -> AsyncIterator[HeldRelay]:
    """A relay on 127.0.0.1, held at first unless ``held`` is False; closed after."""
    relay = HeldRelay(port=0)
    if not held:
        relay.release()
    server = await asyncio.start_server(relay.serve, "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    try:
        yield relay
    finally:
        server.close()
        relay._closing = True
        for writer in list(relay._writers):
            writer.close()
        relay.release()
        await asyncio.gather(*relay._serving, return_exceptions=True)
        await server.wait_closed()


def relay_env(relay: HeldRelay) -> dict[str, str]:
    """The environment that points an executor process's mail at ``relay``."""
    return {
        "CBEXEC_MAIL__DELIVERY": "smtp",
        "CBEXEC_MAIL__SMTP_HOST": "127.0.0.1",
        "CBEXEC_MAIL__SMTP_PORT": str(relay.port),
        "CBEXEC_MAIL__SMTP_TIMEOUT_SECONDS": "120",
        "CBEXEC_MAIL__DEFAULT_DOMAIN": "farm.example",
    }


# A farm job whose mail callback fires once its one frame is done.
MAILED_JOB: Final = {
    "name": "mailed",
    "user": "alice",
    "agenda": ["1"],
    "callbacks": [{"triggers": "done-job-self", "language": "mail"}],
}
