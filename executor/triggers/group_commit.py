"""Group commit: events published one call at a time share one transaction and one commit.

A busy scheduler publishes many events at once, each a PublishEvent call of its own. A
transaction each would bound the rate at what one commit (and, on PostgreSQL, one
round trip per statement) costs. Here the calls that arrive while a transaction is in
flight wait and join the next one, in arrival order; each call is answered only once the
transaction holding its events has committed (what follows the commit, e.g. queueing
the firings, runs then even if the caller has gone away).

A group that fails is applied again one call at a time, each in a transaction of its
own, so an event that fails fails only its own call. So is a group that waited out the
store's lock timeout (``StoreLockTimeout``: another session holds rows one of its events
needs, an admin's transaction left open, a replica stopped mid-transaction): that one
wait was the group's; its calls, each alone, then wait ``LOCK_PROBE_S`` at most for a
lock, so the calls that need no locked row are applied at once and those that do fail
with the group's error, a moment each (not a lock timeout each: 30 locked jobs held
every other event a minute; probe 114). A call of a job whose call met the lock fails
at once, without even that moment.
A store that cannot be reached (any other ``UnavailableError``) fails the whole group at
once: every call is answered UNAVAILABLE and none of its events was applied.

The transactions run on a thread of their own, one at a time: the event loop goes on
accepting calls (and running callbacks) while the store works.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from executor.errors import UnavailableError, own_copy
from executor.logs import outside_any_run
from executor.model import Event
from executor.sql import StoreLockTimeout, lock_waits

T = TypeVar("T")
R = TypeVar("R")

# The most events one transaction takes: a bound on how long a group holds its row locks.
MAX_GROUP_EVENTS: Final = 500
# How long a call applied alone after its group met a held lock waits for a lock: long
# enough for another replica's group to let go of rows they share, short as it is paid
# once per call that meets a lock still held.
LOCK_PROBE_S: Final = 0.1


@dataclass
class _Call(Generic[T]):
    """One caller's events, what follows their commit, and the future its answer goes to."""

    events: Sequence[Event]
    then: Callable[[list[T]], Any]
    answer: asyncio.Future[Any] = field(repr=False)


class GroupCommit(Generic[T]):
    """Applies callers' events in groups through ``apply``: one transaction per group.

    ``apply(events)`` applies events in order in one transaction (all or none) and
    returns one result per event; it runs on a worker thread.
    """

    def __init__(
        self, apply: Callable[[Sequence[Event]], list[T]], *, max_events: int = MAX_GROUP_EVENTS
    ) -> None:
        self._apply = apply
        self._max_events = max_events
        self._waiting: list[_Call[T]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.transactions = 0  # groups committed or failed, for the tests and the benchmark

    async def submit(self, events: Sequence[Event], then: Callable[[list[T]], R]) -> R:
        """Apply ``events`` (in order, all in one transaction); ``then(results)`` once committed.

        ``then`` runs on the loop as soon as the transaction has committed, whether or not
        the caller still waits (a cancelled call's events are applied all the same, and
        what follows them, e.g. queueing their firings, must not be lost with it).
        """
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[R] = loop.create_future()
        self._waiting.append(_Call(list(events), then, answer))
        if self._drainer is None or self._drainer.done():
            # It applies every caller's groups (and runs their ``then``): not this one's alone.
            self._drainer = loop.create_task(self._drain(), context=outside_any_run())
        return await answer

    async def close(self) -> None:
        """Until the groups waiting or in flight are applied and answered."""
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)

    async def _drain(self) -> None:
        while self._waiting:
            group = self._take()
            outcomes = await asyncio.to_thread(self._apply_group, group)
            for call, outcome in zip(group, outcomes, strict=True):
                self._answer(call, outcome)

    @staticmethod
    def _answer(call: _Call[T], outcome: list[T] | BaseException) -> None:
        """Run what follows the call's commit, then answer it (unless it went away)."""
        answer: Any = outcome
        if not isinstance(outcome, BaseException):
            try:
                answer = call.then(outcome)
            except Exception as err:  # noqa: BLE001 - the caller's answer: raised there
                answer = err
        if call.answer.done():  # the caller went away (cancelled)
            return
        if isinstance(answer, BaseException):
            call.answer.set_exception(answer)
        else:
            call.answer.set_result(answer)

    def _take(self) -> list[_Call[T]]:
        """The calls of the next group, oldest first: at least one, whatever its size."""
        count, size = 0, 0
        for call in self._waiting:
            if count and size + len(call.events) > self._max_events:
                break
            count, size = count + 1, size + len(call.events)
        group, self._waiting = self._waiting[:count], self._waiting[count:]
        return group

    def _apply_group(self, group: list[_Call[T]]) -> list[list[T] | BaseException]:
        """(On the worker thread.) One transaction for the group; one per call if it fails."""
        self.transactions += 1
        events = [event for call in group for event in call.events]
        try:
            results = self._apply(events)
        except StoreLockTimeout as err:
            if len(group) == 1:
                return [err]
            return self._apply_around_locks(group, err)
        except UnavailableError as err:
            return [err, *(own_copy(err) for _ in group[1:])]
        except Exception as err:  # noqa: BLE001 - the caller's answer: it is raised there
            if len(group) == 1:
                return [err]
            return [self._apply_alone(call) for call in group]
        outcomes: list[list[T] | BaseException] = []
        start = 0
        for call in group:
            outcomes.append(results[start : start + len(call.events)])
            start += len(call.events)
        return outcomes

    def _apply_around_locks(
        self, group: list[_Call[T]], met: StoreLockTimeout
    ) -> list[list[T] | BaseException]:
        """(On the worker thread.) Each call alone, after its group waited out a held lock.

        Each waits ``LOCK_PROBE_S`` at most, and one that meets a lock fails with the
        group's error ``met`` (the lock was held through the group's whole wait). A call
        of a job whose call met a lock fails at once: its job's rows are the ones held.
        """
        stuck: set[int] = set()
        outcomes: list[list[T] | BaseException] = []
        for call in group:
            jobs = {event.job_id for event in call.events if event.job_id}
            if stuck & jobs:
                outcomes.append(own_copy(met))
                continue
            with lock_waits(LOCK_PROBE_S):
                outcome = self._apply_alone(call)
            if isinstance(outcome, StoreLockTimeout):
                stuck |= jobs
                outcome = own_copy(met)
            outcomes.append(outcome)
        return outcomes

    def _apply_alone(self, call: _Call[T]) -> list[T] | BaseException:
        self.transactions += 1
        try:
            return self._apply(call.events)
        except Exception as err:  # noqa: BLE001 - the caller's answer: it is raised there
            return err
