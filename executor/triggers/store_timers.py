"""Clock atoms' timers in the trigger store: when each callback's clocks are next due.

A callback's timer rows go with its row (they cascade); a kept callback's clocks run on
through its registrations as they were. Each function works in its caller's connection;
TriggerStore offers them under its own name (store.py), with ``next_timer_due``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from executor.sql import Db, in_lists, row_lock


def replace_timers(db: Db, rowid: int, timers: Iterable[tuple[int, float]]) -> None:
    """Start a callback's clocks afresh: ``timers`` (slot, first due) replace its own."""
    drop_timers(db, rowid)
    db.executemany(
        "INSERT INTO timers (callback_rowid, slot, due) VALUES (?, ?, ?)",
        [(rowid, slot, due) for slot, due in timers],
    )


def due_timers(db: Db, now: float) -> list[tuple[int, int, float]]:
    return [
        (row[0], row[1], row[2])
        for row in db.execute(
            "SELECT callback_rowid, slot, due FROM timers WHERE due <= ? ORDER BY due"  # noqa: S608
            + row_lock(db, skip_locked=True),
            (now,),
        )
    ]


def universal_clocks(db: Db) -> list[tuple[int, str, str]]:
    """(rowid, source, triggers) of each universal callback, of any job, whose clocks run."""
    rows = db.execute(
        "SELECT rowid, source, triggers FROM callbacks WHERE universal = 1"
        " AND rowid IN (SELECT callback_rowid FROM timers) ORDER BY rowid"
    ).fetchall()
    return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]


def universal_repeats_stopped(db: Db) -> list[tuple[int, str, str]]:
    """(rowid, source, triggers) of each universal callback with a repeat and no clock running.

    A cheap cut (a repeat atom's name holds "repeat"); the caller parses the trigger.
    """
    rows = db.execute(
        "SELECT rowid, source, triggers FROM callbacks WHERE universal = 1"
        " AND triggers LIKE '%repeat%'"
        " AND rowid NOT IN (SELECT callback_rowid FROM timers) ORDER BY rowid"
    ).fetchall()
    return [(int(row[0]), str(row[1]), str(row[2])) for row in rows]


def drop_timers_of(db: Db, rowids: Collection[int]) -> None:
    """``drop_timers`` of many callbacks."""
    for part, marks in in_lists(sorted(rowids)):
        db.execute(f"DELETE FROM timers WHERE callback_rowid IN ({marks})", part)  # noqa: S608 - marks only


def timer_slots(db: Db, rowid: int) -> set[int]:
    """The slots of a callback's clocks that run."""
    rows = db.execute("SELECT slot FROM timers WHERE callback_rowid = ?", (rowid,))
    return {int(row[0]) for row in rows}


def timers_of(db: Db, rowid: int) -> dict[int, float]:
    """A callback's running clocks: slot -> when it is next due (Unix seconds)."""
    rows = db.execute("SELECT slot, due FROM timers WHERE callback_rowid = ?", (rowid,))
    return {int(row[0]): float(row[1]) for row in rows}


def add_timer(db: Db, rowid: int, slot: int, due: float) -> None:
    """Start one clock of a callback."""
    db.execute(
        "INSERT INTO timers (callback_rowid, slot, due) VALUES (?, ?, ?)", (rowid, slot, due)
    )


def drop_timers(db: Db, rowid: int) -> None:
    """Stop every clock atom of a callback (spent: it can fire no more)."""
    db.execute("DELETE FROM timers WHERE callback_rowid = ?", (rowid,))


def reschedule_timer(db: Db, rowid: int, slot: int, due: float | None) -> None:
    if due is None:
        db.execute("DELETE FROM timers WHERE callback_rowid = ? AND slot = ?", (rowid, slot))
    else:
        db.execute(
            "UPDATE timers SET due = ? WHERE callback_rowid = ? AND slot = ?",
            (due, rowid, slot),
        )
