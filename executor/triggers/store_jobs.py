"""Registered jobs in the trigger store: their rows, heads and labels, and their registrations.

A job's row keeps its JSON whole (its agenda, its ``extra``) and, in columns of their
own, what lookups read without parsing it: its pgrp and label (an event's), its
registration's number. A fleet's registrations of one job, and the ``submit`` events of
a job not registered yet, take turns under an advisory lock keyed by the job. Each
function works in its caller's connection (a transaction's, a snapshot's); TriggerStore
offers them under its own name (store.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final

from executor.model import Event
from executor.sql import Db, PgDb, in_lists, row_lock
from executor.triggers import checks, journal, removals, states
from executor.triggers.evaluate import JobPlace
from executor.triggers.store_rows import JobHead, StoredCallback

# The advisory locks a fleet's registrations of one job take turns under
# (``callbacks_to_register``): the two-key form, keyed by this and the job; the migration's
# lock is of the one-key form, which PostgreSQL keeps apart.
_REGISTRATION_LOCK: Final = 0x63627267  # "cbrg"


def place_in(db: Db, job_id: int) -> JobPlace | None:
    """``place`` inside a transaction."""
    row = db.execute("SELECT pgrp, label FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    return None if row is None else JobPlace(job_id, pgrp=int(row[0]), label=str(row[1]))


def callbacks_to_register(db: Db, job_id: int) -> list[StoredCallback]:
    """The job's callbacks as its registration finds them, held until it commits.

    What a registration keeps of the last one (counts, latches, journals, work items)
    is read here, in its own transaction. In a fleet the job's registrations take
    turns under a transaction-scoped advisory lock keyed by the job, taken first, and
    its callback rows are then locked in ascending order:

    * The advisory lock, not a row lock: a job registered for the first time has no
      row to lock yet, and two replicas registering it at once would both take it as
      new (a level ``submit-job-self`` would fire twice). Only the ``submit`` event
      of a job not registered takes it too, before any row lock
      (``submissions_take_turns``), and a registration waiting for it holds nothing
      else, so it adds no deadlock.
    * The rows in ascending order, in one statement, as an event's transaction locks
      the rows it matches (group_reads.matching): an event that latched one of them
      has committed before this reads it, and one that comes later waits for the
      registration and reads what it wrote (a kept row is rewritten in place,
      ``rewrite_callback``); the two orders agree, so they take turns and never
      deadlock. (The other jobs' level callbacks a first
      registration latches, ``registration.take_registration``, are locked after
      these, but a first registration has no rows of its own an event could hold.)

    On SQLite the transaction is the file's only writer already: a plain read.
    """
    if isinstance(db, PgDb):
        db.execute(
            "SELECT pg_advisory_xact_lock(?::integer, ?::integer)",
            (_REGISTRATION_LOCK, _as_int4(job_id)),
        )
    rows = db.execute(
        f"SELECT * FROM callbacks WHERE job_id = ? ORDER BY rowid{row_lock(db)}",  # noqa: S608 - a clause of ours
        (job_id,),
    ).fetchall()
    return sorted((StoredCallback.from_row(row) for row in rows), key=lambda cb: cb.callback_id)


def submissions_take_turns(db: Db, events: Iterable[Event]) -> None:
    """In a fleet, the events' ``submit`` of jobs not registered wait for their registrations.

    The first registration of a job and its ``submit`` event are one submission: the
    registration latches the other jobs' level callbacks naming it unless the event
    came first and left its submission remembered (``registration.take_registration``).
    At two replicas at once each could miss the other (the event reads the job as not
    registered while its registration latches; the registration reads no remembered
    submission while the event's transaction latches), and a watcher's level
    ``submit-job-<id>`` fired twice. So such an event takes the job's registration
    lock (``callbacks_to_register``) and the two take turns; the event's reads come
    after it, so it finds the job registered if its registration went first.

    It must be the transaction's first statement: the locks are taken before any row
    lock (in ascending order, as a group may hold several), so waiting for one never
    closes a cycle. A job registered already takes no lock (its registrations took
    its submission; the event takes nothing from level callbacks). SQLite: nothing
    to do, its transaction is the file's only writer.
    """
    if not isinstance(db, PgDb):
        return
    submitted = sorted(
        {e.job_id for e in events if e.name == "submit" and e.type == "job" and e.job_id > 0}
    )
    if not submitted:
        return
    db.execute(
        "SELECT count(pg_advisory_xact_lock(?::integer, s.k)) FROM (SELECT DISTINCT t.k"
        " FROM unnest(?::bigint[], ?::integer[]) AS t(job_id, k) WHERE NOT EXISTS"
        " (SELECT 1 FROM jobs j WHERE j.job_id = t.job_id) ORDER BY t.k) AS s",
        (_REGISTRATION_LOCK, submitted, [_as_int4(job_id) for job_id in submitted]),
    ).fetchone()


def count_jobs_in(db: Db) -> int:
    """``count_jobs`` on ``db``."""
    return int(db.execute("SELECT count(*) FROM jobs").fetchone()[0])


def heads_in(db: Db, *, limit: int, before: int = 0) -> list[JobHead]:
    """Registered jobs' heads, newest id first: at most ``limit``, ids below ``before`` if set."""
    return _heads(db, "? = 0 OR job_id < ?", (before, before), limit)


def head_in(db: Db, job_id: int) -> JobHead | None:
    """The job's head (``heads_in``); None when it is not registered."""
    heads = _heads(db, "job_id = ?", (job_id,), 1)
    return heads[0] if heads else None


def _heads(db: Db, where: str, params: tuple[Any, ...], limit: int) -> list[JobHead]:
    """The jobs' heads, newest first: their columns, and their pid, name and user.

    The database takes those three out of the job's JSON: ``json.loads`` of a big
    job's (a million work items: ~74 MB, about a second) holds the GIL throughout, so
    on a worker thread too it stops the event loop, while SQLite's parser runs with
    the GIL released and PostgreSQL's in the server. Each comes back as JSON (a NUL,
    say, stays escaped).
    """
    if isinstance(db, PgDb):
        # One jsonb parse a job: OFFSET 0 keeps the planner from inlining the cast
        # into each field's expression, and it runs only for the jobs the LIMIT keeps.
        sql = (
            "SELECT j.job_id, j.pgrp, j.label,"  # noqa: S608 - a condition of ours
            " jsonb_build_array(p.h -> 'pid', p.h -> 'name', p.h -> 'user')::text"
            f" FROM (SELECT job_id FROM jobs WHERE {where} ORDER BY job_id DESC LIMIT ?)"
            " AS picked JOIN jobs j ON j.job_id = picked.job_id"
            " CROSS JOIN LATERAL (SELECT j.job_json::jsonb AS h OFFSET 0) AS p"
            " ORDER BY j.job_id DESC"
        )
    else:
        sql = (
            "SELECT job_id, pgrp, label,"  # noqa: S608 - a condition of ours
            " json_extract(job_json, '$.pid', '$.name', '$.user')"
            f" FROM jobs WHERE {where} ORDER BY job_id DESC LIMIT ?"
        )
    heads = []
    for row in db.execute(sql, (*params, limit)).fetchall():
        pid, name, user = json.loads(row[3])
        heads.append(
            JobHead(
                int(row[0]),
                int(row[1]),
                str(row[2]),
                int(pid or 0),
                str(name or ""),
                str(user or ""),
            )
        )
    return heads


def job_in(db: Db, job_id: int) -> dict[str, Any] | None:
    """``job`` inside a transaction or on a snapshot."""
    row = db.execute("SELECT job_json FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    return json.loads(row["job_json"]) if row else None


def labels_of(db: Db, pgrp: int) -> dict[str, int]:
    """``labels_in`` inside a transaction."""
    rows = db.execute(
        "SELECT label, job_id FROM jobs WHERE pgrp = ? AND label != '' ORDER BY label",
        (pgrp,),
    ).fetchall()
    return {str(row[0]): int(row[1]) for row in rows}


def labels_among(db: Db, pgrp: int, labels: Iterable[str]) -> dict[str, int]:
    """``labels_of`` for the ``labels`` given only: an index lookup each, not the whole pgrp."""
    found: dict[str, int] = {}
    for chunk, marks in in_lists(sorted({label for label in labels if label})):
        rows = db.execute(
            "SELECT label, job_id FROM jobs WHERE pgrp = ? AND label != ''"  # noqa: S608 - placeholders only
            f" AND label IN ({marks}) ORDER BY label",
            (pgrp, *chunk),
        ).fetchall()
        found.update((str(row[0]), int(row[1])) for row in rows)
    return found


def put_job(db: Db, job: dict[str, Any]) -> int:
    """Store a job (its callbacks apart) as a new registration of it; the registration's number."""
    registration = next_registration(db)
    db.execute(
        "INSERT INTO jobs (job_id, pgrp, label, job_json, registration) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (job_id) DO UPDATE SET pgrp = excluded.pgrp, label = excluded.label, "
        "job_json = excluded.job_json, registration = excluded.registration",
        (
            int(job["id"]),
            int(job.get("pgrp") or job["id"]),
            str(job.get("label") or ""),
            json.dumps(job),
            registration,
        ),
    )
    return registration


def next_registration(db: Db) -> int:
    """A number no registration of any job had before (in the open transaction).

    What tells two registrations of one job apart (ExplainCallbacks' pages name it):
    PostgreSQL's sequence, whose numbers no transaction waits for and no rollback
    gives back; SQLite's counter row (``SQLITE_REGISTRATION_COUNTER``).
    """
    if isinstance(db, PgDb):
        return int(db.execute("SELECT nextval('job_registrations')").fetchone()[0])
    row = db.execute(
        "INSERT INTO registration_counter (id, last) VALUES (1, 1)"
        " ON CONFLICT (id) DO UPDATE SET last = last + 1 RETURNING last"
    ).fetchone()
    return int(row[0])


def registration_in(db: Db, job_id: int) -> int | None:
    """The number of the job's registration as it stands; None when it is not registered."""
    row = db.execute("SELECT registration FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    return int(row[0]) if row else None


def remove_job(db: Db, job_id: int) -> None:
    """The job's row and its callbacks' (their atoms, timers and work latches cascade)."""
    db.execute("DELETE FROM callbacks WHERE job_id = ?", (job_id,))
    db.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))


def forget_job(db: Db, job_id: int, at: float) -> None:
    """Every row a job ``removed`` (at ``at``) leaves, in the caller's transaction.

    ``remove_job``, and its known states, remembered submission, registration checks
    and journal: nothing reads them once the job is gone (``why`` answers NOT_FOUND),
    and a job registered again under its id starts without them. Its queued firings
    stay (they run as decided, then leave the queue), and so do its events' ids
    (``event_ids``: a resent ``removed`` is still a repeat), and the latches its
    events set in other jobs' callbacks, until its id is registered again: the time
    of its removal is remembered for that (``removals``).
    """
    removals.remember(db, job_id, at)
    remove_job(db, job_id)
    states.forget_job(db, job_id)
    states.forget_submission(db, job_id)
    checks.forget_job(db, job_id)
    journal.forget_job(db, job_id)


def _as_int4(job_id: int) -> int:
    """A job id folded into PostgreSQL's integer, an advisory lock's key.

    Two ids that fold alike only make their registrations take turns.
    """
    return (job_id + 2**31) % 2**32 - 2**31
