"""Durable state of the trigger engine in SQLite: jobs, callbacks, latches, atom index, firings.

Everything that decides whether a callback fires lives here, and each event is applied
in one transaction: latching an atom, evaluating, counting and queueing the firing
commit together. So after ``kill -9`` a half-latched ``&&`` is still half-latched, and a
firing that was decided but not yet run is still queued (it runs once at restart).

The atom index holds each atom under its ``AtomKey`` (event name, type, scope, extra),
and an event reads the rows under its keys; ``evaluate.atom_key`` and
``evaluate.event_keys`` say what the keys are. An event reads only the rows that can
match it, so matching cost does not grow with callbacks that cannot match.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from executor.model import Event
from executor.runs.sqlite_checkpoints import BackgroundCheckpoints
from executor.storage import StorageHealth, open_database, writing
from executor.triggers.evaluate import AtomKey

SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY,
    pgrp INTEGER NOT NULL,
    label TEXT NOT NULL,
    job_json TEXT NOT NULL
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
    UNIQUE (job_id, callback_id)
);
CREATE TABLE IF NOT EXISTS atoms (
    callback_rowid INTEGER NOT NULL REFERENCES callbacks (rowid) ON DELETE CASCADE,
    slot INTEGER NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    scope TEXT NOT NULL,
    extra TEXT NOT NULL
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
    batch TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS seen_events (
    event_id TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
"""


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StoredCallback:
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
            tuple(json.loads(row["latches"])),
            bool(row["universal"]),
            row["source"],
        )


@dataclass(frozen=True, slots=True)
class PendingFiring:
    """A firing decided and committed but not yet run."""

    invocation_id: str
    callback: StoredCallback
    event: Event
    # The firings one event decided share a batch (they run one after another).
    batch: str = ""


@dataclass(frozen=True, slots=True)
class NewAtom:
    """An index row to write: the atom in latch slot ``slot`` is found under ``key``."""

    slot: int
    key: AtomKey


class TriggerStore:
    """One SQLite connection guarded by a lock (the engine is the only writer)."""

    def __init__(self, path: str, *, health: StorageHealth | None = None) -> None:
        self._lock = threading.RLock()
        self._path = path
        self._health = health
        self._db = open_database(path)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.executescript(SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(firings)")}
        if "batch" not in columns:
            # A queue from before batches: its firings keep running one after another.
            self._db.execute("ALTER TABLE firings ADD COLUMN batch TEXT NOT NULL DEFAULT ''")
        # A burst of events commits fast; the log's fsyncing checkpoints go to a thread.
        self._checkpoints = BackgroundCheckpoints(self._db, path)

    def close(self) -> None:
        with self._lock:
            self._checkpoints.close()
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), holding the lock.

        A failure of the storage (disk full, ...) is a StorageError naming the file.
        """
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

    # -- jobs and callbacks -----------------------------------------------------------

    def job(self, job_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT job_json FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        return json.loads(row["job_json"]) if row else None

    def label_owner(self, pgrp: int, label: str) -> int | None:
        with self._lock:
            row = self._db.execute(
                "SELECT job_id FROM jobs WHERE pgrp = ? AND label = ?", (pgrp, label)
            ).fetchone()
        return int(row["job_id"]) if row else None

    def callbacks_of(self, job_id: int) -> list[StoredCallback]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM callbacks WHERE job_id = ? ORDER BY callback_id", (job_id,)
            ).fetchall()
        return [StoredCallback.from_row(row) for row in rows]

    def count_callbacks(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM callbacks").fetchone()[0])

    def count_jobs(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM jobs").fetchone()[0])

    def jobs(self, *, limit: int, before: int = 0) -> list[dict[str, Any]]:
        """Registered jobs, newest id first: at most ``limit``, with ids below ``before`` if set."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_json FROM jobs WHERE ? = 0 OR job_id < ? ORDER BY job_id DESC LIMIT ?",
                (before, before, limit),
            ).fetchall()
        return [json.loads(row["job_json"]) for row in rows]

    @staticmethod
    def put_job(db: sqlite3.Connection, job: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO jobs (job_id, pgrp, label, job_json) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (job_id) DO UPDATE SET pgrp = excluded.pgrp, label = excluded.label, "
            "job_json = excluded.job_json",
            (
                int(job["id"]),
                int(job.get("pgrp") or job["id"]),
                str(job.get("label") or ""),
                json.dumps(job),
            ),
        )

    @staticmethod
    def remove_job(db: sqlite3.Connection, job_id: int) -> None:
        db.execute("DELETE FROM callbacks WHERE job_id = ?", (job_id,))
        db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    @staticmethod
    def put_callback(
        db: sqlite3.Connection,
        job_id: int,
        spec: dict[str, Any],
        atoms: Iterable[NewAtom],
        timers: Iterable[tuple[int, float]],
    ) -> int:
        cursor = db.execute(
            "INSERT INTO callbacks (job_id, callback_id, triggers, language, code, user, count,"
            " maximum, latches, universal, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                spec["id"],
                spec["triggers"],
                spec["language"],
                spec["code"],
                spec["user"],
                spec.get("count", 0),
                spec.get("maximum", 0),
                json.dumps(spec["latches"]),
                int(spec.get("universal", False)),
                spec.get("source", ""),
            ),
        )
        rowid = int(cursor.lastrowid or 0)
        db.executemany(
            "INSERT INTO atoms (callback_rowid, slot, name, type, scope, extra) VALUES (?,?,?,?,?,?)",
            [(rowid, a.slot, a.key.name, a.key.type, a.key.scope, a.key.extra) for a in atoms],
        )
        db.executemany(
            "INSERT INTO timers (callback_rowid, slot, due) VALUES (?, ?, ?)",
            [(rowid, slot, due) for slot, due in timers],
        )
        return rowid

    # -- matching -------------------------------------------------------------------

    @staticmethod
    def matching_atoms(db: sqlite3.Connection, keys: Iterable[AtomKey]) -> list[tuple[int, int]]:
        """(callback rowid, slot) for every indexed atom under the given keys."""
        found: list[tuple[int, int]] = []
        for key in keys:
            found.extend(
                (row[0], row[1])
                for row in db.execute(
                    "SELECT callback_rowid, slot FROM atoms "
                    "WHERE name = ? AND type = ? AND scope = ? AND extra = ?",
                    (key.name, key.type, key.scope, key.extra),
                )
            )
        return found

    @staticmethod
    def load_callbacks(db: sqlite3.Connection, rowids: Iterable[int]) -> list[StoredCallback]:
        ids = sorted(set(rowids))
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = db.execute(f"SELECT * FROM callbacks WHERE rowid IN ({marks})", ids).fetchall()  # noqa: S608 - placeholders only
        return [StoredCallback.from_row(row) for row in rows]

    @staticmethod
    def save_state(db: sqlite3.Connection, rowid: int, count: int, latches: Sequence[bool]) -> None:
        db.execute(
            "UPDATE callbacks SET count = ?, latches = ? WHERE rowid = ?",
            (count, json.dumps(list(latches)), rowid),
        )

    @staticmethod
    def queue_firing(
        db: sqlite3.Connection, invocation_id: str, rowid: int, event: Event, batch: str
    ) -> None:
        db.execute(
            "INSERT INTO firings (invocation_id, callback_rowid, event_json, decided_at, batch)"
            " VALUES (?, ?, ?, ?, ?)",
            (invocation_id, rowid, json.dumps(event.as_dict()), time.time(), batch),
        )

    @staticmethod
    def first_sighting(db: sqlite3.Connection, event_id: str) -> bool:
        """Record an event id; False when it had been seen (an idempotent repeat)."""
        cursor = db.execute(
            "INSERT INTO seen_events (event_id, seen_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (event_id, time.time()),
        )
        return cursor.rowcount == 1

    # -- firings and timers ---------------------------------------------------------

    def pending_firings(self) -> list[PendingFiring]:
        with self._lock:
            rows = self._db.execute(
                "SELECT f.invocation_id, f.event_json, f.batch, c.* FROM firings f "
                "JOIN callbacks c ON c.rowid = f.callback_rowid ORDER BY f.seq"
            ).fetchall()
        return [
            PendingFiring(
                row["invocation_id"],
                StoredCallback.from_row(row),
                Event.from_dict(json.loads(row["event_json"])),
                row["batch"],
            )
            for row in rows
        ]

    def firing_done(self, invocation_id: str) -> None:
        with self._lock, writing(self._path, self._health):
            self._db.execute("DELETE FROM firings WHERE invocation_id = ?", (invocation_id,))
            self._checkpoints.committed()

    def next_timer_due(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT min(due) FROM timers").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    @staticmethod
    def due_timers(db: sqlite3.Connection, now: float) -> list[tuple[int, int, float]]:
        return [
            (row[0], row[1], row[2])
            for row in db.execute(
                "SELECT callback_rowid, slot, due FROM timers WHERE due <= ? ORDER BY due", (now,)
            )
        ]

    @staticmethod
    def reschedule_timer(db: sqlite3.Connection, rowid: int, slot: int, due: float | None) -> None:
        if due is None:
            db.execute("DELETE FROM timers WHERE callback_rowid = ? AND slot = ?", (rowid, slot))
        else:
            db.execute(
                "UPDATE timers SET due = ? WHERE callback_rowid = ? AND slot = ?",
                (due, rowid, slot),
            )
