"""The trigger engine: registered jobs' callbacks fired by published events and by timers.

Semantics (documented in the README):

- Edge-triggered: an event sets the latch of every atom it matches; the callback's
  expression is evaluated over its latches after each matching event. An atom whose
  event happened before the job was registered never latches.
- ``done`` atoms match complete, failed and killed events. A ``*`` atom latches on any
  item, once (it is not per item).
- Firing increments ``count``, honours ``maximum`` (0 = unlimited) and resets every latch
  of the callback, so it can fire again on new events.
- The callback runs in the context of the event that completed its trigger: that
  event's work item (``qb.workid()``) and instance (``qb.subid()``).
- Order within one event: by owning job id, then callback id; universal callbacks come
  after the job's own. Firings of one event run one after another in that order.
- Durability: latching, counting and queueing the firing commit in one transaction;
  the firing worker (firings.py) runs the queue, the firings queued before a restart
  first, each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from executor import triggers
from executor.errors import InvalidRequestError, UnavailableError
from executor.model import CallbackSpec, Event, Invocation, Limits, RunResult
from executor.runs.outbox import Backoff
from executor.triggers.evaluate import (
    AtomKey,
    JobPlace,
    atom_key,
    clock_event,
    event_keys,
    latch,
    next_fire,
    spent,
)
from executor.triggers.firings import FiringWorker
from executor.triggers.nodes import EventName, EventType
from executor.triggers.store import NewAtom, PendingFiring, StoredCallback, TriggerStore
from executor.triggers.universal import (
    CodeCheck,
    UniversalCallback,
    UniversalConfigError,
    load_universal,
    no_code_check,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Fired:
    """A callback an event fired (or would fire)."""

    callback: StoredCallback
    invocation_id: str = ""
    result: RunResult | None = None


@dataclass(frozen=True, slots=True)
class Latched:
    """A callback whose latches an event set without firing it."""

    callback: StoredCallback
    latches: tuple[bool, ...]


@dataclass
class EngineStats:
    events_published: int = 0
    callbacks_fired: int = 0


@lru_cache(maxsize=65536)
def _parsed(expression: str) -> triggers.Expr:
    return triggers.parse(expression)


def check_trigger(expression: str) -> str | None:
    """None when the expression parses, else the parser's message."""
    try:
        _parsed(expression)
    except triggers.TriggerSyntaxError as err:
        return str(err)
    return None


def canonical_triggers(expression: str) -> str:
    """The canonical text of a registered callback's triggers (``render`` of its parse)."""
    return triggers.render(_parsed(expression))


class TriggerEngine:
    """Registers jobs, matches events, and fires callbacks through ``run`` on its own tasks.

    Call ``start()`` in the running loop (the firing worker and the timers), ``close()``
    to end them. Published events are applied whether or not it is started; what they
    fire waits in the queue until it is.
    """

    def __init__(
        self,
        store: TriggerStore,
        run: Callable[[Invocation], Awaitable[RunResult]],
        *,
        limits: Limits,
        universal_dirs: Sequence[Path] = (),
        clock: Callable[[], float] = time.time,
        max_parallel_events: int = 4,
        retry: Backoff = Backoff(),
        check_code: CodeCheck = no_code_check,
    ) -> None:
        """Build the engine over ``store``.

        Args:
            store: The durable state; the engine is its only writer.
            run: Runs one invocation to its result (the dispatcher's ``execute``).
            limits: The limits of every fired run.
            universal_dirs: Where the universal callbacks' ``callbacks.conf`` files are.
            clock: Unix time, for the timers.
            max_parallel_events: How many events' firings may run at once.
            retry: The delays between tries of a run refused for capacity or availability.
            check_code: Checks a universal callback's code when it is loaded.
        """
        self._store = store
        self._run = run
        self._limits = limits
        self._universal_dirs = list(universal_dirs)
        self._universal: list[UniversalCallback] = []
        self._check_code = check_code
        self._clock = clock
        self._timer_wakeup = asyncio.Event()
        self._timers: asyncio.Task[None] | None = None
        self._firings = FiringWorker(
            store, self._run_firing, max_parallel_events=max_parallel_events, retry=retry
        )
        self.stats = EngineStats()

    # -- universal callbacks --------------------------------------------------------

    @property
    def universal(self) -> list[UniversalCallback]:
        return list(self._universal)

    def reload_universal(self, *, quiet: bool = False) -> list[str]:
        """Re-read every callbacks.conf; on errors keep the last good set and return them.

        ``quiet`` leaves the errors to the caller to report (start-up says it in one line).
        """
        try:
            loaded = load_universal(self._universal_dirs, check_trigger, self._check_code)
        except UniversalConfigError as err:
            if not quiet:
                for line in err.errors:
                    logger.error("universal callbacks not reloaded: %s", line)
            return err.errors
        self._universal = loaded
        logger.info("%d universal callbacks active", len(loaded))
        return []

    # -- registration ---------------------------------------------------------------

    def _index(
        self, owner: JobPlace, expr: triggers.Expr
    ) -> tuple[list[NewAtom], list[tuple[int, float]]]:
        """The index rows and the first due times of a callback's atoms."""
        indexed: list[NewAtom] = []
        timers: list[tuple[int, float]] = []
        now = self._clock()
        for slot, atom in enumerate(triggers.atoms(expr)):
            key = atom_key(atom, owner)
            if key is not None:
                indexed.append(NewAtom(slot, key))
            due = next_fire(atom, now)
            if due is not None:
                timers.append((slot, due))
        return indexed, timers

    def register_job(self, job: dict[str, Any]) -> list[StoredCallback]:
        """Store a job with its callbacks and the universal ones; keeps state of unchanged ones."""
        job_id = int(job.get("id") or 0)
        if job_id <= 0:
            raise InvalidRequestError("job.id is required to register a job")
        job = dict(job, pgrp=int(job.get("pgrp") or job_id))
        label = str(job.get("label") or "")
        if label:
            holder = self._store.label_owner(job["pgrp"], label)
            if holder is not None and holder != job_id:
                raise InvalidRequestError(
                    f"label {label!r} is already used by job {holder} in pgrp {job['pgrp']}"
                )
        specs = self._callback_specs(job)
        previous = {
            (cb.callback_id, cb.triggers, cb.code): cb for cb in self._store.callbacks_of(job_id)
        }
        place = JobPlace.of(job)
        with self._store.transaction() as db:
            TriggerStore.remove_job(db, job_id)
            TriggerStore.put_job(db, {k: v for k, v in job.items() if k != "callbacks"})
            for spec, expr in specs:
                kept = previous.get((spec["id"], spec["triggers"], spec["code"]))
                if kept is not None:
                    spec.update(count=kept.count, latches=list(kept.latches))
                atoms, timers = self._index(place, expr)
                TriggerStore.put_callback(db, job_id, spec, atoms, timers)
        self._timer_wakeup.set()
        return self._store.callbacks_of(job_id)

    def callbacks_of(self, job_id: int) -> list[StoredCallback]:
        """A registered job's callbacks (universal ones included) with counts and latches."""
        return self._store.callbacks_of(job_id)

    def _callback_specs(self, job: dict[str, Any]) -> list[tuple[dict[str, Any], triggers.Expr]]:
        specs: list[tuple[dict[str, Any], triggers.Expr]] = []
        own = list(job.get("callbacks") or [])
        next_id = 1
        for index, cb in enumerate(own):
            triggers_text = str(cb.get("triggers") or "")
            try:
                expr = _parsed(triggers_text)
            except triggers.TriggerSyntaxError as err:
                raise InvalidRequestError(f"job.callbacks[{index}].triggers: {err}") from err
            callback_id = int(cb.get("id") or 0) or next_id
            next_id = max(next_id, callback_id) + 1
            specs.append((self._spec(cb, callback_id, job, expr), expr))
        for universal in self._universal:
            expr = _parsed(universal.triggers)
            cb = {
                "triggers": universal.triggers,
                "language": universal.language,
                "code": universal.code,
                "universal": True,
                "source": universal.source,
            }
            specs.append((self._spec(cb, next_id, job, expr), expr))
            next_id += 1
        return specs

    @staticmethod
    def _spec(
        cb: dict[str, Any], callback_id: int, job: dict[str, Any], expr: triggers.Expr
    ) -> dict[str, Any]:
        return {
            "id": callback_id,
            "triggers": str(cb.get("triggers") or ""),
            "language": str(cb.get("language") or "qube"),
            "code": str(cb.get("code") or ""),
            "user": str(cb.get("user") or job.get("user") or ""),
            "count": int(cb.get("count") or 0),
            "maximum": int(cb.get("maximum") or 0),
            "latches": [False] * len(triggers.atoms(expr)),
            "universal": bool(cb.get("universal", False)),
            "source": str(cb.get("source") or ""),
        }

    # -- matching -------------------------------------------------------------------

    def _keys(self, event: Event) -> list[AtomKey]:
        """The index keys ``event`` looks up; its job's label comes from the store."""
        job = self._store.job(event.job_id)
        return event_keys(event, None if job is None else JobPlace.of(job))

    def _decide(
        self,
        db: sqlite3.Connection,
        hits: list[tuple[int, int]],
        event: Event,
        batch: str,
        *,
        dry: bool,
    ) -> tuple[list[Fired], list[Latched]]:
        """Latch, count and (unless dry) queue the firings of one event as one ``batch``."""
        slots: dict[int, set[int]] = {}
        for rowid, slot in hits:
            slots.setdefault(rowid, set()).add(slot)
        fired: list[Fired] = []
        latched: list[Latched] = []
        callbacks = TriggerStore.load_callbacks(db, slots)
        for cb in sorted(callbacks, key=lambda c: (c.job_id, c.universal, c.callback_id)):
            if spent(cb.count, cb.maximum):
                continue
            fires, latches = latch(_parsed(cb.triggers), cb.latches, slots[cb.rowid])
            if fires:
                invocation_id = "" if dry else str(uuid.uuid4())
                if not dry:
                    TriggerStore.save_state(db, cb.rowid, cb.count + 1, latches)
                    TriggerStore.queue_firing(db, invocation_id, cb.rowid, event, batch)
                fired.append(Fired(cb, invocation_id))
            elif latches != cb.latches:
                if not dry:
                    TriggerStore.save_state(db, cb.rowid, cb.count, latches)
                latched.append(Latched(cb, latches))
        return fired, latched

    def _apply(self, event: Event) -> tuple[list[Fired], list[Latched], bool, list[PendingFiring]]:
        """Apply one event durably: fired, latched, whether it was a repeat, the firings queued."""
        keys = self._keys(event)
        batch = uuid.uuid4().hex
        with self._store.transaction() as db:
            if event.event_id and not TriggerStore.first_sighting(db, event.event_id):
                return [], [], True, []
            hits = TriggerStore.matching_atoms(db, keys)
            fired, latched = self._decide(db, hits, event, batch, dry=False)
            if event.name == EventName.REMOVED and event.type == EventType.JOB:
                TriggerStore.remove_job(db, event.job_id)
        self.stats.events_published += 1
        self.stats.callbacks_fired += len(fired)
        firings = [PendingFiring(f.invocation_id, f.callback, event, batch) for f in fired]
        return fired, latched, False, firings

    def match(self, event: Event, *, dry: bool) -> tuple[list[Fired], list[Latched], bool]:
        """Apply (or, dry, simulate) one event; what it fires is queued for the worker.

        Returns:
            The callbacks it fired (would fire), those it latched without firing, and
            whether it was a repeat of an ``event_id`` already applied.
        """
        if dry:
            with self._store.transaction() as db:
                hits = TriggerStore.matching_atoms(db, self._keys(event))
                fired, latched = self._decide(db, hits, event, "", dry=True)
                return fired, latched, False
        fired, latched, duplicate, firings = self._apply(event)
        self._firings.add(firings)
        return fired, latched, duplicate

    async def publish(self, event: Event, *, wait: bool) -> tuple[list[Fired], bool]:
        """Apply an event; what it fires runs on the firing worker.

        Returns:
            The callbacks it fired, with their results when ``wait`` (a refused run is
            retried until it runs; a result is None when the run raised), and whether
            it was a repeat.

        Raises:
            UnavailableError: the engine is closing (the event was not applied, unless it
                was while a ``wait`` publisher waited: its firings then run at restart).
        """
        if self._firings.closed:
            raise UnavailableError("the trigger engine is stopping; publish the event again")
        fired, _, duplicate, firings = self._apply(event)
        futures = self._firings.add(firings, wait=wait)
        if not wait:
            return fired, duplicate
        results = await asyncio.gather(*futures)
        return [Fired(f.callback, f.invocation_id, r) for f, r in zip(fired, results)], duplicate

    async def _run_firing(self, firing: PendingFiring) -> RunResult:
        """Run one queued firing in the context of its job and event (the worker's ``run``)."""
        cb, event = firing.callback, firing.event
        job = self._store.job(cb.job_id) or {"id": cb.job_id}
        invocation = Invocation(
            invocation_id=firing.invocation_id,
            callback=CallbackSpec(
                language=cb.language,
                code=cb.code,
                triggers=cb.triggers,
                id=cb.callback_id,
                user=cb.user,
                count=cb.count + 1,
                maximum=cb.maximum,
                source=cb.source,
            ),
            job=job,
            limits=self._limits,
            event=event,
            work_name=event.work_name,
            subjob_id=event.subjob_id,
        )
        return await self._run(invocation)

    # -- timers and the engine's tasks ----------------------------------------------

    def fire_due_timers(self) -> list[Fired]:
        """Latch every time atom that is due and fire what completes (each a batch of its own)."""
        now = self._clock()
        fired_all: list[Fired] = []
        batches: list[list[PendingFiring]] = []
        with self._store.transaction() as db:
            due = TriggerStore.due_timers(db, now)
            for rowid, slot, _when in due:
                cb = TriggerStore.load_callbacks(db, [rowid])
                if not cb:
                    continue
                atom = triggers.atoms(_parsed(cb[0].triggers))[slot]
                TriggerStore.reschedule_timer(
                    db, rowid, slot, next_fire(atom, now, last_fired_unix=now)
                )
                # The event stored with the firing is the one it runs with: after a restart
                # the callback sees what it would have seen.
                event = clock_event(atom, cb[0].job_id)
                batch = uuid.uuid4().hex
                fired, _ = self._decide(db, [(rowid, slot)], event, batch, dry=False)
                fired_all.extend(fired)
                batches.append(
                    [PendingFiring(f.invocation_id, f.callback, event, batch) for f in fired]
                )
        self.stats.callbacks_fired += len(fired_all)
        for firings in batches:
            self._firings.add(firings)
        return fired_all

    async def _run_timers(self) -> None:
        """Forever: sleep until the next due time atom (or a registration), then fire."""
        while True:
            self.fire_due_timers()
            due = self._store.next_timer_due()
            delay = 3600.0 if due is None else max(0.0, min(3600.0, due - self._clock()))
            self._timer_wakeup.clear()
            # asyncio.timeout, not wait_for: in 3.11 wait_for swallows a cancellation that
            # races with a wake-up (a registration), and stop() then waits for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._timer_wakeup.wait()

    def start(self) -> None:
        """Start the firing worker and the timers: tasks of the running loop, ended by ``close``.

        The firings queued before a restart run first.
        """
        if self._timers is not None:
            raise RuntimeError("the trigger engine is already started")
        self._firings.start()
        self._timers = asyncio.get_running_loop().create_task(self._run_timers())

    async def wait_idle(self) -> None:
        """Until no firing is queued or running (once started)."""
        await self._firings.wait_idle()

    async def close(self) -> None:
        """Stop the timers and the worker; unfinished firings stay queued for the next start."""
        if self._timers is not None:
            self._timers.cancel()
            await asyncio.gather(self._timers, return_exceptions=True)
        await self._firings.close()
