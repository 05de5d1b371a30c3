"""The PostgreSQL store's schema: created and upgraded only by ``cbexec store migrate``.

A fleet's replicas never change the schema as they start (N replicas racing to alter
tables, or an old replica meeting a newer schema, are what an explicit, versioned step
avoids): ``migrate`` applies the steps a database lacks, in order, each in its own
transaction under an advisory lock, and records the version in ``cbexec_schema``; it is
idempotent, so the systemd unit runs it before every start. ``open_postgres`` refuses a
database whose version is not the one this executor was written for, naming the fix.

The tables are the SQLite stores' own (one spelling, translated by ``sql.pg_ddl``): the
trigger store's, the outbox's and the run history's, plus ``fleet_versions`` (what every
replica must reload, e.g. the universal callbacks) and the sequence ``job_registrations``
(SQLite keeps a counter row instead: store.SQLITE_REGISTRATION_COUNTER). The history's runs also keep their
size here (``size_bytes``, for its byte bound: an SQLite history reads its pages instead).
"""

from __future__ import annotations

import logging
import re
from typing import Final

from executor.errors import ConfigError
from executor.sql import PgDb, connect_postgres, pg_ddl

logger = logging.getLogger(__name__)

# Any number a replica and the database agree on; taken while the schema changes.
_MIGRATION_LOCK: Final = 0x63626578  # "cbex"

FLEET_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS fleet_versions (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL DEFAULT 0
);
"""


def _steps() -> list[str]:
    """Migration steps, oldest first; step n brings a database to version n."""
    from executor.runs import history, history_size, outbox
    from executor.triggers import event_ids, states, store

    return [
        pg_ddl(
            store.FULL_SCHEMA + store.LABEL_INDEXES + outbox.SCHEMA + history.SCHEMA + FLEET_SCHEMA
        ),
        # When each reported run ended: an earlier run's report never replaces a later one's.
        # (A database made at version 1 by this code has the column already.)
        "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS ended_at DOUBLE PRECISION NOT NULL DEFAULT 0;",
        # A run's notes, kept with its report until the history has the run (run_notes).
        "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS notes TEXT;",
        # The submissions of jobs never registered, which level callbacks registered after
        # them take (a database made at an earlier version by this code has the table).
        pg_ddl(states.SUBMISSIONS_SCHEMA),
        # Each run's size, for history_max_bytes (history_size): the runs recorded before
        # are sized here once, from their text (a large result is TOASTed apart and keeps
        # its place), and indexed so a prune's count and sum read only that index.
        "ALTER TABLE runs ADD COLUMN IF NOT EXISTS size_bytes BIGINT NOT NULL DEFAULT 0;"  # noqa: S608 - our columns
        f" UPDATE runs SET size_bytes = {history_size.PG_SIZE_SQL} WHERE size_bytes = 0;"
        f" {history_size.SIZE_INDEX};",
        # Each registration of a job gets a number never given before (store.put_job), from
        # a sequence (no replica waits for another's registration to commit to take one);
        # the jobs registered before are numbered here. ExplainCallbacks' pages name it.
        # (A database made at an earlier version by this code has the column already.)
        "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS registration BIGINT NOT NULL DEFAULT 0;"
        " CREATE SEQUENCE IF NOT EXISTS job_registrations;"
        " UPDATE jobs SET registration = nextval('job_registrations') WHERE registration = 0;",
        # The seen event ids' age, which their pruning reads (event_ids.py; a database
        # made at an earlier version by this code has the index).
        pg_ddl(event_ids.SCHEMA),
    ]


def schema_version() -> int:
    """The version this executor's code reads and writes."""
    return len(_steps())


def current_version(db: PgDb) -> int:
    """The database's version; 0 when it was never migrated.

    ConfigError when it holds something else: a ``cbexec_schema`` table that is not ours
    (another application's), or, never migrated, tables the first step would make.
    """
    row = db.execute("SELECT to_regclass('cbexec_schema')").fetchone()
    if row[0] is None:
        _refuse_foreign_tables(db)
        return 0
    row = db.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        " WHERE attrelid = to_regclass('cbexec_schema') AND attname = 'version'"
        " AND NOT attisdropped"
    ).fetchone()
    if row is None or row[0] != "integer":
        has = "no version column" if row is None else f"a version column of type {row[0]}"
        raise ConfigError(
            f"the PostgreSQL store's table cbexec_schema is not the executor's (it has {has}): "
            "the database holds something else; give the executor a database of its own"
        )
    row = db.execute("SELECT max(version) FROM cbexec_schema").fetchone()
    version = int(row[0] or 0)
    if version == 0:
        _refuse_foreign_tables(db)
    return version


def _refuse_foreign_tables(db: PgDb) -> None:
    """ConfigError when a database never migrated has tables of the names the first step makes.

    The steps create what is missing (``IF NOT EXISTS``): another application's table
    of one of those names would be taken for ours, and the step fail on it part-way.
    """
    names = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _steps()[0])
    found = [
        name
        for name in names
        if db.execute("SELECT to_regclass(?)", (name,)).fetchone()[0] is not None
    ]
    if found:
        raise ConfigError(
            f"the PostgreSQL store was never migrated, yet it has tables of the executor's "
            f"names ({', '.join(found)}): the database holds something else; give the "
            "executor a database of its own"
        )


def migrate(url: str) -> tuple[int, int]:
    """Bring the database at ``url`` to ``schema_version()``; (version before, after)."""
    db = connect_postgres(url, application_name="cbexec-migrate", stall_limits=False)
    try:
        db.execute("SELECT pg_advisory_lock(?)", (_MIGRATION_LOCK,))
        before = current_version(db)  # a database of another kind is refused as it is
        db.execute(
            "CREATE TABLE IF NOT EXISTS cbexec_schema (version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        steps = _steps()
        if before > len(steps):
            raise ConfigError(
                f"the store is at schema version {before}, newer than this executor's "
                f"{len(steps)}: upgrade the executor"
            )
        for version, ddl in enumerate(steps[before:], start=before + 1):
            db.execute("BEGIN")
            db.executescript(ddl)
            db.execute("INSERT INTO cbexec_schema (version) VALUES (?)", (version,))
            db.execute("COMMIT")
            logger.info("store migrated to schema version %d", version)
        db.execute("SELECT pg_advisory_unlock(?)", (_MIGRATION_LOCK,))
        return before, len(steps)
    finally:
        db.close()


def open_postgres(url: str, *, application_name: str) -> PgDb:
    """A connection to a migrated store; ConfigError naming the fix when it is not."""
    db = connect_postgres(url, application_name=application_name)
    version = current_version(db)
    if version != schema_version():
        db.close()
        fix = (
            "upgrade this executor (the store was migrated by a newer one)"
            if version > schema_version()
            else "run `cbexec store migrate --store <url>` first"
        )
        raise ConfigError(
            f"the PostgreSQL store is at schema version {version}, this executor needs "
            f"{schema_version()}: {fix}"
        )
    return db
