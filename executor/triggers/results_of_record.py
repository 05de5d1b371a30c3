"""Results of record: what a publisher that waits gets for a firing that ended elsewhere or earlier.

A ``wait`` publisher's firings are usually run here and answered through the worker's
futures (firings.py). A resend of an event already applied (``first_firings``) and, in a
fleet, the waiter of a run whose claim was lost (``result_of_record``) are answered
instead with each firing's result in the history, once the firing has ended wherever it
ran (``_firing_ended``: queued or running nowhere, the fleet's store asked).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from executor.errors import UnavailableError
from executor.model import Invocation, RunResult
from executor.triggers import decided_firings
from executor.triggers.decide import Fired
from executor.triggers.firings import FiringWorker
from executor.triggers.store import TriggerStore

logger = logging.getLogger(__name__)

# Runs a waiting repeat's reads of its results when its answer may be made (``publish``).
InTurn = Callable[[Callable[[], Awaitable[list[Fired] | None]]], Awaitable[list[Fired] | None]]
# A ``wait`` publisher whose firing another replica re-ran looks for that run's result this
# often, and gives up (no result) this long after the firing is done without one.
RECORD_POLL_S = 0.5
RECORD_WAIT_S = 30.0
# A resent event's waiter at a stop: its firings stay queued (or run at another replica).
STOPPED_WHILE_WAITING = (
    "the trigger engine stopped while this resend waited for the event's firings; publish "
    "it again, with the same event_id, for their results (a firing not run yet runs at "
    "the restart, or at another replica)"
)


class ResultsOfRecord:
    """The results of record of firings, each once its firing has ended, for a publisher waiting."""

    def __init__(
        self,
        store: TriggerStore,
        firings: FiringWorker,
        recorded_result: Callable[[str], RunResult | None] | None,
    ) -> None:
        """The results ``recorded_result`` has (the engine's argument) of ``firings``' firings."""
        self._store = store
        self._firings = firings
        self._recorded_result = recorded_result

    async def first_firings(self, event_id: str, in_turn: InTurn | None) -> list[Fired]:
        """What a repeated event fired when first applied, each with its result once run.

        Its firings may run here or at another replica (a resend after a failover), or
        have run already: each result is the one of record, as a fenced waiter's is
        (``result_of_record``). The runs are waited for first, outside ``in_turn`` (a
        run may take hours); then their results are read in it, all of them in one
        turn, looked for again after ``RECORD_POLL_S`` outside it while some have not
        reached the history, within ``RECORD_WAIT_S`` (then None).
        """

        def read() -> list[Fired]:
            with self._store.outside_transaction() as db:
                return decided_firings.fired_by(db, event_id)

        fired = await asyncio.to_thread(read)
        ids = [each.invocation_id for each in fired]
        await asyncio.gather(*(self._firing_ended(each) for each in ids))
        loop = asyncio.get_running_loop()
        ended_at = loop.time()

        async def with_results() -> list[Fired] | None:
            """The firings with their results; None to look again."""
            for each in ids:
                if why := self._firings.not_recorded(each):
                    raise UnavailableError(why)
            results = await self._recorded_results(ids)
            if results is None:
                return None
            if None in results and loop.time() - ended_at < RECORD_WAIT_S:
                return None
            return [
                dataclasses.replace(each, result=result)
                for each, result in zip(fired, results, strict=True)
            ]

        while True:
            answered = await (with_results() if in_turn is None else in_turn(with_results))
            if answered is not None:
                return answered
            if await self._firings.closed_within(RECORD_POLL_S):
                raise UnavailableError(STOPPED_WHILE_WAITING)

    async def _firing_ended(self, invocation_id: str) -> None:
        """Return once no firing of ``invocation_id`` is queued or running (anywhere in a fleet).

        Raises:
            UnavailableError: its run ended here, but the storage refuses its result for
                now (``unrecorded``).
        """
        while True:
            if why := self._firings.not_recorded(invocation_id):
                raise UnavailableError(why)
            try:
                if not await self._holds(invocation_id):
                    return
            except UnavailableError as err:  # PostgreSQL away for now: look again
                logger.debug("firing %s: whether it ended: %s", invocation_id, err)
            if await self._firings.closed_within(RECORD_POLL_S):
                # Said now, not when the stop's grace cuts the call with gRPC's words.
                raise UnavailableError(STOPPED_WHILE_WAITING)

    async def _recorded_results(self, ids: list[str]) -> list[RunResult | None] | None:
        """The history's results of ``ids`` (each None: none); None while it is away."""
        recorded_result = self._recorded_result
        if recorded_result is None:
            return [None] * len(ids)
        try:
            return await asyncio.to_thread(lambda: [recorded_result(each) for each in ids])
        except UnavailableError as err:  # PostgreSQL away for now: look again
            logger.debug("the results of record of %s: %s", ids, err)
            return None

    def holds_firing(self, invocation_id: str) -> bool:
        """Whether a firing decided and not yet run to its end has this invocation id.

        A single executor's queue is the worker's, in memory; a fleet's is the store's.
        """
        if self._store.fleet:
            return self._store.holds_firing(invocation_id)
        return self._firings.holds(invocation_id)

    async def result_of_record(self, invocation_id: str) -> RunResult | None:
        """The firing's result in the history, once the firing is done.

        The run of whichever replica ran it last (in a fleet, another that claimed it, or
        this one again), or of this executor since a restart. Looked for every
        ``RECORD_POLL_S``; None when the firing is done and its run has not reached the
        history within ``RECORD_WAIT_S`` (the history refused it, or has pruned it), or
        there is no history to look in.

        Raises:
            UnavailableError: its run ended here, but the storage refuses its result for
                now (``unrecorded``): what a waiter would wait for has no bound.
        """
        done_at: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            await self._firing_ended(invocation_id)  # again each look: a fleet may re-run it
            if self._recorded_result is None:
                return None
            try:
                result = await asyncio.to_thread(self._recorded_result, invocation_id)
            except UnavailableError as err:  # PostgreSQL away for now: look again
                logger.debug("firing %s: its result of record: %s", invocation_id, err)
            else:
                if result is not None:
                    return result
                done_at = loop.time() if done_at is None else done_at
                if loop.time() - done_at >= RECORD_WAIT_S:
                    return None
            await asyncio.sleep(RECORD_POLL_S)

    def unrecorded(self, invocation: Invocation, why: str) -> None:
        """A fired run ended, but the storage refuses its result for now (``Recorder.tell_unrecorded``).

        Its ``wait`` publisher is answered at once with ``why`` (UNAVAILABLE), and so is a
        resend of its event until the result is recorded.
        """
        self._firings.unrecorded(
            invocation.invocation_id,
            f"callback {invocation.callback.name} of job {invocation.job_id} ran (firing "
            f"{invocation.invocation_id}), but {why}; publish the event again with the same "
            "event_id for its results",
        )

    async def _holds(self, invocation_id: str) -> bool:
        """``holds_firing`` off the loop where it reads the store (a fleet's)."""
        if self._store.fleet:
            return await asyncio.to_thread(self._store.holds_firing, invocation_id)
        return self._firings.holds(invocation_id)
