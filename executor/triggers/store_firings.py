"""The trigger store's firing queue, in a transaction: a firing queued, its batch claimed.

What an event's or a tick's transaction writes to the queue and reads of it; the
statements outside a transaction (the queue restored at start, a firing done, a fleet's
leases renewed and claims taken over) are TriggerStore's, on its connection (store.py).
"""

from __future__ import annotations

import json
import time

from executor.model import Event
from executor.sql import Db
from executor.triggers.store_rows import PendingFiring


def queue_firing(db: Db, firing: PendingFiring) -> None:
    db.execute(
        "INSERT INTO firings (invocation_id, callback_rowid, event_json, decided_at, batch,"
        " snapshot_json) VALUES (?, ?, ?, ?, ?, ?)",
        (
            firing.invocation_id,
            firing.callback.rowid,
            json.dumps(firing.event.as_dict()),
            time.time(),
            firing.batch,
            firing.snapshot(),
        ),
    )


def own_batch(db: Db, batch: str, owner: str, lease_until: float) -> None:
    """Claim the firings an event just queued for the replica that decided them."""
    db.execute(
        "UPDATE firings SET owner = ?, lease_until = ? WHERE batch = ?",
        (owner, lease_until, batch),
    )


def unfinished_firing(db: Db, rowid: int, event: Event) -> str | None:
    """The invocation id of a firing of a callback by ``event`` still queued or running.

    A repeat's tick reads it in the transaction that decides the tick (in a fleet, the
    shared queue: another replica's firing counts), so a slow callback's ticks coalesce.
    """
    rows = db.execute(
        "SELECT invocation_id, event_json FROM firings WHERE callback_rowid = ? ORDER BY seq",
        (rowid,),
    ).fetchall()
    for row in rows:
        if Event.from_dict(json.loads(row[1])) == event:
            return str(row[0])
    return None
