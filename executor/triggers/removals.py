"""The removed jobs remembered: when each was removed, so its id registered again is another job.

A job ``removed`` leaves the latches its events set in other jobs' callbacks (a finished
render removed does not un-satisfy comp). Its id registered again is a new job, and
those latches were its removed namesake's: ``label_moves.release`` clears them, telling
them by this time (a latch its events set at or before it). Bounded as the submissions of
jobs never registered are (``states.MAX_REMEMBERED_SUBMISSIONS``), pruned by the engine.
"""

from __future__ import annotations

from typing import Final

from executor.sql import Db
from executor.triggers.states import keep_newest

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS removed_jobs (
    job_id INTEGER PRIMARY KEY,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS removed_jobs_by_age ON removed_jobs (at);
"""

# The newest removals remembered (a row each): an id registered again after more removals
# than this keeps the latches its removed job set.
MAX_REMEMBERED_REMOVALS: Final = 100_000


def remember(db: Db, job_id: int, at: float) -> None:
    """Job ``job_id`` was removed at ``at`` (the engine's clock, as a latch's mark has it)."""
    db.execute(
        "INSERT INTO removed_jobs (job_id, at) VALUES (?, ?)"
        " ON CONFLICT (job_id) DO UPDATE SET at = excluded.at",
        (job_id, at),
    )


def take(db: Db, job_id: int) -> float | None:
    """A job's first registration: when a job of its id was removed (forgotten now); None if none."""
    row = db.execute("DELETE FROM removed_jobs WHERE job_id = ? RETURNING at", (job_id,)).fetchone()
    return None if row is None else float(row[0])


def prune(db: Db, keep: int = MAX_REMEMBERED_REMOVALS) -> int:
    """Forget all but the newest ``keep`` removals; how many went."""
    return keep_newest(db, "removed_jobs", keep)
