"""What a group's events have read and written so far, kept for its later events (PostgreSQL).

A group's reads are made once, up front (group_reads.py); its events are then decided
in order, each on the state the ones before it left: the callbacks' latches and counts
and the work items' latches live here while the transaction lasts, and their writes,
with the queued firings, wait for ``flush``, which makes them in a statement per table
(group_writes.py) instead of a statement per event. Every value written is
kept here too, so nothing that waits for ``flush`` is read from the database meanwhile;
a read that needs the database for what may be waiting here (every item of a callback)
flushes first.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace

from executor.sql import Db
from executor.triggers import group_writes, items
from executor.triggers.group_reads import WorkContext
from executor.triggers.items import WorkState
from executor.triggers.journal import SeenEvent, marks_to_json
from executor.triggers.store_rows import PendingFiring, StoredCallback


@dataclass
class GroupState:
    """The callbacks, work items and firings of a group's transaction, as its events left them.

    ``owner`` and ``lease_until``: the claim the queued firings are written with (the
    replica that decided them runs them).
    """

    owner: str
    lease_until: float
    callbacks: dict[int, StoredCallback] = field(default_factory=dict)
    contexts: dict[tuple[int, str], WorkContext] = field(default_factory=dict)
    work: dict[tuple[int, str], WorkState] = field(default_factory=dict)
    _dirty_callbacks: set[int] = field(default_factory=set)
    _dirty_work: set[tuple[int, str]] = field(default_factory=set)
    _firings: list[PendingFiring] = field(default_factory=list)

    # -- reads ------------------------------------------------------------------------

    def context(
        self, db: Db, job_id: int, rowid: int, work_name: str, size: int
    ) -> tuple[bool, bool, WorkState]:
        """``items.context`` as the group's earlier events left the item."""
        read = self.contexts.get((rowid, work_name))
        if read is None:  # not read up front: nothing of it waits here either
            known, listed, state = items.context(db, job_id, rowid, work_name, size)
            read = WorkContext(known, listed, state)
            self.contexts[(rowid, work_name)] = read
        return read.agenda_known, read.listed, self.work.get((rowid, work_name), read.state)

    def held(self, db: Db, rowid: int, size: int) -> dict[str, WorkState]:
        """``items.held``, after what waits here is written (it reads every item's row)."""
        self.flush(db)
        return items.held(db, rowid, size)

    def item(self, db: Db, rowid: int, work_name: str, size: int) -> WorkState:
        """``items.state`` as the group's earlier events left the item."""
        kept = self.work.get((rowid, work_name))
        return kept if kept is not None else items.state(db, rowid, work_name, size)

    # -- writes (made at ``flush``) -----------------------------------------------------

    def save_item(self, rowid: int, work_name: str, state: WorkState) -> None:
        self.work[(rowid, work_name)] = state
        self._dirty_work.add((rowid, work_name))

    def save_state(
        self,
        rowid: int,
        count: int,
        latches: tuple[bool, ...],
        latched_by: tuple[SeenEvent | None, ...],
    ) -> None:
        cb = self.callbacks[rowid]
        self.callbacks[rowid] = replace(cb, count=count, latches=latches, latched_by=latched_by)
        self._dirty_callbacks.add(rowid)

    def save_count(self, rowid: int, count: int) -> None:
        self.callbacks[rowid] = replace(self.callbacks[rowid], count=count)
        self._dirty_callbacks.add(rowid)

    def queue_firing(self, firing: PendingFiring) -> None:
        self._firings.append(firing)

    def flush(self, db: Db) -> None:
        """Write what waits: one statement per table (group_writes.py), rows in key order."""
        group_writes.callback_states(
            db,
            [
                (rowid, cb.count, json.dumps(list(cb.latches)), marks_to_json(cb.marks))
                for rowid in self._dirty_callbacks
                for cb in (self.callbacks[rowid],)
            ],
        )
        written = [(key, self.work[key]) for key in self._dirty_work]
        group_writes.work_items_gone(db, [key for key, state in written if _untouched(state)])
        group_writes.work_items(
            db,
            [
                (*key, s.count, json.dumps(list(s.latches)), marks_to_json(s.latched_by))
                for key, s in written
                if not _untouched(s)
            ],
        )
        now = time.time()
        group_writes.firings(
            db,
            [
                (
                    f.invocation_id,
                    f.callback.rowid,
                    json.dumps(f.event.as_dict()),
                    now,
                    f.batch,
                    f.snapshot(),
                    self.owner,
                    self.lease_until,
                )
                for f in self._firings
            ],
        )
        self._dirty_callbacks, self._dirty_work, self._firings = set(), set(), []


def _untouched(state: WorkState) -> bool:
    """items.save's rule: an item with no count and no latch has no row."""
    return state.untouched
