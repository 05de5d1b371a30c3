"""What an event id's first application fired, kept with the id for a resend that waits.

A publisher that resends an event (its call timed out, its replica died) gets it
answered as a repeat: nothing is decided again. A resend with ``wait`` must still answer
only once the callbacks the event fired have run, with their results, which another
replica (or this executor, after a restart) may run: so the transaction that applies an
event with an id writes what it fired into the id's ``seen_events`` row
(``fired_json``), and a waiting repeat reads it back (``TriggerEngine.publish``). The
row goes when the id is forgotten (event_ids.py), as the repeat it answers then would
be a new event. Only what the answer names is kept (not the callback's code).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from executor.sql import Db, PgDb
from executor.triggers import event_ids
from executor.triggers.decide import Fired
from executor.triggers.store import EDGE, StoredCallback

# Created with the table on SQLite (store.py); a fleet's PostgreSQL gets it at migrate.
PG_COLUMN: Final = (
    "ALTER TABLE seen_events ADD COLUMN IF NOT EXISTS fired_json TEXT NOT NULL DEFAULT '';"
)


def to_json(fired: Sequence[Fired]) -> str:
    """The stored form of an event's firings, in firing order."""
    return json.dumps(
        [
            [
                each.invocation_id,
                each.callback.job_id,
                each.callback.callback_id,
                each.callback.triggers,
                each.callback.language,
                each.callback.universal,
                each.work_name,
            ]
            for each in fired
        ]
    )


def from_json(text: str) -> list[Fired]:
    """``to_json``'s firings again; their callbacks hold only what an answer names."""
    fired = []
    for invocation_id, job_id, callback_id, triggers, language, universal, work_name in json.loads(
        text or "[]"
    ):
        callback = StoredCallback(
            rowid=0,
            job_id=int(job_id),
            callback_id=int(callback_id),
            triggers=str(triggers),
            language=str(language),
            code="",
            user="",
            count=0,
            maximum=0,
            latches=(),
            universal=bool(universal),
            source="",
            mode=EDGE,
        )
        fired.append(Fired(callback, str(invocation_id), work_name=str(work_name)))
    return fired


def record(db: Db, decided: Sequence[tuple[str, str]]) -> None:
    """Keep (event id, ``to_json``) with each id, in the open transaction that saw it first."""
    if not decided:
        return
    if isinstance(db, PgDb):  # one statement (one round trip) for a group's events
        db.execute(
            "UPDATE seen_events s SET fired_json = d.fired FROM unnest(?::bytea[], ?::text[])"
            " AS d(id_key, fired) WHERE s.id_key = d.id_key",
            ([event_ids.key(event_id) for event_id, _ in decided], [f for _, f in decided]),
        )
    else:
        db.executemany(
            "UPDATE seen_events SET fired_json = ? WHERE id_key = ?",
            [(fired, event_ids.key(event_id)) for event_id, fired in decided],
        )


def fired_by(db: Db, event_id: str) -> list[Fired]:
    """What the event with this id fired when it was applied (none: nothing, or forgotten)."""
    row = db.execute(
        "SELECT fired_json FROM seen_events WHERE id_key = ?", (event_ids.key(event_id),)
    ).fetchone()
    return from_json(row[0]) if row else []
