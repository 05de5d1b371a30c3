"""Work-item latches of ``{work}`` callbacks: one row per item an event has touched.

A ``{work}`` callback is stored once (store_callbacks.py); each of its work items has its own
latch vector, the events that set its latches, and its count. An item no event has
touched has no row (``WorkState.fresh``), so registering a job of 10,000 frames writes
nothing here, and an event reads the one row of the item it names, by primary key.

Such an item starts from the callback's own latch vector (``unnamed``): the atoms
without ``{work}`` that latched for every item, including the items not known then
(decide.py): those events name later, of a job registered without an agenda, and
those a later registration adds to its agenda. One callback per frame would have
latched them in every frame's callback, named or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from executor.sql import Db, Row
from executor.triggers.evaluate import spent
from executor.triggers.journal import SeenEvent, marks_from_json, marks_to_json
from executor.triggers.nodes import Expr, atoms, per_work

if TYPE_CHECKING:
    from executor.triggers.store_rows import StoredCallback

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS work_latches (
    callback_rowid INTEGER NOT NULL REFERENCES callbacks (rowid) ON DELETE CASCADE,
    work_name TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    latches TEXT NOT NULL,
    latched_by TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (callback_rowid, work_name)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class WorkState:
    """The latches and count of one work item of a ``{work}`` callback."""

    count: int
    latches: tuple[bool, ...]
    latched_by: tuple[SeenEvent | None, ...]

    @classmethod
    def fresh(cls, size: int) -> WorkState:
        """An item no event has touched."""
        return cls(0, (False,) * size, (None,) * size)

    @property
    def untouched(self) -> bool:
        """No count and no latch: the state of an item without a row (``save`` deletes it)."""
        return self.count == 0 and not any(self.latches)

    @classmethod
    def from_row(cls, row: Row, size: int) -> WorkState:
        latches = tuple(bool(x) for x in json.loads(row["latches"]))
        if len(latches) != size:  # the trigger changed under a kept row: start afresh
            return cls(int(row["count"]), (False,) * size, (None,) * size)
        return cls(int(row["count"]), latches, marks_from_json(row["latched_by"], size))


def unnamed(cb: StoredCallback) -> WorkState:
    """The state an item of ``{work}`` callback ``cb`` starts from: the callback's own latches.

    Set by atoms without ``{work}`` for every item, including those no event has named
    yet (no agenda) and those a later registration adds to the agenda.
    """
    return WorkState(0, cb.latches, cb.marks)


def or_unnamed(work: WorkState, cb: StoredCallback) -> WorkState:
    """An item's state as read, or, for an item without a row, ``unnamed``."""
    return unnamed(cb) if work.untouched else work


def state(db: Db, rowid: int, work_name: str, size: int) -> WorkState:
    """An item's state (fresh when no event has touched it)."""
    row = db.execute(
        "SELECT count, latches, latched_by FROM work_latches"
        " WHERE callback_rowid = ? AND work_name = ?",
        (rowid, work_name),
    ).fetchone()
    return WorkState.fresh(size) if row is None else WorkState.from_row(row, size)


def context(
    db: Db, job_id: int, rowid: int, work_name: str, size: int
) -> tuple[bool, bool, WorkState]:
    """An event's one read for the work item it names, of a ``{work}`` callback.

    Whether the job registered an agenda, whether the item is in it (known_states, see
    states.py), and the item's state: ``states.agenda_known``, ``states.in_agenda`` and
    ``state`` in one statement (one round trip on PostgreSQL).
    """
    row = db.execute(
        "SELECT EXISTS (SELECT 1 FROM known_states WHERE job_id = ? AND type = 'work'"
        " AND position >= 0) AS known,"
        " (SELECT position FROM known_states WHERE job_id = ? AND type = 'work' AND item = ?)"
        " AS position, w.count, w.latches, w.latched_by"
        " FROM (SELECT 1 AS one) AS o LEFT JOIN work_latches w"
        " ON w.callback_rowid = ? AND w.work_name = ?",
        (job_id, job_id, work_name, rowid, work_name),
    ).fetchone()
    listed = row["position"] is not None and int(row["position"]) >= 0
    work = WorkState.fresh(size) if row["latches"] is None else WorkState.from_row(row, size)
    return bool(row["known"]), listed, work


def held(db: Db, rowid: int, size: int) -> dict[str, WorkState]:
    """Every item of the callback that holds state (latches or a count)."""
    rows = db.execute(
        "SELECT work_name, count, latches, latched_by FROM work_latches WHERE callback_rowid = ?",
        (rowid,),
    ).fetchall()
    return {str(row["work_name"]): WorkState.from_row(row, size) for row in rows}


def save(db: Db, rowid: int, work_name: str, work: WorkState) -> None:
    """Store an item's state (an untouched item's row goes)."""
    if work.count == 0 and not any(work.latches):
        db.execute(
            "DELETE FROM work_latches WHERE callback_rowid = ? AND work_name = ?",
            (rowid, work_name),
        )
        return
    db.execute(
        "INSERT INTO work_latches (callback_rowid, work_name, count, latches, latched_by)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (callback_rowid, work_name) DO UPDATE SET"
        " count = excluded.count, latches = excluded.latches, latched_by = excluded.latched_by",
        (
            rowid,
            work_name,
            work.count,
            json.dumps(list(work.latches)),
            marks_to_json(work.latched_by),
        ),
    )


def all_spent(db: Db, rowid: int, job_id: int, maximum: int, size: int) -> bool:
    """Whether every item of the job's registered agenda has fired ``maximum`` times.

    False without a maximum or without a registered agenda: an item events have not
    named yet may still fire.
    """
    if maximum <= 0:
        return False
    names = [
        str(row[0])
        for row in db.execute(
            "SELECT item FROM known_states WHERE job_id = ? AND type = 'work' AND position >= 0",
            (job_id,),
        )
    ]
    if not names:
        return False
    counts = {name: work.count for name, work in held(db, rowid, size).items()}
    return all(counts.get(name, 0) >= maximum for name in names)


def callback_spent(db: Db, cb: StoredCallback, expr: Expr) -> bool:
    """Whether a callback can fire no more (a ``{work}`` one: every item of its agenda)."""
    if per_work(expr):
        return all_spent(db, cb.rowid, cb.job_id, cb.maximum, len(atoms(expr)))
    return spent(cb.count, cb.maximum)
