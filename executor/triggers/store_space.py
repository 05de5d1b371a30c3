"""triggers.db's size: the bound on what registrations may make it take (``triggers_max_bytes``).

A registered job stays in triggers.db whole (its JSON with its agenda and ``extra``, its
callbacks' code) until the scheduler publishes ``removed`` for it: nothing else bounds
how many jobs there are, and 30 registrations within the per-request limits took 436 MB
(probe 105). So a registration is measured in its own transaction, after its writes
and before its commit: the file's pages in use (``page_count - freelist_count``, read
from its header as the transaction left it: microseconds). One that leaves them past
``max_bytes`` and grew them is rolled back and refused (``StoreFullError``): the bound
holds exactly, and a job registered again that takes no more than before is not
refused. Events are never refused for it (a job's ``removed`` is what makes room), so
what they write (their ids, the journal, the known states, the firings queued) may take
the file past the bound; registrations then wait for room. A removed job's pages go on
SQLite's freelist and the next registrations are written into them: the file stops
growing near the bound (it does not shrink; ``VACUUM`` with the executor stopped gives
the space back). A fleet's PostgreSQL store is its DBA's to size: no bound here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from executor.errors import StoreFullError
from executor.plurals import counted
from executor.sql import Db

MIB: Final = 1 << 20


def bytes_in_use(db: Db) -> int:
    """The SQLite database's pages in use, in bytes, as the open transaction leaves them."""
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    (count,) = db.execute("PRAGMA page_count").fetchone()
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    return int((count - free) * page_size)


@dataclass(frozen=True, slots=True)
class Room:
    """triggers.db as it is now: its pages in use, its bound, and its registered jobs."""

    in_use: int
    max_bytes: int
    jobs: int


def check_room(db: Db, before: int, max_bytes: int, job_id: int, *, new_job: bool) -> None:
    """Refuse the registration whose writes took the store from ``before`` past ``max_bytes``.

    ``new_job``: the job was not registered before this registration.

    Raises:
        StoreFullError: saying what holds the space and what to do; the caller's
            transaction rolls back.
    """
    after = bytes_in_use(db)
    if after <= max_bytes or after <= before:
        return
    (jobs,) = db.execute("SELECT count(*) FROM jobs").fetchone()
    jobs = int(jobs) - (1 if new_job else 0)
    raise StoreFullError(refusal(f"job {job_id}", Room(before, max_bytes, jobs), after))


def refusal(what: str, room: Room, after: int, *, at_least: bool = False) -> str:
    """The refusal of a registration of ``what`` that would take the store to ``after`` bytes.

    ``at_least``: ``after`` is a lower bound (the farm's check before it stores a job).
    """
    return (
        f"cannot register {what}: triggers.db would take {'at least ' if at_least else ''}"
        f"{after / MIB:.1f} MiB (triggers_max_bytes = {room.max_bytes / MIB:.1f} MiB); it takes"
        f" {room.in_use / MIB:.1f} MiB, mostly for its {counted(room.jobs, 'registered job')}"
        " (their callbacks, agendas and extra). A job stays until the scheduler publishes"
        " 'removed' for it: publish 'removed' for the jobs that are done (their space is"
        " reused), or raise triggers_max_bytes"
    )
