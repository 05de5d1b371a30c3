"""The trigger engine: registered jobs' callbacks fired by published events and by timers.

Semantics (documented in the README; every decision is one of evaluate's functions):

- Edge-triggered by default: an event sets the latch of every atom it matches; the
  callback's expression is evaluated over its latches after each matching event. An
  atom whose event happened before the job was registered never latches.
- Level mode (a callback's ``mode``): at registration, the atoms whose events have
  already happened (the engine's known states, states.py) latch, and the callback fires
  at once if that makes its trigger true (registration.py); edge afterwards.
- ``done`` atoms match complete, failed and killed events. A ``*`` atom latches on any
  item, once (it is not per item). A trigger with ``{work}`` keeps one latch vector,
  count and firing per work item of its job (decide.py).
- Firing increments ``count``, honours ``maximum`` (0 = unlimited) and resets every latch
  of the callback (of the work item), so it can fire again on new events.
- Clock atoms are timers (``timers`` table). A callback that can fire no more (spent:
  ``maximum`` reached, for ``{work}`` by every item of its agenda) has its timers
  dropped: a spent repeat is no longer ticked, so it writes no journal entry per
  interval. Registering the job again schedules them again (a raised ``maximum``). A
  universal callback whose line a load removed has its timers dropped too, at every job
  (``_stop_clocks_of``); a reload that has the line back starts them again
  (``_restart_clocks_of``).
  A repeat's tick that finds the firing of its clock's last tick unfinished (queued or
  running, in the shared queue) is skipped and counted (``_skips_tick``), so a callback
  slower than its interval never piles up; a tick that only finds its atom latched
  writes no journal entry.
- The callback runs in the context of the event that completed its trigger: that
  event's work item (``qb.workid()``; for ``{work}``, the item that fired) and instance
  (``qb.subid()``).
- Order within one event: by owning job id, then callback id; universal callbacks come
  after the job's own. Firings of one event run one after another in that order.
- Durability: latching, counting, queueing the firing, the journal's entries and the
  known states commit in one transaction; the firing worker (firings.py) runs the
  queue, the firings queued before a restart first, each once.
- Repeats: an event whose ``event_id`` was applied within the retention decides nothing;
  the ids past it are forgotten every minute, off the event path (event_ids.py). A job
  ``removed`` takes every row of it with it (``TriggerStore.forget_job``), but the
  latches its events set in other jobs' callbacks: they go when its label or id comes to
  name another job (label_moves.py), in that job's registration.
- Explanations: registration checks (checks.py) come back from ``register_job``; the
  journal (journal.py) says what each event did to each callback; ``explain`` (why.py)
  puts it together for a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol, TypeVar

from executor import triggers
from executor.errors import (
    EventIdReusedError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from executor.model import CallbackSpec, Event, Invocation, Limits, RunResult
from executor.plurals import counted
from executor.policies import JOB, UNIVERSAL, Policy, PolicySet, language_refusal, not_configured
from executor.runs.outbox import Backoff
from executor.sql import Db, StoreConflict, pipelined
from executor.supervisor_link import SupervisorReachability
from executor.triggers import (
    checks,
    decided_firings,
    event_id_reuse,
    event_ids,
    group_reads,
    items,
    journal,
    label_moves,
    near_misses,
    removals,
    states,
    why,
)
from executor.triggers.decide import MAX_NEAR_MISSES, Decider, Decision, Fired
from executor.triggers.deferred_writes import DeferredWrites
from executor.triggers.evaluate import (
    AtomKey,
    JobPlace,
    atom_key,
    clock_event,
    event_keys,
    next_fire,
    spent,
)
from executor.triggers.firings import FiringWorker
from executor.triggers.group_commit import GroupCommit
from executor.triggers.group_state import GroupState
from executor.triggers.journal import EntryKind, JournalLimits, SeenEvent
from executor.triggers.label_claims import LabelClaims
from executor.triggers.nodes import EventName, EventType, per_work, render_atom
from executor.triggers.registration import (
    Registration,
    callback_specs,
    continued,
    keep_journal,
    level_pass,
    store_job,
    surroundings,
    take_registration,
)
from executor.triggers.store import LEVEL, NewAtom, PendingFiring, StoredCallback, TriggerStore
from executor.triggers.universal import (
    CodeCheck,
    LineName,
    ReloadStatus,
    UniversalCallback,
    UniversalConfigError,
    find_line,
    line_name,
    load_last_good,
    load_universal,
    no_code_check,
    save_last_good,
)
from executor.triggers.why import JobExplanation

logger = logging.getLogger(__name__)


@dataclass
class EngineStats:
    events_published: int = 0
    callbacks_fired: int = 0
    # Event ids forgotten before their retention, past event_id_max_count (event_ids.py).
    event_ids_forgotten_early: int = 0
    # Repeat ticks skipped: the firing of the tick before had not finished.
    repeat_ticks_skipped: int = 0


@lru_cache(maxsize=65536)
def _parsed(expression: str) -> triggers.Expr:
    """A registered callback's trigger (``parse``'s ``stored``: checked when it registered)."""
    return triggers.parse(expression, stored=True)


def check_trigger(expression: str | list[str]) -> str | None:
    """None when the expression parses, else the parser's message.

    A list-valued trigger's items are checked as the one expression they are stored as
    (``parse_trigger_list``: its message names the item).
    """
    try:
        if isinstance(expression, str):
            _checked(expression)
        else:
            triggers.parse_triggers(expression)
    except triggers.TriggerSyntaxError as err:
        return str(err)
    return None


def kept_line_problem(kept: UniversalCallback, known_policies: Sequence[str] | None) -> str | None:
    """Why a line of the set kept from before a restart is left out at start-up, or None.

    A set kept by an older version may hold a trigger this one refuses (a job id no
    stored id can be): attached to every job, it would make every RegisterJob fail. A
    line whose policy the config no longer has (``known_policies``; None: not checked)
    must not run under another policy's grants: a reload refuses such a line
    (``load_universal``), and so does a start-up.
    """
    if (problem := check_trigger(kept.triggers)) is not None:
        return problem
    if known_policies is not None and kept.policy and kept.policy not in known_policies:
        return f"its {not_configured(kept.policy, known_policies)}"
    return None


@lru_cache(maxsize=4096)
def _checked(expression: str) -> triggers.Expr:
    """A trigger about to be registered or loaded: the grammar as it stands."""
    return triggers.parse(expression)


def trigger_warnings(expression: str) -> list[str]:
    """The checks a trigger alone can fail (a universal callback's, at load), as lines."""
    return [f"{check.atom}: {check.message}" for check in checks.static_checks(_parsed(expression))]


def _spent(db: Db, cb: StoredCallback, expr: triggers.Expr) -> bool:
    """Whether a callback can fire no more (a ``{work}`` one: every item of its agenda)."""
    if per_work(expr):
        return items.all_spent(db, cb.rowid, cb.job_id, cb.maximum, len(triggers.atoms(expr)))
    return spent(cb.count, cb.maximum)


def _keep_callback(
    db: Db,
    kept: StoredCallback,
    spec: dict[str, Any],
    expr: triggers.Expr,
    atoms: list[NewAtom],
    timers: list[tuple[int, float]],
    now_unix: float,
) -> None:
    """Rewrite a callback a registration keeps in its row: count, latches, items and clocks stay.

    Its time atoms go on as they were (``unindex_callbacks``): one that fired stays fired
    and a repeat keeps its next tick (they were re-armed at every registration again: a
    past time fired again, a repeat ticked at each one). One its last registration had
    spent (its clocks stopped) that a higher ``maximum`` makes live again starts them
    afresh: "registering the job again with a higher maximum starts it again". A
    universal line's repeat a reload stopped (``_stop_clocks_of``: the line was removed,
    and is back now) ticks again from its next point.
    """
    spec.update(count=kept.count, latches=list(kept.latches), latched_by=list(kept.marks))
    was_spent = bool(timers) and _spent(db, kept, expr)
    TriggerStore.rewrite_callback(db, kept.rowid, spec, atoms)
    if was_spent:
        (now,) = TriggerStore.load_callbacks(db, [kept.rowid])  # with the new maximum
        if not _spent(db, now, expr):
            TriggerStore.replace_timers(db, kept.rowid, timers)
    elif kept.universal and timers:
        running = TriggerStore.timer_slots(db, kept.rowid)
        for slot, atom in enumerate(triggers.atoms(expr)):
            # Only a repeat has a next point after a firing; a repeat's clock stops only
            # when spent (above) or when its line is removed: a one-shot's, once it fired.
            due = next_fire(atom, now_unix, last_fired_unix=now_unix)
            if due is not None and slot not in running:
                TriggerStore.add_timer(db, kept.rowid, slot, due)


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s).astimezone().isoformat(timespec="seconds")


_T = TypeVar("_T")
# Runs a waiting repeat's reads of its results when its answer may be made (``publish``).
InTurn = Callable[[Callable[[], Awaitable[list[Fired] | None]]], Awaitable[list[Fired] | None]]
# How often a transaction that lost a deadlock (a fleet's replicas racing) is run again.
_CONFLICT_TRIES = 8
# In a fleet: the version row replicas follow to reload the universal callbacks, and how
# often they look, and how often each looks at the fleet's next due timer (``_run_timers``):
# two indexed reads a second per replica.
UNIVERSAL_VERSION = "universal"
FLEET_POLL_S = 1.0
# A ``wait`` publisher whose firing another replica re-ran looks for that run's result this
# often, and gives up (no result) this long after the firing is done without one.
RECORD_POLL_S = 0.5
RECORD_WAIT_S = 30.0
# How long the timers wait before they try an unreachable store again.
_STORE_RETRY_S = 1.0
# The repeats whose skipped ticks were logged, each with the firing it waits for.
_SKIPPING_KEPT = 10_000


def _retrying(run: Callable[[], _T]) -> _T:
    """``run()``, again while PostgreSQL picks it as a deadlock's or serialization's victim."""
    for attempt in range(1, _CONFLICT_TRIES + 1):
        try:
            return run()
        except StoreConflict:
            if attempt == _CONFLICT_TRIES:
                raise
            logger.debug("store conflict (try %d); running the transaction again", attempt)
    raise AssertionError("unreachable")


def _removes_job(event: Event) -> bool:
    return event.name == EventName.REMOVED and event.type == EventType.JOB


def _key_parts(keys: Sequence[AtomKey]) -> tuple[str, list[str], list[str]]:
    """An event's keys as the type, names and extras they are made of (one type per event)."""
    return (
        keys[0].type,
        sorted({key.name for key in keys}),
        sorted({key.extra for key in keys}),
    )


def _work_items(
    events: Sequence[Event],
    keys: Sequence[Sequence[AtomKey]],
    hits_by_key: Mapping[AtomKey, Sequence[tuple[int, int]]],
    callbacks: Mapping[int, StoredCallback],
) -> list[tuple[int, int, str, int]]:
    """(job id, callback rowid, item, latches) of each ``{work}`` callback an event hit.

    The item is the one the event names (its context is what decide.py reads for it).
    """
    wanted = []
    for event, event_keys_ in zip(events, keys, strict=True):
        work_name = event.work_name if event.type == EventType.WORK else ""
        for key in event_keys_:
            for rowid, _slot in hits_by_key.get(key, ()):
                expr = _parsed(callbacks[rowid].triggers)
                if per_work(expr):
                    wanted.append(
                        (callbacks[rowid].job_id, rowid, work_name, len(triggers.atoms(expr)))
                    )
    return wanted


def canonical_triggers(expression: str) -> str:
    """The canonical text of a registered callback's triggers (``render`` of its parse)."""
    return triggers.render(_parsed(expression))


def is_per_work(expression: str) -> bool:
    """Whether a registered callback's triggers hold the ``{work}`` placeholder."""
    return per_work(_parsed(expression))


class FiredRun(Protocol):
    """Runs one fired invocation to its result (the dispatcher's ``execute``, fired).

    ``recheck`` is applied to the invocation when its run takes a slot, and ``queued_at``
    (``time.monotonic()``: when its wait in the firing queue began) starts its queue
    time (``Dispatcher.execute``).
    """

    async def __call__(
        self,
        invocation: Invocation,
        *,
        recheck: Callable[[Invocation], Invocation] | None = None,
        queued_at: float | None = None,
    ) -> RunResult: ...


class TriggerEngine:
    """Registers jobs, matches events, and fires callbacks through ``run`` on its own tasks.

    Call ``start()`` in the running loop (the firing worker and the timers), ``close()``
    to end them. Published events are applied whether or not it is started; what they
    fire waits in the queue until it is.
    """

    def __init__(
        self,
        store: TriggerStore,
        run: FiredRun,
        *,
        limits: Limits,
        universal_dirs: Sequence[Path] = (),
        clock: Callable[[], float] = time.time,
        max_parallel_events: int = 4,
        retry: Backoff = Backoff(),
        journal_limits: JournalLimits = JournalLimits(),
        event_id_retention_s: float = event_ids.DEFAULT_RETENTION_S,
        event_id_max_count: int = event_ids.DEFAULT_MAX_COUNT,
        universal_policies: Mapping[Path, str] | None = None,
        policies: PolicySet | None = None,
        check_code: CodeCheck = no_code_check,
        languages: Collection[str] | None = None,
        warn_missing_dirs: bool = True,
        last_good: Path | None = None,
        recorded_result: Callable[[str], RunResult | None] | None = None,
        supervisor_reach: SupervisorReachability | None = None,
    ) -> None:
        """Build the engine over ``store``.

        Args:
            store: The durable state; the engine is its only writer.
            run: Runs one invocation to its result (the dispatcher's ``execute``).
            limits: The limits of every fired run.
            universal_dirs: Where the universal callbacks' ``callbacks.conf`` files are.
            clock: Unix time, for the timers and the event ids' age.
            max_parallel_events: How many events' firings may run at once.
            retry: The delays between tries of a run refused for capacity or availability.
            journal_limits: How much of the per-callback journal is kept.
            event_id_retention_s: How long a published event's id is remembered (a
                repeat within it is ignored); pruned every minute while started.
            event_id_max_count: The most event ids remembered: past it the oldest are
                forgotten at the next prune, before their retention, with a WARNING.
            check_code: Checks a universal callback's code when it is loaded.
            languages: The languages the executor runs; a universal line in another is
                loaded with a warning (its firings are refused).
            warn_missing_dirs: Warn at each reload about a ``universal_dirs`` entry that
                does not exist (off for the default directory, which need not).
            universal_policies: The policy each universal directory names.
            policies: The sandbox policies; None gives every run the engine's ``limits``
                under the built-in policy names.
            last_good: Where each loaded universal set is kept, for ``keep_last_good``.
            recorded_result: In a fleet, the result the shared history has for an
                invocation id (blocks; None: none yet): what a ``wait`` publisher gets
                for a firing this replica ran after its claim was lost.
            supervisor_reach: The supervisor's reach, as the executor's calls found it:
                fired runs are held while it is unreachable (``FiringWorker``).
        """
        self._store = store
        self._run = run
        self._limits = limits
        self._universal_dirs = list(universal_dirs)
        self._universal_policies = dict(universal_policies or {})
        self._policies = policies
        self._universal: list[UniversalCallback] = []
        # Every line this engine has loaded (``line_name``): a firing whose line is not
        # loaded now was removed by a reload, or was never read here.
        self._lines_seen: set[LineName] = set()
        # Lines of the set kept from before a restart that it left out (``line_name``):
        # the policy each named, and why it was left out, for their firings' refusals.
        self._left_out: dict[LineName, tuple[str, str]] = {}
        # Configured directories found missing at the last reload (an unmounted share).
        self._missing_dirs: list[Path] = []
        self._warn_missing_dirs = warn_missing_dirs
        # Where each loaded set is kept for a start-up that meets a broken callbacks.conf.
        self._last_good = last_good
        self.universal_reload = ReloadStatus()
        # Lines removed whose clocks a load could not stop (the store away): the next does.
        self._clocks_to_stop: set[LineName] = set()
        self._check_code = check_code
        self._languages = languages
        self._clock = clock
        self._timer_wakeup = asyncio.Event()
        self._timers: asyncio.Task[None] | None = None
        self._recorded_result = recorded_result
        self._firings = FiringWorker(
            store,
            self._run_firing,
            max_parallel_events=max_parallel_events,
            retry=retry,
            # A fenced run's waiter (fleet only: a single executor's claims always hold).
            result_of_record=self._result_of_record if store.fleet and recorded_result else None,
            reach=supervisor_reach,
        )
        self._journal = journal_limits
        self._universal_version = store.fleet_version(UNIVERSAL_VERSION) if store.fleet else 0
        self._follower: asyncio.Task[None] | None = None
        # Reloads off the loop take turns (reload_universal_off_loop).
        self._reloading = asyncio.Lock()
        self._journal_pruned_at = float("-inf")
        self._event_ids = event_ids.EventIdPruner(
            store,
            event_id_retention_s,
            clock,
            max_count=event_id_max_count,
            forgotten_early=self._count_forgotten_early,
        )
        self._event_id_pruning: asyncio.Task[None] | None = None
        self._group: GroupCommit[tuple[Decision, bool]] = GroupCommit(self._apply_group)
        self._registering = asyncio.Lock()
        # The labels held per pgrp, with those the farm checked and is registering.
        self.labels = LabelClaims(store)
        self.stats = EngineStats()
        # (callback rowid, slot) -> the unfinished firing its skipped ticks were logged for.
        self._skipping: dict[tuple[int, int], str] = {}

    # -- universal callbacks --------------------------------------------------------

    @property
    def universal(self) -> list[UniversalCallback]:
        return list(self._universal)

    def _find_line(self, source: str, triggers: str) -> UniversalCallback | None:
        """The loaded line of a registered universal callback (``find_line``), or None: gone."""
        return find_line(self._universal, source, triggers, self._universal_dirs)

    def as_loaded(self, callback: StoredCallback) -> StoredCallback:
        """``callback``, a universal one naming its line's file as loaded now (``find_line``).

        Its stored source is the file's path at registration: after the data dir moved
        (or in a fleet, at another replica) the line is found by its name, and the
        file that counts, the one whose options its firings take, is the one loaded.
        Unchanged when the line is gone (its firings are refused, naming the stored one).
        """
        if not callback.universal:
            return callback
        loaded = self._find_line(callback.source, callback.triggers)
        if loaded is None or loaded.source == callback.source:
            return callback
        return replace(callback, source=loaded.source)

    @property
    def event_transactions(self) -> int:
        """How many transactions published events were applied in (group commit)."""
        return self._group.transactions

    @property
    def store(self) -> TriggerStore:
        """The durable state, for reading (the engine is its only writer)."""
        return self._store

    @property
    def universal_dirs(self) -> list[Path]:
        return list(self._universal_dirs)

    @property
    def universal_warnings(self) -> list[str]:
        """Missing directories, then the active universal callbacks' check warnings (``file:line: message``)."""
        missing = [
            f"{directory}: no such directory (universal_callback_path); none of its "
            "callbacks is loaded"
            for directory in self._missing_dirs
        ]
        return missing + [warning for cb in self._universal for warning in cb.warnings]

    def reload_universal(self, *, quiet: bool = False, fleet_wide: bool = False) -> list[str]:
        """Re-read every callbacks.conf; on errors keep the last good set and return them.

        The triggers' check warnings are logged and kept (``universal_warnings``).
        ``quiet`` leaves the errors to the caller to report (start-up says it in one line).
        ``fleet_wide`` (a reload asked for by a person: the RPC, SIGHUP): in a fleet,
        every other replica reloads its own callbacks.conf too, within a second
        (``_follow_fleet`` polls the store's version row).
        """
        if fleet_wide and self._store.fleet:
            self._universal_version = self._store.bump_fleet_version(UNIVERSAL_VERSION)
        return self._reload_universal(quiet=quiet)

    async def reload_universal_off_loop(self, *, fleet_wide: bool = False) -> list[str]:
        """``reload_universal``, its files read and checked on a worker thread.

        The loop goes on meanwhile: a callbacks.conf of a thousand lines takes a tenth
        of a second to check, and files changing under the read pause it for tenths.
        Reloads take turns; the set is changed on the loop.
        """
        async with self._reloading:
            if fleet_wide and self._store.fleet:
                self._universal_version = self._store.bump_fleet_version(UNIVERSAL_VERSION)
            loaded = await asyncio.to_thread(self._load_universal, self._set_before())
            return self._take_universal(loaded, quiet=False)

    def _reload_universal(self, *, quiet: bool) -> list[str]:
        return self._take_universal(self._load_universal(self._set_before()), quiet=quiet)

    def _load_universal(
        self, before: list[UniversalCallback]
    ) -> list[UniversalCallback] | UniversalConfigError:
        """The callbacks.conf files read and checked: the set, or why it is not loaded."""
        try:
            return load_universal(
                self._universal_dirs,
                check_trigger,
                check_code=self._check_code,
                languages=self._languages,
                policy_languages=(
                    {policy.name: policy.languages for policy in self._policies}
                    if self._policies is not None
                    else None
                ),
                warn=trigger_warnings,
                policies=self._universal_policies,
                known_policies=self._policies.names() if self._policies is not None else None,
                # A callbacks.conf that had lines and has none is looked at again first:
                # an editor's save window taken would stop their clocks at every job.
                had_lines={Path(cb.source).parent for cb in before},
            )
        except UniversalConfigError as err:
            return err

    def _take_universal(
        self, loaded: list[UniversalCallback] | UniversalConfigError, *, quiet: bool
    ) -> list[str]:
        """A load's set made the active one, or its errors said and the set kept."""
        now = self._clock()
        if self._warn_missing_dirs:
            self._missing_dirs = [d for d in self._universal_dirs if not d.is_dir()]
        if isinstance(loaded, UniversalConfigError):
            if not quiet:
                for line in loaded.errors:
                    logger.error("universal callbacks not reloaded: %s", line)
            self.universal_reload = ReloadStatus(
                now, self.universal_reload.loaded_at, tuple(loaded.errors)
            )
            return loaded.errors
        before = self._set_before()  # as it is now: another reload may have been taken
        now_loaded = {line_name(cb.source, cb.triggers) for cb in loaded}
        lines_before = {line_name(cb.source, cb.triggers) for cb in before}
        removed = (lines_before | self._clocks_to_stop) - now_loaded
        self._set_universal(loaded)
        if removed:
            self._stop_clocks_of(removed)
        if added := now_loaded - lines_before:
            self._restart_clocks_of(added)
        # A line left out at start-up and not loaded now was removed from callbacks.conf.
        self._lines_seen.update(self._left_out)
        self._left_out.clear()
        self.universal_reload = ReloadStatus(now, now)
        if self._last_good is not None:
            try:
                save_last_good(self._last_good, loaded, now)
            except OSError as err:
                logger.warning("universal callbacks: the set could not be kept: %s", err)
        for warning in self.universal_warnings:
            logger.warning("universal callback: %s", warning)
        logger.info("%d universal callbacks active", len(loaded))
        return []

    def keep_last_good(self) -> int | None:
        """After a start-up load that failed: take the set loaded last before the restart.

        Returns how many callbacks it holds, or None when none was kept (or it cannot
        be read). The failed load's errors stay in ``universal_reload``.
        """
        if self._last_good is None:
            return None
        try:
            kept = load_last_good(self._last_good)
        except UniversalConfigError as err:
            logger.warning("universal callbacks: %s", err.errors[0])
            return None
        if kept is None:
            return None
        callbacks, loaded_at = kept
        usable = []
        known = self._policies.names() if self._policies is not None else None
        for callback in callbacks:
            if (problem := kept_line_problem(callback, known)) is None:
                usable.append(callback)
                continue
            logger.error(
                "universal callbacks: %s = %s left out of the set kept from before: %s",
                callback.source,
                callback.triggers,
                problem,
            )
            self._left_out[line_name(callback.source, callback.triggers)] = (
                callback.policy,
                problem,
            )
        self._set_universal(usable)
        self.universal_reload = replace(self.universal_reload, loaded_at=loaded_at)
        return len(self._universal)

    def _set_before(self) -> list[UniversalCallback]:
        """The set active before this load.

        Before the first load since the start, those of the set taken last before the
        restart (``<data_dir>/universal-last-good.json``): a line removed while the
        executor was stopped is removed by the start-up load.
        """
        if self.universal_reload.loaded_at or self._last_good is None:
            before = self._universal
        else:
            try:
                kept = load_last_good(self._last_good)
            except UniversalConfigError:
                kept = None  # unreadable: keep_last_good says so when it is needed
            before = kept[0] if kept is not None else []
        return before

    def _stop_clocks_of(self, removed: set[LineName]) -> None:
        """Stop the clocks of the lines a load removed, at every job they are attached to.

        A removed line's firings are refused (``_not_loaded``), but a repeat attached with
        no maximum is never spent: it would be refused anew each interval, for each job,
        for as long as the job is registered. Its event atoms stay (an event fires it, and
        is refused, once per event). A line added back ticks again at every job it is
        still attached to (``_restart_clocks_of``), and at a new one as any line.
        """

        def stop() -> list[int]:
            with self._store.transaction() as db:
                running = TriggerStore.universal_clocks(db)
                stopped = [
                    rowid
                    for rowid, source, trigger in running
                    if line_name(source, trigger) in removed
                ]
                TriggerStore.drop_timers_of(db, stopped)
            return stopped

        try:
            stopped = _retrying(stop)
        except (UnavailableError, StoreConflict) as err:
            # PostgreSQL away: each firing is refused REJECTED until the next load that
            # reaches it stops them (unless that load has the line back).
            logger.warning("universal callbacks: the removed lines' clocks go on: %s", err)
            self._clocks_to_stop = removed
            return
        self._clocks_to_stop = set()
        if stopped:
            logger.info(
                "universal callbacks: clocks stopped for %d callbacks of removed lines",
                len(stopped),
            )

    def _restart_clocks_of(self, added: set[LineName]) -> None:
        """Start the repeats of the lines a load added back again, at every job they stayed at.

        A removed line's clocks were stopped (``_stop_clocks_of``); back, its event atoms
        fire it again, and so do its repeats now, from their next point, unless the
        callback is spent. A one-shot time atom stays stopped: whether it fired before
        is not known. A line never loaded before is at no job yet: nothing to do.
        """
        now = self._clock()

        def restart() -> int:
            started = 0
            with self._store.transaction() as db:
                stopped = [
                    rowid
                    for rowid, source, trigger in TriggerStore.universal_repeats_stopped(db)
                    if line_name(source, trigger) in added
                ]
                for callback in TriggerStore.load_callbacks(db, stopped):
                    expr = _parsed(callback.triggers)
                    if _spent(db, callback, expr):
                        continue
                    timers = [
                        (slot, due)
                        for slot, atom in enumerate(triggers.atoms(expr))
                        if (due := next_fire(atom, now, last_fired_unix=now)) is not None
                    ]
                    if timers:  # it has none running (universal_repeats_stopped)
                        TriggerStore.replace_timers(db, callback.rowid, timers)
                        started += 1
                return started

        try:
            started = _retrying(restart)
        except (UnavailableError, StoreConflict) as err:
            logger.warning("universal callbacks: the added lines' clocks stay stopped: %s", err)
            return
        if started:
            logger.info(
                "universal callbacks: clocks started again for %d callbacks of lines added back",
                started,
            )
            self._wake_timers()

    def _wake_timers(self) -> None:
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

    def _set_universal(self, loaded: list[UniversalCallback]) -> None:
        self._universal = loaded
        self._lines_seen.update(line_name(cb.source, cb.triggers) for cb in loaded)

    def _caught_up_with_fleet(self) -> bool:
        """In a fleet: reload now if another replica was asked to since; whether it did.

        A job registered at a replica that has reloaded may fire here before this
        replica's poll (``_follow_fleet``) has seen the version row move.
        """
        if not self._fleet_reloaded_since():
            return False
        self._reload_universal(quiet=False)
        return True

    def _fleet_reloaded_since(self) -> bool:
        """In a fleet: whether another replica was asked to reload since (then noted as seen)."""
        if not self._store.fleet:
            return False
        try:
            version = self._store.fleet_version(UNIVERSAL_VERSION)
        except UnavailableError as err:
            logger.debug("fleet version: %s", err)
            return False
        if version == self._universal_version:
            return False
        self._universal_version = version
        logger.info("another replica reloaded the universal callbacks: reloading")
        return True

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

    def register_job(
        self,
        job: dict[str, Any],
        *,
        strict: bool = False,
        published: frozenset[str] | None = None,
    ) -> Registration:
        """Store a job (``_stored_registration``) and queue what it fired, all on this thread."""
        registration, firings = self._stored_registration(job, strict, published)
        return self._registered(registration, firings)

    async def register(
        self,
        job: dict[str, Any],
        *,
        strict: bool = False,
        published: frozenset[str] | None = None,
    ) -> Registration:
        """``register_job`` with the store's part on a worker thread.

        A job of tens of thousands of callbacks parses, checks and writes for seconds;
        meanwhile the loop answers every other call. Registrations wait their turn here,
        not on a thread each (the default executor's threads also apply the events).
        Refused, nothing stored, while a database is lost (``TriggerStore.refuse_while_lost``).
        """
        self._store.refuse_while_lost()
        async with self._registering:
            registration, firings = await asyncio.to_thread(
                self._stored_registration, job, strict, published
            )
        return self._registered(registration, firings)

    def _registered(
        self, registration: Registration, firings: Sequence[PendingFiring]
    ) -> Registration:
        """(On the loop.) Queue what a committed registration fired and wake the timers."""
        self.stats.callbacks_fired += len(registration.fired)
        self._firings.add(firings)
        self._timer_wakeup.set()
        return registration

    def _stored_registration(
        self, job: dict[str, Any], strict: bool, published: frozenset[str] | None
    ) -> tuple[Registration, list[PendingFiring]]:
        """``_register_job``, again when a fleet's transaction lost a deadlock.

        Registrations of one job take turns in their transactions, in every replica of a
        fleet (``TriggerStore.callbacks_to_register``).
        """
        return _retrying(lambda: self._register_job(job, strict=strict, published=published))

    def _register_job(
        self,
        job: dict[str, Any],
        *,
        strict: bool = False,
        published: frozenset[str] | None = None,
    ) -> tuple[Registration, list[PendingFiring]]:
        """Store a job with its callbacks and the universal ones; keeps state of unchanged ones.

        Touches only the store (any thread): what it fired is returned, for the loop to
        queue (``_registered``).

        Args:
            job: The Qube job dict, with its callbacks (each may say ``mode``).
            strict: Refuse the registration when its own callbacks fail a check.
            published: The events the scheduler publishes ("complete", "running-job"),
                for the never-happens check; None when not declared.

        Raises:
            InvalidRequestError: no id, a label clash, a trigger that does not parse, a
                mode not known, or (``strict``) a failed check.
        """
        job_id = int(job.get("id") or 0)
        if job_id <= 0:
            raise InvalidRequestError("job.id is required to register a job")
        job = dict(job, pgrp=int(job.get("pgrp") or job_id))
        label = str(job.get("label") or "")
        # Held until the transaction is over: its label is not in the store before then.
        with self.labels.registering(job_id, job["pgrp"], label):
            return self._register_labelled(job, job_id, label, strict, published)

    def _register_labelled(
        self,
        job: dict[str, Any],
        job_id: int,
        label: str,
        strict: bool,
        published: frozenset[str] | None,
    ) -> tuple[Registration, list[PendingFiring]]:
        """``_register_job`` once the job's label is its own in its pgrp."""
        specs = callback_specs(job, self._universal, _checked)
        place = JobPlace.of(job)
        where = surroundings(self._store, place, job, [expr for _, expr in specs], published)
        found = checks.job_checks(place)
        for spec, expr in specs:
            found += checks.trigger_checks(
                expr, spec["id"], where, universal=spec["universal"], level=spec["mode"] == LEVEL
            )
            if not spec["universal"]:  # a universal file's code and language: at its load
                found += checks.code_checks(spec["id"], spec["language"], spec["code"])
                refusal, _ = self._refusal(spec["language"], spec["user"])
                found += checks.refusal_checks(spec["id"], refusal)
        own = [check for check in found if not check.universal]
        if strict and own:
            problems = "; ".join(check.line() for check in own)
            raise InvalidRequestError(f"job {job_id} (strict): {problems}")
        agenda = list(where.agendas.get(job_id) or [])
        now = self._clock()
        batch = uuid.uuid4().hex
        with self._store.transaction() as db, self._store.within_bound(db, job_id):
            # Read (and in a fleet locked) in the transaction that writes it back: a copy
            # read before it would undo an event's latch committed meanwhile.
            previous = TriggerStore.callbacks_to_register(db, job_id)
            before = TriggerStore.place_in(db, job_id)
            plain_specs = [spec for spec, _ in specs]
            kept_as = continued(plain_specs, previous, self._universal_dirs)
            first_time = store_job(db, job, plain_specs, kept_as, previous)
            keep_journal(db, job_id, plain_specs, kept_as, previous)
            # Before the level passes: what the old holder of its label or id latched goes.
            cleared = label_moves.release(db, place, before, first_time, now, _parsed)
            decider = Decider(
                db,
                SeenEvent(Event("submit", "job", job_id), now),
                batch,
                dry=False,
                parsed=_parsed,
                registering=True,
                judge=self.firing_refusal,
            )
            for (spec, expr), kept in zip(specs, kept_as, strict=True):
                atoms, timers = self._index(place, expr)
                if kept is not None:
                    _keep_callback(db, kept, spec, expr, atoms, timers, now)
                    continue
                rowid = TriggerStore.put_callback(db, job_id, spec, atoms, timers)
                if spec["mode"] == LEVEL:
                    (stored,) = TriggerStore.load_callbacks(db, [rowid])
                    level_pass(db, decider, stored, expr, place, agenda)
            if first_time:
                take_registration(db, decider, place, _parsed)
            checks.replace_job(db, job_id, found)
            if label:
                checks.resolve_label(db, place.pgrp, label, job_id, _iso(now))
            journal.append(db, [*cleared, *decider.decision.entries], self._journal)
            self._own(db, batch, decider.decision.firings)
            registered = TriggerStore.callbacks_in(db, job_id)
        return Registration(registered, found, decider.decision.fired), decider.decision.firings

    # -- matching -------------------------------------------------------------------

    def _decide(
        self,
        db: Db,
        event: Event,
        batch: str,
        *,
        dry: bool,
        place: JobPlace | None,
        deferred: DeferredWrites | None = None,
        near_in_pgrp: list[Any] | None = None,
        near_elsewhere: list[Any] | None = None,
        group: GroupState | None = None,
        hits_by_key: Mapping[AtomKey, Sequence[tuple[int, int]]] | None = None,
    ) -> Decision:
        """Every decision of one event in the open transaction, with its near misses.

        ``place``: the event's job's (None: not registered), as the caller read it. ``deferred``
        (not dry): where the state the event leaves its object in waits to be written.
        ``near_in_pgrp``: the near misses in the job's pgrp, when read with the place
        (``near_misses.in_pgrp_subquery``); ``near_elsewhere``: those of other pgrps
        naming the job's label, when read with it too. ``group`` and ``hits_by_key``: a group's
        state and the atoms its keys found, read for the whole group (``_apply_segment``).
        """
        keys = event_keys(event, place)
        seen = SeenEvent(event, self._clock())
        decider = Decider(
            db,
            seen,
            batch,
            dry=dry,
            parsed=_parsed,
            group=group,
            judge=self.firing_refusal,
            submitted=deferred.submitted if deferred is not None else (),
        )
        if group is None or hits_by_key is None:
            hits, callbacks = TriggerStore.matching_callbacks(db, keys)
        else:
            hits = [hit for key in keys for hit in hits_by_key.get(key, ())]
            callbacks = group.callbacks
        decider.matched(hits, callbacks)
        if place is not None:
            in_pgrp = (
                None if near_in_pgrp is None else near_misses.refs_from_json(near_in_pgrp, keys)
            )
            elsewhere = (
                None if near_elsewhere is None else near_misses.refs_from_json(near_elsewhere, keys)
            )
            decider.near_misses(keys, place, hits, in_pgrp, elsewhere)
            if deferred is not None:
                deferred.records.append(seen)
        elif (
            deferred is not None and event.name == EventName.SUBMIT and event.type == EventType.JOB
        ):
            # A job never registered: level callbacks registered later take its submission.
            deferred.submissions.append(seen)
        if deferred is not None and event.name == EventName.SUBMIT and event.type == EventType.JOB:
            deferred.submitted.add(event.job_id)  # for this transaction's later events
        return decider.decision

    def _own(self, db: Db, batch: str, firings: Sequence[PendingFiring]) -> None:
        """In a fleet, claim what a transaction queued for this replica (it runs them)."""
        if firings and self._store.fleet:
            TriggerStore.own_batch(db, batch, self._store.owner, self._store.lease_until())

    def _apply(self, event: Event) -> tuple[Decision, bool]:
        """Apply one event durably (``_apply_once``; again after a lost deadlock)."""
        return _retrying(lambda: self._apply_once(event))

    def _apply_once(self, event: Event) -> tuple[Decision, bool]:
        """Apply one event durably: what it decided, and whether it was a repeat."""
        with self._store.transaction() as db:
            TriggerStore.submissions_take_turns(db, [event])  # first: before any row lock
            deferred = DeferredWrites(self._journal)
            applied = self._apply_in(db, event, deferred, event_id_reuse.FirstUses(), 0)
            deferred.flush(db)
        self._count(*applied)
        return applied

    def _apply_in(
        self,
        db: Db,
        event: Event,
        deferred: DeferredWrites,
        firsts: event_id_reuse.FirstUses,
        index: int,
    ) -> tuple[Decision, bool]:
        """One event's part of a transaction: its id checked, its decisions made.

        Its journal entries and states wait in ``deferred`` for the caller's ``flush``.
        ``firsts``: the transaction's first uses of ids so far, of which this event is the
        ``index``-th. EventIdReusedError when its id was first used for another event.
        """
        batch = uuid.uuid4().hex
        # The near misses in the job's pgrp are read with the event's id (names, type and
        # extras are the event's own; the job's place only adds scopes).
        near = near_misses.in_pgrp_subquery(event_keys(event, None), "j.pgrp", MAX_NEAR_MISSES)
        sighting = TriggerStore.sighting(
            db,
            event.event_id,
            event.job_id,
            near,
            event_id_reuse.fingerprint(event) if event.event_id else None,
        )
        if not sighting.first:
            firsts.check_repeat(db, index, event, sighting.earlier)
            return Decision(), True
        firsts.add(index, event)
        decision = self._decide(
            db,
            event,
            batch,
            dry=False,
            place=sighting.place,
            deferred=deferred,
            near_in_pgrp=sighting.also,
        )
        self._own(db, batch, decision.firings)
        deferred.take(db, event, decision)
        if event.name == EventName.REMOVED and event.type == EventType.JOB:
            deferred.flush(db)  # what waits for the job's states is written before they go
            TriggerStore.forget_job(db, event.job_id, self._clock())
        self._prune(db)
        return decision, False

    def _count(self, decision: Decision, duplicate: bool) -> None:
        if not duplicate:
            self.stats.events_published += 1
            self.stats.callbacks_fired += len(decision.fired)

    def _apply_group(self, events: Sequence[Event]) -> list[tuple[Decision, bool]]:
        """Apply events in order in one transaction (again after a lost deadlock).

        On PostgreSQL each kind of read is one statement for the group
        (``_apply_set_based``); on SQLite, whose statements make no round trips, the
        events are applied one after another. Runs on the group commit's thread; what is
        counted and queued is left to the loop.
        """

        def apply_all() -> list[tuple[Decision, bool]]:
            with self._store.transaction() as db:
                if self._store.fleet:
                    return self._apply_set_based(db, events)
                deferred = DeferredWrites(self._journal)
                firsts = event_id_reuse.FirstUses()
                applied = [
                    self._apply_in(db, event, deferred, firsts, index)
                    for index, event in enumerate(events)
                ]
                deferred.flush(db)
                return applied

        return _retrying(apply_all)

    def _apply_set_based(self, db: Db, events: Sequence[Event]) -> list[tuple[Decision, bool]]:
        """(PostgreSQL) A group's events in the open transaction: each kind of read once.

        The events are read in segments (group_reads.py): a ``removed`` job ends one, as
        the events after it must not find its rows. Each segment's events are decided in
        order on the state the earlier ones left (group_state.py), and what they wrote
        is written at the segment's end.
        """
        # First, before any row lock: a first registration and its job's submit event
        # take turns, so one of them reads what the other wrote.
        TriggerStore.submissions_take_turns(db, events)
        applied: list[tuple[Decision, bool]] = []
        deferred = DeferredWrites(self._journal)
        firsts = event_id_reuse.FirstUses()
        start = 0
        while start < len(events):
            end = start
            while end < len(events) - 1 and not _removes_job(events[end]):
                end += 1
            applied += self._apply_segment(db, events[start : end + 1], deferred, firsts, start)
            start = end + 1
        self._prune(db)
        return applied

    def _apply_segment(
        self,
        db: Db,
        events: Sequence[Event],
        deferred: DeferredWrites,
        firsts: event_id_reuse.FirstUses,
        offset: int,
    ) -> list[tuple[Decision, bool]]:
        """``_apply_set_based``'s events up to and including a ``removed`` job's, if any.

        ``offset``: the place of the segment's first event among the transaction's.
        """
        found = group_reads.sightings(
            db,
            events,
            [_key_parts(event_keys(event, None)) for event in events],
            MAX_NEAR_MISSES,
            [event_id_reuse.fingerprint(event) if event.event_id else b"" for event in events],
        )
        keys = [
            event_keys(event, seen.place) if seen.first else []
            for event, seen in zip(events, found, strict=True)
        ]
        hits_by_key, callbacks = group_reads.matching(db, (key for some in keys for key in some))
        group = GroupState(self._store.owner, self._store.lease_until(), callbacks)
        group.contexts = group_reads.work_contexts(
            db, _work_items(events, keys, hits_by_key, callbacks)
        )
        applied: list[tuple[Decision, bool]] = []
        for index, (event, seen) in enumerate(zip(events, found, strict=True), offset):
            if not seen.first:
                firsts.check_repeat(db, index, event, seen.earlier)
                applied.append((Decision(), True))
                continue
            firsts.add(index, event)
            decision = self._decide(
                db,
                event,
                uuid.uuid4().hex,
                dry=False,
                place=seen.place,
                deferred=deferred,
                near_in_pgrp=seen.near,
                near_elsewhere=seen.near_elsewhere,
                group=group,
                hits_by_key=hits_by_key,
            )
            deferred.take(db, event, decision)
            applied.append((decision, False))
        last = events[-1]
        # What the segment wrote, in one round trip (the group's own reads are done).
        with pipelined(db):
            group.flush(db)
            deferred.flush(db)  # what waits for a removed job's states is written before they go
        if _removes_job(last) and not applied[-1][1]:
            TriggerStore.forget_job(db, last.job_id, self._clock())
        return applied

    def _applied(self, applied: list[tuple[Decision, bool]]) -> list[tuple[Decision, bool]]:
        """Count what committed events decided and queue what they fired (on the loop)."""
        for decision, duplicate in applied:
            self._count(decision, duplicate)
            self._firings.add(decision.firings)
        return applied

    async def publish_many(self, events: Sequence[Event]) -> list[tuple[list[Fired], bool]]:
        """Apply events in order in one transaction; their firings then run.

        The transaction may hold other callers' events too (group commit): a busy
        scheduler's batch costs its events' statements, not a commit each. If it fails,
        these events are applied again in a transaction of their own (all or none).

        Returns:
            Per event, the callbacks it fired and whether it was a repeat.

        Raises:
            UnavailableError: the engine is closing, or a database is lost (nothing was
                applied: ``TriggerStore.refuse_while_lost``).
            EventIdReusedError: an event's id was first used for another event (nothing
                was applied); its ``index`` is the event's in ``events``.
        """
        if self._firings.closed:
            raise UnavailableError("the trigger engine is stopping; publish the events again")
        self._store.refuse_while_lost()
        with _reuse_logged():
            applied = await self._group.submit(events, self._applied)
        return [(decision.fired, duplicate) for decision, duplicate in applied]

    def _prune(self, db: Db) -> None:
        """Prune what is bounded, at most once per ``PRUNE_EVERY_S``.

        Journal entries past their age, and the remembered submissions of jobs never
        registered and removals of jobs past their numbers
        (``states.MAX_REMEMBERED_SUBMISSIONS``, ``removals.MAX_REMEMBERED_REMOVALS``).
        """
        now = self._clock()
        if now - self._journal_pruned_at < journal.PRUNE_EVERY_S:
            return
        self._journal_pruned_at = now
        journal.prune_older_than(db, now - self._journal.max_age_s)
        states.prune_submissions(db)
        removals.prune(db)

    def match(self, event: Event, *, dry: bool) -> Decision:
        """Apply (or, dry, simulate) one event; what it fires is queued for the worker.

        A dry run reads on a snapshot of the store (``TriggerStore.snapshot``) for as long
        as it takes: any thread may call it, and the servicer calls it on a worker thread
        (an event that 30,000 callbacks wait for is decided for a second).

        Returns:
            What it fired (would fire), latched without firing (a dry run's only), and
            the journal entries that say why (a dry run's only: an applied event's are
            written). A dry run writes nothing. A repeat of an ``event_id`` already
            applied decides nothing.
        """
        if dry:
            with self._store.snapshot() as db:
                return self._decide(
                    db, event, "", dry=True, place=TriggerStore.place_in(db, event.job_id)
                )
        with _reuse_logged():
            decision, _ = self._apply(event)
        self._firings.add(decision.firings)
        return decision

    async def publish(
        self, event: Event, *, wait: bool, in_turn: InTurn | None = None
    ) -> tuple[list[Fired], bool]:
        """Apply an event; what it fires runs on the firing worker.

        ``in_turn(read)``: runs ``read()``, the reads of a waiting repeat's results from
        the history, when the caller's answer may be made (the API's turn, shared with
        GetRun's; None: at once). Nothing is awaited after it returns.

        Returns:
            The callbacks it fired, with their results when ``wait`` (a refused run is
            retried until it runs; a result is None when the run raised), and whether
            it was a repeat. A repeat fires nothing; with ``wait`` it answers with what
            its id fired when first applied, once run (``_first_firings``).

        Raises:
            UnavailableError: the engine is closing (the event was not applied, unless it
                was while a ``wait`` publisher waited: its firings then run at restart), or
                a database is lost (not applied: ``TriggerStore.refuse_while_lost``).
            EventIdReusedError: its id was first used for another event (not applied).
        """
        if self._firings.closed:
            raise UnavailableError("the trigger engine is stopping; publish the event again")
        self._store.refuse_while_lost()

        def queued(
            applied: list[tuple[Decision, bool]],
        ) -> tuple[Decision, bool, list[asyncio.Future[RunResult | None]]]:
            ((decision, duplicate),) = applied
            self._count(decision, duplicate)
            return decision, duplicate, self._firings.add(decision.firings, wait=wait)

        # Group commit: the transaction holds the events of every call that came meanwhile.
        with _reuse_logged():
            decision, duplicate, futures = await self._group.submit([event], queued)
        if not wait:
            return decision.fired, duplicate
        if duplicate:
            return await self._first_firings(event.event_id, in_turn), True
        results = await asyncio.gather(*futures)
        return [
            dataclasses.replace(fired, result=result)
            for fired, result in zip(decision.fired, results, strict=True)
        ], duplicate

    async def _first_firings(self, event_id: str, in_turn: InTurn | None) -> list[Fired]:
        """What a repeated event fired when first applied, each with its result once run.

        Its firings may run here or at another replica (a resend after a failover), or
        have run already: each result is the one of record, as a fenced waiter's is
        (``_result_of_record``). The runs are waited for first, outside ``in_turn`` (a
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
            await asyncio.sleep(RECORD_POLL_S)

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
            await asyncio.sleep(RECORD_POLL_S)

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

    # -- explanations ---------------------------------------------------------------

    def explain(
        self,
        job_id: int,
        callback_id: int = 0,
        *,
        work_name: str = "",
        journal_limit: int = 0,
        after_callback_id: int = 0,
        limit: int = why.MAX_CALLBACKS_EXPLAINED,
        registration: int = 0,
        max_atoms: int = 0,
    ) -> JobExplanation:
        """Why each callback of a job did or did not fire, and what it still waits for.

        At most ``limit`` callbacks, those with ids above ``after_callback_id``, of the
        job's registration ``registration`` when not 0; of each, its first ``max_atoms``
        atoms (0: all). It reads on a snapshot of the
        store for as long as that takes: any thread may call it, and the servicer calls
        it on a worker thread (``why.explain_job``).

        Raises:
            NotFoundError: the job (or the callback) is not registered.
            ChangedMeanwhileError: the job was registered again since ``registration``.
        """
        explained = why.explain_job(
            self._store,
            job_id,
            callback_id,
            work_name=work_name,
            journal_limit=journal_limit or self._journal.entries,
            parsed=_parsed,
            after_callback_id=after_callback_id,
            limit=limit,
            registration=registration,
            max_atoms=max_atoms,
        )
        callbacks = []
        for each in explained.callbacks:
            refusal, shadow = self.firing_refusal(each.callback)
            callback = self.as_loaded(each.callback)
            callbacks.append(replace(each, callback=callback, refusal=refusal, shadow=shadow))
        return replace(explained, callbacks=tuple(callbacks))

    async def _result_of_record(self, invocation_id: str) -> RunResult | None:
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

    async def _run_firing(self, firing: PendingFiring, queued_at: float) -> RunResult:
        """Run one queued firing in the context of its job and event (the worker's ``run``).

        The callback, its count and its work item are the firing's, as decided.

        Of the job, the invocation holds only its id and user: nothing a fired run does
        reads more of it (the child's start frame names the id, the mail and status codes
        ask the supervisor), and the stored callback's user is the job's where it has none
        of its own (registration). Reading the job's JSON here cost the loop about a second
        for a million work items, and a thread would not have helped: ``json.loads`` holds
        the GIL throughout.
        """
        cb, event = firing.callback, firing.event
        job = {"id": cb.job_id, "user": cb.user}
        invocation = Invocation(
            invocation_id=firing.invocation_id,
            callback=CallbackSpec(
                language=cb.language,
                code=cb.code,
                triggers=cb.triggers,
                id=cb.callback_id,
                user=cb.user,
                count=firing.count,
                maximum=cb.maximum,
                source=cb.source,
            ),
            job=job,
            limits=self._limits,
            event=event,
            work_name=firing.work_name,
            subjob_id=event.subjob_id,
            source="universal" if cb.universal else "job",
            claim_epoch=firing.epoch if self._store.fleet else None,
        )
        if not cb.universal:
            return await self._run(
                self._with_policy(invocation, universal=False), queued_at=queued_at
            )
        # Looked at again when the run gets its slot: a reload while it waits for one
        # applies to it (a line removed, turned shadow or moved to another policy).
        return await self._run(
            self._with_policy(invocation, universal=True),
            recheck=lambda waited: self._with_policy(waited, universal=True),
            queued_at=queued_at,
        )

    def _with_policy(self, invocation: Invocation, *, universal: bool) -> Invocation:
        """The invocation under its policy: a universal callback's as its (current) line says.

        Looked up in the set loaded last, not stored with the job: a reload that turns
        shadow off or changes a policy applies to the next run (one waiting for a slot
        too: this is looked at again when it gets one), and one that removes
        the line stops the callback (it is refused, not run under defaults: a shadow
        callback must never go live by being removed). Its source is the line's file as
        loaded now: the one stored names the file at registration, which a data dir
        moved since (or another replica's directory) leaves elsewhere.
        """
        named, shadow = "", False
        if universal:
            spec = invocation.callback
            loaded = self._find_line(spec.source, spec.triggers)
            if loaded is None and self._caught_up_with_fleet():
                loaded = self._find_line(spec.source, spec.triggers)
            if loaded is not None:
                named, shadow = loaded.policy, loaded.shadow
                invocation = replace(invocation, callback=replace(spec, source=loaded.source))
            else:
                left_out = self._left_out.get(line_name(spec.source, spec.triggers))
                return replace(
                    invocation,
                    policy=(left_out[0] if left_out else "") or UNIVERSAL,
                    refusal=self._not_loaded(spec.source, spec.triggers),
                )
        if self._policies is None:
            name = (named or UNIVERSAL) if universal else JOB
            return replace(invocation, policy=name, shadow=shadow)
        if universal:
            try:
                policy = self._policies.for_universal(named)
            except NotFoundError as err:
                # Never another policy's grants in its place (keep_last_good leaves such
                # lines out; this holds for any other way one could get here).
                callback = f"universal callback {invocation.callback.source} = "
                refusal = f"{callback}{invocation.callback.triggers}: not run: its {err}"
                return replace(invocation, policy=named, shadow=shadow, refusal=refusal)
        else:
            policy = self._policies.for_job_callback(invocation.actor)
        return replace(invocation, policy=policy.name, shadow=shadow, limits=policy.limits[0])

    def firing_refusal(self, cb: StoredCallback) -> tuple[str, bool]:
        """(Why a firing of ``cb`` is refused as things stand, "" when it runs; whether as a shadow).

        What ``_with_policy`` and the dispatcher decide for its run, said ahead of it:
        by ``why``, a dry run and the journal's entry of the firing (REJECTED runs read as
        fired otherwise). Reads only what is in memory (the set loaded, the policies): any
        thread may call it, in a transaction too. In a fleet, a line another replica has
        just added may be found by the run's own look (``_caught_up_with_fleet``), not here.
        """
        return self._refusal(
            cb.language, cb.user, (cb.source, cb.triggers) if cb.universal else None
        )

    def _refusal(
        self, language: str, user: str, line: tuple[str, str] | None = None
    ) -> tuple[str, bool]:
        """``firing_refusal`` of a job's own callback (``line`` None) or a universal one's line."""
        policy: Policy | None = None
        shadow = False
        if line is not None:
            source, triggers = line
            loaded = self._find_line(source, triggers)
            if loaded is None:
                return self._not_loaded(source, triggers), False
            shadow = loaded.shadow
            if self._policies is not None:
                try:
                    policy = self._policies.for_universal(loaded.policy)
                except NotFoundError as err:
                    callback = f"universal callback {loaded.source} = {triggers}"
                    return f"{callback}: not run: its {err}", shadow
        elif self._policies is not None:
            policy = self._policies.for_job_callback(user)
        return language_refusal(language, self._languages, policy) or "", shadow

    def _not_loaded(self, source: str, triggers: str) -> str:
        """The refusal of a registered universal callback whose line is not in the set loaded.

        No set taken since the start (a broken callbacks.conf, and none kept from before:
        an upgrade that refuses a file the old version took, say) turns them all off; the
        line may still be there, unchanged, so "removed by a reload" would mislead. A line
        this replica never read was registered at another one (or before a restart).
        """
        callback = f"universal callback {source} = {triggers}"
        if (left_out := self._left_out.get(line_name(source, triggers))) is not None:
            return f"{callback}: not run: left out of the set kept from before: {left_out[1]}"
        status = self.universal_reload
        if status.errors and not status.loaded_at:
            count = counted(len(status.errors), "problem")
            return (
                f"{callback}: not run: universal callbacks are off: callbacks.conf has "
                f"{count} (first: {status.errors[0]}); fix it, then cbexec triggers reload"
            )
        if line_name(source, triggers) in self._lines_seen:
            return (
                f"{callback} is no longer in callbacks.conf (its line was removed, or its "
                "trigger changed, by a reload): not run until a reload brings the line back"
            )
        return f"{callback} is not in this replica's callbacks.conf: not run"

    # -- timers and the engine's tasks ----------------------------------------------

    def fire_due_timers(self) -> list[Fired]:
        """Latch every due time atom (``_fire_due_timers``; again after a lost deadlock)."""
        return _retrying(self._fire_due_timers)

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
                expr = _parsed(cb[0].triggers)
                if _spent(db, cb[0], expr):
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
                    parsed=_parsed,
                    judge=self.firing_refusal,
                )
                decider.matched([(rowid, slot)])
                self._own(db, batch, decider.decision.firings)
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
                if decider.decision.fired and _spent(
                    db, TriggerStore.load_callbacks(db, [rowid])[0], expr
                ):
                    TriggerStore.drop_timers(db, rowid)  # the firing that spent it
        self.stats.callbacks_fired += len(fired_all)
        self.stats.repeat_ticks_skipped += skipped  # committed: a retried try counts once
        for firings in batches:
            self._firings.add(firings)
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
                    self.fire_due_timers()
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

    def _count_forgotten_early(self, count: int) -> None:
        # On the pruner's thread: the one writer of this count, read by the loop.
        self.stats.event_ids_forgotten_early += count

    def prune_event_ids(self) -> int:
        """Forget the event ids past their retention, then past the most kept (blocks); how many went.

        A started engine does this every minute on a thread of its own.
        """
        return self._event_ids.prune()

    def start(self) -> None:
        """Start the firing worker, the timers and the event ids' pruning: ended by ``close``.

        The firings queued before a restart run first.
        """
        if self._timers is not None:
            raise RuntimeError("the trigger engine is already started")
        self._firings.start()
        self._timers = asyncio.get_running_loop().create_task(self._run_timers())
        self._event_id_pruning = asyncio.get_running_loop().create_task(self._event_ids.run())
        if self._store.fleet:
            self._follower = asyncio.get_running_loop().create_task(self._follow_fleet())

    async def _follow_fleet(self) -> None:
        """In a fleet: reload the universal callbacks when another replica was asked to."""
        while True:
            await asyncio.sleep(FLEET_POLL_S)
            if self._fleet_reloaded_since():
                await self.reload_universal_off_loop()

    @property
    def idle(self) -> bool:
        """Whether no firing is queued or running now (the restored ones count until run)."""
        return self._firings.idle

    @property
    def firings_held(self) -> str:
        """Why fired runs are held now (the supervisor unreachable); "" while they are not."""
        return self._firings.held

    async def wait_idle(self) -> None:
        """Until no firing is queued or running (once started)."""
        await self._firings.wait_idle()

    async def close(self) -> None:
        """Stop the timers and the worker; unfinished firings stay queued for the next start.

        The events already taken are applied and answered first.
        """
        await self._group.close()
        self._event_ids.stop()
        if self._event_id_pruning is not None:
            # Not cancelled: its thread would go on writing; it ends after its batch.
            await asyncio.gather(self._event_id_pruning, return_exceptions=True)
        for task in (self._timers, self._follower):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._firings.close()


@contextlib.contextmanager
def _reuse_logged() -> Iterator[None]:
    """Log an event refused for its reused id at WARNING (a publisher's bug, else unseen)."""
    try:
        yield
    except EventIdReusedError as err:
        logger.warning("%s", err)
        raise
