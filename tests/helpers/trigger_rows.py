"""What a job leaves in the trigger store's tables, read from the real database (SQLite or PostgreSQL)."""

from __future__ import annotations

import re
import time
from collections.abc import Collection
from typing import Any

from executor.model import Event
from executor.sql import Db, PgDb
from executor.triggers.engine import TriggerEngine
from executor.triggers.event_ids import key as id_key
from executor.triggers.store import TriggerStore
from executor.triggers.store_schema import FULL_SCHEMA, SQLITE_REGISTRATION_COUNTER

# Qube's clock counts from 2000-01-01 (local midnight on the farm's machines).
_QUBE_EPOCH = 946702800

# Tables that name no job, directly or through a callback: the ids of events (bounded by
# their age, event_ids.py), and SQLite's counter of registrations (one row).
NOT_PER_JOB = frozenset({"seen_events", "registration_counter"})
# Tables a removal writes, not clears: when each job was removed (bounded by their number,
# removals.py), so its id registered again is told apart from it.
LEFT_BY_REMOVAL = frozenset({"removed_jobs"})


def store_tables() -> list[str]:
    """Every table of the trigger store, as its schema creates them."""
    return re.findall(
        r"CREATE TABLE IF NOT EXISTS (\w+)", FULL_SCHEMA + SQLITE_REGISTRATION_COUNTER
    )


def _columns(db: Db, table: str) -> set[str]:
    if isinstance(db, PgDb):
        rows = db.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchall()
        return {str(row[0]) for row in rows}
    return {str(row[1]) for row in db.execute(f"PRAGMA table_info({table})")}


def callback_rowids(store: TriggerStore, job_ids: Collection[int]) -> set[int]:
    """The rows of the jobs' callbacks (to find their atoms, timers, latches and firings)."""
    with store.outside_transaction() as db:
        return {
            int(row[0])
            for job_id in job_ids
            for row in db.execute("SELECT rowid FROM callbacks WHERE job_id = ?", (job_id,))
        }


def rows_of(
    store: TriggerStore, job_ids: Collection[int], rowids: Collection[int]
) -> dict[str, int]:
    """Per table of the store, how many of its rows belong to the jobs (by job id or callback row).

    Raises AssertionError for a table that names neither and is not ``NOT_PER_JOB``: a new
    table must say how its rows go with their job.
    """
    counts: dict[str, int] = {}
    with store.outside_transaction() as db:
        for table in store_tables():
            if table in LEFT_BY_REMOVAL:
                continue
            columns = _columns(db, table)
            if "job_id" in columns:
                column, keys = "job_id", sorted(job_ids)
            elif "callback_rowid" in columns:
                column, keys = "callback_rowid", sorted(rowids)
            else:
                assert table in NOT_PER_JOB, f"{table}: neither job_id nor callback_rowid"
                continue
            if not keys:
                counts[table] = 0
                continue
            marks = ",".join("?" * len(keys))
            row: Any = db.execute(
                f"SELECT count(*) FROM {table} WHERE {column} IN ({marks})",  # noqa: S608 - our names
                keys,
            ).fetchone()
            counts[table] = int(row[0])
    return counts


def seen_ids(store: TriggerStore) -> set[bytes]:
    """The keys of the event ids the store remembers (``keys`` of the ids)."""
    with store.outside_transaction() as db:
        return {bytes(row[0]) for row in db.execute("SELECT id_key FROM seen_events")}


def keys(*event_ids: str) -> set[bytes]:
    """What ``seen_ids`` reads for these ids."""
    return {id_key(event_id) for event_id in event_ids}


def seen_in_order(store: TriggerStore) -> list[bytes]:
    """The keys of the event ids the store remembers, in the order it applied their events.

    SQLite only: ``seen_events`` keys on the id's key; its rowid is SQLite's, one above
    the largest at each insert, so it counts the events in the order their transactions
    wrote them.
    """
    with store.outside_transaction() as db:
        return [
            bytes(row[0]) for row in db.execute("SELECT id_key FROM seen_events ORDER BY rowid")
        ]


async def a_job_in_every_table(engine: TriggerEngine) -> tuple[tuple[int, ...], set[int]]:
    """Jobs with a row in every per-job table; (their ids, their callbacks' rows).

    Job 7 (registered): its callbacks and their atoms, a timer, a ``{work}`` item's
    latches, a registration check (a label no job holds), a known state and journal
    entries; a callback that fires when it is removed (a firing). Job 8 (never
    registered): a remembered submission.
    """
    later = int(time.time()) - _QUBE_EPOCH + 10 * 86400
    agenda = [{"name": frame, "status": "pending"} for frame in ("1", "2")]
    engine.register_job(
        {
            "id": 7,
            "pgrp": 7,
            "label": "comp",
            "agenda": agenda,
            "callbacks": [
                {"triggers": t, "language": "qube", "code": "x"}
                for t in (
                    "complete-work-self-{work} && failed-job-self",
                    "complete-work-ribgn-*",
                    f"dummy-time-self-{later}",
                    "removed-job-self",
                )
            ],
        }
    )
    await engine.publish(Event("complete", "work", 7, work_name="1", event_id="w1"), wait=True)
    await engine.publish(Event("submit", "job", 8, event_id="s8"), wait=True)
    return (7, 8), callback_rowids(engine.store, [7])


def id_bytes(store: TriggerStore) -> int:
    """What the remembered event ids take of the store: ``seen_events`` and its indexes."""
    with store.snapshot() as db:
        if isinstance(db, PgDb):
            row: Any = db.execute("SELECT pg_total_relation_size('seen_events')").fetchone()
        else:
            row = db.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN"
                " (SELECT name FROM sqlite_master WHERE tbl_name = 'seen_events')"
            ).fetchone()
    return int(row[0])
