"""Registered callbacks in the trigger store: their rows, their atom index, their latches.

The atom index holds each atom under its ``AtomKey`` (event name, type, scope, extra),
and an event reads the rows under its keys; ``evaluate.atom_key`` and
``evaluate.event_keys`` say what the keys are. An event reads only the rows that can
match it, so matching cost does not grow with callbacks that cannot match. A ``{work}``
callback is one callback with one set of index rows whatever its job's agenda; its
per-item latches are rows of their own (items.py), read by primary key for the item an
event names (so its cost does not grow with the items that cannot match either).
Label atoms also carry their pgrp and label, for the near-miss lookups (near_misses.py).
Each function works in its caller's connection; TriggerStore offers them under its own
name (store.py).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from executor.sql import Db, in_lists, marks_for, row_lock
from executor.triggers.evaluate import AtomKey, scope_label
from executor.triggers.journal import SeenEvent, marks_to_json
from executor.triggers.store_rows import EDGE, LEVEL, NewAtom, StoredCallback


def callbacks_in(db: Db, job_id: int) -> list[StoredCallback]:
    """``callbacks_of`` on ``db`` (a transaction's, a snapshot's)."""
    rows = db.execute(
        "SELECT * FROM callbacks WHERE job_id = ? ORDER BY callback_id", (job_id,)
    ).fetchall()
    return [StoredCallback.from_row(row) for row in rows]


def callbacks_page(
    db: Db, job_id: int, *, after: int = 0, limit: int
) -> tuple[list[StoredCallback], int]:
    """A job's callbacks with ids above ``after``, at most ``limit``, and how many it has."""
    rows = db.execute(
        "SELECT * FROM callbacks WHERE job_id = ? AND callback_id > ? ORDER BY callback_id LIMIT ?",
        (job_id, after, limit),
    ).fetchall()
    total = db.execute("SELECT count(*) FROM callbacks WHERE job_id = ?", (job_id,)).fetchone()
    return [StoredCallback.from_row(row) for row in rows], int(total[0])


def universal_lines_of(db: Db, job_id: int, *, most: int) -> list[tuple[str, str]]:
    """(source, triggers) of each universal callback of a job, up to ``most``: the lines it holds.

    A registration numbers them after the job's own callbacks (registration.callback_specs),
    so they are its last ids: found from the top down to its first own callback (ids
    and flags only), not through a job's 100,000 own callbacks and their triggers. A
    registration attaches no more lines than a set holds (universal.MAX_UNIVERSAL_LINES,
    the ``most`` to give).
    """
    top = db.execute(
        "SELECT callback_id, universal FROM callbacks WHERE job_id = ?"
        " ORDER BY callback_id DESC LIMIT ?",
        (job_id, most),
    ).fetchall()
    first = 0
    for row in top:
        if not row[1]:
            break
        first = int(row[0])
    if not first:
        return []
    rows = db.execute(
        "SELECT source, triggers FROM callbacks WHERE job_id = ? AND callback_id >= ?"
        " ORDER BY callback_id",
        (job_id, first),
    ).fetchall()
    return [(str(row[0]), str(row[1])) for row in rows]


def delete_callbacks(db: Db, rowids: Collection[int]) -> None:
    """Delete callback rows (their index rows, timers and items go with them)."""
    for part, marks in in_lists(sorted(rowids)):
        db.execute(f"DELETE FROM callbacks WHERE rowid IN ({marks})", part)  # noqa: S608 - marks only


def unindex_callbacks(db: Db, rowids: Collection[int]) -> None:
    """Delete callbacks' index rows (``rewrite_callback`` writes them again).

    Not their timers: a kept callback's clocks run on as they were (a one-shot time
    that fired stays fired, a repeat keeps its next tick), ``rewrite_callback``.
    """
    for part, marks in in_lists(sorted(rowids)):
        db.execute(f"DELETE FROM atoms WHERE callback_rowid IN ({marks})", part)  # noqa: S608 - marks only


def set_callback_ids_aside(db: Db, rowids: Collection[int]) -> None:
    """Give kept rows whose id moves an id no callback has (``-rowid``) until rewritten.

    Ids may swap between kept rows (universal lines reordered), and the job's ids are
    unique at every row written.
    """
    for part, marks in in_lists(sorted(rowids)):
        db.execute(
            f"UPDATE callbacks SET callback_id = -rowid WHERE rowid IN ({marks})",  # noqa: S608 - marks only
            part,
        )


def put_callback(
    db: Db,
    job_id: int,
    spec: dict[str, Any],
    atoms: Iterable[NewAtom],
    timers: Iterable[tuple[int, float]],
) -> int:
    cursor = db.execute(
        'INSERT INTO callbacks (job_id, callback_id, triggers, language, code, "user", count,'
        " maximum, latches, universal, source, mode, latched_by)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING rowid",
        (job_id, *_callback_columns(spec)),
    )
    rowid = int(cursor.fetchone()[0])
    _index_callback(db, rowid, atoms, timers)
    return rowid


def rewrite_callback(
    db: Db,
    rowid: int,
    spec: dict[str, Any],
    atoms: Iterable[NewAtom],
) -> None:
    """A kept callback's row as registered again, in place (``put_callback``'s columns).

    Its old index rows must be gone (``unindex_callbacks``); its timers stay as they
    run (``replace_timers`` starts them afresh).

    In place, not deleted and inserted again: in a fleet, an event's transaction
    waiting for the row's lock then reads the row as written here, where it would
    have skipped a deleted one (and not seen the new row): its latch would be lost.
    """
    db.execute(
        'UPDATE callbacks SET callback_id = ?, triggers = ?, language = ?, code = ?, "user" = ?,'
        " count = ?, maximum = ?, latches = ?, universal = ?, source = ?, mode = ?,"
        " latched_by = ? WHERE rowid = ?",
        (*_callback_columns(spec), rowid),
    )
    _index_callback(db, rowid, atoms, ())


def _index_callback(
    db: Db, rowid: int, atoms: Iterable[NewAtom], timers: Iterable[tuple[int, float]]
) -> None:
    """A callback's index rows and timers."""
    rows = []
    for a in atoms:
        pgrp, label = scope_label(a.key.scope) or (0, "")
        rows.append((rowid, a.slot, a.key.name, a.key.type, a.key.scope, a.key.extra, pgrp, label))
    db.executemany(
        "INSERT INTO atoms (callback_rowid, slot, name, type, scope, extra, pgrp, label)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.executemany(
        "INSERT INTO timers (callback_rowid, slot, due) VALUES (?, ?, ?)",
        [(rowid, slot, due) for slot, due in timers],
    )


def matching_callbacks(
    db: Db, keys: Iterable[AtomKey]
) -> tuple[list[tuple[int, int]], dict[int, StoredCallback]]:
    """(callback rowid, slot) for every indexed atom under ``keys``, and those callbacks.

    One statement per type: the keys of an event are a cross product of names,
    scopes and extras, which the index walks as IN lists; a row is kept only when its
    own key is one of ``keys``. The callbacks are read with their atoms (not by a
    second ``load_callbacks``), and in a fleet locked in ascending order as the index
    finds them: a row the IN lists found but whose key is not one of ``keys`` locks
    its callback without matching it.
    """
    wanted = set(keys)
    found: list[tuple[int, int]] = []
    callbacks: dict[int, StoredCallback] = {}
    lock = " FOR UPDATE OF c" if row_lock(db) else ""
    for type_ in sorted({key.type for key in wanted}):
        of_type = [key for key in wanted if key.type == type_]
        names = sorted({key.name for key in of_type})
        scopes = sorted({key.scope for key in of_type})
        extras = sorted({key.extra for key in of_type})
        rows = db.execute(
            "SELECT a.slot AS atom_slot, a.name AS atom_name, a.scope AS atom_scope,"  # noqa: S608 - marks only
            " a.extra AS atom_extra, c.* FROM atoms a JOIN callbacks c"
            " ON c.rowid = a.callback_rowid"
            f" WHERE a.name IN ({marks_for(names)}) AND a.type = ? AND a.scope IN ({marks_for(scopes)})"
            f" AND a.extra IN ({marks_for(extras)}) ORDER BY c.rowid{lock}",
            (*names, type_, *scopes, *extras),
        ).fetchall()
        for row in rows:
            key = AtomKey(row["atom_name"], type_, row["atom_scope"], row["atom_extra"])
            if key not in wanted:
                continue
            found.append((row["rowid"], row["atom_slot"]))
            if row["rowid"] not in callbacks:
                callbacks[row["rowid"]] = StoredCallback.from_row(row)
    return found, callbacks


def level_atoms_naming(
    db: Db, scopes: Sequence[str], names: Iterable[str], job_id: int
) -> tuple[list[tuple[int, int]], dict[int, StoredCallback]]:
    """(callback rowid, slot) of the atoms under ``scopes`` named one of ``names``.

    Of level callbacks of jobs other than ``job_id`` only, and those callbacks (locked
    in ascending order in a fleet, as ``matching_callbacks`` locks them). Whatever
    their extra: a registering job's states are of every item it has.
    """
    wanted = sorted(set(names))
    if not scopes or not wanted:
        return [], {}
    types = ("job", "work", "subjob")
    lock = " FOR UPDATE OF c" if row_lock(db) else ""
    rows = db.execute(
        "SELECT a.slot AS atom_slot, c.* FROM atoms a JOIN callbacks c"  # noqa: S608 - marks only
        " ON c.rowid = a.callback_rowid"
        f" WHERE a.name IN ({marks_for(wanted)}) AND a.type IN ({marks_for(types)})"
        f" AND a.scope IN ({marks_for(scopes)}) AND c.mode = ? AND c.job_id != ?"
        f" ORDER BY c.rowid{lock}",
        (*wanted, *types, *scopes, LEVEL, job_id),
    ).fetchall()
    found: list[tuple[int, int]] = []
    callbacks: dict[int, StoredCallback] = {}
    for row in rows:
        found.append((row["rowid"], row["atom_slot"]))
        if row["rowid"] not in callbacks:
            callbacks[row["rowid"]] = StoredCallback.from_row(row)
    return found, callbacks


def load_callbacks(db: Db, rowids: Iterable[int]) -> list[StoredCallback]:
    ids = sorted(set(rowids))
    if not ids:
        return []
    # In a fleet the rows are locked in ascending order until the commit: two replicas
    # applying events that latch the same callback take turns, the second reads what
    # the first wrote (so both halves of an ``&&`` fire it once).
    rows = db.execute(
        f"SELECT * FROM callbacks WHERE rowid IN ({marks_for(ids)}) ORDER BY rowid{row_lock(db)}",  # noqa: S608 - placeholders only
        ids,
    ).fetchall()
    return [StoredCallback.from_row(row) for row in rows]


def save_state(
    db: Db,
    rowid: int,
    count: int,
    latches: Sequence[bool],
    latched_by: Sequence[SeenEvent | None],
) -> None:
    db.execute(
        "UPDATE callbacks SET count = ?, latches = ?, latched_by = ? WHERE rowid = ?",
        (count, json.dumps(list(latches)), marks_to_json(latched_by), rowid),
    )


def save_count(db: Db, rowid: int, count: int) -> None:
    """A ``{work}`` callback's total count (its items' latches are rows of their own)."""
    db.execute("UPDATE callbacks SET count = ? WHERE rowid = ?", (count, rowid))


def _callback_columns(spec: dict[str, Any]) -> tuple[Any, ...]:
    """A registration's callback spec as the callbacks row's columns after ``job_id``."""
    latches = list(spec["latches"])
    return (
        spec["id"],
        spec["triggers"],
        spec["language"],
        spec["code"],
        spec["user"],
        spec.get("count", 0),
        spec.get("maximum", 0),
        json.dumps(latches),
        int(spec.get("universal", False)),
        spec.get("source", ""),
        spec.get("mode", EDGE),
        marks_to_json(spec.get("latched_by") or [None] * len(latches)),
    )
