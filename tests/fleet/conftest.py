"""The fleet tests' PostgreSQL: one real server per session, a database per module or test.

And trigger engines on either store (``engines``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from executor import pg_stalls
from executor.migrations import migrate
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from tests.helpers.postgres import PostgresServer, running_server
from tests.helpers.trigger_engines import LIMITS, MakeEngine, Recorder, engines_made

pytest.importorskip("psycopg", reason="the fleet tests need psycopg 3 (the [test] extra)")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with running_server("cbexec-pg-") as server:
        yield server


@pytest.fixture(scope="module")
def pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A migrated database of this test module's own."""
    name = re.sub(r"\W", "_", request.module.__name__.rsplit(".", 1)[-1])
    url = postgres.create_database(name)
    migrate(url)
    return url


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def either_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A trigger store's path: an SQLite file, or a migrated PostgreSQL database of its own."""
    if request.param == "sqlite":
        return str(tmp_path / "triggers.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database(f"either_{next(_databases)}")
    migrate(url)
    return url


@pytest.fixture
async def engines(either_store: str) -> AsyncIterator[MakeEngine]:
    """Trigger engines on ``either_store`` (started unless ``start=False``), closed after."""

    def open_engine(**kwargs: Any) -> TriggerEngine:
        recorder = Recorder()
        kwargs.setdefault("recorded_result", recorder.results.get)  # as engine_at's
        return TriggerEngine(TriggerStore(either_store), recorder, limits=LIMITS, **kwargs)

    async with engines_made(open_engine) as make:
        yield make


@pytest.fixture
def unanswered_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another test's cut-off must not make this one's statements fail at once."""
    monkeypatch.setattr(pg_stalls._watchdog, "unanswered_at", float("-inf"))
