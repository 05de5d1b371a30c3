"""The concurrency slots and the bounded queue for them, shared fairly between users.

A run's user is the Qube user it acts as (``Invocation.actor``: callback.user, else the
job's user), the identity policies are chosen by; the runs with no user are one group
of their own (one each would let a caller that names no user take every turn). Fired
runs (the trigger engine's) take their turns under their job's user like Execute calls.

- A freed slot goes round-robin over the users with waiting runs, first come first
  within a user: so one user's burst, or a slow callback of theirs, holds back another
  user's next run by one run of each other user waiting, not by all of theirs (probe
  105: bob's trivial call waited 44 s behind alice's twelve 15 s ones on 4 slots).
- The queue's bounds (``max_queue`` runs, ``max_queue_bytes`` of Execute requests) are
  shared alike: at a bound, an Execute call of a user that would still hold less of it
  than the user holding most takes the place of that user's newest waiting Execute
  call, which is refused (CapacityError, retryable) saying so; otherwise the newcomer is
  refused as ever. So one user alone is refused as before any sharing, and users
  converge on equal parts of a full queue instead of the first to come holding it all.
  Fired runs are never refused (durable work) and never give up their place.

With a free slot a run takes it at once (the queue is then empty): the hot path is one
``popleft``. The shares are kept only while a user has runs waiting, and a choice
passes over the waiting users' groups (at most ``max_queue`` of them, plus fired runs).
"""

from __future__ import annotations

import asyncio
import collections
import functools
from dataclasses import dataclass, field
from typing import Final

from executor.bounds import mib
from executor.errors import CapacityError
from executor.plurals import counted, counted_are

RETRY_AFTER_S: Final = 1.0


def _named(user: str) -> str:
    """How a refusal names a user's group."""
    return f"user {user!r}" if user else "no user"


@dataclass(eq=False, slots=True)
class _Waiter:
    """A run waiting for a slot: its ticket resolves to the slot, or None when it is stopped."""

    ticket: asyncio.Future[int | None]
    share: _Share
    request_bytes: int
    fired: bool
    counted: bool = True  # still in the counts (``Slots._leave`` takes it out once)


@dataclass(eq=False, slots=True)
class _Share:
    """One user's waiting runs, first come first (withdrawn ones until they are passed over)."""

    user: str
    waiters: collections.deque[_Waiter] = field(default_factory=collections.deque)
    runs: int = 0  # counted waiters, fired ones too
    calls: int = 0  # of them Execute calls: what the bounds share
    call_bytes: int = 0  # their requests' bytes


class Slots:
    """The concurrency slots, a round-robin turn per user for them, a fairly bounded queue."""

    def __init__(self, count: int, max_queue: int, max_queue_bytes: int | None = None) -> None:
        self.count = count
        self.max_queue = max_queue
        # None: no bound on the waiting requests' bytes (unit tests).
        self.max_queue_bytes = max_queue_bytes
        self.waiting = 0  # runs waiting (a withdrawn one counts until its ticket's callback)
        self.waiting_bytes = 0  # their request bytes
        # Free slots in the order they came back: the one idle longest goes first, so runs
        # rotate over the cells (and over the children prepared in them).
        self._free = collections.deque(range(count))
        # The users with runs waiting, in turn order (dicts keep it): the first is next.
        # Never a free slot while a run waits: release() hands each slot to a waiting
        # run, and a run waits only when no slot is free.
        self._turns: dict[str, _Share] = {}

    @property
    def busy(self) -> int:
        return self.count - len(self._free)

    def ticket(
        self, *, user: str, fired: bool, request_bytes: int = 0
    ) -> asyncio.Future[int | None]:
        """A place: a free slot at once, else in ``user``'s turn. CapacityError past the bounds.

        ``request_bytes``: what the run's request takes as received, held while it waits.
        An Execute call (not ``fired``) may take the place of another user's (see above).
        """
        ticket: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        if self._free:
            ticket.set_result(self._free.popleft())
            return ticket
        if not fired:
            self._make_room(user, request_bytes)
        share = self._turns.get(user)
        if share is None:
            share = self._turns[user] = _Share(user)  # last in the round
        waiter = _Waiter(ticket, share, request_bytes, fired)
        share.waiters.append(waiter)
        share.runs += 1
        if not fired:
            share.calls += 1
            share.call_bytes += request_bytes
        self.waiting += 1
        self.waiting_bytes += request_bytes
        # A slot, a withdrawal, a refusal or a cancellation.
        ticket.add_done_callback(functools.partial(self._left, waiter))
        return ticket

    def _left(self, waiter: _Waiter, ticket: asyncio.Future[int | None]) -> None:
        self._leave(waiter)

    def _leave(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of the counts, once; a share with nothing counted goes."""
        if not waiter.counted:
            return
        waiter.counted = False
        share = waiter.share
        share.runs -= 1
        if not waiter.fired:
            share.calls -= 1
            share.call_bytes -= waiter.request_bytes
        self.waiting -= 1
        self.waiting_bytes -= waiter.request_bytes
        if not share.runs and self._turns.get(share.user) is share:
            del self._turns[share.user]  # what its deque still holds is done

    def _make_room(self, user: str, request_bytes: int) -> None:
        """Within the bounds, or in other users' places (refused), or CapacityError."""
        limit = self.max_queue_bytes
        over_bytes = limit is not None and self.waiting_bytes + request_bytes > limit
        if self.waiting < self.max_queue and not over_bytes:
            return
        places = self._places_for(user, request_bytes)
        if places is None:
            raise self._full(request_bytes)
        for waiter, why in places:
            self._leave(waiter)
            waiter.ticket.set_exception(CapacityError(why, retry_after_s=RETRY_AFTER_S))

    def _places_for(self, user: str, request_bytes: int) -> list[tuple[_Waiter, str]] | None:
        """The waiting Execute calls whose places ``user``'s newcomer takes, or None: none may.

        At each bound passed, the user holding most of it gives up its newest call while
        it holds more than the newcomer's user would with the newcomer.
        """
        mine = self._turns.get(user)
        my_calls, my_bytes = (mine.calls, mine.call_bytes) if mine is not None else (0, 0)
        others = [share for share in self._turns.values() if share.user != user and share.calls]
        calls = {share.user: share.calls for share in others}
        sizes = {share.user: share.call_bytes for share in others}
        newest = {share.user: reversed(share.waiters) for share in others}
        waiting, waiting_bytes, limit = self.waiting, self.waiting_bytes, self.max_queue_bytes
        places: list[tuple[_Waiter, str]] = []
        while True:
            if waiting >= self.max_queue:
                heaviest = max(calls, key=calls.__getitem__, default=None)
                if heaviest is None or calls[heaviest] <= my_calls + 1:
                    return None
                why = (
                    f"{self._busy()} and {counted_are(waiting, 'run')} queued, the most of them"
                    f" ({calls[heaviest]}) of {_named(heaviest)}: this one, the newest of them,"
                    f" gave its place to a run of {_named(user)}, who had fewer queued; retry later"
                )
            elif limit is not None and waiting_bytes + request_bytes > limit:
                heaviest = max(sizes, key=sizes.__getitem__, default=None)
                if heaviest is None or sizes[heaviest] <= my_bytes + request_bytes:
                    return None
                why = (
                    f"{self._busy()} and the {counted(waiting, 'queued request')} take "
                    f"{mib(waiting_bytes)}, the most of it ({mib(sizes[heaviest])}) of "
                    f"{_named(heaviest)}; with a {mib(request_bytes)} request of {_named(user)}"
                    f" they would pass max_queue_bytes ({mib(limit)}): this one, the newest"
                    " of them, gave its place to it; retry later"
                )
            else:
                return places
            waiter = next(
                (w for w in newest[heaviest] if w.counted and not w.fired and not w.ticket.done()),
                None,
            )
            if waiter is None:  # only runs on their way out were left
                del calls[heaviest], sizes[heaviest]
                continue
            places.append((waiter, why))
            calls[heaviest] -= 1
            sizes[heaviest] -= waiter.request_bytes
            waiting -= 1
            waiting_bytes -= waiter.request_bytes

    def _full(self, request_bytes: int) -> CapacityError:
        """The refusal of a newcomer at a bound, as before any sharing."""
        if self.waiting >= self.max_queue:
            return CapacityError(
                f"{self._busy()} and {counted_are(self.waiting, 'run')} queued; retry later",
                retry_after_s=RETRY_AFTER_S,
            )
        return CapacityError(
            f"{self._busy()} and the {counted(self.waiting, 'queued request')} take "
            f"{mib(self.waiting_bytes)}; with this one's {mib(request_bytes)} they would "
            f"pass max_queue_bytes ({mib(self.max_queue_bytes or 0)}); retry later",
            retry_after_s=RETRY_AFTER_S,
        )

    def _busy(self) -> str:
        return "the 1 slot is busy" if self.count == 1 else f"all {self.count} slots are busy"

    def withdraw(self, ticket: asyncio.Future[int | None]) -> None:
        """A stopped run leaves the queue: its ticket resolves to None."""
        if not ticket.done():
            ticket.set_result(None)

    async def take(self, ticket: asyncio.Future[int | None]) -> int | None:
        """The ticket's slot once it is this run's turn; None if it was withdrawn first.

        Raises:
            CapacityError: another user's run took its place in the queue.
        """
        try:
            return await ticket
        except asyncio.CancelledError:
            # Cancelled with the task (the queue skips it), or handed a slot it will not use.
            if (
                not ticket.cancelled()
                and ticket.exception() is None
                and (slot := ticket.result()) is not None
            ):
                self.release(slot)
            raise

    def release(self, slot: int) -> None:
        """Give ``slot`` to the next user's first waiting run, else back to the free ones."""
        while self._turns:
            user, share = next(iter(self._turns.items()))
            del self._turns[user]
            while share.waiters:
                waiter = share.waiters.popleft()
                if waiter.ticket.done():
                    continue  # withdrawn or cancelled: its callback takes it out of the counts
                self._leave(waiter)
                if share.runs:
                    self._turns[user] = share  # to the back of the round
                waiter.ticket.set_result(slot)
                return
        self._free.append(slot)
