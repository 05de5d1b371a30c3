"""A store the executor cannot use as it is: refused in one line (exit 2), nothing changed.

A role without the privileges it needs (probe 51: PostgreSQL 15 gives CREATE on schema
public only to the database's owner; a role that may only read), and a database whose
``cbexec_schema`` is another application's even with an integer ``version`` column.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from executor.migrations import migrate, open_postgres, schema_version
from executor.sql import PgDb, connect_postgres
from tests.conftest import TEST_UID_BASE
from tests.helpers.cli import Said, cbexec, cli_env
from tests.helpers.postgres import PostgresServer

pytestmark = pytest.mark.service


def as_role(url: str, role: str, *grants: str) -> str:
    """``url`` as a new login role (roles are the cluster's: one name per test) given ``grants``."""
    admin = connect_postgres(url)
    try:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        for grant in grants:
            admin.execute(f"{grant} TO {role}")
    finally:
        admin.close()
    return url.replace("postgres@", f"{role}@")


def refusal(said: Said) -> str:
    """The one line a refused command said (exit 2, no traceback)."""
    assert said.code == 2, said.err
    assert "Traceback" not in said.err, said.err
    (line,) = [line for line in said.err.splitlines() if line.startswith("cbexec:")]
    return line


def serving(url: str, tmp_path: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``serve --check-config`` and ``serve`` on the store at ``url``."""
    serve = ("serve", "--data-dir", str(tmp_path), "--bind", "127.0.0.1:0", "--store", url)
    return (*serve, "--check-config"), serve


SERVE_ENV = cli_env(CBEXEC_SANDBOX_UID_BASE=str(TEST_UID_BASE))


def tables(db: PgDb) -> list[str]:
    rows = db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    ).fetchall()
    return [row[0] for row in rows]


# -- privileges ------------------------------------------------------------------------


async def test_migrate_by_a_role_that_may_not_create_tables_says_what_it_needs(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database("no_create")  # owned by postgres: PUBLIC may not CREATE
    role_url = as_role(url, "cbexec_no_create")
    said = await cbexec("store", "migrate", "--store", role_url)
    assert refusal(said) == (
        "cbexec: the PostgreSQL store's role 'cbexec_no_create' may not create tables in"
        " schema public (permission denied for schema public): it needs CREATE on it, or run"
        " `cbexec store migrate` as the database's owner"
    )
    db = connect_postgres(url)
    try:
        assert tables(db) == []  # nothing made
        # Migrated by the owner, the same role has nothing to do (the unit runs migrate
        # before every start): reading cbexec_schema is enough.
        migrate(url)
        db.execute("GRANT SELECT ON cbexec_schema TO cbexec_no_create")
        said = await cbexec("store", "migrate", "--store", role_url)
        assert said.code == 0, said.err
        assert f"already at version {schema_version()}" in said.out
    finally:
        db.close()


async def test_migrate_by_a_role_that_does_not_own_the_tables_names_the_owner(
    postgres: PostgresServer,
) -> None:
    url = postgres.create_database("not_owner")
    migrate(url)
    db = connect_postgres(url)
    try:
        # A step still to apply (adding runs.size_bytes), on tables another role owns.
        db.execute("ALTER TABLE runs DROP COLUMN size_bytes")
        db.execute("DELETE FROM cbexec_schema WHERE version >= 5")
        role_url = as_role(
            url,
            "cbexec_not_owner",
            "GRANT CREATE ON SCHEMA public",
            "GRANT SELECT, INSERT ON cbexec_schema",
        )
        line = refusal(await cbexec("store", "migrate", "--store", role_url))
        assert line.startswith(
            "cbexec: the PostgreSQL store's role 'cbexec_not_owner': must be owner of table runs"
        ), line
        assert line.endswith("run `cbexec store migrate` as the database's owner (the role"
                             " that owns the executor's tables)"), line  # fmt: skip
        assert db.execute("SELECT max(version) FROM cbexec_schema").fetchone()[0] == 4
    finally:
        db.close()


async def test_a_role_without_the_privileges_serve_needs_is_refused_before_it_starts(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database("read_only")
    migrate(url)
    role_url = as_role(url, "cbexec_read_only", "GRANT SELECT ON ALL TABLES IN SCHEMA public")
    for argv in serving(role_url, tmp_path):
        line = refusal(await cbexec(*argv, env=SERVE_ENV))
        assert (
            "the PostgreSQL store's role 'cbexec_read_only' lacks privileges the executor needs"
            " (INSERT, UPDATE, DELETE on jobs; INSERT, UPDATE, DELETE on callbacks;"
            " INSERT, UPDATE, DELETE on atoms; and "
        ) in line, line
        assert line.endswith(
            "grant it SELECT, INSERT, UPDATE, DELETE on the executor's tables and USAGE on"
            " their sequences (GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA"
            " public TO cbexec_read_only; GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO"
            " cbexec_read_only)"
        ), line
    db = connect_postgres(url)
    try:
        db.execute(
            "GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO cbexec_read_only"
        )
        check_config, _ = serving(role_url, tmp_path)
        line = refusal(await cbexec(*check_config, env=SERVE_ENV))
        assert "lacks privileges the executor needs (USAGE on sequence atoms_rowid_seq;" in line
        assert "USAGE on sequence job_registrations" in _all_missing(db, "cbexec_read_only")
        db.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO cbexec_read_only")
        said = await cbexec(*check_config, env=SERVE_ENV)
        assert said.code == 0, said.err
        assert f"store: PostgreSQL, schema version {schema_version()}" in said.out
    finally:
        db.close()


def _all_missing(admin: PgDb, role: str) -> list[str]:
    """``missing_privileges`` as ``role`` sees it (SET ROLE on the superuser's connection)."""
    from executor.migrations import missing_privileges

    admin.execute(f"SET ROLE {role}")
    try:
        return missing_privileges(admin)
    finally:
        admin.execute("RESET ROLE")


# -- a cbexec_schema of another application's --------------------------------------------


async def _refused_by_all(url: str, tmp_path: Path, expected: str) -> None:
    for argv in (("store", "migrate", "--store", url), *serving(url, tmp_path)):
        line = refusal(await cbexec(*argv, env=SERVE_ENV))
        assert expected in line, (argv, line)
        assert "give the executor a database of its own" in line, line


@pytest.mark.parametrize("versions", [[3], []], ids=["holding 3", "empty"])
async def test_another_applications_cbexec_schema_with_an_integer_version_is_refused(
    postgres: PostgresServer, tmp_path: Path, versions: Sequence[int]
) -> None:
    # Was taken for ours: at 3, migrate applied step 4 to it and crashed; empty, adopted.
    url = postgres.create_database(f"foreign_versions_{len(versions)}")
    db = connect_postgres(url)
    try:
        db.execute("CREATE TABLE cbexec_schema (version INTEGER, note TEXT)")
        for version in versions:
            db.execute("INSERT INTO cbexec_schema VALUES (?, 'my app')", (version,))
        await _refused_by_all(
            url,
            tmp_path,
            "the PostgreSQL store's table cbexec_schema is not the executor's (its columns are"
            " version integer, note text, not version integer, applied_at timestamp with time"
            " zone)",
        )
        assert tables(db) == ["cbexec_schema"]  # left as it was
        rows = db.execute("SELECT version, note FROM cbexec_schema").fetchall()
        assert [tuple(row) for row in rows] == [(version, "my app") for version in versions]
    finally:
        db.close()


async def test_a_cbexec_schema_whose_version_lacks_that_versions_tables_is_refused(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    # Even one made just as ours is: version 3 has the executor's tables.
    url = postgres.create_database("foreign_twin")
    db = connect_postgres(url)
    try:
        db.execute(
            "CREATE TABLE cbexec_schema (version INTEGER PRIMARY KEY,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        db.execute("INSERT INTO cbexec_schema (version) VALUES (3)")
        await _refused_by_all(
            url,
            tmp_path,
            "the PostgreSQL store's table cbexec_schema records schema version 3, yet the"
            " database lacks tables of that version (jobs; callbacks; atoms; and 10 more)",
        )
        assert tables(db) == ["cbexec_schema"]
        assert db.execute("SELECT max(version) FROM cbexec_schema").fetchone()[0] == 3
    finally:
        db.close()


def test_a_store_that_an_earlier_version_migrated_is_still_the_executors(
    postgres: PostgresServer,
) -> None:
    # Step 1 makes unregistered_submissions today; the first versions made it at step 4.
    url = postgres.create_database("made_long_ago")
    migrate(url)
    db = connect_postgres(url)
    try:
        db.execute("DROP TABLE unregistered_submissions")
        db.execute("DELETE FROM cbexec_schema WHERE version >= 4")
        db.execute("ALTER TABLE runs DROP COLUMN size_bytes")  # what steps 5-7 add
        db.execute("ALTER TABLE jobs DROP COLUMN registration")
        db.execute("DROP SEQUENCE job_registrations")
    finally:
        db.close()
    assert migrate(url) == (3, schema_version())


def test_the_tables_each_version_has_are_those_the_steps_make() -> None:
    import re

    from executor.migrations import _MADE_BY_STEP, _steps

    made = {
        name
        for ddl in _steps()
        for name in re.findall(r"CREATE (?:TABLE|SEQUENCE) IF NOT EXISTS (\w+)", ddl)
    }
    assert {name for names in _MADE_BY_STEP.values() for name in names} == made


# -- encoding --------------------------------------------------------------------------


def database_encoded(postgres: PostgresServer, name: str, encoding: str) -> str:
    """A new database ``name`` in ``encoding`` (C locale, as any encoding takes it); its URL."""
    import psycopg

    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(
            f"CREATE DATABASE {name} ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C'"
            " TEMPLATE template0"
        )
    return postgres.url(name)


async def test_a_database_not_encoded_in_utf8_is_refused_before_anything_is_made(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    # It was taken: a callback whose triggers held an 'é' made every later Execute under
    # its id INTERNAL, and left that id's claim behind (probe 80); a character LATIN1
    # cannot hold failed the statement that wrote it, mid-run.
    url = database_encoded(postgres, "latin1", "LATIN1")
    expected = (
        "the PostgreSQL store's database is encoded LATIN1; the executor keeps"
        " callbacks' text, which may hold any character: use a database made with ENCODING"
        " 'UTF8' (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
    )
    for argv in (("store", "migrate", "--store", url), *serving(url, tmp_path)):
        line = refusal(await cbexec(*argv, env=SERVE_ENV))
        assert line.endswith(expected), (argv, line)
    db = connect_postgres(url)
    try:
        assert tables(db) == []  # nothing made
    finally:
        db.close()


def test_a_database_in_sql_ascii_keeps_the_executors_text_as_it_is(
    postgres: PostgresServer,
) -> None:
    # initdb's default in the C locale: it converts nothing, so it is taken.
    url = database_encoded(postgres, "sqlascii", "SQL_ASCII")
    migrate(url)
    db = open_postgres(url, application_name="test-sql-ascii")
    try:
        db.execute("INSERT INTO execute_claims VALUES (?, 'o', 0)", ("é ✓ 字",))
        row = db.fetchone_prepared("SELECT invocation_id FROM execute_claims", ())
        assert row == {"invocation_id": "é ✓ 字"}
    finally:
        db.close()
