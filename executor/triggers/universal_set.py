"""The universal callbacks in effect: the set a load of callbacks.conf took, and its lines' clocks.

universal.py reads and checks the files; this keeps what a load took (a load with
errors keeps the last good set), the set kept from before a restart for a start-up that
meets a broken callbacks.conf (``keep_last_good``), what registered callbacks of a
line no longer loaded are told (``not_loaded``), and what ``triggers why`` says of the
lines loaded that a job does not hold (``not_attached``). A universal callback whose line a load
removed has its timers dropped, at every job (``_stop_clocks_of``); a reload that has the
line back starts them again (``_restart_clocks_of``). In a fleet, a reload asked for by a
person bumps a version row the other replicas follow (the engine polls it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final

from executor import triggers
from executor.bounds import cut
from executor.errors import UnavailableError
from executor.plurals import counted
from executor.policies import PolicySet, not_configured
from executor.sql import StoreConflict
from executor.triggers.conflicts import retrying
from executor.triggers.evaluate import next_fire
from executor.triggers.items import callback_spent
from executor.triggers.parsed import check_trigger, parsed, trigger_warnings
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import StoredCallback
from executor.triggers.universal import (
    CodeCheck,
    LineName,
    ReloadStatus,
    UniversalCallback,
    UniversalConfigError,
    find_line,
    line_name,
    lines_not_attached,
    load_last_good,
    load_universal,
    save_last_good,
)

logger = logging.getLogger(__name__)

# In a fleet: the version row replicas follow to reload the universal callbacks.
UNIVERSAL_VERSION = "universal"
# A job's explanation names this many of the lines loaded that it does not hold, then
# counts the rest (a set holds up to 1,000), each trigger up to this many characters.
MAX_LINES_NAMED: Final = 5
MAX_NAMED_TRIGGER_CHARS: Final = 200


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


class UniversalSet:
    """The universal callbacks loaded now, reloaded on request, and the clocks of their lines."""

    def __init__(
        self,
        store: TriggerStore,
        *,
        universal_dirs: Sequence[Path],
        universal_policies: Mapping[Path, str] | None,
        policies: PolicySet | None,
        check_code: CodeCheck,
        languages: Collection[str] | None,
        warn_missing_dirs: bool,
        last_good: Path | None,
        clock: Callable[[], float],
        wake_timers: Callable[[], None],
    ) -> None:
        """The set of ``universal_dirs``, none loaded yet; the engine's arguments of these names.

        ``wake_timers``: wakes the timers to look at their next due time, from any thread.
        """
        self._store = store
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
        self._wake_timers = wake_timers
        self._universal_version = store.fleet_version(UNIVERSAL_VERSION) if store.fleet else 0
        # Reloads off the loop take turns (reload_universal_off_loop).
        self._reloading = asyncio.Lock()

    @property
    def universal(self) -> list[UniversalCallback]:
        return list(self._universal)

    def find_line(self, source: str, triggers: str) -> UniversalCallback | None:
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
        loaded = self.find_line(callback.source, callback.triggers)
        if loaded is None or loaded.source == callback.source:
            return callback
        return replace(callback, source=loaded.source)

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
        (the engine's ``_follow_fleet`` polls the store's version row).
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

        A removed line's firings are refused (``not_loaded``), but a repeat attached with
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
            stopped = retrying(stop)
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
                    expr = parsed(callback.triggers)
                    if callback_spent(db, callback, expr):
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
            started = retrying(restart)
        except (UnavailableError, StoreConflict) as err:
            logger.warning("universal callbacks: the added lines' clocks stay stopped: %s", err)
            return
        if started:
            logger.info(
                "universal callbacks: clocks started again for %d callbacks of lines added back",
                started,
            )
            self._wake_timers()

    def _set_universal(self, loaded: list[UniversalCallback]) -> None:
        self._universal = loaded
        self._lines_seen.update(line_name(cb.source, cb.triggers) for cb in loaded)

    def caught_up_with_fleet(self) -> bool:
        """In a fleet: reload now if another replica was asked to since; whether it did.

        A job registered at a replica that has reloaded may fire here before this
        replica's poll (the engine's ``_follow_fleet``) has seen the version row move.
        """
        if not self.fleet_reloaded_since():
            return False
        self._reload_universal(quiet=False)
        return True

    def fleet_reloaded_since(self) -> bool:
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

    def left_out_line(self, source: str, triggers: str) -> tuple[str, str] | None:
        """The policy a line the set kept from before a restart left out named, and why; or None."""
        return self._left_out.get(line_name(source, triggers))

    def not_attached(self, attached: Iterable[tuple[str, str]]) -> str:
        """Why lines loaded now do nothing for a job: those it does not hold, in words ("" if none).

        ``attached``: its universal callbacks (source, trigger). A registration attaches
        every line its replica had loaded, and a job keeps them until it is registered
        again (registrar.py): a line loaded here that it does not hold was loaded after
        it registered, or, in a fleet, is missing from the callbacks.conf of the replica
        that registered it. Named up to ``MAX_LINES_NAMED``, then counted.
        """
        missing = lines_not_attached(self._universal, attached, self._universal_dirs)
        if not missing:
            return ""
        named = ", ".join(
            f"{line.source} = {cut(line.triggers, MAX_NAMED_TRIGGER_CHARS)}"
            for line in missing[:MAX_LINES_NAMED]
        )
        if len(missing) > MAX_LINES_NAMED:
            named += f" and {len(missing) - MAX_LINES_NAMED} more"
        fleet = (
            " (or missing from the callbacks.conf of the replica it was registered at)"
            if self._store.fleet
            else ""
        )
        return (
            f"universal lines loaded after this job's registration{fleet} are not attached"
            f" to it: {named}; a job takes the current set when it is registered again"
        )

    def not_loaded(self, source: str, triggers: str) -> str:
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
