"""The time atoms' timers: what is due latched and fired, on a task of their own.

Clock atoms are timers (the store's ``timers`` table), each with its next due time. The
task sleeps until the next one is due (a registration or a reload that adds one wakes
it) and latches each due atom in a batch of its own, firing what that completes. A
spent callback's timers are dropped; a repeat's tick that finds the firing of its last
tick unfinished is skipped and counted (``_skips_tick``). What committed is counted and
queued by the engine (``fired``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

from executor import triggers
from executor.errors import UnavailableError
from executor.model import Event
from executor.sql import Db
from executor.triggers import journal
from executor.triggers.conflicts import retrying
from executor.triggers.decide import Decider, Fired, Judge
from executor.triggers.evaluate import clock_event, next_fire
from executor.triggers.firings import own_queued
from executor.triggers.items import callback_spent
from executor.triggers.journal import EntryKind, JournalLimits, SeenEvent
from executor.triggers.nodes import render_atom
from executor.triggers.parsed import parsed
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import PendingFiring, StoredCallback

logger = logging.getLogger(__name__)

# In a fleet: how often each replica looks at the fleet's next due timer (``_run_timers``),
# and at the version row it follows to reload the universal callbacks (the engine's
# follower): two indexed reads a second per replica.
FLEET_POLL_S = 1.0
# How long the timers wait before they try an unreachable store again.
_STORE_RETRY_S = 1.0
# The repeats whose skipped ticks were logged, each with the firing it waits for.
_SKIPPING_KEPT = 10_000


class Timers:
    """Fires the time atoms that are due, on a task of their own (``start``, ``close``)."""

    def __init__(
        self,
        store: TriggerStore,
        *,
        clock: Callable[[], float],
        journal_limits: JournalLimits,
        judge: Judge,
        fired: Callable[[list[Fired], list[list[PendingFiring]], int], None],
    ) -> None:
        """The timers of ``store``.

        ``judge``: a firing's refusal (``TriggerEngine.firing_refusal``). ``fired``: told,
        once a transaction has committed, what it fired, its firings (a batch each) and
        how many ticks it skipped.
        """
        self._store = store
        self._clock = clock
        self._journal = journal_limits
        self._judge = judge
        self._fired = fired
        self._timer_wakeup = asyncio.Event()
        self._timers: asyncio.Task[None] | None = None
        # (callback rowid, slot) -> the unfinished firing its skipped ticks were logged for.
        self._skipping: dict[tuple[int, int], str] = {}

    @property
    def started(self) -> bool:
        """Whether ``start`` was called (its task may have ended since)."""
        return self._timers is not None

    def start(self) -> None:
        """Fire what is due from now on, on a task of the running loop."""
        self._timers = asyncio.get_running_loop().create_task(self._run_timers())

    def poke(self) -> None:
        """(On the loop.) Look at the next due time again: a registration may have added one."""
        self._timer_wakeup.set()

    def wake(self) -> None:
        """Wake the timers to look at their next due time, from the loop or another thread."""
        if self._timers is None or self._timers.done():
            return  # not started yet: they look when they start
        loop = self._timers.get_loop()
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._timer_wakeup.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._timer_wakeup.set)

    async def close(self) -> None:
        """Stop the task; what is due is fired after the next start."""
        if self._timers is not None:
            self._timers.cancel()
            await asyncio.gather(self._timers, return_exceptions=True)

    def fire_due(self) -> list[Fired]:
        """Latch every due time atom (``_fire_due_timers``; again after a lost deadlock)."""
        return retrying(self._fire_due_timers)

    def _fire_due_timers(self) -> list[Fired]:
        """Latch every time atom that is due and fire what completes (each a batch of its own).

        In a fleet the due timers are claimed ``FOR UPDATE SKIP LOCKED``: a timer due at
        three replicas at once is fired by the one that locked it, and moved on by it.
        """
        now = self._clock()
        fired_all: list[Fired] = []
        batches: list[list[PendingFiring]] = []
        skipped = 0
        with self._store.transaction() as db:
            due = TriggerStore.due_timers(db, now)
            for rowid, slot, _when in due:
                cb = TriggerStore.load_callbacks(db, [rowid])
                if not cb:
                    continue
                expr = parsed(cb[0].triggers)
                if callback_spent(db, cb[0], expr):
                    # Spent by an event since its last tick: its clock stops unseen. A
                    # "maximum reached" entry per tick, for as long as the job lives,
                    # would push the entries of its firings out of the journal.
                    TriggerStore.drop_timers(db, rowid)
                    continue
                atom = triggers.atoms(expr)[slot]
                next_tick = next_fire(atom, now, last_fired_unix=now)
                TriggerStore.reschedule_timer(db, rowid, slot, next_tick)
                # The event stored with the firing is the one it runs with: after a restart
                # the callback sees what it would have seen.
                event = clock_event(atom, cb[0].job_id)
                if next_tick is not None and self._skips_tick(db, cb[0], slot, atom, event):
                    skipped += 1
                    continue
                batch = uuid.uuid4().hex
                decider = Decider(
                    db,
                    SeenEvent(event, now),
                    batch,
                    dry=False,
                    parsed=parsed,
                    judge=self._judge,
                )
                decider.matched([(rowid, slot)])
                own_queued(self._store, db, batch, decider.decision.firings)
                # A tick that finds its atom latched changes nothing: an entry per tick
                # would push the entries of the callback's firings out of the journal.
                entries = [
                    entry
                    for entry in decider.decision.entries
                    if entry.kind is not EntryKind.MATCHED or entry.latched
                ]
                journal.append(db, entries, self._journal)
                fired_all.extend(decider.decision.fired)
                batches.append(decider.decision.firings)
                if decider.decision.fired and callback_spent(
                    db, TriggerStore.load_callbacks(db, [rowid])[0], expr
                ):
                    TriggerStore.drop_timers(db, rowid)  # the firing that spent it
        self._fired(fired_all, batches, skipped)  # committed: a retried try counts once
        return fired_all

    def _skips_tick(
        self, db: Db, cb: StoredCallback, slot: int, atom: triggers.Atom, event: Event
    ) -> bool:
        """Whether a repeat's tick is skipped: a firing of the callback by its clock is unfinished.

        A callback slower than its interval would otherwise pile up firings without bound
        (each tick one more, run side by side, every other job's callbacks behind them).
        Skipped ticks are counted (``cbexec_repeat_ticks_skipped_total``) and logged once
        per unfinished firing; the journal is left alone, as for any tick that changes
        nothing.
        """
        unfinished = TriggerStore.unfinished_firing(db, cb.rowid, event)
        key = (cb.rowid, slot)
        if unfinished is None:
            self._skipping.pop(key, None)
            return False
        if self._skipping.get(key) != unfinished:
            if len(self._skipping) >= _SKIPPING_KEPT:
                self._skipping.clear()  # only the log's once-per-firing is lost
            self._skipping[key] = unfinished
            logger.info(
                "job %d callback %d: %s ticks skipped while firing %s of its last tick is"
                " queued or running",
                cb.job_id,
                cb.callback_id,
                render_atom(atom),
                unfinished,
            )
        return True

    async def _run_timers(self) -> None:
        """Forever: sleep until the next due time atom (or a registration), then fire.

        In a fleet it also wakes every ``FLEET_POLL_S``: other replicas' registrations
        and firings move the fleet's timers without waking this one, and the replica that
        registered a timer may be gone by its due time, so every replica fires a due one
        within a poll (each wake reads only the next due time; the timer is claimed by
        one replica in ``_fire_due_timers``).
        """
        poll_s = FLEET_POLL_S if self._store.fleet else 3600.0
        while True:
            try:
                looked_at = self._clock()
                due = self._store.next_timer_due()
                if due is not None and due <= looked_at:
                    self.fire_due()
                    due = self._store.next_timer_due()
            except UnavailableError as err:  # PostgreSQL restarting: the timers wait for it
                logger.warning(
                    "timers: %s; trying again in %.0fs, once the storage is sound",
                    err,
                    _STORE_RETRY_S,
                )
                await asyncio.sleep(_STORE_RETRY_S)
                await self._store.sound()
                continue
            if due is None:
                delay = poll_s
            elif due <= looked_at:
                # Still due after firing: another replica's transaction holds it (it fires
                # it), or it cannot fire; look again in a poll, not at once for ever.
                delay = min(FLEET_POLL_S, poll_s)
            else:
                delay = max(0.0, min(poll_s, due - self._clock()))
            self._timer_wakeup.clear()
            # asyncio.timeout, not wait_for: in 3.11 wait_for swallows a cancellation that
            # races with a wake-up (a registration), and stop() then waits for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._timer_wakeup.wait()
