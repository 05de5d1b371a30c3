"""The last known state of every registered job, work item and instance, and the agendas.

The engine keeps it from what it has been told: a registration carries the job's status
and its agenda with each item's status (the supervisor's view at that moment, which
replaces what was known), and each later event that changes a state (``state_after``)
moves its object there. What it is for: level mode (has an atom's event already
happened?), the agenda a ``{work}`` callback's items come from, and ``why`` ("frame 5
is running"). Qube publishes no event for ``pending``: an item unblocked since its last
event still shows that event's state.

Only registered jobs are kept (an event of a job the engine does not know is not
recorded); a job's states go when a ``removed`` event removes it. Of a job the engine
was never given (a scheduler registers only the jobs with callbacks) it keeps one
thing: that it was submitted (its ``submit`` event), for the level callbacks registered
after it (``remember_submissions``). Those are bounded: the newest
``MAX_REMEMBERED_SUBMISSIONS``, pruned by the engine (``prune_submissions``); the job's
first registration (or its removal) takes its submission out, and a registration makes
it the job's own (``take_submission``), noting that it came first (``submitted_first``).

A registered job's ``submit`` event is kept too, as a row of type ``submit``
(``submitted``): a registration again keeps it, as the job is submitted once, and an
edge callback waits for it until it comes (a scheduler publishes it after registering
the job); once it has, no trigger waits for it again (submissions.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from executor.model import Event
from executor.sql import Db, Row
from executor.triggers.evaluate import state_after
from executor.triggers.journal import SeenEvent

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS known_states (
    job_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    item TEXT NOT NULL,
    position INTEGER NOT NULL DEFAULT -1,
    state TEXT NOT NULL,
    seen_json TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, type, item)
) WITHOUT ROWID;
"""
# The submissions of jobs never registered (a store from before it gets it at its start;
# a fleet's PostgreSQL at ``cbexec store migrate``).
SUBMISSIONS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS unregistered_submissions (
    job_id INTEGER PRIMARY KEY,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS unregistered_submissions_by_age ON unregistered_submissions (at);
"""

# The newest submissions of jobs never registered that are remembered (a row each).
MAX_REMEMBERED_SUBMISSIONS: Final = 100_000

JOB: Final = "job"
WORK: Final = "work"
SUBJOB: Final = "subjob"
# The row of a registered job's submit event (no state: the event was seen).
SUBMIT: Final = "submit"
# The row of a job submitted before it first registered (``take_submission``): the level
# callbacks naming it by id had its events as they came, and took nothing of its
# registration (registration.take_registration); ``why`` says so. Kept as SUBMIT is.
SUBMITTED_FIRST: Final = "submitted_first"
# The rows a registration again keeps: how the job was submitted, not its states.
_KEPT_BY_REGISTRATION: Final = (SUBMIT, SUBMITTED_FIRST)


@dataclass(frozen=True, slots=True)
class KnownState:
    """An object's last known state, and the event that left it there.

    None when its registration did.
    """

    state: str
    seen: SeenEvent | None

    @classmethod
    def from_row(cls, row: Row) -> KnownState:
        seen = SeenEvent.from_dict(json.loads(row["seen_json"])) if row["seen_json"] else None
        return cls(str(row["state"]), seen)


def register_job(db: Db, job: Mapping[str, Any]) -> None:
    """Replace what is known of a job by what its registration says (status, agenda, instances)."""
    job_id = int(job["id"])
    # Its submission stays: a job registered again (a retry) is not submitted again.
    db.execute(
        "DELETE FROM known_states WHERE job_id = ? AND type NOT IN (?, ?)",
        (job_id, *_KEPT_BY_REGISTRATION),
    )
    rows: list[tuple[int, str, str, int, str]] = [
        (job_id, JOB, "", -1, str(job.get("status") or ""))
    ]
    for position, work in enumerate(job.get("agenda") or []):
        if isinstance(work, Mapping):
            rows.append((job_id, WORK, str(work["name"]), position, str(work.get("status") or "")))
        else:
            rows.append((job_id, WORK, str(work), position, ""))
    rows.extend(
        (job_id, SUBJOB, str(sub.get("id", 0)), -1, str(sub.get("status") or ""))
        for sub in job.get("subjobs") or []
    )
    # A repeated work name keeps its first place (ON CONFLICT DO NOTHING): names are unique in Qube.
    db.executemany(
        "INSERT INTO known_states (job_id, type, item, position, state)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        rows,
    )


def record(db: Db, seen: SeenEvent) -> None:
    """Move the event's object to the state the event leaves it in (if it changes one)."""
    record_all(db, [seen])


def record_rows(seen: Iterable[SeenEvent]) -> list[tuple[int, str, str, str, str]]:
    """What ``record`` writes for each event: (job id, type, item, state, the event's JSON)."""
    rows = []
    for one in seen:
        event = one.event
        state = state_after(event)
        if event.name == SUBMIT and event.type == JOB:
            rows.append((event.job_id, SUBMIT, "", "submitted", json.dumps(one.as_dict())))
            continue
        if state is None or event.type not in (JOB, WORK, SUBJOB):
            continue
        item = "" if event.type == JOB else event.item
        rows.append((event.job_id, event.type, item, state, json.dumps(one.as_dict())))
    return rows


def record_all(db: Db, seen: Iterable[SeenEvent]) -> None:
    """``record`` each event, in order, in one ``executemany``."""
    rows = record_rows(seen)
    if rows:
        # In key order (stable: a key's last event is written last), so that two replicas'
        # transactions take these rows' locks in the same order.
        rows.sort(key=lambda row: row[:3])
        db.executemany(
            "INSERT INTO known_states (job_id, type, item, state, seen_json)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id, type, item) DO UPDATE SET"
            " state = excluded.state, seen_json = excluded.seen_json",
            rows,
        )


def forget_job(db: Db, job_id: int) -> None:
    db.execute("DELETE FROM known_states WHERE job_id = ?", (job_id,))


def state(db: Db, job_id: int, type_: str, item: str = "") -> KnownState | None:
    """The last known state of one object; None when nothing is known of it."""
    row = db.execute(
        "SELECT state, seen_json FROM known_states WHERE job_id = ? AND type = ? AND item = ?",
        (job_id, type_, item),
    ).fetchone()
    return None if row is None else KnownState.from_row(row)


def items(db: Db, job_id: int, type_: str) -> dict[str, KnownState]:
    """Every known item of a type (work or subjob) of a job, agenda order first."""
    rows = db.execute(
        "SELECT item, state, seen_json FROM known_states WHERE job_id = ? AND type = ?"
        " ORDER BY position < 0, position, item",
        (job_id, type_),
    ).fetchall()
    return {str(row["item"]): KnownState.from_row(row) for row in rows}


def agenda(db: Db, job_id: int) -> list[str]:
    """The work names of the job's agenda as registered, in order ([] when none was)."""
    return [
        str(row[0])
        for row in db.execute(
            "SELECT item FROM known_states WHERE job_id = ? AND type = 'work' AND position >= 0"
            " ORDER BY position",
            (job_id,),
        )
    ]


def agenda_known(db: Db, job_id: int) -> bool:
    """Whether the job registered with an agenda."""
    row = db.execute(
        "SELECT 1 FROM known_states WHERE job_id = ? AND type = 'work' AND position >= 0 LIMIT 1",
        (job_id,),
    ).fetchone()
    return row is not None


def in_agenda(db: Db, job_id: int, work_name: str) -> bool:
    """Whether ``work_name`` is in the job's registered agenda."""
    row = db.execute(
        "SELECT position FROM known_states WHERE job_id = ? AND type = 'work' AND item = ?",
        (job_id, work_name),
    ).fetchone()
    return row is not None and int(row[0]) >= 0


def seen_or_registered(known: KnownState, job_id: int, type_: str, item: str) -> SeenEvent:
    """The event that left an object in its state.

    For a state its registration gave, the event that state stands for (so a level
    firing has an event to run with).
    """
    if known.seen is not None:
        return known.seen
    return SeenEvent(Event.from_atom_form(known.state, type_, str(job_id), item), 0.0)


def remember_submissions(db: Db, seen: Iterable[SeenEvent]) -> None:
    """Remember the ``submit`` events of jobs never registered (the first of each job)."""
    rows = sorted({one.event.job_id: one.at for one in reversed(list(seen))}.items())
    if rows:
        db.executemany(
            "INSERT INTO unregistered_submissions (job_id, at) VALUES (?, ?)"
            " ON CONFLICT (job_id) DO NOTHING",
            rows,
        )


def submission(db: Db, job_id: int) -> SeenEvent | None:
    """The remembered ``submit`` event of a job never registered; None if none is."""
    row = db.execute(
        "SELECT at FROM unregistered_submissions WHERE job_id = ?", (job_id,)
    ).fetchone()
    return None if row is None else SeenEvent(Event("submit", "job", job_id), float(row[0]))


def submitted(db: Db, job_id: int) -> SeenEvent | None:
    """The ``submit`` event seen of a job, registered or not; None if none is known."""
    known = state(db, job_id, SUBMIT)
    if known is not None and known.seen is not None:
        return known.seen
    return submission(db, job_id)


def take_submission(db: Db, job_id: int) -> bool:
    """A job's first registration: its remembered submission becomes its own; whether it had one."""
    seen = submission(db, job_id)
    if seen is None:
        return False
    forget_submission(db, job_id)
    record_all(db, [seen])
    db.execute(
        "INSERT INTO known_states (job_id, type, item, state) VALUES (?, ?, '', '')"
        " ON CONFLICT DO NOTHING",
        (job_id, SUBMITTED_FIRST),
    )
    return True


def submitted_first(db: Db, job_id: int) -> bool:
    """Whether the job was submitted before it first registered (``take_submission``)."""
    return state(db, job_id, SUBMITTED_FIRST) is not None


def forget_submission(db: Db, job_id: int) -> bool:
    """Take a job's remembered submission out; whether there was one."""
    cursor = db.execute("DELETE FROM unregistered_submissions WHERE job_id = ?", (job_id,))
    return bool(cursor.rowcount)


def prune_submissions(db: Db, keep: int = MAX_REMEMBERED_SUBMISSIONS) -> int:
    """Forget all but the newest ``keep`` remembered submissions; how many went."""
    return keep_newest(db, "unregistered_submissions", keep)


def keep_newest(db: Db, table: str, keep: int) -> int:
    """Delete all but the newest ``keep`` rows of a ``(job_id, at)`` table; how many went."""
    cursor = db.execute(
        f"DELETE FROM {table} WHERE (at, job_id) <= (SELECT at, job_id FROM"  # noqa: S608 - our tables
        f" {table} ORDER BY at DESC, job_id DESC LIMIT 1 OFFSET ?)",
        (keep,),
    )
    return int(cursor.rowcount)
