"""Each registration of a job is told apart, on PostgreSQL as on SQLite, so no answer mixes two.

ExplainCallbacks' pages name the registration of the job the first page described; a job
registered again since (a farm does so at every retry) is refused rather than explained
half from one registration and half from another.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any, Final

import pytest

from executor.errors import ChangedMeanwhileError
from executor.migrations import _steps, migrate, schema_version
from executor.model import Event
from executor.sql import connect_postgres, is_postgres
from executor.triggers.store import TriggerStore
from tests.helpers.trigger_engines import MakeEngine

pytestmark = pytest.mark.service


# The PostgreSQL schema step that numbers the registrations.
REGISTRATIONS_STEP: Final = next(
    n for n, ddl in enumerate(_steps(), 1) if "job_registrations" in ddl
)


def own(job_id: int, count: int, event: str = "complete") -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": job_id,
        "callbacks": [
            {"triggers": f"{event}-work-self-{n}", "language": "qube", "code": "unblock-self"}
            for n in range(count)
        ],
    }


def registrations(store: TriggerStore, *job_ids: int) -> list[int | None]:
    with store.snapshot() as db:
        return [TriggerStore.registration_in(db, job_id) for job_id in job_ids]


async def test_the_pages_of_a_job_registered_again_meanwhile_are_refused(
    engines: MakeEngine,
) -> None:
    engine = engines()
    engine.register_job(own(5, 5))
    first = engine.explain(5, limit=2)
    assert first.registration > 0 and first.next_after_callback_id == 2
    second = engine.explain(5, after_callback_id=2, limit=2, registration=first.registration)
    assert [cb.callback.callback_id for cb in second.callbacks] == [3, 4]

    engine.register_job(own(5, 3, "done"))  # a farm's retry: other callbacks
    with pytest.raises(ChangedMeanwhileError, match="job 5 was registered again since the first"):
        engine.explain(5, after_callback_id=2, limit=2, registration=first.registration)
    again = engine.explain(5, limit=2)
    assert again.registration not in (0, first.registration)
    last = engine.explain(5, after_callback_id=2, limit=2, registration=again.registration)
    assert [cb.callback.triggers for cb in last.callbacks] == ["done-work-self-2"]

    # Removed, then registered again: still a number no registration of it had.
    await engine.publish(Event("removed", "job", 5), wait=True)
    assert registrations(engine.store, 5) == [None]
    engine.register_job(own(5, 5))
    assert engine.explain(5).registration not in (0, first.registration, again.registration)


async def test_jobs_registered_before_registrations_were_numbered_get_numbers_of_their_own(
    either_store: str, engines: MakeEngine
) -> None:
    engine = engines(start=False)
    for job_id in (5, 6, 7):
        engine.register_job(own(job_id, 1))
    await engine.close()
    engine.store.close()
    # The store as the version before left it: no numbers, nothing to draw them from.
    if is_postgres(either_store):
        pg = connect_postgres(either_store)
        try:
            pg.execute("ALTER TABLE jobs DROP COLUMN registration")
            pg.execute("DROP SEQUENCE job_registrations")
            pg.execute("DELETE FROM cbexec_schema WHERE version >= ?", (REGISTRATIONS_STEP,))
        finally:
            pg.close()
        assert migrate(either_store) == (REGISTRATIONS_STEP - 1, schema_version())
        assert migrate(either_store) == (schema_version(), schema_version())  # idempotent
    else:
        with contextlib.closing(sqlite3.connect(either_store)) as db:
            db.execute("ALTER TABLE jobs DROP COLUMN registration")
            db.execute("DROP TABLE registration_counter")
            db.commit()

    upgraded = engines(start=False)
    numbered = registrations(upgraded.store, 5, 6, 7)
    assert 0 not in numbered and None not in numbered and len(set(numbered)) == 3
    upgraded.register_job(own(8, 1))
    upgraded.register_job(own(5, 2))
    later = registrations(upgraded.store, 8, 5)
    assert not set(later) & set(numbered) and len(set(later)) == 2
    assert registrations(upgraded.store, 6, 7) == numbered[1:]  # the others keep theirs
