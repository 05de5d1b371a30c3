"""The trigger store's tables, in SQLite's spelling, and the columns added to them since.

A fleet's PostgreSQL gets the same tables at ``cbexec store migrate`` (``sql.pg_ddl``,
migrations.py); an SQLite file is made with them when the store opens it, and one from
an earlier version gets the columns it lacks first (``ADDED_COLUMNS``, the store's
migration) and the indexes over them after (``LABEL_INDEXES``).
"""

from __future__ import annotations

from typing import Final

from executor.triggers import checks, event_ids, items, journal, removals, states

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
# Columns added since the first schema: (table, column, definition).
ADDED_COLUMNS: Final = (
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
