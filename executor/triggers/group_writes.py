"""A group's writes on PostgreSQL: one statement per table, its rows passed as arrays.

``executemany`` pipelines a statement per row: for a group of 50 events, ~200 statements
that psycopg encodes one by one and the server plans and runs one by one. Here each
table's rows go in one statement as one JSON array of rows (json's C encoder makes it;
psycopg's text arrays escape each string with a regular expression), in the order given
(``WITH ORDINALITY``). An upsert cannot touch a row twice in one statement, so the
rows of one key are narrowed to the last (what writing them in order would leave).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from executor.sql import Db
from executor.triggers.journal import JournalEntry, JournalLimits


def _rows(types: Sequence[str]) -> str:
    """A FROM item of the rows passed as a JSON array of arrays: columns c0, c1, ... and n."""
    columns = ", ".join(f"(t.r->>{i})::{type_} AS c{i}" for i, type_ in enumerate(types))
    return f"(SELECT {columns}, t.n FROM json_array_elements(?::json) WITH ORDINALITY AS t(r, n))"  # noqa: S608 - our types


def _json(rows: Sequence[Sequence[Any]]) -> str:
    return json.dumps(rows)


def journal(db: Db, entries: Sequence[JournalEntry], limits: JournalLimits) -> None:
    """``journal.append``: the entries in order, then the newest ``limits.entries`` kept."""
    if not entries:
        return
    rows = [
        (e.job_id, e.callback_id, e.work_name, e.seen.at, json.dumps(e.as_dict())) for e in entries
    ]
    db.execute(
        "INSERT INTO journal (job_id, callback_id, work_name, at, entry_json)"  # noqa: S608
        " SELECT c0, c1, c2, c3, c4 FROM"
        f" {_rows(('bigint', 'bigint', 'text', 'double precision', 'text'))} AS r ORDER BY n",
        (_json(rows),),
    )
    # A {work} callback's entries are kept per item; a plain one's together (NULL item).
    touched = sorted(
        dict.fromkeys(
            (e.job_id, e.callback_id, e.work_name if e.per_item else None) for e in entries
        ),
        key=lambda key: (key[0], key[1], key[2] is not None, key[2] or ""),
    )
    db.execute(
        "DELETE FROM journal j USING (SELECT k.job_id, k.callback_id, k.work_name,"
        " (SELECT o.seq FROM journal o WHERE o.job_id = k.job_id"
        " AND o.callback_id = k.callback_id"
        " AND (k.work_name IS NULL OR o.work_name = k.work_name)"
        " ORDER BY o.seq DESC LIMIT 1 OFFSET ?) AS cutoff"
        " FROM unnest(?::bigint[], ?::bigint[], ?::text[]) AS k(job_id, callback_id, work_name))"
        " AS k WHERE j.job_id = k.job_id AND j.callback_id = k.callback_id"
        " AND (k.work_name IS NULL OR j.work_name = k.work_name) AND j.seq <= k.cutoff",
        (limits.entries, *([key[i] for key in touched] for i in range(3))),
    )


def known_states(db: Db, rows: Sequence[tuple[int, str, str, str, str]]) -> None:
    """``states.record_all``'s upsert: (job id, type, item, state, seen JSON), in order."""
    last = {row[:3]: row for row in rows}
    if not last:
        return
    db.execute(
        "INSERT INTO known_states (job_id, type, item, state, seen_json)"  # noqa: S608
        f" SELECT c0, c1, c2, c3, c4 FROM {_rows(('bigint', 'text', 'text', 'text', 'text'))}"
        " AS r ORDER BY n ON CONFLICT (job_id, type, item) DO UPDATE SET"
        " state = excluded.state, seen_json = excluded.seen_json",
        (_json([last[key] for key in sorted(last)]),),
    )


def callback_states(db: Db, rows: Sequence[tuple[int, int, str, str]]) -> None:
    """Callbacks' (rowid, count, latches JSON, provenance JSON), one row per callback."""
    if rows:
        db.execute(
            "UPDATE callbacks c SET count = u.c1, latches = u.c2, latched_by = u.c3"  # noqa: S608
            f" FROM {_rows(('bigint', 'bigint', 'text', 'text'))} AS u WHERE c.rowid = u.c0",
            (_json(sorted(rows)),),
        )


def work_items(db: Db, rows: Sequence[tuple[int, str, int, str, str]]) -> None:
    """Work items' (callback rowid, item, count, latches JSON, provenance JSON), one per item."""
    if rows:
        db.execute(
            "INSERT INTO work_latches (callback_rowid, work_name, count, latches, latched_by)"  # noqa: S608
            f" SELECT c0, c1, c2, c3, c4 FROM {_rows(('bigint', 'text', 'bigint', 'text', 'text'))}"
            " AS r ORDER BY n ON CONFLICT (callback_rowid, work_name) DO UPDATE SET"
            " count = excluded.count, latches = excluded.latches, latched_by = excluded.latched_by",
            (_json(sorted(rows)),),
        )


def work_items_gone(db: Db, keys: Sequence[tuple[int, str]]) -> None:
    """Work items back to untouched: their rows go (items.py keeps none for them)."""
    if keys:
        db.execute(
            "DELETE FROM work_latches w USING unnest(?::bigint[], ?::text[]) AS k(rowid, name)"
            " WHERE w.callback_rowid = k.rowid AND w.work_name = k.name",
            ([key[0] for key in sorted(keys)], [key[1] for key in sorted(keys)]),
        )


def firings(db: Db, rows: Sequence[tuple[str, int, str, float, str, str, str, float]]) -> None:
    """Queued firings, in decision order (their ``seq`` is the order they run in).

    Each row: invocation id, callback rowid, event JSON, decided at, batch, snapshot
    JSON, owner, lease.
    """
    if rows:
        types = ("text", "bigint", "text", "double precision", "text", "text", "text")
        db.execute(
            "INSERT INTO firings (invocation_id, callback_rowid, event_json, decided_at, batch,"  # noqa: S608
            " snapshot_json, owner, lease_until) SELECT c0, c1, c2, c3, c4, c5, c6, c7"
            f" FROM {_rows((*types, 'double precision'))} AS f ORDER BY n",
            (_json(rows),),
        )
