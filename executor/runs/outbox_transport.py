"""What delivers the outbox's messages: a transport's interfaces, and how it says a delivery failed.

The outbox knows nothing of gRPC: a ``Transport`` delivers bytes (``api/reporting.py``
has the gRPC one).
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

# Room left in a receiver's message limit for the batch around the messages and framing:
# a message, or a batch of them, is at most the limit less this.
MESSAGE_MARGIN_BYTES: Final = 64 << 10


class DeliveryError(Exception):
    """The transport could not deliver a message.

    ``retryable``: trying again may work (False: the receiver refused it for good).
    ``unreachable``: the receiver did not answer at all (down, hanging); such failures
    never count toward setting a message aside, since nothing else moves either.
    """

    def __init__(self, message: str, *, retryable: bool, unreachable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.unreachable = unreachable


class Transport(Protocol):
    """Sends one message; returns True when the receiver had already applied it."""

    async def deliver(self, key: str, payload: bytes) -> bool: ...


@runtime_checkable
class BatchTransport(Transport, Protocol):
    """Also sends several messages in one exchange, all applied or none.

    ``deliver_many`` returns, per message, whether the receiver had already applied it;
    None when the receiver does not take batches (then messages go one by one).
    """

    async def deliver_many(self, messages: list[tuple[str, bytes]]) -> list[bool] | None: ...


@runtime_checkable
class CountsConnections(Protocol):
    """A transport that counts its connections (and the one its next call makes, if any).

    A new one may reach another receiver.
    """

    @property
    def connections(self) -> int: ...
