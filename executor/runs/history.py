"""Run history: every finished run in SQLite (``<data_dir>/runs.db``), listed and pruned.

The history answers "what ran, when, and how did it end" for ``ListRuns``/``GetRun`` and
``cbexec runs``, a page at a time (``list_page``; where a page ends is ``paging``'s). The
summary columns (job, callback, outcome, start, usage) are indexed for the list filters;
the whole result (output, failure, actions) is kept as one JSON document because it is
only ever read back whole, by ``GetRun``.

Writes come from the bookkeeping thread, several runs per commit (``record_many``):
WAL with ``synchronous=NORMAL`` keeps a commit well under a millisecond and survives a
crash of the executor (only a power loss can drop the last commits, which for a
history — unlike the outbox — is acceptable). The log's checkpoints, which fsync, run in
a thread (``sqlite_checkpoints``). In a fleet's PostgreSQL store, the runs of one commit
are one statement: one round trip and one transaction, whatever their number.

Retention is by age, by count and by bytes (``history_size``: what the runs take, and
which go). In SQLite the history keeps its row count itself (the executor is its only
writer), so the commit that takes it past ``max_runs`` also drops the oldest runs beyond
it, without walking the ones it keeps: it never holds more than ``max_runs`` runs,
however small the cap, and a full one deletes as many rows per commit as it adds (a full
history of 100k runs once stalled the event loop ~12 ms every 500 runs). The byte bound
holds at every commit too: the commit first drops the oldest runs its own need room for,
so they take the pages those freed instead of growing the file. Runs past the retention
age go at open, every ``prune_every`` runs, and every minute (``bookkeeping.PRUNE_EVERY_S``:
the writer thread calls ``prune`` on a timer).

A fleet's PostgreSQL store is written by every replica, so a prune counts its rows afresh
(~6.5 ms for 100k) and drops by age and by count: at open, every minute, and every
``prune_every`` runs of a replica, but every 1% of ``max_runs`` when that is more (a run
pays for counting ~100 rows) and every tenth of it when that is less (at least every
run). Between two prunes it may hold that many runs per replica beyond ``max_runs``. The
same scan sums the runs' sizes (it reads an index of them, and costs what the count
alone did), and a replica also prunes once it has recorded a tenth of ``max_bytes``
since its last prune: a flood of large outputs may take the history past ``max_bytes``
by that much per replica (and the commit that passed it), no more.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, Final

from executor import sqlite_shm
from executor.model import (
    ActionRecord,
    Event,
    Failure,
    Invocation,
    Outcome,
    RunResult,
    Usage,
)
from executor.runs.history_size import (
    SIZE_INDEX,
    drop_oldest_sized,
    drop_oldest_sqlite,
    run_size_bytes,
    sqlite_bytes_in_use,
)
from executor.runs.latest import latest_per_key
from executor.runs.paging import RunFilters, RunKey
from executor.runs.sqlite_checkpoints import BackgroundCheckpoints
from executor.sql import Db, NoCheckpoints, PgDb, Row, in_lists, is_postgres, marks_for
from executor.storage import StorageHealth, open_database, opening, reading, writing

logger = logging.getLogger(__name__)

DAY_S: Final = 86_400.0
# A page of shadow runs (with their results) ends before its results pass this: with the
# largest run (twice 16 MiB of output and 1 MiB of actions) it stays under the 34 MiB a
# client is told to accept for an Execute answer.
MAX_SHADOW_PAGE_BYTES: Final = 32 << 20

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS runs (
    invocation_id TEXT PRIMARY KEY,
    job_id INTEGER NOT NULL,
    callback_id INTEGER NOT NULL,
    triggers TEXT NOT NULL,
    language TEXT NOT NULL,
    outcome TEXT NOT NULL,
    started_at REAL NOT NULL,
    wall_seconds REAL NOT NULL,
    cpu_seconds REAL NOT NULL,
    peak_rss_bytes INTEGER NOT NULL,
    queue_seconds REAL NOT NULL,
    event TEXT,
    work_name TEXT NOT NULL,
    result TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    policy TEXT NOT NULL DEFAULT '',
    shadow INTEGER NOT NULL DEFAULT 0,
    fired INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
CREATE INDEX IF NOT EXISTS runs_by_job ON runs (job_id, started_at);
CREATE INDEX IF NOT EXISTS runs_by_outcome ON runs (outcome, started_at);
"""

_SUMMARY_COLUMNS: Final = (
    "invocation_id, job_id, callback_id, triggers, language, outcome, started_at, "
    "wall_seconds, cpu_seconds, peak_rss_bytes, queue_seconds, event, work_name, source, policy, "
    "shadow"
)

# A run's columns as ``_row`` gives its values; the last, its size (history_size), is no
# column of SCHEMA: added by ``_add_columns`` in SQLite and by a migration in PostgreSQL.
_COLUMNS: Final = (
    "invocation_id",
    "job_id",
    "callback_id",
    "triggers",
    "language",
    "outcome",
    "started_at",
    "wall_seconds",
    "cpu_seconds",
    "peak_rss_bytes",
    "queue_seconds",
    "event",
    "work_name",
    "result",
    "source",
    "policy",
    "shadow",
    "fired",
    "size_bytes",
)


def _insert(columns: tuple[str, ...], runs: int) -> str:
    """An INSERT of ``runs`` runs' ``columns``.

    A repeated invocation id replaces the earlier run (SQLite's INSERT OR REPLACE, in
    the spelling PostgreSQL shares), unless the one recorded ended later: two replicas
    of a fleet may run one id at once, and the one that ended last is the supervisor's
    result too (``ReportResultRequest.ended_at``), whichever history write comes last.
    """
    values = f"({marks_for(columns)})"
    replace = ", ".join(f"{column} = excluded.{column}" for column in columns[1:])
    return (
        f"INSERT INTO runs ({', '.join(columns)}) VALUES {', '.join([values] * runs)}"  # noqa: S608 - our columns; values bound
        f" ON CONFLICT (invocation_id) DO UPDATE SET {replace}"
        " WHERE excluded.started_at + excluded.wall_seconds >= runs.started_at + runs.wall_seconds"
    )


_INSERT_ONE: Final = _insert(_COLUMNS, 1)
# (PostgreSQL) Rows past this size go in a statement of their own.
PG_STATEMENT_BYTES: Final = 16 * 1024 * 1024


def _ended_at(invocation: Invocation, result: RunResult, started_at: float) -> float:
    """When a run ended, as ``_insert``'s replacing reckons it from the row."""
    return started_at + result.usage.wall_seconds


def _row(invocation: Invocation, result: RunResult, started_at: float) -> tuple[Any, ...]:
    """One run's values, in ``_COLUMNS``' order."""
    usage = result.usage
    row = (
        result.invocation_id,
        invocation.job_id,
        invocation.callback.id,
        invocation.callback.triggers,
        invocation.callback.language,
        result.outcome.value,
        started_at,
        usage.wall_seconds,
        usage.cpu_seconds,
        usage.peak_rss_bytes,
        usage.queue_seconds,
        _event_json(invocation.event),
        invocation.work_name,
        result_to_json(result),
        invocation.callback.source,
        invocation.policy,
        int(invocation.shadow),
        int(invocation.fired),
    )
    return (*row, run_size_bytes(row))


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as the history keeps it; ``result`` is filled by ``RunHistory.get`` only."""

    invocation_id: str
    job_id: int
    callback_id: int
    triggers: str
    language: str
    outcome: Outcome
    started_at: float
    usage: Usage
    event: Event | None = None
    work_name: str = ""
    result: RunResult | None = None
    # A universal callback's file; "" for a job's own callback or an Execute.
    source: str = ""
    # The sandbox policy it ran under ("" for runs recorded before policies), and
    # whether it was a shadow run (qb actions recorded, not applied).
    policy: str = ""
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of ``RunHistory.list_page``: its runs, and the key the next page starts after.

    ``next`` is None when no run matching the filters comes after the last one here.
    """

    runs: tuple[RunRecord, ...]
    next: RunKey | None


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """Whose run an invocation id names: a repeat of it must be the same callback's.

    And whether the trigger engine made it (``fired``): an Execute never repeats such a
    run, whatever the rest (``invocation_ids.IdGate``).
    """

    job_id: int
    callback_id: int
    language: str
    triggers: str
    # A universal callback's file; "" for a job's own callback or an Execute.
    source: str
    fired: bool

    @classmethod
    def of(cls, invocation: Invocation) -> RunIdentity:
        callback = invocation.callback
        return cls(
            invocation.job_id,
            callback.id,
            callback.language.lower(),
            callback.triggers,
            callback.source,
            invocation.fired,
        )

    def describe(self) -> str:
        what = f"job {self.job_id}, callback {self.callback_id} ({self.language}"
        if self.triggers:
            what += f", triggers {self.triggers!r}"
        if self.source:
            what += f", {self.source}"
        return what + ")"


_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}


def _field_names(cls: type) -> tuple[str, ...] | None:
    """A dataclass type's field names; None for any other type (both remembered)."""
    if cls not in _FIELD_NAMES:
        _FIELD_NAMES[cls] = tuple(f.name for f in fields(cls)) if is_dataclass(cls) else None
    return _FIELD_NAMES[cls]


def _plain(value: Any) -> Any:
    """Dataclasses as dicts and tuples as lists, all the way down.

    ``dataclasses.asdict`` without its deep copy of every leaf, which made it most of the
    cost of recording a run.
    """
    names = _field_names(type(value))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def result_to_json(result: RunResult) -> str:
    """A RunResult as one JSON document (the inverse of ``result_from_json``)."""
    return json.dumps(_plain(result), separators=(",", ":"))


def result_from_json(text: str) -> RunResult:
    """Rebuild a RunResult stored by ``result_to_json``."""
    return result_from_plain(json.loads(text))


def result_to_plain(result: RunResult) -> dict[str, Any]:
    """A RunResult as JSON's values (what ``result_to_json`` writes)."""
    plain: dict[str, Any] = _plain(result)
    return plain


def result_from_plain(data: dict[str, Any]) -> RunResult:
    """Rebuild a RunResult from ``result_to_plain``'s values."""
    data = dict(data)
    failure = data.pop("failure")
    return RunResult(
        **{
            **data,
            "outcome": Outcome(data["outcome"]),
            "failure": Failure(**failure) if failure is not None else None,
            "usage": Usage(**data["usage"]),
            "actions": tuple(ActionRecord(**action) for action in data["actions"]),
        }
    )


def _event_json(event: Event | None) -> str | None:
    return None if event is None else json.dumps(event.as_dict(), separators=(",", ":"))


class RunHistory:
    """The run history database.

    Args:
        path: the SQLite file (created with its tables when missing), or ":memory:".
        retention_days: runs that started longer ago than this are pruned.
        max_runs: at most this many runs are kept; the oldest are pruned first (in a
            fleet's store, to within the runs between two prunes).
        max_bytes: the runs take at most this many bytes (``history_size``); the oldest
            are pruned first, never the newest. None: no bound.
        clock: Unix time source, replaceable in tests.
        prune_every: prune by age (and, in a fleet, by count and bytes) after this many
            recorded runs.
        health: told when a write fails because of the storage.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        retention_days: float,
        max_runs: int,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        prune_every: int = 50,
        health: StorageHealth | None = None,
    ) -> None:
        self._retention_s = retention_days * DAY_S
        self._max_runs = max_runs
        self._max_bytes = max_bytes
        self._clock = clock
        self._prune_every = prune_every
        self._since_prune = 0
        # (PostgreSQL) The runs' sizes as the last prune summed them, plus those recorded
        # since by this replica; and what it recorded since, which prunes at a tenth of
        # max_bytes. SQLite reads its pages in use instead (exact, and as cheap).
        self._bytes = 0
        self._bytes_since_prune = 0
        self._prune_every_bytes: int | None = None
        self._path = str(path)
        self._health = health
        # The connection is shared by its readers (the Recorder's history-read thread,
        # start-up's recovery) and the bookkeeping thread (writes, ``record_many``): one
        # at a time.
        self._lock = threading.RLock()
        # Called before each read: the Recorder's writer flushes the runs it still holds.
        self.before_read: Callable[[], object] = lambda: None
        self._db: Db
        self._checkpoints: BackgroundCheckpoints | NoCheckpoints
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        if is_postgres(self._path):
            # A fleet's history: every replica's runs, in the shared store.
            from executor.migrations import open_postgres

            self._db = open_postgres(self._path, application_name="cbexec-history")
            self._checkpoints = NoCheckpoints()
            # Its prune counts the rows (~6.5 ms for 100k): 1% of max_runs apart at least,
            # so a run pays for counting ~100 rows, however full the history; a tenth of a
            # small cap apart at most, so the cap holds to within that.
            self._prune_every = max(min(prune_every, max_runs // 10), max_runs // 100, 1)
            if max_bytes is not None:
                self._prune_every_bytes = max(max_bytes // 10, 1)
        else:
            # Its INSERTs bind each run's output: no kept statement keeps the last one's.
            db = open_database(path, cached_statements=0)
            try:
                with opening(path):
                    db.row_factory = sqlite3.Row
                    db.execute("PRAGMA journal_mode = WAL")
                    db.execute("PRAGMA synchronous = NORMAL")
                    db.executescript(SCHEMA)
                    self._db = db
                    self._add_columns()
            except BaseException:
                db.close()
                raise
            self._checkpoints = BackgroundCheckpoints(db, path)
            # The repeated-id check's reads, on the event loop: in WAL mode a connection
            # of their own never waits for the bookkeeping thread's writes.
            self._reader = sqlite_shm.connect(
                self._path, isolation_level=None, check_same_thread=False
            )
        try:
            # A damaged page start-up did not read, a filesystem that refuses the prune's
            # write: a refusal naming the file, saying which (``opening``).
            with opening(path), self._lock:
                self._runs = self._count()
                self.prune()
        except BaseException:
            self.close()
            raise

    def _add_columns(self) -> None:
        """A history from before ``source``, ``policy``, ``shadow``, ``size_bytes`` or ``fired``.

        Old runs read as "" (no policy recorded), not shadow, of a size not known (NULL:
        filling it in would rewrite every run, output and all), and not fired: which of them
        the engine made was not kept, so an Execute may repeat any of them, as before. The
        sizes' index reads only each run's header to build (a 333 MB history: 15 ms).
        """
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(runs)")}
        for name, declaration in (
            ("source", "TEXT NOT NULL DEFAULT ''"),
            ("policy", "TEXT NOT NULL DEFAULT ''"),
            ("shadow", "INTEGER NOT NULL DEFAULT 0"),
            ("size_bytes", "INTEGER"),
            ("fired", "INTEGER NOT NULL DEFAULT 0"),
        ):
            if name not in columns:
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {name} {declaration}")
        self._db.execute(SIZE_INDEX)

    def close(self) -> None:
        with self._lock:
            if self._reader is not None:
                self._reader.close()
            self._checkpoints.close()
            self._db.close()

    def record(self, invocation: Invocation, result: RunResult, started_at: float) -> None:
        """Store one finished run (a repeated invocation id replaces a run that ended before it)."""
        self.record_many([(invocation, result, started_at)])

    def record_many(self, runs: Sequence[tuple[Invocation, RunResult, float]]) -> None:
        """Store finished runs in one transaction: one commit for all (group commit)."""
        with self._lock:
            # A lock held by another process: the runs wait in the bookkeeping thread (their
            # results are in the outbox), and nothing else need stop for it.
            with writing(self._path, self._health, lock_degrades=False):
                if isinstance(self._db, PgDb):
                    added = self._insert_in_statements(runs)
                else:
                    added = self._insert_in_one_transaction(runs)
            self._checkpoints.committed()
            self._runs += added
            self._since_prune += len(runs)
            if self._since_prune >= self._prune_every or (
                self._prune_every_bytes is not None
                and self._bytes_since_prune >= self._prune_every_bytes
            ):
                self.prune()
        # Off the lock its readers take: runs of big outputs back to back would otherwise
        # append to a log the checkpoint is still copying (sqlite_checkpoints).
        self._checkpoints.settle()

    def _insert_in_one_transaction(
        self, runs: Sequence[tuple[Invocation, RunResult, float]]
    ) -> int:
        """(SQLite) One INSERT per run in a transaction; how many rows the history gained.

        Our own count of the rows is exact here (the executor is the only writer), so the
        same transaction drops the oldest runs beyond ``max_runs``: the cap holds after
        every commit, at the cost of deleting as many rows as a full history gains. So
        does ``max_bytes``: room is made for each run before it is written (it takes the
        pages freed, not new ones at the file's end), then the pages are checked.
        """
        db = self._db
        # IMMEDIATE: the write lock first, waiting out another holder (the checkpoint
        # thread's TRUNCATE) for the busy timeout. A read first would make the upgrade
        # fail at once with "database is locked" (SQLite calls no busy handler for it).
        db.execute("BEGIN IMMEDIATE")
        try:
            added = 0
            # One run's row at a time: its result's JSON can be six times its output
            # (a control character is stored as \u0001), and a batch of runs of 2 x 16
            # MiB each held every one of them at once (probe 157: 1.6 GB).
            for run in runs:
                row = _row(*run)
                if self._max_bytes is not None:
                    added -= drop_oldest_sqlite(
                        db, runs=self._runs + added, max_bytes=self._max_bytes, incoming=row[-1]
                    )
                if not db.execute("SELECT 1 FROM runs WHERE invocation_id = ?", row[:1]).fetchone():
                    added += 1
                db.execute(_INSERT_ONE, row)
                del row
            added -= self._delete_oldest(self._runs + added - self._max_runs)
            if self._max_bytes is not None:
                added -= drop_oldest_sqlite(db, runs=self._runs + added, max_bytes=self._max_bytes)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # the store's own error, either kind
                self._db.execute("ROLLBACK")
            raise
        return added

    def _insert_in_statements(self, runs: Sequence[tuple[Invocation, RunResult, float]]) -> int:
        """(PostgreSQL) One INSERT per ``PG_STATEMENT_BYTES`` of rows: most batches, one in all.

        Each INSERT is one round trip and its own transaction.
        Other replicas record too, so whether a run replaced one is not asked (the count
        is taken afresh at each prune): always 0. A repeated invocation id keeps the run
        that ended last, as one INSERT per run would (PostgreSQL refuses to update a row
        twice in one statement). Each run's size goes with it (``size_bytes``). The
        INSERTs are idempotent, so a batch retried after a later one failed is whole.
        Rows are built a statement's worth at a time: a run's JSON can be six times its
        output, and a batch of big ones held them all at once (probe 157).
        """
        latest = latest_per_key(
            runs, key=lambda run: run[1].invocation_id, ended_at=lambda run: _ended_at(*run)
        )
        recorded = 0
        rows: list[tuple[Any, ...]] = []
        rows_bytes = 0  # of ``rows``: summed as they come (a retried batch has thousands)
        for run in latest:
            row = _row(*run)
            if rows and rows_bytes + row[-1] > PG_STATEMENT_BYTES:
                recorded += self._insert_rows(rows)
                rows, rows_bytes = [], 0
            rows.append(row)
            rows_bytes += row[-1]
            del row
        if rows:
            recorded += self._insert_rows(rows)
        self._bytes += recorded
        self._bytes_since_prune += recorded
        return len(runs)

    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> int:
        """(PostgreSQL) One INSERT of ``rows``; the bytes they take."""
        self._db.execute(_insert(_COLUMNS, len(rows)), [value for row in rows for value in row])
        return sum(row[-1] for row in rows)

    def list_runs(
        self,
        *,
        job_id: int | None = None,
        outcome: Outcome | None = None,
        since: float | None = None,
        limit: int = 50,
        language: str | None = None,
        shadow_only: bool = False,
    ) -> list[RunRecord]:
        """Runs matching every given filter, newest first, at most ``limit`` (the first page)."""
        filters = RunFilters(job_id, outcome, since, language, shadow_only)
        return list(self.list_page(filters, limit=limit).runs)

    def list_page(
        self, filters: RunFilters, *, limit: int = 50, after: RunKey | None = None
    ) -> RunPage:
        """Runs matching ``filters``, newest first, at most ``limit``; only those after ``after``.

        Shadow runs come with their whole result: what they would have done is the point.
        """
        where: list[str] = []
        args: list[object] = []
        if filters.job_id is not None:
            where.append("job_id = ?")
            args.append(filters.job_id)
        if filters.outcome is not None:
            where.append("outcome = ?")
            args.append(filters.outcome.value)
        if filters.since is not None:
            where.append("started_at >= ?")
            args.append(filters.since)
        if filters.language is not None:
            where.append("language = ?")
            args.append(filters.language)
        columns = _SUMMARY_COLUMNS + ", rowid AS row_id"
        if filters.shadow_only:
            where.append("shadow = 1")
            columns += ", result"
        if after is not None:
            # The order's own comparison; the first term lets the started_at index bound it.
            where.append("started_at <= ? AND (started_at < ? OR rowid < ?)")
            args += [after.started_at, after.started_at, after.row_id]
        query = f"SELECT {columns} FROM runs"  # noqa: S608 - our columns; values bound
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY started_at DESC, rowid DESC LIMIT ?"
        self.before_read()
        with self._lock, reading(self._path):
            # One more than asked: whether a page follows, without a second query.
            rows = self._db.execute(query, (*args, limit + 1)).fetchall()
        shown = rows[:limit]
        if filters.shadow_only:
            shown = _within_bytes(shown, MAX_SHADOW_PAGE_BYTES)
            runs = [self._record(row, result=result_from_json(row["result"])) for row in shown]
        else:
            runs = [self._record(row) for row in shown]
        last = shown[-1] if shown and len(rows) > len(shown) else None
        return RunPage(
            tuple(runs),
            None if last is None else RunKey(last["started_at"], last["row_id"]),
        )

    def get(self, invocation_id: str) -> RunRecord | None:
        """One run with its whole result, or None when unknown (or pruned)."""
        self.before_read()
        with self._lock, reading(self._path):
            row = self._db.execute(
                f"SELECT {_SUMMARY_COLUMNS}, result FROM runs WHERE invocation_id = ?",  # noqa: S608
                (invocation_id,),
            ).fetchone()
        if row is None:
            return None
        return self._record(row, result=result_from_json(row["result"]))

    def identity(self, invocation_id: str) -> RunIdentity | None:
        """Whose run is recorded under ``invocation_id`` (None: none is).

        Without ``before_read``: the caller looks at the runs still being written itself
        (``Recorder.recorded``), so an Execute does not wait for a history commit. On
        SQLite it reads on its own connection, so it never waits for a write either.
        """
        query = (
            "SELECT job_id, callback_id, language, triggers, source, fired FROM runs"
            " WHERE invocation_id = ?"
        )
        if self._reader is None:
            with self._lock, reading(self._path):
                row = self._db.execute(query, (invocation_id,)).fetchone()
        else:
            with self._reader_lock, reading(self._path):
                row = self._reader.execute(query, (invocation_id,)).fetchone()
        if row is None:
            return None
        job_id, callback_id, language, triggers, source, fired = row
        return RunIdentity(job_id, callback_id, language.lower(), triggers, source, bool(fired))

    def ends(self, invocation_ids: Sequence[str]) -> dict[str, float]:
        """When the recorded run of each of these ids ended (Unix time); unknown ids left out."""
        self.before_read()
        found: dict[str, float] = {}
        for chunk, marks in in_lists(invocation_ids):
            with self._lock, reading(self._path):
                rows = self._db.execute(
                    "SELECT invocation_id, started_at + wall_seconds FROM runs"  # noqa: S608 - ? marks
                    f" WHERE invocation_id IN ({marks})",
                    chunk,
                ).fetchall()
            found.update((str(row[0]), float(row[1])) for row in rows)
        return found

    def oldest_start(self) -> float | None:
        """When the oldest run kept began (Unix time; an index's first entry); None: no run."""
        self.before_read()
        with self._lock, reading(self._path):
            row = self._db.execute("SELECT min(started_at) FROM runs").fetchone()
        return None if row[0] is None else float(row[0])

    def ids_starting_with(self, prefix: str, limit: int = 3) -> list[str]:
        """Up to ``limit`` invocation ids that start with ``prefix`` (taken literally)."""
        if isinstance(self._db, PgDb):
            query = (
                "SELECT invocation_id FROM runs WHERE starts_with(invocation_id, ?)"
                " ORDER BY invocation_id LIMIT ?"
            )
            wanted = prefix
        else:
            # GLOB, not LIKE: a prefix's "_" and "%" are characters here, not wildcards.
            query = (
                "SELECT invocation_id FROM runs WHERE invocation_id GLOB ? ORDER BY invocation_id"
                " LIMIT ?"
            )
            wanted = "".join(f"[{c}]" if c in "*?[" else c for c in prefix) + "*"
        self.before_read()
        with self._lock, reading(self._path):
            rows = self._db.execute(query, (wanted, limit)).fetchall()
        return [row["invocation_id"] for row in rows]

    def count(self) -> int:
        self.before_read()
        with self._lock, reading(self._path):
            return self._count()

    def _count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM runs").fetchone()[0])

    def stored_bytes(self) -> int:
        """What the runs take, as ``max_bytes`` bounds it (``history_size``), counted now."""
        self.before_read()
        with self._lock, reading(self._path):
            if isinstance(self._db, PgDb):
                return self._count_and_bytes()[1]
            return sqlite_bytes_in_use(self._db)

    def _count_and_bytes(self) -> tuple[int, int]:
        """(PostgreSQL) The runs and the sum of their sizes, in one scan."""
        row = self._db.execute("SELECT count(*), coalesce(sum(size_bytes), 0) FROM runs").fetchone()
        return int(row[0]), int(row[1])

    def prune(self) -> int:
        """Drop runs past the retention age, then the oldest beyond ``max_runs`` and ``max_bytes``."""
        with self._lock:
            return self._prune()

    def _prune(self) -> int:
        self._since_prune = 0
        self._bytes_since_prune = 0
        cutoff = self._clock() - self._retention_s
        by_age = self._db.execute("DELETE FROM runs WHERE started_at < ?", (cutoff,)).rowcount
        if isinstance(self._db, PgDb):
            # Counted afresh: every replica writes. Not count(): the writer thread prunes,
            # mid-flush.
            self._runs, self._bytes = self._count_and_bytes()
        else:
            self._runs -= by_age
        by_count = self._delete_oldest(self._runs - self._max_runs)
        self._runs -= by_count
        by_size = self._delete_oldest_beyond_bytes()
        self._runs -= by_size
        self._checkpoints.committed()
        if by_age or by_count or by_size:
            logger.debug(
                "history pruned %d runs by age, %d by count, %d by size", by_age, by_count, by_size
            )
        return int(by_age + by_count + by_size)

    def _delete_oldest(self, excess: int) -> int:
        """Drop the ``excess`` oldest runs (none when it is not positive); how many went."""
        if excess <= 0:
            return 0
        query = (
            "DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs"
            " ORDER BY started_at, rowid LIMIT ?)"
        )
        if isinstance(self._db, PgDb):
            sizes = self._db.execute(query + " RETURNING size_bytes", (excess,)).fetchall()
            self._bytes -= sum(int(size) for (size,) in sizes)
            return len(sizes)
        return int(self._db.execute(query, (excess,)).rowcount)

    def _delete_oldest_beyond_bytes(self) -> int:
        """Drop the oldest runs beyond ``max_bytes``, but the newest; how many went."""
        if self._max_bytes is None:
            return 0
        if isinstance(self._db, PgDb):
            dropped, freed = drop_oldest_sized(
                self._db, runs=self._runs, stored_bytes=self._bytes, max_bytes=self._max_bytes
            )
            self._bytes -= freed
            return dropped
        return drop_oldest_sqlite(self._db, runs=self._runs, max_bytes=self._max_bytes)

    @staticmethod
    def _record(row: Row, result: RunResult | None = None) -> RunRecord:
        event = Event.from_dict(json.loads(row["event"])) if row["event"] else None
        return RunRecord(
            invocation_id=row["invocation_id"],
            job_id=row["job_id"],
            callback_id=row["callback_id"],
            triggers=row["triggers"],
            language=row["language"],
            outcome=Outcome(row["outcome"]),
            started_at=row["started_at"],
            usage=Usage(
                row["wall_seconds"],
                row["cpu_seconds"],
                row["peak_rss_bytes"],
                row["queue_seconds"],
            ),
            event=event,
            work_name=row["work_name"],
            result=result,
            source=row["source"],
            policy=row["policy"],
            shadow=bool(row["shadow"]),
        )


def _within_bytes(rows: list[Any], cap: int) -> list[Any]:
    """The first rows whose stored results come to at most ``cap`` bytes (at least one).

    A page of shadow runs carries their whole results: 1,000 of them, each up to twice
    ``output_bytes`` and 1 MiB of actions, made an answer no client takes. The stored
    JSON is at least as long as the answer's protobuf (it escapes what protobuf sends
    as is).
    """
    total = 0
    for count, row in enumerate(rows):
        total += len(row["result"] or "")
        if total > cap and count:
            return rows[:count]
    return rows
