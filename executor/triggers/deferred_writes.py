"""The writes of a transaction's events that none of its later events reads, made at its end.

A group of events (group commit) writes each event's journal entries (journal.py) and
the states it leaves its objects in (states.py); no event's decisions read either, so
they wait for the end of the transaction and go as one ``executemany`` each, whatever
the group's size, instead of a few statements (on PostgreSQL, round trips) per event.
A ``removed`` job forgets its states: what was waiting is written before it
(``flush``), so the order of the writes is the events' order. The ``submit`` events of
jobs never registered wait here too, to be remembered (``states.remember_submissions``),
and what each event with an id fired, to be kept with the id (decided_firings.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from executor.model import Event
from executor.sql import Db, PgDb
from executor.triggers import decided_firings, group_writes, journal, states
from executor.triggers.decide import Fired
from executor.triggers.journal import JournalEntry, JournalLimits, SeenEvent


@dataclass
class DeferredWrites:
    """Journal entries, state records and submissions waiting for their transaction's ``flush``."""

    limits: JournalLimits
    entries: list[JournalEntry] = field(default_factory=list)
    records: list[SeenEvent] = field(default_factory=list)
    submissions: list[SeenEvent] = field(default_factory=list)
    # (event id, what it fired as decided_firings.to_json)
    decided: list[tuple[str, str]] = field(default_factory=list)

    def fired(self, event: Event, fired: Sequence[Fired]) -> None:
        """Keep what an event fired with its id (an event without one cannot be resent)."""
        if event.event_id and fired:
            self.decided.append((event.event_id, decided_firings.to_json(fired)))

    def flush(self, db: Db) -> None:
        """Write what waits, in the events' order, in the open transaction.

        On PostgreSQL one statement per table (group_writes.py), not one per row.
        """
        if isinstance(db, PgDb):
            group_writes.journal(db, self.entries, self.limits)
            group_writes.known_states(db, states.record_rows(self.records))
        else:
            if self.entries:
                journal.append(db, self.entries, self.limits)
            if self.records:
                states.record_all(db, self.records)
        states.remember_submissions(db, self.submissions)
        decided_firings.record(db, self.decided)
        self.entries, self.records, self.submissions, self.decided = [], [], [], []
