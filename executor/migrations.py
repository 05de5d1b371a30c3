"""The PostgreSQL store's schema: created and upgraded only by ``cbexec store migrate``.

A fleet's replicas never change the schema as they start (N replicas racing to alter
tables, or an old replica meeting a newer schema, are what an explicit, versioned step
avoids): ``migrate`` applies the steps a database lacks, in order, each in its own
transaction under an advisory lock, and records the version in ``cbexec_schema``; it is
idempotent, so the systemd unit runs it before every start. ``open_postgres`` refuses a
database whose version is not the one this executor was written for, naming the fix,
and a role without the privileges the executor's statements need (``missing_privileges``).

A database that holds something else is refused as it is, before anything is changed:
a ``cbexec_schema`` that is not the one every version of ``migrate`` made (its columns),
or one whose recorded version lacks the tables that version has (``_MADE_BY_STEP``).

The tables are the SQLite stores' own (one spelling, translated by ``pg_spelling.pg_ddl``): the
trigger store's, the outbox's and the run history's, plus ``fleet_versions`` (what every
replica must reload, e.g. the universal callbacks), ``execute_claims`` (the invocation ids
of Executes in progress) and the sequence ``job_registrations``
(SQLite keeps a counter row instead: store_schema.SQLITE_REGISTRATION_COUNTER). The history's runs also keep their
size here (``size_bytes``, for its byte bound: an SQLite history reads its pages instead).
"""

from __future__ import annotations

import logging
import re
from typing import Final

from executor.errors import ConfigError
from executor.sql import (
    PgDb,
    StoreLockTimeout,
    StorePermissionDenied,
    StoreUnavailable,
    connect_postgres,
    pg_ddl,
)

logger = logging.getLogger(__name__)

# How long a step waits for a table another session holds (then migrate says so, exit 3).
LOCK_WAIT_S: Final = 10.0
# Any number a replica and the database agree on; taken while the schema changes.
_MIGRATION_LOCK: Final = 0x63626578  # "cbex"

# The executor's cbexec_schema, as every version of ``migrate`` has made it.
_SCHEMA_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS cbexec_schema (version INTEGER PRIMARY KEY,"
    " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)
_SCHEMA_TABLE_COLUMNS: Final = {"version": "integer", "applied_at": "timestamp with time zone"}

# The tables (and sequence) a store has from each version on, whichever version of this
# code migrated it: step 1 makes unregistered_submissions today, but made it only from
# step 4 before. A cbexec_schema whose version lacks them is not the executor's.
_MADE_BY_STEP: Final[dict[int, tuple[str, ...]]] = {
    1: (
        "jobs", "callbacks", "atoms", "timers", "firings", "seen_events", "work_latches",
        "journal", "known_states", "trigger_checks", "outbox", "runs", "fleet_versions",
    ),
    4: ("unregistered_submissions",),
    6: ("job_registrations",),
    9: ("execute_claims",),
    14: ("removed_jobs",),
}  # fmt: skip
# What the executor's statements do to each of its tables (it never changes the schema),
# and to its sequences (nextval); cbexec_schema it only reads.
TABLE_PRIVILEGES: Final = ("SELECT", "INSERT", "UPDATE", "DELETE")
SEQUENCE_PRIVILEGE: Final = "USAGE"

FLEET_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS fleet_versions (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL DEFAULT 0
);
"""


def _steps() -> list[str]:
    """Migration steps, oldest first; step n brings a database to version n."""
    from executor.runs import history, history_size, invocation_ids, outbox_table
    from executor.triggers import (
        decided_firings,
        event_id_reuse,
        event_ids,
        removals,
        states,
        store_schema,
    )

    return [
        pg_ddl(
            store_schema.FULL_SCHEMA
            + store_schema.LABEL_INDEXES
            + outbox_table.SCHEMA
            + history.SCHEMA
            + FLEET_SCHEMA
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
        # Whether the trigger engine made each run, which an Execute may then not repeat
        # (RunIdentity.fired). The runs recorded before read as not fired: which were is
        # not known. (A database made at an earlier version by this code has the column.)
        "ALTER TABLE runs ADD COLUMN IF NOT EXISTS fired BIGINT NOT NULL DEFAULT 0;",
        # What each event fired, for a resent event that waits (decided_firings.py). The
        # ids seen before read as firing nothing. (A database made at an earlier version by
        # this code has the column.)
        decided_firings.PG_COLUMN,
        # The invocation ids of Executes in progress, each claimed by its replica
        # (invocation_ids.FleetIds): a run of the id at another replica is refused meanwhile.
        invocation_ids.CLAIMS_SCHEMA,
        # A repeat's tick looks for its callback's unfinished firing (unfinished_firing);
        # without the index each tick would read the whole queue. (A database made at an
        # earlier version by this code has the index already.)
        "CREATE INDEX IF NOT EXISTS firings_by_callback ON firings (callback_rowid);",
        # The seen event ids kept as a fixed-size key of each (event_ids.key), not their
        # text: an id of 1024 characters took ~3.6 KB. The ids remembered are keyed here (a
        # database made at an earlier version by this code keys them already).
        event_ids.PG_REKEY,
        # Each remembered event id's event's fingerprint (event_id_reuse.py): another event
        # under an id already used is refused, not answered as its repeat. The ids kept
        # before, and those a replica of an earlier version inserts until it is restarted,
        # have none: unknown, taken for the same event. (A database made at an earlier
        # version by this code has the column already.)
        event_id_reuse.PG_COLUMN,
        # When each removed job was removed (removals.py): its id registered again is
        # another job, and the latches the removed one set go (label_moves.py); and the
        # last job to take a resolved check's label (checks.resolve_label), indexed by its
        # label. (A database made at an earlier version by this code has them already.)
        pg_ddl(removals.SCHEMA)
        + " ALTER TABLE trigger_checks ADD COLUMN IF NOT EXISTS last_holder BIGINT NOT NULL"
        " DEFAULT 0; CREATE INDEX IF NOT EXISTS trigger_checks_by_label ON trigger_checks"
        " (pgrp, label) WHERE label != '';",
        # Each firing's refusal and whether it runs as a shadow, kept with what an event
        # fired (decided_firings.py): a resent event that waits answers them as the first
        # answer did. The ids seen before, and those a replica of an earlier version
        # applies, read as firings that ran, none as a shadow. (A database made at an
        # earlier version by this code has the column already.)
        decided_firings.PG_VERDICTS_COLUMN,
    ]


def schema_version() -> int:
    """The version this executor's code reads and writes."""
    return len(_steps())


def current_version(db: PgDb) -> int:
    """The database's version; 0 when it was never migrated.

    ConfigError when it holds something else: a ``cbexec_schema`` table that is not ours
    (another application's), one whose version lacks tables that version has, or, never
    migrated, tables the first step would make. Reads only.
    """
    row = db.execute("SELECT to_regclass('cbexec_schema')").fetchone()
    if row[0] is None:
        _refuse_foreign_tables(db)
        return 0
    columns = dict(
        db.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = to_regclass('cbexec_schema') AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum"
        ).fetchall()
    )
    unlike = _unlike_ours(columns)
    if unlike:
        raise ConfigError(
            f"the PostgreSQL store's table cbexec_schema is not the executor's ({unlike}): "
            "the database holds something else; give the executor a database of its own"
        )
    if not db.execute("SELECT has_table_privilege('cbexec_schema', 'SELECT')").fetchone()[0]:
        raise ConfigError(_lacking(db, ["SELECT on cbexec_schema"]))
    row = db.execute("SELECT max(version) FROM cbexec_schema").fetchone()
    version = int(row[0] or 0)
    if version == 0:
        _refuse_foreign_tables(db)
    else:
        _refuse_missing_tables(db, version)
    return version


def _unlike_ours(columns: dict[str, str]) -> str:
    """How a ``cbexec_schema`` with these columns (name: type) differs from ours; "" if not."""
    if "version" not in columns:
        return "it has no version column"
    if columns["version"] != "integer":
        return f"it has a version column of type {columns['version']}"
    if columns != _SCHEMA_TABLE_COLUMNS:
        theirs = ", ".join(f"{name} {kind}" for name, kind in columns.items())
        ours = ", ".join(f"{name} {kind}" for name, kind in _SCHEMA_TABLE_COLUMNS.items())
        return f"its columns are {theirs}, not {ours}"
    return ""


def _refuse_missing_tables(db: PgDb, version: int) -> None:
    """ConfigError when the database lacks a table (or sequence) its recorded version has."""
    expected = [name for step, names in _MADE_BY_STEP.items() if step <= version for name in names]
    missing = [
        row[0]
        for row in db.execute(
            "SELECT name FROM unnest(?::text[]) WITH ORDINALITY AS t(name, n)"
            " WHERE to_regclass(name) IS NULL ORDER BY n",
            (expected,),
        ).fetchall()
    ]
    if missing:
        raise ConfigError(
            f"the PostgreSQL store's table cbexec_schema records schema version {version}, "
            f"yet the database lacks tables of that version ({_some(missing)}): it holds "
            "something else (or they were dropped); give the executor a database of its own"
        )


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
    """Bring the database at ``url`` to ``schema_version()``; (version before, after).

    ConfigError (and nothing changed) for a database that holds something else, or a
    role that may not make the tables; with nothing to do, a role that reads
    ``cbexec_schema`` is enough.
    """
    db = connect_postgres(url, application_name="cbexec-migrate", stall_limits=False)
    try:
        # A step changes tables a replica's (or a report's) open transaction may hold:
        # waited for this long, then said so, rather than forever or as an unreachable server.
        db.execute(f"SET lock_timeout = '{int(LOCK_WAIT_S * 1000)}ms'")
        db.execute("SELECT pg_advisory_lock(?)", (_MIGRATION_LOCK,))
        before = current_version(db)  # a database of another kind is refused as it is
        _refuse_unless_utf8(db)
        steps = _steps()
        if before > len(steps):
            raise ConfigError(
                f"the store is at schema version {before}, newer than this executor's "
                f"{len(steps)}: upgrade the executor"
            )
        if before < len(steps):
            _refuse_unless_creating(db)
            db.execute(_SCHEMA_TABLE)
        for version, ddl in enumerate(steps[before:], start=before + 1):
            db.execute("BEGIN")
            db.executescript(ddl)
            db.execute("INSERT INTO cbexec_schema (version) VALUES (?)", (version,))
            db.execute("COMMIT")
            logger.info("store migrated to schema version %d", version)
        db.execute("SELECT pg_advisory_unlock(?)", (_MIGRATION_LOCK,))
        return before, len(steps)
    except StoreLockTimeout as err:
        raise StoreUnavailable(
            f"a table migrate must change stayed locked by another session for {LOCK_WAIT_S:g} s "
            "(an open transaction that read it, a VACUUM FULL, a replica of the older "
            "version mid-statement; pg_stat_activity shows who): nothing was changed by the "
            "step it waited in; run migrate again once that session ends"
        ) from err
    except StorePermissionDenied as err:  # a table of another owner's, say (ALTER TABLE)
        raise ConfigError(
            f"{err}: run `cbexec store migrate` as the database's owner (the role that owns "
            "the executor's tables)"
        ) from err
    finally:
        db.close()


def _refuse_unless_utf8(db: PgDb) -> None:
    """ConfigError for a database not encoded in UTF-8 (or SQL_ASCII, which keeps any bytes).

    Callbacks' code, output and triggers may hold any character; in LATIN1, say, one it
    cannot hold is an error of the statement that writes it, met mid-run (probe 80).
    SQL_ASCII (initdb's default in the C locale) converts nothing: the executor's UTF-8
    comes back as it went in.
    """
    (encoding,) = db.execute(
        "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
    ).fetchone()
    if encoding not in ("UTF8", "SQL_ASCII"):
        raise ConfigError(
            f"the PostgreSQL store's database is encoded {encoding}; the executor keeps "
            "callbacks' text, which may hold any character: use a database made with "
            "ENCODING 'UTF8' (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
        )


def _refuse_unless_creating(db: PgDb) -> None:
    """ConfigError when the role may not create tables where migrate would make them.

    PostgreSQL 15 gives CREATE on schema public only to the database's owner.
    """
    role, schema, may = db.execute(
        "SELECT current_user, current_schema(),"
        " coalesce(has_schema_privilege(current_schema(), 'CREATE'), false)"
    ).fetchone()
    if schema is None:
        raise ConfigError(
            f"the PostgreSQL store's role '{role}' has no schema to make the executor's "
            "tables in (its search_path names none that exists)"
        )
    if not may:
        raise ConfigError(
            f"the PostgreSQL store's role '{role}' may not create tables in schema "
            f"{schema} (permission denied for schema {schema}): it needs CREATE on it, "
            "or run `cbexec store migrate` as the database's owner"
        )


def missing_privileges(db: PgDb) -> list[str]:
    """The privileges the executor's statements need that the role lacks ("INSERT on runs").

    Reads only (has_table_privilege, has_sequence_privilege), on a migrated store: its
    tables, and the sequences they own (their serial keys) or ``job_registrations``.
    """
    tables = [name for names in _MADE_BY_STEP.values() for name in names]
    rows = db.execute(
        "SELECT t.name, p.privilege"
        " FROM unnest(?::text[]) WITH ORDINALITY AS t(name, n)"
        " CROSS JOIN unnest(?::text[]) WITH ORDINALITY AS p(privilege, m)"
        " JOIN pg_class c ON c.oid = to_regclass(t.name)"
        " WHERE CASE WHEN c.relkind = 'r' THEN NOT has_table_privilege(c.oid, p.privilege) END"
        " ORDER BY t.n, p.m",
        (tables, list(TABLE_PRIVILEGES)),
    ).fetchall()
    by_table: dict[str, list[str]] = {}
    for name, privilege in rows:
        by_table.setdefault(name, []).append(privilege)
    missing = [f"{', '.join(privileges)} on {name}" for name, privileges in by_table.items()]
    sequences = db.execute(
        "SELECT s.oid::regclass::text FROM pg_class s WHERE s.relkind = 'S'"
        " AND (s.oid = to_regclass('job_registrations') OR s.oid IN ("
        "  SELECT d.objid FROM pg_depend d WHERE d.classid = 'pg_class'::regclass"
        "  AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'a'"
        "  AND d.refobjid IN (SELECT to_regclass(name) FROM unnest(?::text[]) AS t(name))))"
        # (CASE: the planner may test the privilege before the kind, on an index.)
        " AND CASE WHEN s.relkind = 'S' THEN NOT has_sequence_privilege(s.oid, ?) END"
        " ORDER BY 1",
        (tables, SEQUENCE_PRIVILEGE),
    ).fetchall()
    missing += [f"{SEQUENCE_PRIVILEGE} on sequence {row[0]}" for row in sequences]
    return missing


def _lacking(db: PgDb, missing: list[str]) -> str:
    """The one line that names a role's missing privileges and what to grant it."""
    role, schema = db.execute(
        "SELECT current_user, coalesce((SELECT relnamespace::regnamespace::text FROM pg_class"
        " WHERE oid = to_regclass('cbexec_schema')), current_schema())"
    ).fetchone()
    to = _identifier(role)
    return (
        f"the PostgreSQL store's role '{role}' lacks privileges the executor needs "
        f"({_some(missing)}): grant it {', '.join(TABLE_PRIVILEGES)} on the executor's "
        f"tables and {SEQUENCE_PRIVILEGE} on their sequences (GRANT "
        f"{', '.join(TABLE_PRIVILEGES)} ON ALL TABLES IN SCHEMA {schema} TO {to}; GRANT "
        f"{SEQUENCE_PRIVILEGE} ON ALL SEQUENCES IN SCHEMA {schema} TO {to})"
    )


def _identifier(name: str) -> str:
    """``name`` as SQL spells it: quoted unless a plain lower-case identifier."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _some(names: list[str], shown: int = 3) -> str:
    """The first few of ``names``, and how many more there are."""
    more = f"; and {len(names) - shown} more" if len(names) > shown else ""
    return "; ".join(names[:shown]) + more


def open_postgres(url: str, *, application_name: str) -> PgDb:
    """A connection to a migrated store; ConfigError naming the fix when it is not.

    Also when the role lacks a privilege the executor's statements need: found here,
    not by the first statement that needs it (``serve --check-config`` says so too).
    """
    db = connect_postgres(url, application_name=application_name)
    try:
        _refuse_unless_utf8(db)
        version = current_version(db)
        if version != schema_version():
            fix = (
                "upgrade this executor (the store was migrated by a newer one)"
                if version > schema_version()
                else "run `cbexec store migrate --store <url>` first"
            )
            raise ConfigError(
                f"the PostgreSQL store is at schema version {version}, this executor needs "
                f"{schema_version()}: {fix}"
            )
        missing = missing_privileges(db)
        if missing:
            raise ConfigError(_lacking(db, missing))
    except BaseException:
        db.close()
        raise
    return db
