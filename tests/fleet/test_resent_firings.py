"""A waiting resend answers each firing as the first answer did, on SQLite and on PostgreSQL.

Probe 142: a repeat's firings came back with ``shadow`` false and ``refusal`` empty, as
only their names were kept with the event id (decided_firings.py): a publisher resending
after a timeout was told that a shadow run applied its qb actions and that a refused run
was not refused.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Final

import pytest

from executor.migrations import _steps, migrate, schema_version
from executor.model import Event
from executor.sql import connect_postgres
from executor.triggers import decided_firings, event_ids
from executor.triggers.decide import Fired
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from tests.helpers.postgres import PostgresServer
from tests.helpers.trigger_engines import LIMITS, MakeEngine, Recorder, job

pytestmark = pytest.mark.service


def _directory(path: Path, conf: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "u.py").write_text("print('universal')\n")
    (path / "callbacks.conf").write_text(conf)
    return path


def _answered(fired: list[Fired]) -> list[tuple[str, int, bool, str, bool]]:
    """What an answer says of each firing besides its result."""
    return [
        (f.invocation_id, f.callback.callback_id, f.callback.universal, f.refusal, f.shadow)
        for f in fired
    ]


def _event(job_id: int, event_id: str) -> Event:
    return Event("complete", "job", job_id, event_id=event_id)


async def test_a_waiting_resend_keeps_each_firings_shadow_and_refusal(
    engines: MakeEngine, tmp_path: Path
) -> None:
    conf = _directory(tmp_path / "callback", "u.py [shadow] = complete-job-self\n")
    engine = engines(universal_dirs=[conf])
    assert engine.reload_universal() == []
    engine.register_job(job(1, ("complete-job-self", "own")))
    engine.register_job(job(2, ("complete-job-self", "own")))

    shadowed, duplicate = await engine.publish(_event(1, "s"), wait=True)
    assert not duplicate
    assert [(f.callback.universal, f.refusal, f.shadow) for f in shadowed] == [
        (False, "", False),
        (True, "", True),
    ]
    again, duplicate = await engine.publish(_event(1, "s"), wait=True)
    assert duplicate
    assert _answered(again) == _answered(shadowed)

    # The line removed after job 2 took it: its firing is refused, and says why again.
    (conf / "callbacks.conf").write_text("")
    assert engine.reload_universal() == []
    refused, _ = await engine.publish(_event(2, "r"), wait=True)
    (_, universal) = refused
    assert "u.py = complete-job-self is no longer in callbacks.conf" in universal.refusal
    again, duplicate = await engine.publish(_event(2, "r"), wait=True)
    assert duplicate
    assert _answered(again) == _answered(refused)


async def _shadow_resent_as_first_answered(store: str, tmp_path: Path) -> None:
    """A shadow firing's event, resent with wait at an engine on ``store``, says shadow."""
    conf = _directory(tmp_path / "callback", "u.py [shadow] = complete-job-self\n")
    recorder = Recorder()
    engine = TriggerEngine(
        TriggerStore(store),
        recorder,
        limits=LIMITS,
        universal_dirs=[conf],
        recorded_result=recorder.results.get,  # the resend answered at once, not in 30 s
    )
    engine.start()
    try:
        assert engine.reload_universal() == []
        engine.register_job(job(4))
        first, _ = await engine.publish(_event(4, "new"), wait=True)
        again, duplicate = await engine.publish(_event(4, "new"), wait=True)
        assert duplicate
        assert [f.shadow for f in again] == [True]
        assert _answered(again) == _answered(first)
    finally:
        await engine.close()
        engine.store.close()


# An event id remembered by the version before, with what it fired (one firing).
OLD_FIRED: Final = '[["inv-1", 3, 1, "complete-job-3", "qube", false, ""]]'


def _old_firing_as_answered(store: TriggerStore) -> list[tuple[str, int, bool, str, bool]]:
    with store.transaction() as db:
        return _answered(decided_firings.fired_by(db, "old"))


async def test_an_sqlite_store_of_an_earlier_version_gains_the_column(tmp_path: Path) -> None:
    path = str(tmp_path / "triggers.db")
    TriggerStore(path).close()
    db = sqlite3.connect(path)
    # The table as the version before kept it: no verdicts.
    db.executescript(
        "DROP TABLE seen_events; CREATE TABLE seen_events (id_key BLOB PRIMARY KEY,"
        " seen_at REAL NOT NULL, fired_json TEXT NOT NULL DEFAULT '', fingerprint BLOB);"
    )
    db.execute(
        "INSERT INTO seen_events (id_key, seen_at, fired_json) VALUES (?, ?, ?)",
        (event_ids.key("old"), time.time(), OLD_FIRED),
    )
    db.commit()
    db.close()
    store = TriggerStore(path)
    try:  # what it fired reads as a run, not a shadow
        assert _old_firing_as_answered(store) == [("inv-1", 1, False, "", False)]
    finally:
        store.close()
    await _shadow_resent_as_first_answered(path, tmp_path)


# The schema step that adds the firings' verdicts.
VERDICTS_STEP: Final = _steps().index(decided_firings.PG_VERDICTS_COLUMN) + 1


async def test_the_verdicts_step_keeps_the_ids_and_old_replicas_working(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    url = postgres.create_database("verdicts")
    assert migrate(url) == (0, schema_version())
    db = connect_postgres(url)
    try:
        # The table as the step before left it, with an id remembered and what it fired.
        db.execute("ALTER TABLE seen_events DROP COLUMN fired_verdicts_json")
        db.execute(
            "INSERT INTO seen_events (id_key, seen_at, fired_json) VALUES (?, ?, ?)",
            (event_ids.key("old"), time.time(), OLD_FIRED),
        )
        db.execute("DELETE FROM cbexec_schema WHERE version >= ?", (VERDICTS_STEP,))
    finally:
        db.close()
    assert migrate(url) == (VERDICTS_STEP - 1, schema_version())
    # A replica of the version before, still running until restarted, keeps what an
    # event fired as it did (its statement names only fired_json).
    old = connect_postgres(url)
    try:
        old.execute(
            "INSERT INTO seen_events (id_key, seen_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (event_ids.key("from-old"), time.time()),
        )
        old.execute(
            "UPDATE seen_events s SET fired_json = d.fired FROM unnest(?::bytea[], ?::text[])"
            " AS d(id_key, fired) WHERE s.id_key = d.id_key",
            ([event_ids.key("from-old")], [OLD_FIRED]),
        )
    finally:
        old.close()
    store = TriggerStore(url)
    try:
        assert _old_firing_as_answered(store) == [("inv-1", 1, False, "", False)]
        with store.transaction() as keyed:
            (firing,) = decided_firings.fired_by(keyed, "from-old")
        assert (firing.invocation_id, firing.refusal, firing.shadow) == ("inv-1", "", False)
    finally:
        store.close()
    await _shadow_resent_as_first_answered(url, tmp_path)
