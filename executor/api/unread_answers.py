"""What the answers gRPC holds until their clients have read them may total, per connection and in all.

gRPC keeps each answer whole until its client has read it (HTTP/2 flow control), and
holds it about three times over (the message, its serialized bytes, the transport's
copy): a client that sent 80 Execute calls on one connection and never opened its
window held ~98 MB per 32 MiB answer and had the executor killed for memory, and 70
GetRun calls of one big run did the same with no slot used (probe 111). So ``CallGuard``
counts each answer of ``COUNTED_ANSWER_BYTES`` or more from when it is made until its
call has ended (sent, or its connection gone), by connection (``context.peer()``), and:

- a call of a method whose answer can be MiBs (``BIG_ANSWER_METHODS``, and
  ``BIG_ANSWER_WHEN_WAITING`` when its request waits) is refused RESOURCE_EXHAUSTED,
  before it runs, while the answers counted total ``max_bytes`` or more, or its own
  connection's reach its share (a ``CONNECTION_SHARE``-th of it): one connection cannot
  take the whole of it, others go on;
- calls that arrived together all pass that check, before any of their answers existed,
  so it is made again just before the answer's work starts: an Execute whose callback is
  about to start (it has a slot) is refused there, having run nothing (waiting would
  hold the slot); a GetRun, or a repeated PublishEvent that waits (its results are read
  from the history, no slot needed), waits until its own connection is below its share
  again (its answer is only read, and waits in nothing but its call), within its
  deadline, then takes its turn (``answer_turns.py``), and is refused while the
  executor's count is at the bound (other clients', whom nothing makes read). A call past
  that (a callback started) is answered whatever the count then, so the bound is passed
  by the answers of the calls under way at most (the runs holding slots, the answer
  having its turn). A first PublishEvent that waits has only the first check: its
  callbacks run in slots, and it is answered when they end.

Answers smaller than ``COUNTED_ANSWER_BYTES`` are not counted (a callback per call for
them would cost every small call): a connection's ``max_streams`` of them hold ~190 MB
at most.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from executor.bounds import mib
from executor.errors import CapacityError

# Answers of at least this many bytes (their ByteSize) are counted while unread.
COUNTED_ANSWER_BYTES: Final = 64 << 10
# A connection's answers may hold this fraction of the bound (1/4).
CONNECTION_SHARE: Final = 4
# Methods whose answer can be MiBs of output: an Execute's, a GetRun's run. Other large
# answers (a registered job's callbacks, a farm job's agenda) are counted, not refused:
# they hold what a caller first registered or submitted, within its own bounds.
BIG_ANSWER_METHODS: Final = (
    "/qbcallback.v1.CallbackExecutorService/Execute",
    "/qbcallback.v1.RunService/GetRun",
)
# Methods whose answer can be MiBs of output when the request asks to wait (its ``wait``
# field): a PublishEvent's results, up to 32 MiB of output. Without wait it is small, and
# the event path must go on: never refused then.
BIG_ANSWER_WHEN_WAITING: Final = ("/qbcallback.v1.TriggerService/PublishEvent",)
# A refused caller may ask again this soon: answers read are let go of at once.
RETRY_AFTER_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class AnswerRoom:
    """One call's view of the count: may its answer be made now, from its connection?"""

    unread: UnreadAnswers
    peer: str

    def check(self) -> None:
        """CapacityError (RESOURCE_EXHAUSTED, retryable) while the share is held."""
        self.unread.check(self.peer)

    def free(self) -> bool:
        """Whether the answer may be made now."""
        return not self.unread.refusal(self.peer)

    async def wait(self) -> None:
        """Return once the answer may be made; CapacityError at the executor's bound.

        Waits for the connection's own answers to be read (or the connection gone).
        """
        await self.unread.room(self.peer)


# The current call's room (set by CallGuard for BIG_ANSWER_METHODS, and
# BIG_ANSWER_WHEN_WAITING that wait; None elsewhere).
answer_room: Final = contextvars.ContextVar["AnswerRoom | None"]("answer_room", default=None)


class UnreadAnswers:
    """The bytes of answers made and not yet read, by connection; the refusals past them."""

    def __init__(self, max_bytes: int, share: int = CONNECTION_SHARE) -> None:
        self.max_bytes = max_bytes
        self.connection_bytes = max(1, max_bytes // share)
        self.held_bytes = 0
        self._by_peer: dict[str, int] = {}
        # Set, and replaced by a new one, each time answers are let go of (``room``).
        self._released = asyncio.Event()

    def refusal(self, peer: str) -> str:
        """Why a big answer may not be made for a call from ``peer`` now; "" when it may."""
        return self._own_refusal(peer) or self._total_refusal()

    def _own_refusal(self, peer: str) -> str:
        own = self._by_peer.get(peer, 0)
        if own < self.connection_bytes:
            return ""
        return (
            f"this connection holds {mib(own)} of answers its client has not read, its"
            f" share of unread_answers_max_bytes ({mib(self.connection_bytes)} of"
            f" {mib(self.max_bytes)}): read them, or retry later"
        )

    def _total_refusal(self) -> str:
        if self.held_bytes < self.max_bytes:
            return ""
        return (
            f"the executor holds {mib(self.held_bytes)} of answers their clients have"
            f" not read, unread_answers_max_bytes ({mib(self.max_bytes)}); retry later"
        )

    def check(self, peer: str) -> None:
        """CapacityError (RESOURCE_EXHAUSTED, retryable) when ``refusal`` says why."""
        if why := self.refusal(peer):
            raise CapacityError(why, RETRY_AFTER_S)

    async def room(self, peer: str) -> None:
        """Return once ``refusal(peer)`` says nothing; CapacityError at the executor's bound.

        It waits while ``peer``'s own answers are its share (woken as answers are let go
        of), not while the executor's are the bound: those are other clients', whom
        nothing makes read.
        """
        while True:
            if why := self._total_refusal():
                raise CapacityError(why, RETRY_AFTER_S)
            if not self._own_refusal(peer):
                return
            await self._released.wait()

    def hold(self, peer: str, size: int) -> Callable[[], None]:
        """Count ``size`` bytes of ``peer``'s; the function returned lets go of them (once)."""
        self.held_bytes += size
        self._by_peer[peer] = self._by_peer.get(peer, 0) + size
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.held_bytes -= size
            left = self._by_peer[peer] - size
            if left:
                self._by_peer[peer] = left
            else:
                del self._by_peer[peer]
            released_now, self._released = self._released, asyncio.Event()
            released_now.set()

        return release
