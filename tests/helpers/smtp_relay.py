"""A small real SMTP relay on loopback (RFC 5321, enough for smtplib), told how to misbehave.

It runs in the test's event loop: ``async with smtp_relay(...) as relay`` listens on an
ephemeral loopback port until the block ends. Each accepted message is recorded with
its envelope; refusals are the relay's real replies, as a site's MTA gives them.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage


@dataclass
class Accepted:
    """One message the relay took: its envelope and what DATA carried."""

    mail_from: str
    rcpt_to: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class SmtpRelay:
    """How the relay answers, and what it saw."""

    # Recipients refused at RCPT, with the reply ("550 5.1.1 no such user").
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    # A per-message recipient limit: RCPT beyond it gets "452 4.5.3 Too many recipients".
    max_rcpt: int | None = None
    # A verb (MAIL, RCPT, DATA) answered with this reply instead.
    refuse_at: dict[str, str] = field(default_factory=dict)
    # Whether EHLO offers AUTH (which then accepts any login).
    auth: bool = False
    port: int = 0
    accepted: list[Accepted] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)

    @property
    def delivered_to(self) -> list[str]:
        return [rcpt for message in self.accepted for rcpt in message.rcpt_to]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        mail_from, rcpts = "", list[str]()
        await reply("220 relay.test ESMTP")
        try:
            while line := (await reader.readline()).decode().rstrip("\r\n"):
                verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
                self.commands.append(line)
                if verb in self.refuse_at:
                    await reply(self.refuse_at[verb])
                elif verb == "EHLO":
                    await reply(
                        "250-relay.test\r\n250-AUTH PLAIN" if self.auth else "250-relay.test"
                    )
                    await reply("250 8BITMIME")
                elif verb == "HELO":
                    await reply("250 relay.test")
                elif verb == "AUTH":
                    await reply("235 2.7.0 accepted")
                elif verb == "MAIL":
                    mail_from, rcpts = line.split(":", 1)[1].strip().strip("<>"), []
                    await reply("250 ok")
                elif verb == "RCPT":
                    address = line.split(":", 1)[1].strip().strip("<>")
                    if address in self.refuse_rcpt:
                        await reply(self.refuse_rcpt[address])
                    elif self.max_rcpt is not None and len(rcpts) >= self.max_rcpt:
                        await reply("452 4.5.3 Too many recipients")
                    else:
                        rcpts.append(address)
                        await reply("250 ok")
                elif verb == "DATA":
                    if not rcpts:
                        await reply("554 no valid recipients")
                        continue
                    await reply("354 end with <CRLF>.<CRLF>")
                    chunks = []
                    while (chunk := await reader.readline()) not in (b".\r\n", b""):
                        chunks.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                    self.accepted.append(Accepted(mail_from, rcpts, b"".join(chunks)))
                    mail_from, rcpts = "", []
                    await reply("250 queued")
                elif verb in ("RSET", "NOOP"):
                    mail_from, rcpts = "", []
                    await reply("250 ok")
                elif verb == "QUIT":
                    await reply("221 bye")
                    break
                else:
                    await reply("502 not implemented")
        except ConnectionError:
            pass
        finally:
            writer.close()


@asynccontextmanager
async def smtp_relay(relay: SmtpRelay | None = None) -> AsyncIterator[SmtpRelay]:
    """Serve ``relay`` on 127.0.0.1 (an ephemeral port, set in ``relay.port``) for the block."""
    relay = relay or SmtpRelay()
    server = await asyncio.start_server(relay._session, "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    async with server:
        yield relay
