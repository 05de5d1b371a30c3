"""Events not yet forwarded: the reference supervisor's transactional outbox of transitions.

Each transition's event is written to ``event_outbox`` in the transaction that made the
change (store.py), so an executor stopped or killed right after a change still gets its
event: the forwarder sends the rows oldest first and deletes them once the executor has
acknowledged them (forwarder.py), and at the next start sends what is left. A row that was
sent but not yet deleted when the process died is sent again with the same event id,
which the trigger engine acknowledges and ignores (PublishEvent is idempotent per
``event_id``).

The event id is a random UUID kept in the row, not the row's number: a supervisor.db
moved aside numbers its rows from 1 again, while the trigger engine remembers every
event id it has seen, and would ignore a reused one.

The forwarder reads the rows job by job (``in_turn``), not oldest first across all jobs:
one verb on a 100,000-frame job keeps 100,000 rows, and read by ``seq`` alone they held
every other job's events back until the last was sent (probe 68). Each job's rows are
still read oldest first, and a job's later rows only once its earlier ones are removed.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

from supervisor_client.reference.states import Transition

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS event_outbox (
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL,
    name TEXT NOT NULL, type TEXT NOT NULL, job_id INTEGER NOT NULL,
    work_name TEXT NOT NULL, subjob_id INTEGER NOT NULL, host TEXT NOT NULL
);
-- A job's rows in order (seq, the rowid, is every index's last key): ``in_turn`` reads
-- from any job on without scanning the rows of the jobs before it.
CREATE INDEX IF NOT EXISTS event_outbox_by_job ON event_outbox (job_id);
"""
_COLUMNS: Final = "seq, event_id, name, type, job_id, work_name, subjob_id, host"
# The jobs left out of a read, as one JSON array: any number of them in one parameter.
_NOT_LEFT_OUT: Final = "job_id NOT IN (SELECT value FROM json_each(?))"
# A turn's two reads: the jobs after the one the last turn ended at, then round again.
_JOBS_AFTER: Final = (
    f"SELECT {_COLUMNS} FROM event_outbox WHERE job_id > ? AND {_NOT_LEFT_OUT}"  # noqa: S608 - ours
    " ORDER BY job_id, seq LIMIT ?"
)
_JOBS_UP_TO: Final = (
    f"SELECT {_COLUMNS} FROM event_outbox WHERE job_id <= ? AND {_NOT_LEFT_OUT}"  # noqa: S608 - ours
    " ORDER BY job_id, seq LIMIT ?"
)


@dataclass(frozen=True, slots=True)
class UnsentEvent:
    """A transition's event waiting to be acknowledged, in order (``seq``) with its id."""

    seq: int
    event_id: str
    transition: Transition


@dataclass(frozen=True, slots=True)
class Turn:
    """Events read job by job (``EventOutbox.in_turn``), oldest first, and where the read ended.

    ``last_job``: the job whose events were read last; the next turn begins after it.
    """

    events: list[UnsentEvent]
    last_job: int


class EventOutbox:
    """The ``event_outbox`` table of one supervisor database (used under its lock)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        db.executescript(SCHEMA)

    def add(self, transitions: Iterable[Transition]) -> None:
        """Keep the transitions' events, each with a new event id (inside the change's transaction)."""
        self._db.executemany(
            "INSERT INTO event_outbox (event_id, name, type, job_id, work_name, subjob_id, host)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (uuid.uuid4().hex, t.name, t.type, t.job_id, t.work_name, t.subjob_id, t.host)
                for t in transitions
            ],
        )

    def oldest(self, limit: int) -> list[UnsentEvent]:
        """Up to ``limit`` events not yet removed, oldest first."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM event_outbox ORDER BY seq LIMIT ?",  # noqa: S608 - ours
            (limit,),
        ).fetchall()
        return [_event(row) for row in rows]

    def in_turn(self, after_job: int, limit: int, left_out: Collection[int] = ()) -> Turn:
        """Up to ``limit`` events, job by job from the first job after ``after_job``.

        The jobs are taken in id order, wrapping round to the lowest after the highest,
        each with its oldest events, as many as the batch still has room for. So a job
        with a backlog of any size fills a batch at most, and the next turn begins with
        the jobs after it. The events come back oldest first (``seq``): each job's in its
        own order, and all of them in the order they were kept when they fit in one turn.
        The jobs in ``left_out`` are passed over (their events wait for the trigger
        store's room: forwarder.py).
        """
        skip = json.dumps(sorted(left_out))
        rows = self._db.execute(_JOBS_AFTER, (after_job, skip, limit)).fetchall()
        if len(rows) < limit:  # round again, up to and including the job it began after
            rows += self._db.execute(_JOBS_UP_TO, (after_job, skip, limit - len(rows))).fetchall()
        if not rows:
            return Turn([], after_job)
        return Turn(sorted((_event(row) for row in rows), key=_seq), rows[-1][4])

    def remove(self, seqs: list[int]) -> None:
        """Forget events: the executor acknowledged them (or refused them for good)."""
        self._db.executemany("DELETE FROM event_outbox WHERE seq = ?", [(seq,) for seq in seqs])

    def waiting(self, left_out: Collection[int] = ()) -> bool:
        """Whether any event of a job not in ``left_out`` waits (no count: ``drain`` asks often)."""
        return (
            self._db.execute(
                f"SELECT 1 FROM event_outbox WHERE {_NOT_LEFT_OUT} LIMIT 1",  # noqa: S608 - ours
                (json.dumps(sorted(left_out)),),
            ).fetchone()
            is not None
        )


def _event(row: tuple[Any, ...]) -> UnsentEvent:
    return UnsentEvent(row[0], row[1], Transition(row[2], row[3], row[4], row[5], row[6], row[7]))


def _seq(event: UnsentEvent) -> int:
    return event.seq
