"""The per-callback event journal: what each event did to a callback, and why, kept bounded.

For every event the engine handles it records, per callback the event touched, one
entry: the atoms it latched (and those it matched that were already latched), whether
the trigger became true, the firing and its invocation id, or why nothing fired (the
maximum was reached, the rest of the trigger is still open). Near misses are entries
too: an event whose name, type and extra match an atom whose context names another
job, with the reason. Level mode's latching at registration is an entry of its own.

Entries are written in the transaction that changes the latches they describe, so the
journal and the state never disagree, after ``kill -9`` included. They are bounded:
the newest ``JournalLimits.entries`` per callback (per work item for a ``{work}``
callback, whose items are as many callbacks), and none older than
``JournalLimits.max_age_s`` (pruned at most once a minute, by the engine). An entry
holds the texts of its atoms as they were, each of its texts cut at
``MAX_ENTRY_TEXT_CHARS`` (a trigger may hold thousands of atoms, and every event would
otherwise store what is still open of it whole): a cut text, or list of atoms, ends
with "… (N more atoms)", so what is shown is still true and says it is not all. A job
registered again keeps the entries of the callbacks it keeps, under their ids now, and
drops those of the others (``follow_callbacks``): an id another callback takes never
shows the old one's.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from executor.model import Event
from executor.plurals import counted
from executor.sql import Db, Row, in_lists, marks_for

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    callback_id INTEGER NOT NULL,
    work_name TEXT NOT NULL,
    at REAL NOT NULL,
    entry_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_callback ON journal (job_id, callback_id, seq);
CREATE INDEX IF NOT EXISTS journal_by_item ON journal (job_id, callback_id, work_name, seq);
CREATE INDEX IF NOT EXISTS journal_by_age ON journal (at);
"""

# How often the engine prunes entries by age (each prune is one indexed DELETE).
PRUNE_EVERY_S: Final = 60.0
# The longest text an entry keeps of what is still open, and of the atoms an event
# latched (found latched, missed): characters, the ending that says what was left out
# included. A few atoms of the longest names fit.
MAX_ENTRY_TEXT_CHARS: Final = 2048


def cut_atoms(
    texts: Iterable[str], count: int, limit: int = MAX_ENTRY_TEXT_CHARS
) -> tuple[str, ...]:
    """The atom texts of ``texts`` (``count`` of them) that fit in ``limit`` characters together.

    When not all fit, the last item says how many were left out ("… (N more atoms)",
    counted toward the limit). ``texts`` is read only as far as it fits.
    """
    kept: list[str] = []
    size = 0
    for text in texts:
        if size + len(text) > limit:
            break
        kept.append(text)
        size += len(text)
    else:
        return tuple(kept)
    while kept and size + len(_left_out(count - len(kept))) > limit:
        size -= len(kept.pop())
    return (*kept, _left_out(count - len(kept)))


def _left_out(count: int) -> str:
    return f"… ({counted(count, 'more atom')})"


class EntryKind(enum.StrEnum):
    """What an event did to a callback."""

    MATCHED = "matched"  # latched atoms (or found them latched); the trigger is still open
    FIRED = "fired"  # the trigger became true: a firing was queued
    SPENT = "spent"  # matched, but the callback has fired its maximum: nothing changed
    NEAR_MISS = "near_miss"  # name, type and extra matched; the context named another job
    LEVEL = "level"  # level mode latched already-happened events at registration
    # A label or job id came to name another job: the latches its old holder set went
    # (label_moves.py); ``latched`` holds those atoms, ``reason`` says why.
    CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class SeenEvent:
    """An event as the engine saw it: what happened, and when (Unix seconds)."""

    event: Event
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {"event": self.event.as_dict(), "at": self.at}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeenEvent:
        return cls(Event.from_dict(data["event"]), float(data["at"]))


def marks_to_json(marks: Sequence[SeenEvent | None]) -> str:
    """The stored form of a latch vector's provenance (which event set each latch)."""
    return json.dumps([None if mark is None else mark.as_dict() for mark in marks])


def marks_from_json(text: str, size: int) -> tuple[SeenEvent | None, ...]:
    """Read ``marks_to_json``; a vector stored before provenance reads as all unknown."""
    stored = json.loads(text or "[]")
    if len(stored) != size:
        return (None,) * size
    return tuple(None if mark is None else SeenEvent.from_dict(mark) for mark in stored)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One event's effect on one callback (or on one work item of a ``{work}`` callback).

    Attributes:
        job_id, callback_id: The callback.
        kind: What happened.
        seen: The event, and when the engine handled it.
        work_name: The work item of a ``{work}`` callback; "" otherwise.
        latched: The atoms the event latched, as text (an item's atoms substituted);
            at most ``MAX_ENTRY_TEXT_CHARS`` of them (``cut_atoms``).
        already: The atoms it matched that were latched already; as many.
        invocation_id: The firing's run, for FIRED (and a LEVEL entry that fired);
            "" in a dry run.
        count: The callback's (the item's) count after the event.
        waiting_for: What the trigger still waits for after the event, canonical; ""
            when it fired. Its first ``MAX_ENTRY_TEXT_CHARS`` (``nodes.render_cut``).
        reason: In words, why nothing fired (SPENT) or why it was a near miss; on a
            firing's entry (FIRED, LEVEL), why its run was refused as things stood
            (``TriggerEngine.firing_refusal``; "" when it was not); on a MATCHED one,
            that it will not fire again, when a clock atom it needs will not latch
            again and no other way is left (``waiting_for`` is then "").
        per_item: Whether it is kept with its work item's entries (a ``{work}``
            callback's), not with the callback's; not stored, only ``append`` reads it.
    """

    job_id: int
    callback_id: int
    kind: EntryKind
    seen: SeenEvent
    work_name: str = ""
    latched: tuple[str, ...] = ()
    already: tuple[str, ...] = ()
    invocation_id: str = ""
    count: int = 0
    waiting_for: str = ""
    reason: str = ""
    per_item: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "seen": self.seen.as_dict(),
            "latched": list(self.latched),
            "already": list(self.already),
            "invocation_id": self.invocation_id,
            "count": self.count,
            "waiting_for": self.waiting_for,
            "reason": self.reason,
        }

    @classmethod
    def from_row(cls, row: Row) -> JournalEntry:
        data = json.loads(row["entry_json"])
        return cls(
            job_id=int(row["job_id"]),
            callback_id=int(row["callback_id"]),
            kind=EntryKind(data["kind"]),
            seen=SeenEvent.from_dict(data["seen"]),
            work_name=str(row["work_name"]),
            latched=tuple(data["latched"]),
            already=tuple(data["already"]),
            invocation_id=str(data["invocation_id"]),
            count=int(data["count"]),
            waiting_for=str(data["waiting_for"]),
            reason=str(data["reason"]),
        )


@dataclass(frozen=True, slots=True)
class JournalLimits:
    """How much journal is kept: the newest ``entries`` per callback, none older than ``max_age_s``.

    Per work item, for a ``{work}`` callback.
    """

    entries: int = 20
    max_age_s: float = 7 * 86400.0

    def __post_init__(self) -> None:
        if self.entries < 1:
            raise ValueError(f"a journal keeps at least 1 entry per callback, not {self.entries}")
        if self.max_age_s <= 0:
            raise ValueError(f"a journal's maximum age must be positive, not {self.max_age_s}")


def append(db: Db, entries: Iterable[JournalEntry], limits: JournalLimits) -> None:
    """Write entries in the caller's transaction; keep the newest of each callback they touch.

    ``limits.entries`` are kept of each callback, and of each work item of a ``{work}``
    callback (a plain callback's entries count together, whatever item fired it).
    """
    entries = list(entries)
    rows = [
        (e.job_id, e.callback_id, e.work_name, e.seen.at, json.dumps(e.as_dict())) for e in entries
    ]
    if not rows:
        return
    # One executemany each: on PostgreSQL the rows go in a pipeline, not a round trip each.
    db.executemany(
        "INSERT INTO journal (job_id, callback_id, work_name, at, entry_json)"
        " VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    items = dict.fromkeys((e.job_id, e.callback_id, e.work_name) for e in entries if e.per_item)
    if items:
        db.executemany(
            "DELETE FROM journal WHERE job_id = ? AND callback_id = ? AND work_name = ?"
            " AND seq <= (SELECT seq FROM journal WHERE job_id = ? AND callback_id = ?"
            " AND work_name = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            [(*key, *key, limits.entries) for key in items],
        )
    plain = dict.fromkeys((e.job_id, e.callback_id) for e in entries if not e.per_item)
    if plain:
        db.executemany(
            "DELETE FROM journal WHERE job_id = ? AND callback_id = ?"
            " AND seq <= (SELECT seq FROM journal WHERE job_id = ? AND callback_id = ?"
            " ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            [(*key, *key, limits.entries) for key in plain],
        )


def follow_callbacks(
    db: Db, job_id: int, moved: Mapping[int, int], gone: Collection[int], *, everything: bool
) -> None:
    """Keep a registered-again job's journal with the callbacks the registration kept.

    ``moved``: old id -> new id of a callback kept under another id (a universal line
    whose per-job id moved): its entries follow it. ``gone``: the ids of callbacks it
    did not keep (a trigger changed under an id, a line removed): their entries go, so
    that a callback registered under such an id never shows another one's. With
    ``everything``, every entry of the job goes (it had no callbacks: entries left by
    an earlier job of that id, removed).
    """
    if everything:
        forget_job(db, job_id)
        return
    for part, marks in in_lists(sorted(gone)):
        db.execute(
            f"DELETE FROM journal WHERE job_id = ? AND callback_id IN ({marks})",  # noqa: S608 - marks only
            (job_id, *part),
        )
    if moved:
        # One statement: ids may swap (lines reordered), which a statement per id would mix.
        cases = " ".join("WHEN ? THEN ?" for _ in moved)
        db.execute(
            f"UPDATE journal SET callback_id = CASE callback_id {cases} END"  # noqa: S608 - marks only
            f" WHERE job_id = ? AND callback_id IN ({marks_for(moved)})",
            (*(n for pair in moved.items() for n in pair), job_id, *moved),
        )


def forget_job(db: Db, job_id: int) -> None:
    """Delete every entry of a job's callbacks (the job was removed: nothing can read them)."""
    db.execute("DELETE FROM journal WHERE job_id = ?", (job_id,))


def prune_older_than(db: Db, cutoff: float) -> int:
    """Delete entries from before ``cutoff`` (Unix seconds); how many went."""
    return int(db.execute("DELETE FROM journal WHERE at < ?", (cutoff,)).rowcount)


def counted_past(
    db: Db, job_id: int, callback_id: int, *, past: int, most: int, work_name: str | None
) -> int:
    """How many entries of a callback (of one work item) there are past its newest ``past``.

    At most ``most``: a {work} callback of 100,000 items keeps millions, and ``why`` (the
    dashboard's jobs page, at every refresh) need not count them all to say more exist.
    """
    where = "job_id = ? AND callback_id = ?" + ("" if work_name is None else " AND work_name = ?")
    args: tuple[Any, ...] = (job_id, callback_id) + (() if work_name is None else (work_name,))
    row = db.execute(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM journal WHERE {where} LIMIT ?) AS kept",  # noqa: S608 - constant text
        (*args, past + most),
    ).fetchone()
    return max(0, int(row[0]) - past)


def read(
    db: Db, job_id: int, callback_id: int, *, limit: int, work_name: str | None
) -> list[JournalEntry]:
    """The newest ``limit`` entries of a callback, oldest first.

    Of one work item when ``work_name`` is given.
    """
    if work_name is None:
        rows = db.execute(
            "SELECT * FROM journal WHERE job_id = ? AND callback_id = ? ORDER BY seq DESC LIMIT ?",
            (job_id, callback_id, limit),
        ).fetchall()
    else:
        rows = db.execute(
            "SELECT * FROM journal WHERE job_id = ? AND callback_id = ? AND work_name = ?"
            " ORDER BY seq DESC LIMIT ?",
            (job_id, callback_id, work_name, limit),
        ).fetchall()
    return [JournalEntry.from_row(row) for row in reversed(rows)]
