"""What an event id's first application fired, kept with the id for a resend that waits.

A publisher that resends an event (its call timed out, its replica died) gets it
answered as a repeat: nothing is decided again. A resend with ``wait`` must still answer
only once the callbacks the event fired have run, with their results, which another
replica (or this executor, after a restart) may run: so the transaction that applies an
event with an id writes what it fired into the id's ``seen_events`` row
(``fired_json``), and a waiting repeat reads it back (``TriggerEngine.publish``). The
row goes when the id is forgotten (event_ids.py), as the repeat it answers then would
be a new event. Only what the answer says of each firing is kept (not the callback's
code): its names, and, in a column of its own (``fired_verdicts_json``), why it was
refused or that it runs as a shadow, as judged when it fired. A column of its own so that
a fleet's replicas of an earlier version, which read exactly the names, still can; the
rows they write have no verdicts, read as runs that are neither.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from executor.sql import Db, PgDb
from executor.triggers import event_ids
from executor.triggers.decide import Fired
from executor.triggers.store_rows import EDGE, StoredCallback

# Created with the table on SQLite (store_schema.py); a fleet's PostgreSQL gets them at migrate.
PG_COLUMN: Final = (
    "ALTER TABLE seen_events ADD COLUMN IF NOT EXISTS fired_json TEXT NOT NULL DEFAULT '';"
)
PG_VERDICTS_COLUMN: Final = (
    "ALTER TABLE seen_events ADD COLUMN IF NOT EXISTS fired_verdicts_json TEXT NOT NULL DEFAULT '';"
)


def to_json(fired: Sequence[Fired]) -> str:
    """The stored form of an event's firings' names, in firing order."""
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


def verdicts_json(fired: Sequence[Fired]) -> str:
    """Each firing's [refusal, shadow], in firing order; "" when each runs, not as a shadow.

    The common case keeps no more bytes than the names.
    """
    if not any(each.refusal or each.shadow for each in fired):
        return ""
    return json.dumps([[each.refusal, each.shadow] for each in fired])


def from_json(text: str, verdicts: str = "") -> list[Fired]:
    """``to_json``'s firings again, judged as ``verdicts_json`` kept them.

    Their callbacks hold only what an answer names.
    """
    names = json.loads(text or "[]")
    judged = json.loads(verdicts) if verdicts else [["", False]] * len(names)
    fired = []
    for (invocation_id, job_id, callback_id, triggers, language, universal, work_name), (
        refusal,
        shadow,
    ) in zip(names, judged, strict=True):
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
        fired.append(
            Fired(
                callback,
                str(invocation_id),
                work_name=str(work_name),
                refusal=str(refusal),
                shadow=bool(shadow),
            )
        )
    return fired


def record(db: Db, decided: Sequence[tuple[str, str, str]]) -> None:
    """Keep (event id, ``to_json``, ``verdicts_json``) with each id.

    In the open transaction that saw the id first.
    """
    if not decided:
        return
    if isinstance(db, PgDb):  # one statement (one round trip) for a group's events
        db.execute(
            "UPDATE seen_events s SET fired_json = d.fired, fired_verdicts_json = d.verdicts"
            " FROM unnest(?::bytea[], ?::text[], ?::text[]) AS d(id_key, fired, verdicts)"
            " WHERE s.id_key = d.id_key",
            (
                [event_ids.key(event_id) for event_id, _, _ in decided],
                [fired for _, fired, _ in decided],
                [verdicts for _, _, verdicts in decided],
            ),
        )
    else:
        db.executemany(
            "UPDATE seen_events SET fired_json = ?, fired_verdicts_json = ? WHERE id_key = ?",
            [(fired, verdicts, event_ids.key(event_id)) for event_id, fired, verdicts in decided],
        )


def fired_by(db: Db, event_id: str) -> list[Fired]:
    """What the event with this id fired when it was applied (none: nothing, or forgotten)."""
    row = db.execute(
        "SELECT fired_json, fired_verdicts_json FROM seen_events WHERE id_key = ?",
        (event_ids.key(event_id),),
    ).fetchone()
    return from_json(row[0], row[1]) if row else []
