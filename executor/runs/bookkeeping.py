"""One thread writes each finished run's history record, ``.cb`` log entry and metrics.

Off the event loop: the loop answers the next call while a run's bookkeeping is written
on the other core. The thread lets runs gather for ``GATHER_S`` after the first one
(or until ``GATHER_RUNS`` are queued), then writes them together, their history records
in one transaction (group commit): one wake-up and one commit per burst, instead of one
per run. A reader never misses a run that was answered: reading the history first
waits for what is queued (``flush``, in a thread of the reader's: it may
wait for a locked ``runs.db``), which cuts the pause short; reading the metrics counts the
queued runs first (``observe_pending``), which never waits for a write. A sink
that fails (disk full, a bad path) is logged and never costs the other sinks their
entry; runs the history could not take (a full disk, a database locked past the busy
timeout) are written with the next batch that it does, and so are, in their job's order,
the ``.cb`` entries the callback log could not take (any ``OSError``: a full disk mended
must not lose more than a ``kill -9``, whose next start rebuilds them); one job's log
that refuses holds back that job's entries only. The thread also prunes the
history every ``PRUNE_EVERY_S``, so runs past its retention age go within that while the
executor runs, not only at start and every ``prune_every`` runs (a quiet executor kept
them for days); the ``.cb`` logs likewise (``callback_log_space``: by the same age, and
to their total at each batch that passes it), every ``LOG_CATCH_UP_S`` while there is
more to do.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Final

from executor.bounds import mib
from executor.errors import UnavailableError
from executor.model import Invocation, RunResult
from executor.owned_dirs import UnsafePathError
from executor.runs.callback_log import CallbackLog, log_path
from executor.runs.history import RunHistory
from executor.runs.metrics import Metrics
from executor.storage import StorageError, is_busy

logger = logging.getLogger(__name__)

# How long a reader waits for the queued runs to be written before reading anyway.
FLUSH_TIMEOUT_S: Final = 5.0
# How long queued runs wait for others to join them, and how many end the wait at once.
# 50 ms, not 10: with one client (~300 runs/s) a batch holds ~15 runs instead of ~3, and
# the executor's CPU per run fell ~0.06 ms (fewer commits and wake-ups of this thread).
# Nothing reads the history or the metrics without flushing first, which ends the pause.
GATHER_S: Final = 0.05
GATHER_RUNS: Final = 32
# Runs kept for the history while it cannot be written; older ones are given up.
MAX_UNRECORDED: Final = 10_000
# The same bound for .cb entries kept while the callback log cannot be written.
MAX_UNLOGGED: Final = MAX_UNRECORDED
RETRY_UNRECORDED_S: Final = 1.0
# How often the history is pruned however few runs end: one indexed DELETE in SQLite (a
# count and a sum of the runs' sizes too in a fleet's PostgreSQL, ~6.5 ms per 100k runs).
PRUNE_EVERY_S: Final = 60.0
# How soon the .cb logs are pruned again while there is more to do: the walk of log_dir's
# tree has not been round once (it counts the logs written before the start), or more
# logs are due than a pass removes.
LOG_CATCH_UP_S: Final = 1.0
# Output held by runs not yet written (queued, being written, or waiting for a sink that
# refused them) past which the writer is "behind": the dispatcher then keeps freed slots
# until it catches up (probe 153: callbacks filling 16 MiB streams faster than the
# history writes them grew the executor to 1.7-3.8 GB, and kept other runs out of the
# history for minutes). Counted in characters of stdout and stderr.
MAX_BEHIND_CHARS: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class _Entry:
    invocation: Invocation
    result: RunResult
    # Unix times: when the run ended (the .cb entry's), and when it started (history's).
    ended_at: float
    started_at: float
    # False: the .cb log and the metrics only (a fleet's run fenced off, Recorder).
    in_history: bool = True

    @property
    def output_chars(self) -> int:
        """What the run's output holds, the bulk of what the entry keeps alive."""
        return len(self.result.stdout) + len(self.result.stderr)

    def for_history(self) -> _Entry:
        """This entry with what its history record needs of the job: only its id.

        For runs kept while the history or the callback log refuses them (up to
        ``MAX_UNRECORDED`` each): an Execute's job holds the caller's Struct, up to 16 MiB.
        """
        job = {"id": self.invocation.job_id}
        return replace(self, invocation=replace(self.invocation, job=job))


class BookkeepingWriter:
    """The writer thread of ``history``, ``callback_log`` and ``metrics``."""

    def __init__(
        self,
        history: RunHistory,
        callback_log: CallbackLog,
        metrics: Metrics,
        *,
        prune_every_s: float = PRUNE_EVERY_S,
        on_recorded: Callable[[Sequence[tuple[str, float]]], object] | None = None,
        max_behind_chars: int = MAX_BEHIND_CHARS,
    ) -> None:
        """Start the thread.

        ``on_recorded`` hears, on this thread, of the runs (invocation id, ended_at) each
        history commit wrote: their outbox rows' notes are no longer needed (``Recorder``).
        """
        self._history = history
        self._on_recorded = on_recorded
        self._max_behind_chars = max_behind_chars
        self._prune_every_s = prune_every_s
        self._callback_log = callback_log
        self._metrics = metrics
        self._queue: list[_Entry] = []
        # Runs queued or being written, by invocation id: what the history does not show yet.
        self._pending: dict[str, Invocation] = {}
        # Runs the history could not take yet, oldest first (written by this thread only).
        self._unrecorded: list[_Entry] = []
        # Runs whose .cb entry the callback log could not take yet, oldest first (ditto).
        self._unlogged: list[_Entry] = []
        # Jobs whose log refused its entry at the last try (ditto): warned of once.
        self._refusing: set[int] = set()
        # Jobs whose .cb path holds something planted (UnsafePathError), warned of once.
        self._planted: set[int] = set()
        # Runs not yet counted in the metrics, oldest first: a reader of the metrics counts
        # them itself rather than wait for this thread (which may wait for a locked runs.db).
        self._unobserved: list[_Entry] = []
        # Held while runs are counted: a reader sees the counts only once they are done.
        self._observing = threading.Lock()
        # Queued and being written: flush() waits for 0.
        self._unwritten = 0
        # Output characters of the runs queued and being written (under _changed), and of
        # those kept for a sink that refused them (set by this thread after each pass).
        self._unwritten_chars = 0
        self._kept_chars = 0
        # Readers waiting in flush(): the writer does not pause for others to join.
        self._waiting_readers = 0
        self._closing = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._write_forever, name="bookkeeping", daemon=True)
        self._thread.start()

    def submit(
        self,
        invocation: Invocation,
        result: RunResult,
        *,
        ended_at: float,
        started_at: float,
        in_history: bool = True,
    ) -> None:
        """Queue one finished run's bookkeeping (returns at once).

        ``in_history`` False: its ``.cb`` entry and metrics only (a fleet's fenced-off run).
        """
        with self._changed:
            entry = _Entry(invocation, result, ended_at, started_at, in_history)
            self._queue.append(entry)
            self._unobserved.append(entry)
            if in_history:
                self._pending[result.invocation_id] = invocation
            self._unwritten += 1
            self._unwritten_chars += entry.output_chars
            # Woken for the first of a burst, and when it is large enough; not for each run.
            if len(self._queue) in (1, GATHER_RUNS):
                self._changed.notify_all()

    def behind(self) -> str:
        """Why the writer is behind ("": it is not): the output its unwritten runs hold.

        Read on the event loop at each run's end (two integers, no lock): past
        ``max_behind_chars``, the dispatcher keeps the run's slot until it is not.
        """
        held = self._unwritten_chars + self._kept_chars
        if held <= self._max_behind_chars:
            return ""
        return (
            f"the runs not yet written to the history and .cb logs hold {mib(held)} of output"
            f" (more than {mib(self._max_behind_chars)})"
        )

    def pending(self, invocation_id: str) -> Invocation | None:
        """The run under ``invocation_id`` queued or being written now, if any."""
        with self._changed:
            return self._pending.get(invocation_id)

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every run queued so far is written; False on timeout."""
        if threading.current_thread() is self._thread:
            return True  # a sink reading back while it writes
        with self._changed:
            self._waiting_readers += 1
            self._changed.notify_all()  # a pause for others to join ends now
            try:
                return self._changed.wait_for(lambda: not self._unwritten, timeout_s)
            finally:
                self._waiting_readers -= 1

    def wait_written(self, invocation_id: str, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until no run under ``invocation_id`` is queued or being written; False on timeout.

        What a resend of the id waits for before its outbox row replaces the earlier run's
        (``Recorder``). The pause for other runs to join ends now, as for a reader.
        """
        with self._changed:
            self._waiting_readers += 1
            self._changed.notify_all()
            try:
                return self._changed.wait_for(lambda: invocation_id not in self._pending, timeout_s)
            finally:
                self._waiting_readers -= 1

    def observe_pending(self) -> None:
        """Count the runs queued so far in the metrics, now (on any thread; never waits for a write)."""
        with self._observing:
            with self._changed:
                entries, self._unobserved = self._unobserved, []
            for entry in entries:
                with _guarded("metrics", [entry]):
                    callback = entry.invocation.callback
                    self._metrics.observe(
                        entry.result, language=callback.language, source=entry.invocation.source
                    )

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()

    def _write_forever(self) -> None:
        next_prune = time.monotonic() + self._prune_every_s
        # The logs' first pass soon: the walk that counts the logs already there begins.
        next_log_prune = time.monotonic() + min(self._prune_every_s, LOG_CATCH_UP_S)
        while True:
            with self._changed:
                # While runs wait for the history, it is tried again now and then.
                wait_s = max(0.0, min(next_prune, next_log_prune) - time.monotonic())
                if self._unrecorded or self._unlogged:
                    wait_s = min(wait_s, RETRY_UNRECORDED_S)
                self._changed.wait_for(lambda: self._queue or self._closing, wait_s)
                self._changed.wait_for(self._gathered, GATHER_S)
                batch, self._queue = self._queue, []
                if not batch and self._closing:
                    self._give_up_unlogged()
                    self._give_up_unrecorded()
                    return
            try:
                if batch:
                    self._write(batch)
                else:
                    if self._unlogged:
                        self._log_unlogged()
                    if self._unrecorded:
                        self._record_unrecorded()
            finally:
                self._written(batch)
                self._count_kept()
            # Not held while this thread waits for the next runs: each entry's invocation
            # holds its job, an Execute's Struct among it (up to 16 MiB), which the last
            # batch of a burst kept alive until the next run ended.
            del batch
            if time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + self._prune_every_s
            if time.monotonic() >= next_log_prune:
                more = self._prune_logs(walk=True)
                next_log_prune = time.monotonic() + (
                    min(self._prune_every_s, LOG_CATCH_UP_S) if more else self._prune_every_s
                )

    def _count_kept(self) -> None:
        """Count the output of the runs kept for a sink that refused them (each run once)."""
        if not self._unrecorded and not self._unlogged:
            self._kept_chars = 0
            return
        kept = {e.result.invocation_id: e for e in (*self._unrecorded, *self._unlogged)}
        self._kept_chars = sum(e.output_chars for e in kept.values())

    def _written(self, batch: list[_Entry]) -> None:
        """``batch`` is written (or given up): flush() may return, the history shows it."""
        with self._changed:
            self._unwritten -= len(batch)
            self._unwritten_chars -= sum(e.output_chars for e in batch)
            for entry in batch:
                if self._pending.get(entry.result.invocation_id) is entry.invocation:
                    del self._pending[entry.result.invocation_id]
            self._changed.notify_all()

    def _prune(self) -> None:
        """Prune the history now; a storage that refuses is tried at the next turn."""
        try:
            self._history.prune()
        except Exception as err:
            if not _worth_retrying(err):
                logger.exception("pruning the history failed")
                return
            logger.debug("the history was not pruned (%s); tried again later", err)

    def _prune_logs(self, *, walk: bool) -> bool:
        """Prune the .cb logs now (``callback_log_space``); whether work is left for soon."""
        space = self._callback_log.space
        if space is None:
            return False
        try:
            return space.prune(walk=walk)
        except Exception:  # a bug of ours: the runs' bookkeeping goes on
            logger.exception("pruning the callback logs failed")
            return False

    def _gathered(self) -> bool:
        """Whether the queued runs are written now, without waiting for others to join."""
        return len(self._queue) >= GATHER_RUNS or self._closing or self._waiting_readers > 0

    def _write(self, batch: list[_Entry]) -> None:
        # The .cb entries before the history: a start-up after a kill -9 in between finds
        # the history without the run and rebuilds it (``recovery``), its .cb entry seen
        # there already; the other way round, a run in the history would lose its entry.
        # (As it does when a kill -9 comes while its entry waits for the log's disk.)
        self._log([*self._unlogged, *batch], batch)
        space = self._callback_log.space
        if space is not None and space.over():  # held at each batch, as the history's bytes
            self._prune_logs(walk=False)
        self.observe_pending()
        recorded = [entry for entry in batch if entry.in_history]
        if recorded or self._unrecorded:
            self._record([*self._unrecorded, *recorded], recorded)

    def _log_unlogged(self) -> None:
        self._log(self._unlogged, [])

    def _log(self, entries: list[_Entry], batch: list[_Entry]) -> None:
        """Append ``entries``' .cb entries in order; a log the storage refuses keeps its own.

        So a run answered while the disk was full gets its entry once it is not, after
        the entries of its job before it and before those after it. Per job: a log that
        refuses (a directory in its place, an immutable file, a job directory the executor
        may not write) holds back its job's later entries only, and every other job's
        log is written all the same.
        """
        waited = Counter(e.invocation.job_id for e in entries[: len(entries) - len(batch)])
        self._unlogged = []
        kept: list[_Entry] = []
        refused: dict[int, OSError] = {}  # by job id, in this pass
        for entry in entries:
            job_id = entry.invocation.job_id
            if job_id in refused:  # its job's order: after the entry that waits
                kept.append(entry.for_history())
                continue
            try:
                self._callback_log.append(entry.invocation, entry.result, entry.ended_at)
            except UnsafePathError as err:  # planted on the way: no wait mends it
                if job_id not in self._planted:  # said once per job, not per run
                    if len(self._planted) >= MAX_UNLOGGED:
                        self._planted.clear()
                    self._planted.add(job_id)
                    logger.warning(
                        "run %s: its .cb entry is not written: %s (said once for job %d:"
                        " its later entries are skipped alike)",
                        entry.result.invocation_id,
                        err,
                        job_id,
                    )
            except OSError as err:
                refused[job_id] = err
                kept.append(entry.for_history())
            except Exception:  # a bug of ours: retrying would fail the same way
                logger.exception(
                    "runs %s: writing the callback log failed", entry.result.invocation_id
                )
        self._said_refused(refused, waited)
        self._unlogged = kept[-MAX_UNLOGGED:]
        if given_up := kept[: len(kept) - len(self._unlogged)]:
            logger.warning(
                "%d .cb entries waited for the callback log past %d and are given up"
                " (the oldest: runs %s)",
                len(given_up),
                MAX_UNLOGGED,
                _some(e.result.invocation_id for e in given_up),
            )

    def _said_refused(self, refused: dict[int, OSError], waited: Counter[int]) -> None:
        """Log the logs that begin to refuse, at WARNING once each, and those that took again.

        Not per run: a log refused for an hour would say the same every second. A full
        disk refuses every job's log with the same error: one line for them all.
        """
        began: dict[str, list[int]] = {}
        for job_id, err in refused.items():
            if job_id not in self._refusing:
                # Its reason alone: the error's text may name the file again.
                began.setdefault(err.strerror or str(err), []).append(job_id)
        for reason, job_ids in began.items():
            logger.warning(
                "the callback log was not written: %s (%s); the .cb entries of %s wait for"
                " it (tried every %gs), other jobs' logs are written",
                _some(str(log_path(self._callback_log.root, job_id)) for job_id in job_ids),
                reason,
                "its job" if len(job_ids) == 1 else "their jobs",
                RETRY_UNRECORDED_S,
            )
        if took := self._refusing - refused.keys():
            logger.info(
                "the callback log took the %d .cb entries that waited for it (%s)",
                sum(waited[job_id] for job_id in took),
                _some(str(log_path(self._callback_log.root, job_id)) for job_id in took),
            )
        self._refusing = set(refused)

    def _give_up_unlogged(self) -> None:
        """At the stop: the .cb entries the callback log never took are lost, said once."""
        if self._unlogged:
            self._log_unlogged()
        if self._unlogged:
            logger.warning(
                "stopping with %d .cb entries the callback log did not take (runs %s):"
                " they are not written",
                len(self._unlogged),
                _some((e.result.invocation_id for e in self._unlogged), 20),
            )
            self._unlogged = []

    def _give_up_unrecorded(self) -> None:
        """At the stop: the runs the history never took are not written now, said once.

        Their outbox rows keep their notes, so the next start rebuilds them (``recovery``).
        """
        if self._unrecorded:
            logger.warning(
                "stopping with %d runs the history did not take (runs %s): the next start"
                " rebuilds them from the outbox",
                len(self._unrecorded),
                _some((e.result.invocation_id for e in self._unrecorded), 20),
            )
            self._unrecorded = []

    def _record_unrecorded(self) -> None:
        records, self._unrecorded = self._unrecorded, []
        self._record(records, [])
        if not self._unrecorded:
            logger.info("the history took the %d runs that waited for it", len(records))

    def _record(self, records: list[_Entry], batch: list[_Entry]) -> None:
        """Write ``records``' history; on a storage failure keep them for the next try.

        So a run answered while the disk was full reaches the history once it is not.
        """
        self._unrecorded = []
        try:
            self._history.record_many([(e.invocation, e.result, e.started_at) for e in records])
        except Exception as err:
            if not _worth_retrying(err):
                ids = ", ".join(e.result.invocation_id for e in records)
                logger.exception("runs %s: writing the history failed", ids)
                return
            self._unrecorded = _kept_for_later(
                records, batch, err, MAX_UNRECORDED, "the history", "runs"
            )
        else:
            self._recorded(records)

    def _recorded(self, records: list[_Entry]) -> None:
        if self._on_recorded is None or not records:
            return
        try:
            self._on_recorded([(e.result.invocation_id, e.ended_at) for e in records])
        except Exception:  # a bug of the listener's: the history is written all the same
            logger.exception("telling that %d runs are in the history failed", len(records))


def _kept_for_later(
    waiting: list[_Entry],
    batch: list[_Entry],
    err: Exception,
    most: int,
    where: str,
    what: str,
) -> list[_Entry]:
    """The newest ``most`` of ``waiting`` (without their code), kept for the next try; said once.

    Logged at WARNING once per batch of new runs (or when some are given up), the quiet
    retries in between at DEBUG: they say nothing new.
    """
    kept = [entry.for_history() for entry in waiting[-most:]]
    given_up = len(waiting) - len(kept)
    logger.log(
        logging.WARNING if batch or given_up else logging.DEBUG,
        "runs %s: %s was not written (%s); %d %s wait to be written%s",
        ", ".join(e.result.invocation_id for e in batch) or "(earlier)",
        where,
        # Its text: a record kept by a handler would keep the error's traceback, and
        # through its frames every run of this try, jobs and all.
        str(err),
        len(kept),
        what,
        f", {given_up} older ones are given up" if given_up else "",
    )
    return kept


def _some(items: Iterable[str], most: int = 5) -> str:
    """The first ``most`` of ``items``, and how many more there are."""
    items = list(items)
    more = len(items) - most
    return ", ".join(items[:most]) + (f" and {more} more" if more > 0 else "")


def _worth_retrying(err: Exception) -> bool:
    """Whether a history write that failed with ``err`` may work later, as it was.

    A full disk, a fleet's PostgreSQL down, a database another connection held locked
    past the busy timeout (a checkpoint emptying a large log); not a bug of ours.
    """
    if isinstance(err, sqlite3.Error):
        return is_busy(err)
    return isinstance(err, (UnavailableError, OSError))


@contextlib.contextmanager
def _guarded(sink: str, batch: list[_Entry]) -> Iterator[None]:
    """Log a failed write of ``sink`` for the runs of ``batch``, and go on."""
    try:
        yield
    except (StorageError, OSError) as err:  # the disk, not us: one line is enough
        ids = ", ".join(e.result.invocation_id for e in batch)
        logger.warning("runs %s: the %s was not written: %s", ids, sink, err)
    except Exception:
        ids = ", ".join(e.result.invocation_id for e in batch)
        logger.exception("runs %s: writing the %s failed", ids, sink)
