"""The PostgreSQL store itself: explicit, versioned, idempotent migrations; one SQL dialect."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Final

import pytest

from executor import pg_connect, pg_stalls
from executor.errors import ConfigError
from executor.migrations import _steps, current_version, migrate, schema_version
from executor.model import CallbackSpec, Invocation, Outcome
from executor.runs import history as history_module
from executor.runs.history import RunHistory, _row
from executor.runs.outbox import Backoff, Outbox
from executor.sql import (
    PgDb,
    StoreConflict,
    StoreLockTimeout,
    StoreUnavailable,
    connect_postgres,
    pg_ddl,
)
from executor.triggers import decided_firings, event_ids
from executor.triggers.store import TriggerStore
from tests.conftest import TEST_UID_BASE
from tests.helpers.cli import cbexec, cli_env
from tests.helpers.clock import Clock
from tests.helpers.postgres import PostgresServer
from tests.unit.test_history import LIMITS, MIB, flood, invocation, kept, result

pytestmark = pytest.mark.service


async def test_store_migrate_is_explicit_versioned_and_idempotent(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database("migrate_cli")
    with pytest.raises(ConfigError, match="cbexec store migrate"):
        TriggerStore(url)  # an executor never makes the schema itself

    first = await cbexec("store", "migrate", "--store", url)
    assert first.code == 0, first.err
    assert f"from version 0 to {schema_version()}" in first.out
    again = await cbexec("store", "migrate", env=cli_env(CBEXEC_STORE=url))
    assert again.code == 0, again.err
    assert f"already at version {schema_version()}" in again.out

    db = connect_postgres(url)
    try:
        assert current_version(db) == schema_version()
    finally:
        db.close()
    store = TriggerStore(url)
    try:
        assert store.fleet and store.count_jobs() == 0
    finally:
        store.close()


async def test_check_config_checks_the_store_is_reached_and_migrated(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database("check_config")
    argv = ("serve", "--check-config", "--data-dir", str(tmp_path), "--bind", "127.0.0.1:0")
    said = await cbexec(*argv, "--store", url)
    assert said.code == 2
    assert "cbexec: store: the PostgreSQL store is at schema version 0" in said.err
    assert "cbexec store migrate" in said.err
    assert (await cbexec("store", "migrate", "--store", url)).code == 0
    said = await cbexec(*argv, "--store", url.replace("postgres@", "postgres:secret@"))
    assert said.code == 0, said.err
    assert f"store: PostgreSQL, schema version {schema_version()}" in said.out
    assert "secret" not in said.out  # a password in the URL is never printed
    # A store a newer executor migrated: the fix is an upgrade, not a migrate.
    db = connect_postgres(url)
    try:
        db.execute("INSERT INTO cbexec_schema (version) VALUES (?)", (schema_version() + 1,))
        said = await cbexec(*argv, "--store", url)
    finally:
        db.execute("DELETE FROM cbexec_schema WHERE version = ?", (schema_version() + 1,))
        db.close()
    assert said.code == 2 and "upgrade this executor" in said.err, said.err
    assert "store migrate" not in said.err


async def test_a_database_of_another_kind_is_refused_in_one_line_and_left_as_it_was(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    # Another application's table named cbexec_schema, without our version column.
    url = postgres.create_database("foreign_schema")
    db = connect_postgres(url)
    try:
        db.execute("CREATE TABLE cbexec_schema (x TEXT)")
        db.execute("INSERT INTO cbexec_schema VALUES ('hello')")
        serve = ("serve", "--data-dir", str(tmp_path), "--bind", "127.0.0.1:0", "--store", url)
        env = cli_env(CBEXEC_SANDBOX_UID_BASE=str(TEST_UID_BASE))
        for argv in (("store", "migrate", "--store", url), (*serve, "--check-config"), serve):
            said = await cbexec(*argv, env=env)
            assert said.code == 2, (argv, said.err)
            (line,) = [line for line in said.err.splitlines() if line.startswith("cbexec:")]
            assert "table cbexec_schema is not the executor's (it has no version column)" in line
            assert "the database holds something else" in line
            assert "Traceback" not in said.err
        assert db.execute("SELECT * FROM cbexec_schema").fetchall() == [("hello",)]
        assert db.execute("SELECT to_regclass('firings')").fetchone()[0] is None
    finally:
        db.close()


async def test_a_never_migrated_database_with_tables_of_our_names_is_refused(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database("foreign_tables")
    db = connect_postgres(url)
    try:
        db.execute("CREATE TABLE jobs (name TEXT)")
        said = await cbexec("store", "migrate", "--store", url)
        assert said.code == 2, said.err
        assert "never migrated, yet it has tables of the executor's names (jobs)" in said.err
        assert "Traceback" not in said.err
        # Nothing was made in it.
        assert db.execute("SELECT to_regclass('cbexec_schema')").fetchone()[0] is None
    finally:
        db.close()


async def test_store_migrate_without_a_postgresql_store_has_nothing_to_do() -> None:
    said = await cbexec("store", "migrate", env=cli_env(CBEXEC_STORE=""))
    assert said.code == 0 and "nothing to migrate" in said.out
    bad = await cbexec("store", "migrate", "--store", "mysql://x/y")
    assert bad.code == 2 and "postgresql://" in bad.err


def test_the_history_reads_every_replicas_runs_by_prefix(pg_url: str) -> None:
    history = RunHistory(pg_url, retention_days=1, max_runs=10)
    try:
        assert history.ids_starting_with("%") == []  # a prefix is literal, never a pattern
    finally:
        history.close()


def test_the_postgresql_schema_is_the_sqlite_one_translated() -> None:
    ddl = pg_ddl(
        "PRAGMA journal_mode = WAL;\n"
        "CREATE TABLE IF NOT EXISTS runs (\n    seq INTEGER PRIMARY KEY AUTOINCREMENT,\n"
        "    user TEXT NOT NULL,\n    at REAL NOT NULL,\n    body BLOB\n) WITHOUT ROWID;\n"
    )
    assert "PRAGMA" not in ddl and "WITHOUT ROWID" not in ddl
    assert "seq BIGSERIAL PRIMARY KEY" in ddl and '"user" TEXT' in ddl
    assert "at DOUBLE PRECISION" in ddl and "body BYTEA" in ddl
    assert "rowid BIGSERIAL," in ddl  # runs are ordered by SQLite's implicit rowid


def test_an_error_in_a_pipeline_is_raised_at_its_end_as_the_stores_own(pg_url: str) -> None:
    db = connect_postgres(pg_url)
    try:
        db.execute("BEGIN")
        db.execute("INSERT INTO seen_events (id_key, seen_at) VALUES ('piped', 0)")
        with pytest.raises(StoreConflict), db.pipeline():
            db.executemany(
                "INSERT INTO seen_events (id_key, seen_at) VALUES (?, 0)",
                [(b"other",), (b"piped",)],
            )
        assert db.transaction_failed()
        db.execute("ROLLBACK")
        assert db.execute("SELECT count(*) FROM seen_events").fetchone()[0] == 0
    finally:
        db.close()


def test_the_history_records_a_group_of_runs_in_one_statement(pg_url: str) -> None:
    history = RunHistory(pg_url, retention_days=1, max_runs=100)
    try:
        history.record_many(
            [
                (invocation("group-a"), result("group-a"), 1.0),
                (invocation("group-b", job_id=11), result("group-b"), 2.0),
                # The same invocation again in the group: its last run is the one kept.
                (invocation("group-a"), result("group-a", Outcome.FAILED), 3.0),
            ]
        )
        a, b = history.get("group-a"), history.get("group-b")
        assert a is not None and a.outcome is Outcome.FAILED and a.started_at == 3.0
        assert a.result is not None and a.result.failure is not None
        assert b is not None and b.job_id == 11 and b.result is not None
        assert b.result.actions == result("group-b").actions
        assert history.count() == 2
    finally:
        history.close()


def test_a_group_of_big_runs_is_recorded_a_statement_of_rows_at_a_time(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Probe 157: every run's JSON at once, six times its output for control characters.
    history = RunHistory(pg_url, retention_days=1, max_runs=100)
    monkeypatch.setattr(history_module, "PG_STATEMENT_BYTES", 4000)
    statements: list[int] = []
    insert_rows = history._insert_rows

    def counted(rows: list[tuple[object, ...]]) -> int:
        statements.append(len(rows))
        return insert_rows(rows)

    monkeypatch.setattr(history, "_insert_rows", counted)
    big = [
        dataclasses.replace(result(f"big-{n}"), stdout="\x01" * 200) for n in range(5)
    ]  # ~1.9 kB rows
    try:
        history.record_many([(invocation(r.invocation_id), r, 1.0 + n) for n, r in enumerate(big)])
        assert statements == [2, 2, 1]
        assert history.count() == 5
        stored = history.get("big-4")
        assert stored is not None and stored.result is not None
        assert stored.result.stdout == "\x01" * 200
    finally:
        history.close()


def test_a_fleets_history_keeps_the_run_of_an_id_that_ended_last(pg_url: str) -> None:
    history = RunHistory(pg_url, retention_days=1, max_runs=100)
    try:
        history.record_many([(invocation("late"), result("late"), 10.0)])
        # Another replica's earlier run of the id, written after: it stays the later one's.
        history.record_many(
            [
                (invocation("late"), result("late", Outcome.KILLED), 5.0),
                (invocation("early"), result("early", Outcome.FAILED), 7.0),
                (invocation("early"), result("early"), 6.0),
            ]
        )
        late, early = history.get("late"), history.get("early")
        assert late is not None and late.outcome is Outcome.SUCCEEDED and late.started_at == 10.0
        assert early is not None and early.outcome is Outcome.FAILED and early.started_at == 7.0
    finally:
        history.close()


def test_a_fleets_history_keeps_its_runs_within_max_bytes_with_the_newest_kept(
    postgres: PostgresServer,
) -> None:
    """Runs that flood their output are pruned by bytes in PostgreSQL too, oldest first."""
    url = postgres.create_database("history_bytes")
    migrate(url)
    cap = 4 * MIB
    history = RunHistory(url, retention_days=1e6, max_runs=1000, max_bytes=cap, clock=Clock(1e6))
    try:
        for n in range(20):
            history.record(invocation(f"big{n:02}"), flood(f"big{n:02}", MIB), started_at=float(n))
            # A replica prunes once it recorded a tenth of the bound since its last prune.
            assert history.stored_bytes() <= cap
            assert kept(history)[0] == f"big{n:02}"
        assert kept(history) == ["big19", "big18", "big17"]
        newest = history.get("big19")
        assert newest is not None and newest.result == flood("big19", MIB)
        history.record(invocation("huge"), flood("huge", 2 * cap), started_at=100.0)
        assert kept(history) == ["huge"]  # alone larger than the bound, and kept
        assert history.prune() == 0
        assert history.stored_bytes() > cap
    finally:
        history.close()


# The schema step that adds the runs' sizes.
SIZES_STEP: Final = next(n for n, ddl in enumerate(_steps(), 1) if "size_bytes" in ddl)


def test_the_runs_recorded_before_their_size_was_kept_are_sized_by_the_migration(
    postgres: PostgresServer,
) -> None:
    """The step that adds size_bytes fills it as the executor would have: idempotent."""
    url = postgres.create_database("history_sizes")
    assert migrate(url) == (0, schema_version())
    spec = CallbackSpec("python", "print(1)", "done-job-self", 3, source="/cb/café.py")
    runs = [
        (
            Invocation("accented", spec, {"id": 1}, LIMITS, work_name="wörk"),
            result("accented"),
            1.0,
        ),
        (invocation("plain"), flood("plain", 5000), 2.0),
    ]
    history = RunHistory(url, retention_days=1e6, max_runs=10)
    try:
        history.record_many(runs)
    finally:
        history.close()
    db = connect_postgres(url)
    try:
        written = dict(db.execute("SELECT invocation_id, size_bytes FROM runs").fetchall())
        assert written == {run[1].invocation_id: _row(*run)[-1] for run in runs}
        # The database as the step before left it: no sizes.
        db.execute("ALTER TABLE runs DROP COLUMN size_bytes")
        db.execute("DELETE FROM cbexec_schema WHERE version >= ?", (SIZES_STEP,))
    finally:
        db.close()
    assert migrate(url) == (SIZES_STEP - 1, schema_version())
    assert migrate(url) == (schema_version(), schema_version())
    db = connect_postgres(url)
    try:
        assert dict(db.execute("SELECT invocation_id, size_bytes FROM runs").fetchall()) == written
        # A prune's count and sum read the sizes' index only, as the count alone did.
        assert db.execute("SELECT to_regclass('runs_by_start_size')").fetchone()[0] is not None
    finally:
        db.close()


# The schema step that adds whether a run was fired.
FIRED_STEP: Final = next(
    n for n, ddl in enumerate(_steps(), 1) if "ADD COLUMN IF NOT EXISTS fired " in ddl
)


def test_the_runs_recorded_before_fired_was_kept_read_as_not_fired(
    postgres: PostgresServer,
) -> None:
    """An Execute may not repeat a fired run; which runs were, a store migrates to keep."""
    url = postgres.create_database("history_fired")
    assert migrate(url) == (0, schema_version())
    db = connect_postgres(url)
    try:
        # The database as the step before left it.
        db.execute("ALTER TABLE runs DROP COLUMN fired")
        db.execute("DELETE FROM cbexec_schema WHERE version >= ?", (FIRED_STEP,))
        db.execute(
            "INSERT INTO runs (invocation_id, job_id, callback_id, triggers, language, outcome,"
            " started_at, wall_seconds, cpu_seconds, peak_rss_bytes, queue_seconds, work_name,"
            " result) VALUES ('old', 10, 1, 'complete-job-self', 'python', 'SUCCEEDED', 1.0,"
            " 0, 0, 0, 0, '', '{}')"
        )
    finally:
        db.close()
    assert migrate(url) == (FIRED_STEP - 1, schema_version())
    assert migrate(url) == (schema_version(), schema_version())
    history = RunHistory(url, retention_days=1e6, max_runs=10)
    try:
        fired = dataclasses.replace(invocation("fired"), source="universal")
        history.record_many(
            [(fired, result("fired"), 2.0), (invocation("run"), result("run"), 3.0)]
        )
        answers = {name: history.identity(name) for name in ("old", "fired", "run")}
        assert {name: got and got.fired for name, got in answers.items()} == {
            "old": False,  # which old runs were fired was not kept
            "fired": True,
            "run": False,
        }
    finally:
        history.close()


# The schema step that keys the seen event ids by a digest of each.
REKEY_STEP: Final = next(n for n, ddl in enumerate(_steps(), 1) if "ADD COLUMN id_key BYTEA" in ddl)


def test_the_event_ids_kept_as_text_are_keyed_by_the_migration_and_still_repeats(
    postgres: PostgresServer,
) -> None:
    # An id of 1024 characters took ~3 KB of the table and its index (probe 111).
    url = postgres.create_database("seen_keys")
    assert migrate(url) == (0, schema_version())
    fired = '[["inv-1", 3, 1, "complete-job-1", "qube", false, ""]]'
    long_id = "é" * 1024
    db = connect_postgres(url)
    try:
        # The table as the step before left it: keyed by the ids' text.
        db.execute("DROP TABLE seen_events")
        db.executescript(
            "CREATE TABLE seen_events (event_id TEXT PRIMARY KEY, seen_at DOUBLE PRECISION"
            " NOT NULL, fired_json TEXT NOT NULL DEFAULT '');"
            " CREATE INDEX seen_events_by_age ON seen_events (seen_at);"
        )
        db.executemany(
            "INSERT INTO seen_events (event_id, seen_at, fired_json) VALUES (?, ?, ?)",
            [("old-b", 1.0, fired), ("old-a", 2.0, ""), (long_id, 3.0, "")],
        )
        db.execute("DELETE FROM cbexec_schema WHERE version >= ?", (REKEY_STEP,))
    finally:
        db.close()
    assert migrate(url) == (REKEY_STEP - 1, schema_version())
    assert migrate(url) == (schema_version(), schema_version())
    # A replica of the version before, still running until restarted, names the ids' text:
    # a repeat between it and an upgraded replica is found either way.
    old = connect_postgres(url)
    try:
        inserted = [
            old.execute(
                "INSERT INTO seen_events (event_id, seen_at) VALUES (?, 4.0)"
                " ON CONFLICT DO NOTHING RETURNING event_id",
                (event_id,),
            ).fetchall()
            for event_id in ("old-a", "from-old")
        ]
        assert inserted == [[], [("from-old",)]]
    finally:
        old.close()
    store = TriggerStore(url)
    try:
        with store.transaction() as keyed:
            seen = ("old-a", long_id, "from-old", "new")
            assert [TriggerStore.first_sighting(keyed, i) for i in seen] == [False] * 3 + [True]
            (firing,) = decided_firings.fired_by(keyed, "old-b")
            assert (firing.invocation_id, firing.callback.job_id) == ("inv-1", 3)
            ages = dict(keyed.execute("SELECT id_key, seen_at FROM seen_events").fetchall())
        assert {bytes(k): at for k, at in ages.items() if at < 10} == {
            event_ids.key("old-b"): 1.0,
            event_ids.key("old-a"): 2.0,
            event_ids.key(long_id): 3.0,
            event_ids.key("from-old"): 4.0,
        }
    finally:
        store.close()


def test_a_migration_step_kept_waiting_by_a_reader_says_so_and_changes_nothing(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was cut after 5 s as "did not answer", exit 3, as if the server were down
    # (probe 64), and without that cut a lock would hold it for good.
    monkeypatch.setattr("executor.migrations.LOCK_WAIT_S", 0.5)
    url = postgres.create_database("migrate_locked")
    assert migrate(url) == (0, schema_version())
    db = connect_postgres(url)
    reader = connect_postgres(url)
    try:
        db.execute("ALTER TABLE runs DROP COLUMN fired")
        db.execute("DELETE FROM cbexec_schema WHERE version >= ?", (FIRED_STEP,))
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM runs")  # an open transaction that read it
        with pytest.raises(StoreUnavailable, match=r"^a table migrate must change stayed locked"):
            migrate(url)
        assert current_version(db) == FIRED_STEP - 1
        reader.execute("COMMIT")
        assert migrate(url) == (FIRED_STEP - 1, schema_version())
    finally:
        reader.close()
        db.close()


def test_statements_outside_a_transaction_never_wait_for_one_in_a_fleet(pg_url: str) -> None:
    # The event loop's reads and marks (a firing's job, a firing done) go on while the
    # group thread holds a transaction open, and see only what is committed.
    store = TriggerStore(pg_url)
    in_transaction, release = threading.Event(), threading.Event()

    def hold_a_transaction() -> None:
        with store.transaction() as db:
            TriggerStore.put_job(db, {"id": 77, "name": "uncommitted"})
            in_transaction.set()
            release.wait(10)

    holder = threading.Thread(target=hold_a_transaction)
    holder.start()
    try:
        assert in_transaction.wait(10)
        outside = threading.Thread(
            target=lambda: (store.job(77), store.firing_done("none"), store.count_jobs())
        )
        outside.start()
        outside.join(5)
        assert not outside.is_alive(), "a statement outside waited for the transaction"
        assert store.job(77) is None  # not committed yet
    finally:
        release.set()
        holder.join()
    try:
        assert store.job(77) == {"id": 77, "name": "uncommitted"}
    finally:
        store.close()


def test_a_snapshot_reads_one_committed_state_and_never_waits_for_a_transaction(
    either_store: str,
) -> None:
    # The long reads of an explanation (ExplainCallbacks, on a worker thread) neither wait
    # for the writer nor hold it back, on either store.
    store = TriggerStore(either_store)
    with store.transaction() as db:
        TriggerStore.put_job(db, {"id": 5, "name": "before"})
    in_transaction, release = threading.Event(), threading.Event()

    def hold_a_transaction() -> None:
        with store.transaction() as db:
            TriggerStore.put_job(db, {"id": 5, "name": "after"})
            in_transaction.set()
            release.wait(10)

    holder = threading.Thread(target=hold_a_transaction)
    holder.start()
    try:
        assert in_transaction.wait(10)
        seen: list[object] = []
        reader = threading.Thread(
            target=lambda: seen.append(_read_in_snapshot(store, release, holder))
        )
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "a snapshot waited for the transaction"
        # Begun before the commit, it read the state before it, before and after the commit.
        assert seen == [("before", "before")]
    finally:
        release.set()
        holder.join()
    try:
        with store.snapshot() as db:
            assert TriggerStore.job_in(db, 5) == {"id": 5, "name": "after"}
            with pytest.raises(Exception, match=r"(?i)read.only|readonly"):
                db.execute("DELETE FROM jobs")
    finally:
        store.close()


def _read_in_snapshot(
    store: TriggerStore, release: threading.Event, holder: threading.Thread
) -> tuple[object, object]:
    with store.snapshot() as db:
        first = (TriggerStore.job_in(db, 5) or {}).get("name")
        release.set()
        holder.join(10)  # the writer commits while the snapshot is open
        assert not holder.is_alive(), "the transaction waited for a snapshot"
        return first, (TriggerStore.job_in(db, 5) or {}).get("name")


def _kill_backend(url: str, db: PgDb) -> None:
    """Terminate ``db``'s server process, as a PostgreSQL restart would."""
    pid = db.execute("SELECT pg_backend_pid()").fetchone()[0]
    killer = connect_postgres(url)
    try:
        killer.execute("SELECT pg_terminate_backend(?)", (pid,))
    finally:
        killer.close()


@pytest.mark.parametrize("closed_by_caller", [False, True])
def test_a_connection_lost_at_commit_is_connected_again(
    pg_url: str, closed_by_caller: bool
) -> None:
    # Found by fault injection: a COMMIT that met the loss left the connection marked
    # in a transaction for good, so every later statement said "lost mid-transaction".
    db = connect_postgres(pg_url)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS lost_commit (n INTEGER)")
        db.execute("BEGIN")
        db.execute("INSERT INTO lost_commit VALUES (1)")
        _kill_backend(pg_url, db)
        with pytest.raises(StoreUnavailable):
            db.execute("COMMIT")
        if closed_by_caller:
            db.execute("ROLLBACK")
        assert db.execute("SELECT count(*) FROM lost_commit").fetchone()[0] == 0
    finally:
        db.close()


def test_a_transaction_begun_after_a_lost_one_runs(pg_url: str) -> None:
    db = connect_postgres(pg_url)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS lost_middle (n INTEGER)")
        db.execute("BEGIN")
        _kill_backend(pg_url, db)
        with pytest.raises(StoreUnavailable):
            db.execute("INSERT INTO lost_middle VALUES (1)")
        # Its rest never runs outside it, on a new connection:
        with pytest.raises(StoreUnavailable, match="lost mid-transaction"):
            db.execute("INSERT INTO lost_middle VALUES (2)")
        db.execute("BEGIN")  # its caller gave it up without a ROLLBACK: a new one starts
        db.execute("INSERT INTO lost_middle VALUES (3)")
        with db.pipeline():
            db.execute("INSERT INTO lost_middle VALUES (4)")
        db.execute("COMMIT")
        rows = db.execute("SELECT n FROM lost_middle ORDER BY n").fetchall()
        assert [row[0] for row in rows] == [3, 4]
    finally:
        db.close()


def test_a_table_locked_by_someone_else_is_unavailable_not_a_hang(pg_url: str) -> None:
    # An admin's VACUUM FULL or ALTER TABLE must not hold the executor's event loop.
    db = connect_postgres(pg_url)
    admin = connect_postgres(pg_url, stall_limits=False)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS locked_away (n INTEGER)")
        admin.execute("BEGIN")
        admin.execute("LOCK TABLE locked_away IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StoreLockTimeout, match="not let go within 2 s"):
            db.execute("INSERT INTO locked_away VALUES (1)")
        admin.execute("ROLLBACK")
        db.execute("INSERT INTO locked_away VALUES (2)")  # and it works again at once
    finally:
        admin.close()
        db.close()


@contextmanager
def stopped(*pids: int) -> Iterator[None]:
    """The processes frozen (SIGSTOP), as a paused host would be; thawed after."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def _pipelined_insert(db: PgDb) -> None:
    with db.pipeline():
        db.execute("INSERT INTO frozen_away VALUES (1)")  # sent; the Sync waits for its answer


@pytest.mark.parametrize("way", ["execute", "prepared", "pipeline"])
def test_a_server_that_stops_answering_is_unavailable_not_a_hang(
    pg_url: str, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    # Found by fault injection: a frozen PostgreSQL keeps TCP alive and its own
    # statement_timeout never runs, so a statement on the event loop waited for ever.
    monkeypatch.setattr(pg_stalls, "ANSWER_DEADLINE_S", 1.0)
    monkeypatch.setattr(pg_stalls, "UNANSWERED_QUIET_S", 2.0)
    monkeypatch.setattr(pg_stalls._watchdog, "unanswered_at", float("-inf"))
    db = connect_postgres(pg_url)
    postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
    try:
        db.execute("CREATE TABLE IF NOT EXISTS frozen_away (n INTEGER)")
        backend = db.execute("SELECT pg_backend_pid()").fetchone()[0]
        with stopped(backend, postmaster):
            started = time.monotonic()
            # libpq's own calls (as the outbox's commit makes them), psycopg's, or a
            # pipeline's (the trigger store's writes; its statements' own deadlines ended
            # before the Sync that waits for their answers):
            statement = {
                "execute": partial(db.execute, "SELECT 1"),
                "prepared": partial(
                    db.execute_prepared, "INSERT INTO frozen_away VALUES (?)", (1,)
                ),
                "pipeline": partial(_pipelined_insert, db),
            }[way]
            with pytest.raises(StoreUnavailable, match="did not answer within 1 s"):
                statement()
            # The next statements, of any connection, do not wait out a deadline each.
            with pytest.raises(StoreUnavailable, match="did not answer a moment ago"):
                db.execute("SELECT 1")
            assert time.monotonic() - started < 1.0 + 1.5
            time.sleep(2.0)  # past the quiet time: connecting again holds a moment at most
            with pytest.raises(StoreUnavailable, match="connecting again"):
                db.execute("SELECT 1")
            with pytest.raises(StoreUnavailable):
                db.execute("SELECT 1")
            assert time.monotonic() - started < 1.0 + 2.0 + 2 * pg_connect.RECONNECT_WAIT_S + 1.5

        def answers() -> bool:
            try:
                return bool(db.execute("SELECT 1").fetchone()[0] == 1)
            except StoreUnavailable:
                return False

        deadline = time.monotonic() + 15
        while not answers():
            assert time.monotonic() < deadline, "never connected again once thawed"
            time.sleep(0.1)
    finally:
        db.close()


def test_a_statement_on_a_connection_the_server_ended_runs_again_on_a_new_one(
    pg_url: str,
) -> None:
    # A PostgreSQL restart ends every idle connection; the first statement after it met
    # "terminating connection due to administrator command" and failed UNAVAILABLE.
    db = connect_postgres(pg_url)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS ended_idle (n INTEGER)")
        _kill_backend(pg_url, db)
        time.sleep(0.2)  # the server's goodbye is waiting on the idle connection
        db.execute("INSERT INTO ended_idle VALUES (1)")
        _kill_backend(pg_url, db)
        time.sleep(0.2)
        db.execute("BEGIN")  # a transaction's first statement too
        db.execute("INSERT INTO ended_idle VALUES (2)")
        db.execute("COMMIT")
        rows = db.execute("SELECT n FROM ended_idle ORDER BY n").fetchall()
        assert [row[0] for row in rows] == [1, 2]
    finally:
        db.close()


def test_a_prepared_statement_takes_every_value_as_execute_does(pg_url: str) -> None:
    db = connect_postgres(pg_url)
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS prepared_values"
            " (k TEXT PRIMARY KEY, b BYTEA, f DOUBLE PRECISION, n BIGINT, s TEXT)"
        )
        insert = "INSERT INTO prepared_values VALUES (?, ?, ?, ?, ?) ON CONFLICT (k) DO NOTHING"
        values = ("ключ ✓", b"\x00\xff\x00binary", 0.1 + 0.2, 2**63 - 1, None)
        assert db.execute_prepared(insert, values) == 1
        assert db.execute_prepared(insert, values) == 0  # the conflict: nothing changed
        row = db.execute("SELECT k, b, f, n, s FROM prepared_values").fetchone()
        assert tuple(row) == values
        with pytest.raises(TypeError, match="not <class 'bool'>"):
            db.execute_prepared(insert, ("k2", b"", 1.0, True, None))
    finally:
        db.close()


def test_a_prepared_query_reads_its_first_row_as_psycopg_would(pg_url: str) -> None:
    db = connect_postgres(pg_url)
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS prepared_rows"
            " (k TEXT PRIMARY KEY, yes BOOLEAN, n BIGINT, small INTEGER, f DOUBLE PRECISION,"
            " v VARCHAR(20), at TIMESTAMP)"
        )
        db.execute(
            "INSERT INTO prepared_rows VALUES (?, ?, ?, ?, ?, ?, now())",
            ("ключ ✓", True, 2**63 - 1, -7, 0.1 + 0.2, "text"),
        )
        query = (
            "SELECT k, yes, n, small, f, v, NULL::TEXT AS nothing FROM prepared_rows WHERE k = ?"
        )
        expected = dict(db.execute(query, ("ключ ✓",)).fetchone())
        assert db.fetchone_prepared(query, ("ключ ✓",)) == expected
        assert expected["yes"] is True and expected["nothing"] is None
        assert db.fetchone_prepared(query, ("none",)) is None
        with pytest.raises(TypeError, match="column 'at' is of a type it does not read"):
            db.fetchone_prepared("SELECT at FROM prepared_rows", ())
    finally:
        db.close()


def test_a_prepared_statement_raises_the_stores_own_errors(pg_url: str) -> None:
    db = connect_postgres(pg_url)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS prepared_errors (k TEXT PRIMARY KEY)")
        insert = "INSERT INTO prepared_errors VALUES (?)"
        db.execute_prepared(insert, ("a",))
        with pytest.raises(StoreConflict, match="duplicate key"):
            db.execute_prepared(insert, ("a",))
        # The server ended the connection it was prepared on: prepared again on a new one.
        _kill_backend(pg_url, db)
        time.sleep(0.2)
        assert db.execute_prepared(insert, ("b",)) == 1
        keys = db.execute("SELECT k FROM prepared_errors ORDER BY k").fetchall()
        assert [row[0] for row in keys] == ["a", "b"]
    finally:
        db.close()


class RecordingReceiver:
    """A receiver that takes every message (and says none was a duplicate)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def deliver(self, key: str, payload: bytes) -> bool:
        self.sent.append((key, payload))
        return False


async def test_a_result_committed_while_delivery_looks_in_postgresql_is_not_left_waiting(
    pg_url: str,
) -> None:
    # In a fleet delivery's query runs in a thread: a result committed on the loop while it
    # runs must still wake delivery (it used to wait a third of the lease, 20 s here).
    receiver = RecordingReceiver()
    outbox = Outbox(pg_url, receiver, backoff=Backoff(first_s=0.01, cap_s=0.05), lease_s=60)
    loop = asyncio.get_running_loop()
    query = outbox._delivery._next_batch
    committed_meanwhile = threading.Event()

    def query_then_commit() -> tuple[list[tuple[int, str, bytes]], bool]:
        found = query()
        if not found[0] and not committed_meanwhile.is_set():
            loop.call_soon_threadsafe(lambda: outbox.put("pg-meanwhile", b"report"))
            loop.call_soon_threadsafe(committed_meanwhile.set)
            committed_meanwhile.wait(5)
        return found

    outbox._delivery._next_batch = query_then_commit  # type: ignore[method-assign]
    outbox.start()
    try:
        assert await asyncio.to_thread(committed_meanwhile.wait, 5)
        assert await outbox.flush(3), "the result committed meanwhile waits for the lease"
        assert [key for key, _ in receiver.sent] == ["pg-meanwhile"]
    finally:
        await outbox.close()


async def test_the_outbox_replaces_a_delivered_report_with_a_later_runs_on_postgresql(
    pg_url: str,
) -> None:
    # The same statements as on SQLite (tests/unit/test_outbox.py), in PostgreSQL's dialect.
    receiver = RecordingReceiver()
    outbox = Outbox(pg_url, receiver, backoff=Backoff(first_s=0.01, cap_s=0.05))
    outbox.start()
    try:
        assert outbox.put("pg-later-run", b"killed")
        assert not outbox.put("pg-later-run", b"killed"), "the same report again adds nothing"
        assert await outbox.flush(5)
        assert outbox.put("pg-later-run", b"succeeded")
        assert await outbox.flush(5)
    finally:
        await outbox.close()

    assert receiver.sent == [("pg-later-run", b"killed"), ("pg-later-run", b"succeeded")]


async def test_an_earlier_runs_report_never_replaces_a_later_ones_on_postgresql(
    pg_url: str,
) -> None:
    receiver = RecordingReceiver()
    outbox = Outbox(pg_url, receiver, backoff=Backoff(first_s=0.01, cap_s=0.05))
    try:
        assert outbox.put("pg-late", b"succeeded", ended_at=20.0)
        assert not outbox.put("pg-late", b"killed", ended_at=10.0)
        await asyncio.gather(
            outbox.commit("pg-group", b"succeeded", 20.0),
            outbox.commit("pg-group", b"killed", 10.0),
        )
        outbox.start()
        assert await outbox.flush(5)
        assert not outbox.put("pg-late", b"failed", ended_at=15.0)
    finally:
        await outbox.close()

    assert sorted(receiver.sent) == [("pg-group", b"succeeded"), ("pg-late", b"succeeded")]
