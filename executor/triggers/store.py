"""Durable state of the trigger engine in SQLite: jobs, callbacks, latches, atom index, firings.

Everything that decides whether a callback fires lives here, and each event is applied
in one transaction: latching an atom, evaluating, counting and queueing the firing
commit together, with the journal's entries (journal.py), the known states (states.py)
and the registration checks (checks.py), whose tables share this database. So after
``kill -9`` a half-latched ``&&`` is still half-latched, its journal says which event
latched it, and a firing that was decided but not yet run is still queued (it runs
once at restart).

The atom index holds each atom under its ``AtomKey`` (event name, type, scope, extra),
and an event reads the rows under its keys; ``evaluate.atom_key`` and
``evaluate.event_keys`` say what the keys are. An event reads only the rows that can
match it, so matching cost does not grow with callbacks that cannot match. A ``{work}``
callback is one callback with one set of index rows whatever its job's agenda; its
per-item latches are rows of their own (items.py), read by primary key for the item an
event names (so its cost does not grow with the items that cannot match either).
Label atoms also carry their pgrp and label, for the near-miss lookups (near_misses.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from executor.errors import UnavailableError
from executor.fleet_clock import FleetClock
from executor.model import Event
from executor.runs.sqlite_checkpoints import BackgroundCheckpoints
from executor.sql import Db, NoCheckpoints, PgDb, Row, in_lists, is_postgres, row_lock
from executor.storage import (
    LOOP_CHECKPOINT_BUSY_TIMEOUT_S,
    StorageHealth,
    open_database,
    reading,
    runs_nothing,
    wait_briefly_for_locks,
    writing,
)
from executor.triggers import checks, event_ids, items, journal, removals, states, store_space
from executor.triggers.evaluate import AtomKey, JobPlace, scope_label
from executor.triggers.journal import SeenEvent, marks_from_json, marks_to_json
from executor.triggers.snapshots import (
    POSTGRES_BEGIN,
    SQLITE_BEGIN,
    SnapshotReaders,
    sqlite_reader,
)

logger = logging.getLogger(__name__)

EDGE: Final = "edge"
LEVEL: Final = "level"
MODES: Final = (EDGE, LEVEL)

SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY,
    pgrp INTEGER NOT NULL,
    label TEXT NOT NULL,
    job_json TEXT NOT NULL,
    registration INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_label ON jobs (pgrp, label) WHERE label != '';
CREATE TABLE IF NOT EXISTS callbacks (
    rowid INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    callback_id INTEGER NOT NULL,
    triggers TEXT NOT NULL,
    language TEXT NOT NULL,
    code TEXT NOT NULL,
    user TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    maximum INTEGER NOT NULL DEFAULT 0,
    latches TEXT NOT NULL,
    universal INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL DEFAULT 'edge',
    latched_by TEXT NOT NULL DEFAULT '[]',
    UNIQUE (job_id, callback_id)
);
CREATE TABLE IF NOT EXISTS atoms (
    callback_rowid INTEGER NOT NULL REFERENCES callbacks (rowid) ON DELETE CASCADE,
    slot INTEGER NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    scope TEXT NOT NULL,
    extra TEXT NOT NULL,
    pgrp INTEGER NOT NULL DEFAULT 0,
    label TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS atoms_lookup ON atoms (name, type, scope, extra);
CREATE INDEX IF NOT EXISTS atoms_callback ON atoms (callback_rowid);
CREATE TABLE IF NOT EXISTS timers (
    callback_rowid INTEGER NOT NULL REFERENCES callbacks (rowid) ON DELETE CASCADE,
    slot INTEGER NOT NULL,
    due REAL NOT NULL,
    PRIMARY KEY (callback_rowid, slot)
);
CREATE INDEX IF NOT EXISTS timers_due ON timers (due);
CREATE TABLE IF NOT EXISTS firings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    invocation_id TEXT NOT NULL UNIQUE,
    callback_rowid INTEGER NOT NULL,
    event_json TEXT NOT NULL,
    decided_at REAL NOT NULL,
    batch TEXT NOT NULL DEFAULT '',
    snapshot_json TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS firings_by_callback ON firings (callback_rowid);
CREATE TABLE IF NOT EXISTS seen_events (
    id_key BLOB PRIMARY KEY,
    seen_at REAL NOT NULL,
    fired_json TEXT NOT NULL DEFAULT '',
    fingerprint BLOB,
    fired_verdicts_json TEXT NOT NULL DEFAULT ''
);
"""
# Created after the columns they index exist (a database from before them gets those first).
LABEL_INDEXES = """
CREATE INDEX IF NOT EXISTS atoms_unresolved ON atoms (pgrp, type, name, extra) WHERE label != '';
CREATE INDEX IF NOT EXISTS atoms_by_label ON atoms (label, type, name, extra) WHERE label != '';
"""
# The advisory locks a fleet's registrations of one job take turns under
# (``callbacks_to_register``): the two-key form, keyed by this and the job; the migration's
# lock is of the one-key form, which PostgreSQL keeps apart.
_REGISTRATION_LOCK: Final = 0x63627267  # "cbrg"
# Columns added since the first schema: (table, column, definition).
_ADDED_COLUMNS: Final = (
    # A queue from before batches: its firings keep running one after another.
    ("firings", "batch", "TEXT NOT NULL DEFAULT ''"),
    # A queue from before snapshots: pending_firings reads its callbacks' rows.
    ("firings", "snapshot_json", "TEXT NOT NULL DEFAULT ''"),
    ("callbacks", "mode", "TEXT NOT NULL DEFAULT 'edge'"),
    # Latches from before provenance read as set by an unknown event.
    ("callbacks", "latched_by", "TEXT NOT NULL DEFAULT '[]'"),
    ("atoms", "pgrp", "INTEGER NOT NULL DEFAULT 0"),
    ("atoms", "label", "TEXT NOT NULL DEFAULT ''"),
    # A fleet's claims (PostgreSQL); a single executor's firings are all its own.
    ("firings", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("firings", "lease_until", "REAL NOT NULL DEFAULT 0"),
    ("firings", "epoch", "INTEGER NOT NULL DEFAULT 0"),
    # Jobs registered before registrations were numbered get numbers at the upgrade.
    ("jobs", "registration", "INTEGER NOT NULL DEFAULT 0"),
    # What each event fired (decided_firings.py); ids seen before read as firing nothing.
    ("seen_events", "fired_json", "TEXT NOT NULL DEFAULT ''"),
    # Each id's event's fingerprint (event_id_reuse.py); ids seen before read as unknown.
    ("seen_events", "fingerprint", "BLOB"),
    # The last job to take a resolved check's label (checks.resolve_label); 0: the first.
    ("trigger_checks", "last_holder", "INTEGER NOT NULL DEFAULT 0"),
    # Each firing's refusal and shadow (decided_firings.py); ids seen before read as
    # firings that ran, none as a shadow.
    ("seen_events", "fired_verdicts_json", "TEXT NOT NULL DEFAULT ''"),
)
# SQLite's stand-in for PostgreSQL's sequence ``job_registrations`` (migrations.py): the
# last number a job's registration was given. A counter of its own, not the largest
# number stored: a removed job takes its number with it, and a number given again could
# make two registrations of one job look like one. SQLite has one writer, so the one row
# costs nothing; a fleet's replicas would wait for each other on it, hence the sequence.
SQLITE_REGISTRATION_COUNTER: Final = """
CREATE TABLE IF NOT EXISTS registration_counter (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
"""
# Everything the trigger store keeps, in SQLite's spelling (sql.pg_ddl for PostgreSQL).
FULL_SCHEMA: Final = (
    SCHEMA
    + event_ids.SCHEMA
    + items.SCHEMA
    + journal.SCHEMA
    + states.SCHEMA
    + states.SUBMISSIONS_SCHEMA
    + checks.SCHEMA
    + removals.SCHEMA
)


@dataclass(frozen=True, slots=True)
class StoredCallback:
    """A callback row."""

    rowid: int
    job_id: int
    callback_id: int
    triggers: str
    language: str
    code: str
    user: str
    count: int
    maximum: int
    latches: tuple[bool, ...]
    universal: bool
    source: str
    # "edge" (Qube's) or "level" (latches already-happened events at registration).
    mode: str = EDGE
    # Per latch slot, the event that set it (None: not set, or set before provenance).
    latched_by: tuple[SeenEvent | None, ...] = ()

    @property
    def marks(self) -> tuple[SeenEvent | None, ...]:
        """``latched_by`` with one entry per latch."""
        if len(self.latched_by) == len(self.latches):
            return self.latched_by
        return (None,) * len(self.latches)

    def as_dict(self) -> dict[str, Any]:
        """The plain form a firing keeps of the callback it runs (``from_dict`` reads it)."""
        return {
            "rowid": self.rowid,
            "job_id": self.job_id,
            "callback_id": self.callback_id,
            "triggers": self.triggers,
            "language": self.language,
            "code": self.code,
            "user": self.user,
            "count": self.count,
            "maximum": self.maximum,
            "latches": list(self.latches),
            "universal": self.universal,
            "source": self.source,
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredCallback:
        return cls(
            int(data["rowid"]),
            int(data["job_id"]),
            int(data["callback_id"]),
            str(data["triggers"]),
            str(data["language"]),
            str(data["code"]),
            str(data["user"]),
            int(data["count"]),
            int(data["maximum"]),
            tuple(bool(x) for x in data["latches"]),
            bool(data["universal"]),
            str(data["source"]),
            str(data.get("mode", EDGE)),
        )

    @classmethod
    def from_row(cls, row: Row) -> StoredCallback:
        latches = tuple(bool(x) for x in json.loads(row["latches"]))
        return cls(
            row["rowid"],
            row["job_id"],
            row["callback_id"],
            row["triggers"],
            row["language"],
            row["code"],
            row["user"],
            row["count"],
            row["maximum"],
            latches,
            bool(row["universal"]),
            row["source"],
            row["mode"],
            marks_from_json(row["latched_by"], len(latches)),
        )


@dataclass(frozen=True, slots=True)
class PendingFiring:
    """A firing decided and committed but not yet run.

    It carries everything its run needs, as decided: the callback as it was, the count
    the run reports (the callback's count with this firing) and the work item it runs
    for. Stored with the firing, so neither a re-registration nor a ``removed`` job
    between the decision and the run (or a restart) changes what runs.
    """

    invocation_id: str
    callback: StoredCallback
    event: Event
    # The firings one event decided share a batch (they run one after another).
    batch: str = ""
    # The count the run reports: how many times the callback has fired, this one included.
    count: int = 0
    # The work item whose context it runs in (qb.workid()).
    work_name: str = ""
    # In a fleet: the claim this replica holds on it (fencing: done only if it still holds).
    epoch: int = 0

    def snapshot(self) -> str:
        """The JSON stored in the firing's row: what ``pending_firings`` restores."""
        return json.dumps(
            {"callback": self.callback.as_dict(), "count": self.count, "work_name": self.work_name}
        )


@dataclass(frozen=True, slots=True)
class JobHead:
    """What is shown of a registered job besides its callbacks: never its agenda."""

    job_id: int
    pgrp: int
    label: str
    pid: int = 0
    name: str = ""
    user: str = ""

    @property
    def place(self) -> JobPlace:
        return JobPlace(self.job_id, pid=self.pid, pgrp=self.pgrp, label=self.label)


@dataclass(frozen=True, slots=True)
class Sighting:
    """An event's first read: whether it is new (not a repeat), its job, and what else was read.

    ``earlier``, for a repeat: the fingerprint kept with its id (event_id_reuse.py; b""
    when unknown), or None when not read.
    """

    first: bool
    place: JobPlace | None
    also: Any = None
    earlier: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewAtom:
    """An index row to write: the atom in latch slot ``slot`` is found under ``key``."""

    slot: int
    key: AtomKey


class TriggerStore:
    """The trigger engine's durable state: an SQLite file, or a fleet's PostgreSQL database.

    One connection guarded by a lock. On SQLite the engine is the only writer. On
    PostgreSQL (``path`` a ``postgresql://`` URL, its schema made by ``cbexec store
    migrate``) every replica of a fleet writes: an event's transaction locks the
    callback rows it reads (``matching_callbacks``; a group's, group_reads.py), so the two
    halves of an ``&&`` applied by two replicas at once serialize on the row and fire
    once; firings are claimed with a lease and an epoch (``claim_expired``,
    ``renew_leases``, ``claim_holds``, ``firing_done``).
    """

    def __init__(
        self,
        path: str,
        *,
        health: StorageHealth | None = None,
        lease_s: float = 15.0,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.RLock()
        self._path = path
        self._health = health
        # triggers_max_bytes: what a registration may take the file to (store_space.py);
        # None: no bound, as in a fleet (PostgreSQL is its DBA's to size).
        self._max_bytes = None if is_postgres(path) else max_bytes
        # Who this replica is in the firings' claims; fresh at each start, so a restarted
        # replica claims its own earlier firings like any other replica's.
        self.owner = uuid.uuid4().hex
        self.lease_s = lease_s
        # The leases' clock: the database's, in a fleet (``clock``: this replica's own).
        self.clock = FleetClock(clock)
        self._db: Db
        self._outside_db: Db
        self._checkpoints: BackgroundCheckpoints | NoCheckpoints
        if is_postgres(path):
            from executor.migrations import open_postgres

            self._db = open_postgres(path, application_name="cbexec-triggers")
            # Statements outside a transaction (the event loop's: a firing done, a
            # lease renewed) go through a connection of their own: the group thread's
            # transaction holds the first for several round trips.
            try:
                self._outside_db = open_postgres(path, application_name="cbexec-triggers-loop")
            except BaseException:
                self._db.close()
                raise
            self._outside_lock = threading.RLock()
            self._checkpoints = NoCheckpoints()
            try:
                self.clock.measure(self._outside_db)  # before any lease is written
            except BaseException:
                self._outside_db.close()
                self._db.close()
                raise

            def reader() -> Db:
                db = open_postgres(path, application_name="cbexec-triggers-reads")
                db.read_only = True  # the reads shared with the event path lock no rows
                return db

            self._snapshots = SnapshotReaders(reader, begin=POSTGRES_BEGIN)
            return
        sqlite = open_database(path)
        sqlite.row_factory = sqlite3.Row
        sqlite.execute("PRAGMA foreign_keys = ON")
        sqlite.executescript(FULL_SCHEMA + SQLITE_REGISTRATION_COUNTER)
        self._db = self._outside_db = sqlite
        self._outside_lock = self._lock
        self._migrate(sqlite)
        sqlite.executescript(LABEL_INDEXES)
        # Written through the one connection by the loop (timers, a firing done) and by
        # worker threads (events, registrations), each holding its lock, which the loop
        # may wait for: a lock held by another process is waited for briefly, then
        # refused as the storage's.
        wait_briefly_for_locks(sqlite)
        # A burst of events commits fast; the log's fsyncing checkpoints go to a thread.
        self._checkpoints = BackgroundCheckpoints(
            sqlite, path, busy_timeout_s=LOOP_CHECKPOINT_BUSY_TIMEOUT_S
        )
        self._snapshots = SnapshotReaders(sqlite_reader(path), begin=SQLITE_BEGIN)

    @property
    def fleet(self) -> bool:
        """Whether this store is a fleet's PostgreSQL database."""
        return isinstance(self._db, PgDb)

    def refuse_while_lost(self) -> None:
        """Raise UnavailableError while a database is lost (``StorageHealth.lost``).

        An event or registration applied then fires runs whose results, and the firings
        themselves, would be written into a file nothing reads again.
        """
        if self._health is not None and (lost := self._health.lost):
            raise UnavailableError(runs_nothing(lost))

    async def sound(self, at_most_s: float = 30.0) -> None:
        """Until the storage's health probe finds it takes writes again, or ``at_most_s``.

        What a retry waits for after the store refused a write: trying sooner would only
        wait for another's lock on the event loop, or fail again. At most that long: the
        health may be degraded by another database (a damaged history) for longer.
        """
        if self._health is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at_most_s):
                    await self._health.sound()

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Add the columns a database from an earlier version lacks; key its event ids."""
        for table, column, definition in _ADDED_COLUMNS:
            present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                if (table, column) == ("atoms", "label"):
                    # Label atoms indexed before these columns: read them off the scope.
                    for rowid, scope in db.execute(
                        "SELECT rowid, scope FROM atoms WHERE scope LIKE 'label:%'"
                    ).fetchall():
                        pgrp, label = scope_label(scope) or (0, "")
                        db.execute(
                            "UPDATE atoms SET pgrp = ?, label = ? WHERE rowid = ?",
                            (pgrp, label, rowid),
                        )
        # Event ids kept as their text (before 2026-12-06): kept as their keys instead.
        rekeyed = event_ids.rekey_sqlite(db)
        if rekeyed:
            logger.info("event ids: the %d remembered are now kept as their keys", rekeyed)
        # Jobs registered before registrations were numbered: each its own number, as if
        # registered now (one transaction, so a crash half-way leaves no number twice).
        unnumbered = db.execute("SELECT job_id FROM jobs WHERE registration = 0").fetchall()
        if unnumbered:
            db.execute("BEGIN IMMEDIATE")
            for (job_id,) in unnumbered:
                db.execute(
                    "UPDATE jobs SET registration = ? WHERE job_id = ?",
                    (self.next_registration(db), job_id),
                )
            db.execute("COMMIT")

    def close(self) -> None:
        self._snapshots.close()
        with self._lock, self._outside_lock:
            self._checkpoints.close()
            if self._outside_db is not self._db:
                self._outside_db.close()
            self._db.close()

    @contextmanager
    def outside_transaction(self) -> Iterator[Db]:
        """The connection for statements outside a transaction, holding its lock.

        On SQLite it is the transactions' own (statements make no round trips); in a
        fleet, a second one, so that a read never waits for a transaction to commit. A
        damaged page a read meets is a DataLossError naming the file (``reading``).
        """
        with self._outside_lock, reading(self._path):
            yield self._outside_db

    @contextmanager
    def snapshot(self) -> Iterator[Db]:
        """A read-only connection of its own, one committed state, for long reads off the loop.

        It neither takes nor waits for the locks of the other connections (snapshots.py):
        for reads that may take seconds (``why`` of a big job), made on a worker thread. A
        damaged page a read meets is a DataLossError naming the file (``reading``).
        """
        with reading(self._path), self._snapshots.snapshot() as db:
            yield db

    @contextmanager
    def transaction(self) -> Iterator[Db]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), holding the lock.

        A failure of the storage (disk full, ...) is a StorageError naming the file; on
        PostgreSQL a lost connection is StoreUnavailable and a lost deadlock
        StoreConflict (run the transaction again: ``retrying``).
        """
        try:
            with self._lock, writing(self._path, self._health):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                self._checkpoints.committed()
        finally:
            # Outside the lock, which the loop's statements take: a worker thread whose
            # transaction took the log past its bound (a commit, or a refused registration's
            # pages spilled into it) waits for it to be copied and emptied.
            self._checkpoints.settle()

    def wait_for_checkpoints(self) -> None:
        """Until the log's checkpoint running now (if any) has finished (tests, tools)."""
        self._checkpoints.wait()

    @contextmanager
    def within_bound(self, db: Db, job_id: int) -> Iterator[None]:
        """What the block writes for a registration of ``job_id`` keeps to ``triggers_max_bytes``.

        Inside the registration's transaction; raises StoreFullError (which rolls it
        back) when the block took the file's pages in use past the bound (store_space.py).
        """
        if self._max_bytes is None:
            yield
            return
        new_job = self.registration_in(db, job_id) is None
        before = store_space.bytes_in_use(db)
        yield
        store_space.check_room(db, before, self._max_bytes, job_id, new_job=new_job)

    def room(self) -> store_space.Room | None:
        """The file's pages in use, its bound and its jobs now; None without a bound (a fleet)."""
        if self._max_bytes is None:
            return None
        with self.outside_transaction() as db:
            in_use = store_space.bytes_in_use(db)
            return store_space.Room(in_use, self._max_bytes, self.count_jobs_in(db))

    # -- jobs and callbacks -----------------------------------------------------------

    def job(self, job_id: int) -> dict[str, Any] | None:
        """The job as registered, whole: parsing a big one holds the GIL (``heads``)."""
        with self.outside_transaction() as db:
            row = db.execute("SELECT job_json FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row["job_json"]) if row else None

    def place(self, job_id: int) -> JobPlace | None:
        """A registered job's pgrp and label, from their columns.

        An event's lookup never reads the job's JSON, whose agenda may hold thousands of
        items.
        """
        with self.outside_transaction() as db:
            return self.place_in(db, job_id)

    @staticmethod
    def place_in(db: Db, job_id: int) -> JobPlace | None:
        """``place`` inside a transaction."""
        row = db.execute("SELECT pgrp, label FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else JobPlace(job_id, pgrp=int(row[0]), label=str(row[1]))

    def label_owner(self, pgrp: int, label: str) -> int | None:
        with self.outside_transaction() as db:
            row = db.execute(
                # ``label != ''``: the partial index jobs_label, not a scan of every job.
                "SELECT job_id FROM jobs WHERE pgrp = ? AND label = ? AND label != ''",
                (pgrp, label),
            ).fetchone()
        return int(row["job_id"]) if row else None

    def callbacks_of(self, job_id: int) -> list[StoredCallback]:
        with self.outside_transaction() as db:
            return self.callbacks_in(db, job_id)

    @staticmethod
    def callbacks_in(db: Db, job_id: int) -> list[StoredCallback]:
        """``callbacks_of`` on ``db`` (a transaction's, a snapshot's)."""
        rows = db.execute(
            "SELECT * FROM callbacks WHERE job_id = ? ORDER BY callback_id", (job_id,)
        ).fetchall()
        return [StoredCallback.from_row(row) for row in rows]

    @staticmethod
    def callbacks_to_register(db: Db, job_id: int) -> list[StoredCallback]:
        """The job's callbacks as its registration finds them, held until it commits.

        What a registration keeps of the last one (counts, latches, journals, work items)
        is read here, in its own transaction. In a fleet the job's registrations take
        turns under a transaction-scoped advisory lock keyed by the job, taken first, and
        its callback rows are then locked in ascending order:

        * The advisory lock, not a row lock: a job registered for the first time has no
          row to lock yet, and two replicas registering it at once would both take it as
          new (a level ``submit-job-self`` would fire twice). Only the ``submit`` event
          of a job not registered takes it too, before any row lock
          (``submissions_take_turns``), and a registration waiting for it holds nothing
          else, so it adds no deadlock.
        * The rows in ascending order, in one statement, as an event's transaction locks
          the rows it matches (group_reads.matching): an event that latched one of them
          has committed before this reads it, and one that comes later waits for the
          registration and reads what it wrote (a kept row is rewritten in place,
          ``rewrite_callback``); the two orders agree, so they take turns and never
          deadlock. (The other jobs' level callbacks a first
          registration latches, ``registration.take_registration``, are locked after
          these, but a first registration has no rows of its own an event could hold.)

        On SQLite the transaction is the file's only writer already: a plain read.
        """
        if isinstance(db, PgDb):
            db.execute(
                "SELECT pg_advisory_xact_lock(?::integer, ?::integer)",
                (_REGISTRATION_LOCK, _as_int4(job_id)),
            )
        rows = db.execute(
            f"SELECT * FROM callbacks WHERE job_id = ? ORDER BY rowid{row_lock(db)}",  # noqa: S608 - a clause of ours
            (job_id,),
        ).fetchall()
        return sorted((StoredCallback.from_row(row) for row in rows), key=lambda cb: cb.callback_id)

    @staticmethod
    def submissions_take_turns(db: Db, events: Iterable[Event]) -> None:
        """In a fleet, the events' ``submit`` of jobs not registered wait for their registrations.

        The first registration of a job and its ``submit`` event are one submission: the
        registration latches the other jobs' level callbacks naming it unless the event
        came first and left its submission remembered (``registration.take_registration``).
        At two replicas at once each could miss the other (the event reads the job as not
        registered while its registration latches; the registration reads no remembered
        submission while the event's transaction latches), and a watcher's level
        ``submit-job-<id>`` fired twice. So such an event takes the job's registration
        lock (``callbacks_to_register``) and the two take turns; the event's reads come
        after it, so it finds the job registered if its registration went first.

        It must be the transaction's first statement: the locks are taken before any row
        lock (in ascending order, as a group may hold several), so waiting for one never
        closes a cycle. A job registered already takes no lock (its registrations took
        its submission; the event takes nothing from level callbacks). SQLite: nothing
        to do, its transaction is the file's only writer.
        """
        if not isinstance(db, PgDb):
            return
        submitted = sorted(
            {e.job_id for e in events if e.name == "submit" and e.type == "job" and e.job_id > 0}
        )
        if not submitted:
            return
        db.execute(
            "SELECT count(pg_advisory_xact_lock(?::integer, s.k)) FROM (SELECT DISTINCT t.k"
            " FROM unnest(?::bigint[], ?::integer[]) AS t(job_id, k) WHERE NOT EXISTS"
            " (SELECT 1 FROM jobs j WHERE j.job_id = t.job_id) ORDER BY t.k) AS s",
            (_REGISTRATION_LOCK, submitted, [_as_int4(job_id) for job_id in submitted]),
        ).fetchone()

    @staticmethod
    def callbacks_page(
        db: Db, job_id: int, *, after: int = 0, limit: int
    ) -> tuple[list[StoredCallback], int]:
        """A job's callbacks with ids above ``after``, at most ``limit``, and how many it has."""
        rows = db.execute(
            "SELECT * FROM callbacks WHERE job_id = ? AND callback_id > ? "
            "ORDER BY callback_id LIMIT ?",
            (job_id, after, limit),
        ).fetchall()
        total = db.execute("SELECT count(*) FROM callbacks WHERE job_id = ?", (job_id,)).fetchone()
        return [StoredCallback.from_row(row) for row in rows], int(total[0])

    def labels_in(self, pgrp: int) -> dict[str, int]:
        """Label -> job id of every labelled job registered in ``pgrp``."""
        with self.outside_transaction() as db:
            return self.labels_of(db, pgrp)

    def count_callbacks(self) -> int:
        with self.outside_transaction() as db:
            return int(db.execute("SELECT count(*) FROM callbacks").fetchone()[0])

    def count_firings(self) -> int:
        """Firings decided and not yet run to their end (in a fleet, every replica's)."""
        with self.outside_transaction() as db:
            return int(db.execute("SELECT count(*) FROM firings").fetchone()[0])

    def holds_firing(self, invocation_id: str) -> bool:
        """Whether a firing decided and not yet run to its end has this invocation id."""
        with self.outside_transaction() as db:
            row = db.execute(
                "SELECT 1 FROM firings WHERE invocation_id = ?", (invocation_id,)
            ).fetchone()
        return row is not None

    def count_jobs(self) -> int:
        with self.outside_transaction() as db:
            return self.count_jobs_in(db)

    @staticmethod
    def count_jobs_in(db: Db) -> int:
        """``count_jobs`` on ``db``."""
        return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])

    @staticmethod
    def heads_in(db: Db, *, limit: int, before: int = 0) -> list[JobHead]:
        """Registered jobs' heads, newest id first: at most ``limit``, ids below ``before`` if set."""
        return TriggerStore._heads(db, "? = 0 OR job_id < ?", (before, before), limit)

    @staticmethod
    def head_in(db: Db, job_id: int) -> JobHead | None:
        """The job's head (``heads_in``); None when it is not registered."""
        heads = TriggerStore._heads(db, "job_id = ?", (job_id,), 1)
        return heads[0] if heads else None

    @staticmethod
    def _heads(db: Db, where: str, params: tuple[Any, ...], limit: int) -> list[JobHead]:
        """The jobs' heads, newest first: their columns, and their pid, name and user.

        The database takes those three out of the job's JSON: ``json.loads`` of a big
        job's (a million work items: ~74 MB, about a second) holds the GIL throughout, so
        on a worker thread too it stops the event loop, while SQLite's parser runs with
        the GIL released and PostgreSQL's in the server. Each comes back as JSON (a NUL,
        say, stays escaped).
        """
        if isinstance(db, PgDb):
            # One jsonb parse a job: OFFSET 0 keeps the planner from inlining the cast
            # into each field's expression, and it runs only for the jobs the LIMIT keeps.
            sql = (
                "SELECT j.job_id, j.pgrp, j.label,"  # noqa: S608 - a condition of ours
                " jsonb_build_array(p.h -> 'pid', p.h -> 'name', p.h -> 'user')::text"
                f" FROM (SELECT job_id FROM jobs WHERE {where} ORDER BY job_id DESC LIMIT ?)"
                " AS picked JOIN jobs j ON j.job_id = picked.job_id"
                " CROSS JOIN LATERAL (SELECT j.job_json::jsonb AS h OFFSET 0) AS p"
                " ORDER BY j.job_id DESC"
            )
        else:
            sql = (
                "SELECT job_id, pgrp, label,"  # noqa: S608 - a condition of ours
                " json_extract(job_json, '$.pid', '$.name', '$.user')"
                f" FROM jobs WHERE {where} ORDER BY job_id DESC LIMIT ?"
            )
        heads = []
        for row in db.execute(sql, (*params, limit)).fetchall():
            pid, name, user = json.loads(row[3])
            heads.append(
                JobHead(
                    int(row[0]),
                    int(row[1]),
                    str(row[2]),
                    int(pid or 0),
                    str(name or ""),
                    str(user or ""),
                )
            )
        return heads

    @staticmethod
    def job_in(db: Db, job_id: int) -> dict[str, Any] | None:
        """``job`` inside a transaction or on a snapshot."""
        row = db.execute("SELECT job_json FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row["job_json"]) if row else None

    @staticmethod
    def labels_of(db: Db, pgrp: int) -> dict[str, int]:
        """``labels_in`` inside a transaction."""
        rows = db.execute(
            "SELECT label, job_id FROM jobs WHERE pgrp = ? AND label != '' ORDER BY label",
            (pgrp,),
        ).fetchall()
        return {str(row[0]): int(row[1]) for row in rows}

    @staticmethod
    def labels_among(db: Db, pgrp: int, labels: Iterable[str]) -> dict[str, int]:
        """``labels_of`` for the ``labels`` given only: an index lookup each, not the whole pgrp."""
        found: dict[str, int] = {}
        for chunk, marks in in_lists(sorted({label for label in labels if label})):
            rows = db.execute(
                "SELECT label, job_id FROM jobs WHERE pgrp = ? AND label != ''"  # noqa: S608 - placeholders only
                f" AND label IN ({marks}) ORDER BY label",
                (pgrp, *chunk),
            ).fetchall()
            found.update((str(row[0]), int(row[1])) for row in rows)
        return found

    @staticmethod
    def put_job(db: Db, job: dict[str, Any]) -> int:
        """Store a job (its callbacks apart) as a new registration of it; the registration's number."""
        registration = TriggerStore.next_registration(db)
        db.execute(
            "INSERT INTO jobs (job_id, pgrp, label, job_json, registration) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET pgrp = excluded.pgrp, label = excluded.label, "
            "job_json = excluded.job_json, registration = excluded.registration",
            (
                int(job["id"]),
                int(job.get("pgrp") or job["id"]),
                str(job.get("label") or ""),
                json.dumps(job),
                registration,
            ),
        )
        return registration

    @staticmethod
    def next_registration(db: Db) -> int:
        """A number no registration of any job had before (in the open transaction).

        What tells two registrations of one job apart (ExplainCallbacks' pages name it):
        PostgreSQL's sequence, whose numbers no transaction waits for and no rollback
        gives back; SQLite's counter row (``SQLITE_REGISTRATION_COUNTER``).
        """
        if isinstance(db, PgDb):
            return int(db.execute("SELECT nextval('job_registrations')").fetchone()[0])
        row = db.execute(
            "INSERT INTO registration_counter (id, last) VALUES (1, 1)"
            " ON CONFLICT (id) DO UPDATE SET last = last + 1 RETURNING last"
        ).fetchone()
        return int(row[0])

    @staticmethod
    def registration_in(db: Db, job_id: int) -> int | None:
        """The number of the job's registration as it stands; None when it is not registered."""
        row = db.execute("SELECT registration FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0]) if row else None

    @staticmethod
    def remove_job(db: Db, job_id: int) -> None:
        """The job's row and its callbacks' (their atoms, timers and work latches cascade)."""
        db.execute("DELETE FROM callbacks WHERE job_id = ?", (job_id,))
        db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    @staticmethod
    def forget_job(db: Db, job_id: int, at: float) -> None:
        """Every row a job ``removed`` (at ``at``) leaves, in the caller's transaction.

        ``remove_job``, and its known states, remembered submission, registration checks
        and journal: nothing reads them once the job is gone (``why`` answers NOT_FOUND),
        and a job registered again under its id starts without them. Its queued firings
        stay (they run as decided, then leave the queue), and so do its events' ids
        (``event_ids``: a resent ``removed`` is still a repeat), and the latches its
        events set in other jobs' callbacks, until its id is registered again: the time
        of its removal is remembered for that (``removals``).
        """
        removals.remember(db, job_id, at)
        TriggerStore.remove_job(db, job_id)
        states.forget_job(db, job_id)
        states.forget_submission(db, job_id)
        checks.forget_job(db, job_id)
        journal.forget_job(db, job_id)

    @staticmethod
    def delete_callbacks(db: Db, rowids: Collection[int]) -> None:
        """Delete callback rows (their index rows, timers and items go with them)."""
        for part, marks in in_lists(sorted(rowids)):
            db.execute(f"DELETE FROM callbacks WHERE rowid IN ({marks})", part)  # noqa: S608 - marks only

    @staticmethod
    def unindex_callbacks(db: Db, rowids: Collection[int]) -> None:
        """Delete callbacks' index rows (``rewrite_callback`` writes them again).

        Not their timers: a kept callback's clocks run on as they were (a one-shot time
        that fired stays fired, a repeat keeps its next tick), ``rewrite_callback``.
        """
        for part, marks in in_lists(sorted(rowids)):
            db.execute(f"DELETE FROM atoms WHERE callback_rowid IN ({marks})", part)  # noqa: S608 - marks only

    @staticmethod
    def set_callback_ids_aside(db: Db, rowids: Collection[int]) -> None:
        """Give kept rows whose id moves an id no callback has (``-rowid``) until rewritten.

        Ids may swap between kept rows (universal lines reordered), and the job's ids are
        unique at every row written.
        """
        for part, marks in in_lists(sorted(rowids)):
            db.execute(
                f"UPDATE callbacks SET callback_id = -rowid WHERE rowid IN ({marks})",  # noqa: S608 - marks only
                part,
            )

    @staticmethod
    def put_callback(
        db: Db,
        job_id: int,
        spec: dict[str, Any],
        atoms: Iterable[NewAtom],
        timers: Iterable[tuple[int, float]],
    ) -> int:
        cursor = db.execute(
            'INSERT INTO callbacks (job_id, callback_id, triggers, language, code, "user", count,'
            " maximum, latches, universal, source, mode, latched_by)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING rowid",
            (job_id, *_callback_columns(spec)),
        )
        rowid = int(cursor.fetchone()[0])
        TriggerStore._index_callback(db, rowid, atoms, timers)
        return rowid

    @staticmethod
    def rewrite_callback(
        db: Db,
        rowid: int,
        spec: dict[str, Any],
        atoms: Iterable[NewAtom],
    ) -> None:
        """A kept callback's row as registered again, in place (``put_callback``'s columns).

        Its old index rows must be gone (``unindex_callbacks``); its timers stay as they
        run (``replace_timers`` starts them afresh).

        In place, not deleted and inserted again: in a fleet, an event's transaction
        waiting for the row's lock then reads the row as written here, where it would
        have skipped a deleted one (and not seen the new row): its latch would be lost.
        """
        db.execute(
            'UPDATE callbacks SET callback_id = ?, triggers = ?, language = ?, code = ?, "user" = ?,'
            " count = ?, maximum = ?, latches = ?, universal = ?, source = ?, mode = ?,"
            " latched_by = ? WHERE rowid = ?",
            (*_callback_columns(spec), rowid),
        )
        TriggerStore._index_callback(db, rowid, atoms, ())

    @staticmethod
    def replace_timers(db: Db, rowid: int, timers: Iterable[tuple[int, float]]) -> None:
        """Start a callback's clocks afresh: ``timers`` (slot, first due) replace its own."""
        TriggerStore.drop_timers(db, rowid)
        db.executemany(
            "INSERT INTO timers (callback_rowid, slot, due) VALUES (?, ?, ?)",
            [(rowid, slot, due) for slot, due in timers],
        )

    @staticmethod
    def _index_callback(
        db: Db, rowid: int, atoms: Iterable[NewAtom], timers: Iterable[tuple[int, float]]
    ) -> None:
        """A callback's index rows and timers."""
        rows = []
        for a in atoms:
            pgrp, label = scope_label(a.key.scope) or (0, "")
            rows.append(
                (rowid, a.slot, a.key.name, a.key.type, a.key.scope, a.key.extra, pgrp, label)
            )
        db.executemany(
            "INSERT INTO atoms (callback_rowid, slot, name, type, scope, extra, pgrp, label)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.executemany(
            "INSERT INTO timers (callback_rowid, slot, due) VALUES (?, ?, ?)",
            [(rowid, slot, due) for slot, due in timers],
        )

    # -- matching -------------------------------------------------------------------

    @staticmethod
    def matching_callbacks(
        db: Db, keys: Iterable[AtomKey]
    ) -> tuple[list[tuple[int, int]], dict[int, StoredCallback]]:
        """(callback rowid, slot) for every indexed atom under ``keys``, and those callbacks.

        One statement per type: the keys of an event are a cross product of names,
        scopes and extras, which the index walks as IN lists; a row is kept only when its
        own key is one of ``keys``. The callbacks are read with their atoms (not by a
        second ``load_callbacks``), and in a fleet locked in ascending order as the index
        finds them: a row the IN lists found but whose key is not one of ``keys`` locks
        its callback without matching it.
        """
        wanted = set(keys)
        found: list[tuple[int, int]] = []
        callbacks: dict[int, StoredCallback] = {}
        lock = " FOR UPDATE OF c" if row_lock(db) else ""
        for type_ in sorted({key.type for key in wanted}):
            of_type = [key for key in wanted if key.type == type_]
            names = sorted({key.name for key in of_type})
            scopes = sorted({key.scope for key in of_type})
            extras = sorted({key.extra for key in of_type})
            rows = db.execute(
                "SELECT a.slot AS atom_slot, a.name AS atom_name, a.scope AS atom_scope,"  # noqa: S608 - marks only
                " a.extra AS atom_extra, c.* FROM atoms a JOIN callbacks c"
                " ON c.rowid = a.callback_rowid"
                f" WHERE a.name IN ({_marks(names)}) AND a.type = ? AND a.scope IN ({_marks(scopes)})"
                f" AND a.extra IN ({_marks(extras)}) ORDER BY c.rowid{lock}",
                (*names, type_, *scopes, *extras),
            ).fetchall()
            for row in rows:
                key = AtomKey(row["atom_name"], type_, row["atom_scope"], row["atom_extra"])
                if key not in wanted:
                    continue
                found.append((row["rowid"], row["atom_slot"]))
                if row["rowid"] not in callbacks:
                    callbacks[row["rowid"]] = StoredCallback.from_row(row)
        return found, callbacks

    @staticmethod
    def level_atoms_naming(
        db: Db, scopes: Sequence[str], names: Iterable[str], job_id: int
    ) -> tuple[list[tuple[int, int]], dict[int, StoredCallback]]:
        """(callback rowid, slot) of the atoms under ``scopes`` named one of ``names``.

        Of level callbacks of jobs other than ``job_id`` only, and those callbacks (locked
        in ascending order in a fleet, as ``matching_callbacks`` locks them). Whatever
        their extra: a registering job's states are of every item it has.
        """
        wanted = sorted(set(names))
        if not scopes or not wanted:
            return [], {}
        types = ("job", "work", "subjob")
        lock = " FOR UPDATE OF c" if row_lock(db) else ""
        rows = db.execute(
            "SELECT a.slot AS atom_slot, c.* FROM atoms a JOIN callbacks c"  # noqa: S608 - marks only
            " ON c.rowid = a.callback_rowid"
            f" WHERE a.name IN ({_marks(wanted)}) AND a.type IN ({_marks(types)})"
            f" AND a.scope IN ({_marks(scopes)}) AND c.mode = ? AND c.job_id != ?"
            f" ORDER BY c.rowid{lock}",
            (*wanted, *types, *scopes, LEVEL, job_id),
        ).fetchall()
        found: list[tuple[int, int]] = []
        callbacks: dict[int, StoredCallback] = {}
        for row in rows:
            found.append((row["rowid"], row["atom_slot"]))
            if row["rowid"] not in callbacks:
                callbacks[row["rowid"]] = StoredCallback.from_row(row)
        return found, callbacks

    @staticmethod
    def load_callbacks(db: Db, rowids: Iterable[int]) -> list[StoredCallback]:
        ids = sorted(set(rowids))
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        # In a fleet the rows are locked in ascending order until the commit: two replicas
        # applying events that latch the same callback take turns, the second reads what
        # the first wrote (so both halves of an ``&&`` fire it once).
        rows = db.execute(
            f"SELECT * FROM callbacks WHERE rowid IN ({marks}) ORDER BY rowid{row_lock(db)}",  # noqa: S608 - placeholders only
            ids,
        ).fetchall()
        return [StoredCallback.from_row(row) for row in rows]

    @staticmethod
    def save_state(
        db: Db,
        rowid: int,
        count: int,
        latches: Sequence[bool],
        latched_by: Sequence[SeenEvent | None],
    ) -> None:
        db.execute(
            "UPDATE callbacks SET count = ?, latches = ?, latched_by = ? WHERE rowid = ?",
            (count, json.dumps(list(latches)), marks_to_json(latched_by), rowid),
        )

    @staticmethod
    def save_count(db: Db, rowid: int, count: int) -> None:
        """A ``{work}`` callback's total count (its items' latches are rows of their own)."""
        db.execute("UPDATE callbacks SET count = ? WHERE rowid = ?", (count, rowid))

    @staticmethod
    def queue_firing(db: Db, firing: PendingFiring) -> None:
        db.execute(
            "INSERT INTO firings (invocation_id, callback_rowid, event_json, decided_at, batch,"
            " snapshot_json) VALUES (?, ?, ?, ?, ?, ?)",
            (
                firing.invocation_id,
                firing.callback.rowid,
                json.dumps(firing.event.as_dict()),
                time.time(),
                firing.batch,
                firing.snapshot(),
            ),
        )

    @staticmethod
    def sighting(
        db: Db,
        event_id: str,
        job_id: int,
        also: tuple[str, tuple[Any, ...]] | None = None,
        fingerprint: bytes | None = None,
    ) -> Sighting:
        """``first_sighting`` (True when there is no id) and the job's ``place``, together.

        On PostgreSQL one statement (one round trip): the insert is a CTE of the read,
        and ``also`` (a subquery and its parameters, over the job's row ``j``) is read
        with them. On SQLite ``also`` is not read (None). A repeat's ``earlier`` is the
        fingerprint kept with its id; on PostgreSQL None when the statement could not
        see the row (another transaction committed it meanwhile).
        """
        if not isinstance(db, PgDb):
            if event_id and not TriggerStore.first_sighting(db, event_id, fingerprint):
                row = db.execute(
                    "SELECT fingerprint FROM seen_events WHERE id_key = ?",
                    (event_ids.key(event_id),),
                ).fetchone()
                return Sighting(False, None, earlier=bytes(row[0] or b"") if row else b"")
            return Sighting(True, TriggerStore.place_in(db, job_id))
        extra_sql, extra_params = also or ("NULL", ())
        key = event_ids.key(event_id)
        row = db.execute(
            "WITH seen AS (INSERT INTO seen_events (id_key, seen_at, fingerprint)"  # noqa: S608 - a subquery of ours
            " SELECT ?, ?, ? WHERE ? != '' ON CONFLICT DO NOTHING RETURNING 1)"
            f" SELECT ? = '' OR EXISTS (SELECT 1 FROM seen), j.pgrp, j.label, {extra_sql},"
            # A repeat's fingerprint, as the statement's snapshot has it (not a new row's).
            " (SELECT coalesce(s.fingerprint, ''::bytea) FROM seen_events s WHERE s.id_key = ?)"
            " FROM (SELECT 1) AS one LEFT JOIN jobs j ON j.job_id = ?",
            (key, time.time(), fingerprint, event_id, event_id, *extra_params, key, job_id),
        ).fetchone()
        place = None if row[1] is None else JobPlace(job_id, pgrp=int(row[1]), label=str(row[2]))
        earlier = None if row[0] or row[4] is None else bytes(row[4])
        return Sighting(bool(row[0]), place, row[3] if also else None, earlier)

    @staticmethod
    def first_sighting(db: Db, event_id: str, fingerprint: bytes | None = None) -> bool:
        """Record an event id (its ``event_ids.key``) with its event's ``fingerprint``.

        False when it had been seen (a repeat).
        """
        cursor = db.execute(
            "INSERT INTO seen_events (id_key, seen_at, fingerprint) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (event_ids.key(event_id), time.time(), fingerprint),
        )
        return bool(cursor.rowcount == 1)

    # -- firings and timers ---------------------------------------------------------

    def pending_firings(self) -> list[PendingFiring]:
        """The firings decided and not yet run, in decision order, as they were decided.

        In a fleet: the ones whose replica's lease has run out, claimed (``claim_expired``).

        A queue from before snapshots names its callback's row only: it runs with that
        row, whose count was taken when it was decided; when the row is gone too (its
        job was removed or re-registered) nothing says what to run, and the firing
        leaves the queue with a warning instead of staying in it for ever.
        """
        if self.fleet:
            return self.claim_expired(limit=10_000)
        with self.outside_transaction() as db:
            rows = db.execute(
                "SELECT f.invocation_id, f.event_json, f.batch, f.snapshot_json, c.* "
                "FROM firings f LEFT JOIN callbacks c ON c.rowid = f.callback_rowid "
                "ORDER BY f.seq"
            ).fetchall()
        firings: list[PendingFiring] = []
        for row in rows:
            event = Event.from_dict(json.loads(row["event_json"]))
            if row["snapshot_json"]:
                snapshot = json.loads(row["snapshot_json"])
                callback = StoredCallback.from_dict(snapshot["callback"])
                count, work_name = int(snapshot["count"]), str(snapshot["work_name"])
            elif row["job_id"] is not None:
                callback = StoredCallback.from_row(row)
                count, work_name = callback.count, event.work_name
            else:
                logger.warning(
                    "firing %s has lost its callback (queued before snapshots); dropped",
                    row["invocation_id"],
                )
                self.firing_done(row["invocation_id"])
                continue
            firings.append(
                PendingFiring(row["invocation_id"], callback, event, row["batch"], count, work_name)
            )
        return firings

    def claim_holds(self, invocation_id: str, epoch: int) -> bool:
        """Whether this replica's claim on a firing (its owner, ``epoch``) still holds.

        Fencing of a fired run's result: a replica whose lease ran out while it ran the
        firing (it stalled, or lost PostgreSQL for a while) finds it claimed by another
        under a higher epoch, or already done by it; that replica's run is the firing's.
        """
        with self.outside_transaction() as db, writing(self._path, self._health):
            row = db.execute(
                "SELECT 1 FROM firings WHERE invocation_id = ? AND owner = ? AND epoch = ?",
                (invocation_id, self.owner, epoch),
            ).fetchone()
        return row is not None

    def firing_done(self, invocation_id: str, epoch: int = 0) -> bool:
        """The firing leaves the queue; False when (in a fleet) its claim no longer holds.

        Fencing: a replica whose lease ran out (it stalled, or lost PostgreSQL for a
        while) finds its firing claimed by another, under a higher epoch; its late "done"
        changes nothing, and the other replica's run is the one that completes it.
        """
        with self.outside_transaction() as db, writing(self._path, self._health):
            if self.fleet:
                cursor = db.execute(
                    "DELETE FROM firings WHERE invocation_id = ? AND owner = ? AND epoch = ?",
                    (invocation_id, self.owner, epoch),
                )
            else:
                cursor = db.execute("DELETE FROM firings WHERE invocation_id = ?", (invocation_id,))
            self._checkpoints.committed()
        return bool(cursor.rowcount)

    # -- what every replica of a fleet must reload ---------------------------------------

    def fleet_version(self, name: str) -> int:
        """The version of ``name`` (e.g. "universal") the fleet is at; 0 before any bump."""
        with self.outside_transaction() as db:
            row = db.execute(
                "SELECT version FROM fleet_versions WHERE name = ?", (name,)
            ).fetchone()
        return int(row[0]) if row else 0

    def bump_fleet_version(self, name: str) -> int:
        """Tell every replica to reload ``name``; the new version."""
        with self.outside_transaction() as db, writing(self._path, self._health):
            row = db.execute(
                "INSERT INTO fleet_versions (name, version) VALUES (?, 1) ON CONFLICT (name)"
                " DO UPDATE SET version = fleet_versions.version + 1 RETURNING version",
                (name,),
            ).fetchone()
        return int(row[0])

    # -- a fleet's claims ---------------------------------------------------------------

    @staticmethod
    def own_batch(db: Db, batch: str, owner: str, lease_until: float) -> None:
        """Claim the firings an event just queued for the replica that decided them."""
        db.execute(
            "UPDATE firings SET owner = ?, lease_until = ? WHERE batch = ?",
            (owner, lease_until, batch),
        )

    def lease_until(self) -> float:
        """When a lease taken now runs out, in the database's clock (``clock``)."""
        return self.clock.now() + self.lease_s

    def renew_leases(self) -> int:
        """Extend the lease of every firing this replica holds; how many it holds.

        The clock's offset from the database's is measured again here, once a minute.
        """
        with self.outside_transaction() as db:
            if self.fleet:
                self.clock.measure_if_due(db)
            cursor = db.execute(
                "UPDATE firings SET lease_until = ? WHERE owner = ?",
                (self.lease_until(), self.owner),
            )
        return int(cursor.rowcount)

    def claim_expired(self, limit: int = 100) -> list[PendingFiring]:
        """Claim firings whose lease ran out (their replica died), in decision order.

        ``FOR UPDATE SKIP LOCKED``: replicas claiming at once take different rows. Each
        claim raises the row's epoch, which fences off the replica that held it before.
        """
        now = self.clock.now()
        with self.outside_transaction() as db:
            rows = db.execute(
                "UPDATE firings SET owner = ?, lease_until = ?, epoch = epoch + 1 WHERE seq IN"
                " (SELECT seq FROM firings WHERE lease_until < ? AND owner != ? ORDER BY seq"
                " LIMIT ? FOR UPDATE SKIP LOCKED)"
                " RETURNING seq, invocation_id, event_json, batch, snapshot_json, epoch",
                (self.owner, now + self.lease_s, now, self.owner, limit),
            ).fetchall()
        firings = []
        for row in sorted(rows, key=lambda r: int(r["seq"])):
            snapshot = json.loads(row["snapshot_json"])
            firings.append(
                PendingFiring(
                    row["invocation_id"],
                    StoredCallback.from_dict(snapshot["callback"]),
                    Event.from_dict(json.loads(row["event_json"])),
                    row["batch"],
                    int(snapshot["count"]),
                    str(snapshot["work_name"]),
                    int(row["epoch"]),
                )
            )
        return firings

    def next_timer_due(self) -> float | None:
        with self.outside_transaction() as db:
            row = db.execute("SELECT min(due) FROM timers").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    @staticmethod
    def due_timers(db: Db, now: float) -> list[tuple[int, int, float]]:
        return [
            (row[0], row[1], row[2])
            for row in db.execute(
                "SELECT callback_rowid, slot, due FROM timers WHERE due <= ? ORDER BY due"  # noqa: S608
                + row_lock(db, skip_locked=True),
                (now,),
            )
        ]

    @staticmethod
    def universal_clocks(db: Db) -> list[tuple[int, str, str]]:
        """(rowid, source, triggers) of each universal callback, of any job, whose clocks run."""
        rows = db.execute(
            "SELECT rowid, source, triggers FROM callbacks WHERE universal = 1"
            " AND rowid IN (SELECT callback_rowid FROM timers) ORDER BY rowid"
        ).fetchall()
        return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]

    @staticmethod
    def universal_repeats_stopped(db: Db) -> list[tuple[int, str, str]]:
        """(rowid, source, triggers) of each universal callback with a repeat and no clock running.

        A cheap cut (a repeat atom's name holds "repeat"); the caller parses the trigger.
        """
        rows = db.execute(
            "SELECT rowid, source, triggers FROM callbacks WHERE universal = 1"
            " AND triggers LIKE '%repeat%'"
            " AND rowid NOT IN (SELECT callback_rowid FROM timers) ORDER BY rowid"
        ).fetchall()
        return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]

    @staticmethod
    def drop_timers_of(db: Db, rowids: Collection[int]) -> None:
        """``drop_timers`` of many callbacks."""
        for part, marks in in_lists(sorted(rowids)):
            db.execute(f"DELETE FROM timers WHERE callback_rowid IN ({marks})", part)  # noqa: S608 - marks only

    @staticmethod
    def timer_slots(db: Db, rowid: int) -> set[int]:
        """The slots of a callback's clocks that run."""
        rows = db.execute("SELECT slot FROM timers WHERE callback_rowid = ?", (rowid,))
        return {int(row[0]) for row in rows}

    @staticmethod
    def timers_of(db: Db, rowid: int) -> dict[int, float]:
        """A callback's running clocks: slot -> when it is next due (Unix seconds)."""
        rows = db.execute("SELECT slot, due FROM timers WHERE callback_rowid = ?", (rowid,))
        return {int(row[0]): float(row[1]) for row in rows}

    @staticmethod
    def add_timer(db: Db, rowid: int, slot: int, due: float) -> None:
        """Start one clock of a callback."""
        db.execute(
            "INSERT INTO timers (callback_rowid, slot, due) VALUES (?, ?, ?)", (rowid, slot, due)
        )

    @staticmethod
    def drop_timers(db: Db, rowid: int) -> None:
        """Stop every clock atom of a callback (spent: it can fire no more)."""
        db.execute("DELETE FROM timers WHERE callback_rowid = ?", (rowid,))

    @staticmethod
    def unfinished_firing(db: Db, rowid: int, event: Event) -> str | None:
        """The invocation id of a firing of a callback by ``event`` still queued or running.

        A repeat's tick reads it in the transaction that decides the tick (in a fleet, the
        shared queue: another replica's firing counts), so a slow callback's ticks coalesce.
        """
        rows = db.execute(
            "SELECT invocation_id, event_json FROM firings WHERE callback_rowid = ? ORDER BY seq",
            (rowid,),
        ).fetchall()
        for row in rows:
            if Event.from_dict(json.loads(row[1])) == event:
                return str(row[0])
        return None

    @staticmethod
    def reschedule_timer(db: Db, rowid: int, slot: int, due: float | None) -> None:
        if due is None:
            db.execute("DELETE FROM timers WHERE callback_rowid = ? AND slot = ?", (rowid, slot))
        else:
            db.execute(
                "UPDATE timers SET due = ? WHERE callback_rowid = ? AND slot = ?",
                (due, rowid, slot),
            )


def _callback_columns(spec: dict[str, Any]) -> tuple[Any, ...]:
    """A registration's callback spec as the callbacks row's columns after ``job_id``."""
    latches = list(spec["latches"])
    return (
        spec["id"],
        spec["triggers"],
        spec["language"],
        spec["code"],
        spec["user"],
        spec.get("count", 0),
        spec.get("maximum", 0),
        json.dumps(latches),
        int(spec.get("universal", False)),
        spec.get("source", ""),
        spec.get("mode", EDGE),
        marks_to_json(spec.get("latched_by") or [None] * len(latches)),
    )


def _as_int4(job_id: int) -> int:
    """A job id folded into PostgreSQL's integer, an advisory lock's key.

    Two ids that fold alike only make their registrations take turns.
    """
    return (job_id + 2**31) % 2**32 - 2**31


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))
