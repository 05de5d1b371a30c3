"""An event's first read in the trigger store: whether its id was seen before, and its job.

An event's id is remembered (``event_ids``: its key, with its event's fingerprint) in
the transaction that applies it, so a repeat is recognized after a restart too.
"""

from __future__ import annotations

import time
from typing import Any

from executor.sql import Db, PgDb
from executor.triggers import event_ids, store_jobs
from executor.triggers.evaluate import JobPlace
from executor.triggers.store_rows import Sighting


def sighting(
    db: Db,
    event_id: str,
    job_id: int,
    also: tuple[str, tuple[Any, ...]] | None = None,
    fingerprint: bytes | None = None,
) -> Sighting:
    """``first_sighting`` (True when there is no id) and the job's ``place``, together.

    On PostgreSQL one statement (one round trip): the insert is a CTE of the read,
    and ``also`` (a subquery and its parameters, over the job's row ``j``) is read
    with them. On SQLite ``also`` is not read (None). A repeat's ``earlier`` is the
    fingerprint kept with its id; on PostgreSQL None when the statement could not
    see the row (another transaction committed it meanwhile).
    """
    if not isinstance(db, PgDb):
        if event_id and not first_sighting(db, event_id, fingerprint):
            row = db.execute(
                "SELECT fingerprint FROM seen_events WHERE id_key = ?",
                (event_ids.key(event_id),),
            ).fetchone()
            return Sighting(False, None, earlier=bytes(row[0] or b"") if row else b"")
        return Sighting(True, store_jobs.place_in(db, job_id))
    extra_sql, extra_params = also or ("NULL", ())
    key = event_ids.key(event_id)
    row = db.execute(
        "WITH seen AS (INSERT INTO seen_events (id_key, seen_at, fingerprint)"  # noqa: S608 - a subquery of ours
        " SELECT ?, ?, ? WHERE ? != '' ON CONFLICT DO NOTHING RETURNING 1)"
        f" SELECT ? = '' OR EXISTS (SELECT 1 FROM seen), j.pgrp, j.label, {extra_sql},"
        # A repeat's fingerprint, as the statement's snapshot has it (not a new row's).
        " (SELECT coalesce(s.fingerprint, ''::bytea) FROM seen_events s WHERE s.id_key = ?)"
        " FROM (SELECT 1) AS one LEFT JOIN jobs j ON j.job_id = ?",
        (key, time.time(), fingerprint, event_id, event_id, *extra_params, key, job_id),
    ).fetchone()
    place = None if row[1] is None else JobPlace(job_id, pgrp=int(row[1]), label=str(row[2]))
    earlier = None if row[0] or row[4] is None else bytes(row[4])
    return Sighting(bool(row[0]), place, row[3] if also else None, earlier)


def first_sighting(db: Db, event_id: str, fingerprint: bytes | None = None) -> bool:
    """Record an event id (its ``event_ids.key``) with its event's ``fingerprint``.

    False when it had been seen (a repeat).
    """
    cursor = db.execute(
        "INSERT INTO seen_events (id_key, seen_at, fingerprint) VALUES (?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (event_ids.key(event_id), time.time(), fingerprint),
    )
    return bool(cursor.rowcount == 1)
