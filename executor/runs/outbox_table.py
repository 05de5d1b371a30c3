"""The outbox table as this process writes it: its schema, its connections and its rows' lease.

Every part of the outbox (``outbox_commits``, ``outbox_delivery``, ``outbox_marks``,
``outbox_dead``, ``outbox_notes``, ``outbox_space``) works through the one
``OutboxTable``: the event loop's connection, delivery's (the same one on SQLite), their
checkpoints, the storage health a failed write is told to, and the lease the rows a
replica commits carry until it delivers them.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final

from executor.fleet_clock import FleetClock
from executor.runs import outbox_space
from executor.runs.sqlite_checkpoints import BackgroundCheckpoints
from executor.sql import Db, NoCheckpoints, PgDb, is_postgres
from executor.storage import (
    LOOP_CHECKPOINT_BUSY_TIMEOUT_S,
    StorageHealth,
    open_database,
    opening,
    wait_briefly_for_locks,
)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    -- Failed attempts the receiver answered (an unreachable receiver's are not counted).
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    delivered_at REAL,
    dead_at REAL,
    -- Not before this Unix time: a message the receiver refused waits its own backoff.
    retry_at REAL NOT NULL DEFAULT 0,
    -- In a fleet: which replica delivers it, until when (a dead replica's are taken over).
    owner TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    -- When the run it reports ended (Unix seconds; 0 in rows from before the column).
    ended_at REAL NOT NULL DEFAULT 0,
    -- The run's bookkeeping (run_notes), kept until the history has the run: what a
    -- start-up after a kill -9 rebuilds its history record from. NULL once written.
    notes TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (seq)
    WHERE delivered_at IS NULL AND dead_at IS NULL;
"""


# outbox.db's dead letters, so their size and the oldest of them are read without a scan
# of the table (whose rows hold their payloads inline). SQLite only: the bounds are
# outbox.db's, and a fleet's schema is its migrations'.
_DEAD_INDEX: Final = (
    "CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (dead_at, seq) WHERE dead_at IS NOT NULL"
)

# Columns added since the first outbox.db: (column, definition).
_ADDED_COLUMNS: Final = (
    ("retry_at", "REAL NOT NULL DEFAULT 0"),
    ("owner", "TEXT NOT NULL DEFAULT ''"),
    ("lease_until", "REAL NOT NULL DEFAULT 0"),
    ("ended_at", "REAL NOT NULL DEFAULT 0"),
    ("notes", "TEXT"),
)


class OutboxTable:
    """The outbox's connections, its clocks, and the lease of the rows this process commits.

    Args:
        path: the SQLite file (created when missing), or a fleet's PostgreSQL URL.
        health: told when a write fails because of the storage.
        clock: Unix time source, replaceable in tests.
        lease_s: how long a replica's claim on a row it delivers lasts.
        compact_free_bytes: outbox.db is compacted on opening when at least this much
            of it, and half of it, is free.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        health: StorageHealth | None,
        clock: Callable[[], float] = time.time,
        lease_s: float,
        compact_free_bytes: int,
    ) -> None:
        self.path = str(path)
        self.health = health
        self.clock = clock
        self.lease_s = lease_s
        self.owner = uuid.uuid4().hex
        # The delivery claims' clock: the database's, in a fleet (FleetClock).
        self.leases = FleetClock(clock)
        self.db: Db
        self.checkpoints: BackgroundCheckpoints | NoCheckpoints
        if is_postgres(self.path):
            from executor.migrations import open_postgres

            self.db = open_postgres(self.path, application_name="cbexec-outbox")
            # Delivery's bookkeeping goes through a connection of its own, in a thread:
            # a round trip to PostgreSQL is ~0.3-1 ms, and the event loop's requests
            # (an Execute committing its result) must not wait behind them.
            self.ddb: Db = open_postgres(self.path, application_name="cbexec-delivery")
            self.checkpoints = NoCheckpoints()
            self.leases.measure(self.ddb)
        else:
            with opening(self.path):  # a read-only filesystem, say: a refusal saying so
                self.db = open_sqlite(self.path)
            self.ddb = self.db
            # Before serving: an outage's peak size, given back if a stop came first.
            outbox_space.compact(self.db, self.path, free_bytes=compact_free_bytes)
            # The log's checkpoints fsync; in a thread, they stall no answer.
            self.checkpoints = BackgroundCheckpoints(
                self.db, path, busy_timeout_s=LOOP_CHECKPOINT_BUSY_TIMEOUT_S
            )

    @property
    def fleet(self) -> bool:
        """Whether the outbox is a fleet's, in PostgreSQL (shared by every replica)."""
        return isinstance(self.db, PgDb)

    def close(self) -> None:
        """Stop the checkpoints and close the connections."""
        self.checkpoints.close()
        if self.ddb is not self.db:
            self.ddb.close()
        self.db.close()


def open_sqlite(path: str) -> sqlite3.Connection:
    """outbox.db, its schema brought up to date."""
    # Its INSERTs bind each result's report: no kept statement keeps the last one's.
    db = open_database(path, cached_statements=0)
    db.execute("PRAGMA journal_mode = WAL")
    # WAL + NORMAL: a commit survives the executor's own crash (kill -9); only an OS
    # crash or power loss can drop the last commits. FULL fsyncs every run on the
    # event loop, which measured ~5 ms per callback and capped throughput.
    db.execute("PRAGMA synchronous = NORMAL")
    db.executescript(SCHEMA)
    db.execute(_DEAD_INDEX)
    columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
    for column, definition in _ADDED_COLUMNS:
        if column not in columns:  # an outbox.db from before the column
            db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {definition}")
    # Written on the loop (each result's commit, delivery's marks): a lock held by
    # another process is waited for briefly, then refused as the storage's.
    wait_briefly_for_locks(db)
    return db
