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
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from supervisor_client.reference.states import Transition

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS event_outbox (
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL,
    name TEXT NOT NULL, type TEXT NOT NULL, job_id INTEGER NOT NULL,
    work_name TEXT NOT NULL, subjob_id INTEGER NOT NULL, host TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class UnsentEvent:
    """A transition's event waiting to be acknowledged, in order (``seq``) with its id."""

    seq: int
    event_id: str
    transition: Transition


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
            "SELECT seq, event_id, name, type, job_id, work_name, subjob_id, host"
            " FROM event_outbox ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            UnsentEvent(row[0], row[1], Transition(row[2], row[3], row[4], row[5], row[6], row[7]))
            for row in rows
        ]

    def remove(self, seqs: list[int]) -> None:
        """Forget events: the executor acknowledged them (or refused them for good)."""
        self._db.executemany("DELETE FROM event_outbox WHERE seq = ?", [(seq,) for seq in seqs])

    def waiting(self) -> bool:
        """Whether any event waits (asked at every removal while ``drain`` waits: no count)."""
        return self._db.execute("SELECT 1 FROM event_outbox LIMIT 1").fetchone() is not None
