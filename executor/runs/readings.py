"""What the executor's parts report at one moment: load, backlog, trigger-store size, zygotes, tier.

``ReadingSources.read`` asks each owner on the event loop (the dispatcher for slots and
queue, the sandbox runner for prepared children, the spawner for its zygotes, the
outbox for its backlog, the trigger store for its size, ...) and returns one frozen
``Readings``. The metrics registry hands that value to scrapes in another thread, and
GetMetrics answers with it: the owners themselves stay on the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from executor.errors import UnavailableError
from executor.sandbox.spawners import ZygoteStatus


@dataclass(frozen=True, slots=True)
class TierFlags:
    """The sandbox tier every callback gets on this host (probed once at start-up)."""

    # One line, as the startup log says it (tier.describe_sandbox).
    description: str = ""
    launcher: str = ""
    # (mechanism, active), as tier.mechanisms says them.
    mechanisms: tuple[tuple[str, bool], ...] = ()

    def flags(self) -> tuple[tuple[str, bool], ...]:
        """(mechanism, active) pairs: the bounded label values of the tier gauge."""
        return (*self.mechanisms, ("zygote_launcher", self.launcher == "zygote"))


@dataclass(frozen=True, slots=True)
class Readings:
    """The executor's gauges and its parts' own counts at one moment (all zero before the first)."""

    active_children: int = 0
    # Of those, the slots ended runs keep until the history catches up with their output.
    slots_kept_for_history: int = 0
    # Of those, the slots kept by a killed process that has not ended (``StuckSlots``),
    # and why the executor can run nothing while they are every slot ("" until then).
    slots_kept_by_killed: int = 0
    slots_problem: str = ""
    prepared_children: int = 0
    slots: int = 0
    queue_depth: int = 0
    queue_limit: int = 0
    outbox_pending: int = 0
    outbox_dead_letters: int = 0
    # Why the last try to deliver a result failed ("" once one was delivered since).
    outbox_last_error: str = ""
    storage_problem: str = ""
    # The health service's status for the whole executor, read with the problems above.
    health_status: str = ""
    events_published: int = 0
    callbacks_fired: int = 0
    # Event ids forgotten before their retention, past event_id_max_count.
    event_ids_forgotten_early: int = 0
    # Repeat ticks skipped while the last tick's firing was unfinished.
    repeat_ticks_skipped: int = 0
    trigger_jobs: int = 0
    trigger_callbacks: int = 0
    # The trigger store's queue: fired callbacks waiting for their turn or running.
    firings_queued: int = 0
    # Why fired runs are held (the supervisor unreachable), "" while they are not.
    firings_held: str = ""
    universal_callbacks: int = 0
    universal_reload_errors: int = 0
    # The mail queue: mails waiting for a thread, in an exchange, and not sent since start.
    mail_queued: int = 0
    mail_sending: int = 0
    mails_not_sent: int = 0
    zygotes: tuple[ZygoteStatus, ...] = ()
    tier: TierFlags = TierFlags()


class Load(Protocol):
    """What the dispatcher says about its load."""

    @property
    def active(self) -> int: ...

    @property
    def waiting(self) -> int: ...

    @property
    def kept_for_history(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ReadingSources:
    """Where each reading comes from; ``read`` is called on the event loop only.

    Each source is a small function, so the parts need not know about metrics, and a
    test can give numbers of its own.
    """

    load: Load
    slots: int
    queue_limit: int
    tier: TierFlags
    prepared_children: Callable[[], int] = lambda: 0
    outbox: Callable[[], tuple[int, int]] = lambda: (0, 0)  # (pending, dead letters)
    outbox_last_error: Callable[[], str] = lambda: ""
    storage_problem: Callable[[], str] = lambda: ""
    health_status: Callable[[], str] = lambda: ""
    firings_held: Callable[[], str] = lambda: ""
    # (slots kept by killed processes that have not ended, the problem when that is all)
    slots_kept_by_killed: Callable[[], tuple[int, str]] = lambda: (0, "")
    # (events, firings, event ids forgotten early, repeat ticks skipped)
    trigger_counts: Callable[[], tuple[int, int, int, int]] = lambda: (0, 0, 0, 0)
    # (jobs, callbacks, firings queued)
    trigger_store: Callable[[], tuple[int, ...]] = lambda: (0, 0, 0)
    universal: Callable[[], tuple[int, int]] = lambda: (0, 0)  # (loaded, reload errors)
    mail: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 0)  # (queued, sending, not sent)
    zygotes: Callable[[], tuple[ZygoteStatus, ...]] = tuple

    # The last counts each store-backed source gave, shown while its store cannot be read.
    _last: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def read(self) -> Readings:
        """Every reading now (a store that cannot be read keeps its last counts)."""
        pending, dead = self._or_last("outbox", self.outbox)
        events, fired, forgotten, skipped = self._or_last("trigger_counts", self.trigger_counts, 4)
        jobs, callbacks, firings = self._or_last("trigger_store", self.trigger_store, 3)
        universal, reload_errors = self.universal()
        mail_queued, mail_sending, mails_not_sent = self.mail()
        kept_by_killed, slots_problem = self.slots_kept_by_killed()
        return Readings(
            active_children=self.load.active,
            slots_kept_for_history=self.load.kept_for_history,
            slots_kept_by_killed=kept_by_killed,
            slots_problem=slots_problem,
            prepared_children=self.prepared_children(),
            slots=self.slots,
            queue_depth=self.load.waiting,
            queue_limit=self.queue_limit,
            outbox_pending=pending,
            outbox_dead_letters=dead,
            outbox_last_error=self.outbox_last_error(),
            storage_problem=self.storage_problem(),
            health_status=self.health_status(),
            events_published=events,
            callbacks_fired=fired,
            event_ids_forgotten_early=forgotten,
            repeat_ticks_skipped=skipped,
            trigger_jobs=jobs,
            trigger_callbacks=callbacks,
            firings_queued=firings,
            firings_held=self.firings_held(),
            universal_callbacks=universal,
            universal_reload_errors=reload_errors,
            mail_queued=mail_queued,
            mail_sending=mail_sending,
            mails_not_sent=mails_not_sent,
            zygotes=self.zygotes(),
            tier=self.tier,
        )

    def _or_last(
        self, name: str, source: Callable[[], tuple[int, ...]], size: int = 2
    ) -> tuple[int, ...]:
        try:
            value = source()
        except UnavailableError:  # a fleet's PostgreSQL down: the storage problem says so
            return self._last.get(name, (0,) * size)
        self._last[name] = value
        return value
