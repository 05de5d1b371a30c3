"""The writes of a transaction's events that none of its later events reads, made at its end.

A group of events (group commit) writes each event's journal entries (journal.py) and
the states it leaves its objects in (states.py); no event's decisions read either, so
they wait for the end of the transaction and go as one ``executemany`` each, whatever
the group's size, instead of a few statements (on PostgreSQL, round trips) per event.
A ``removed`` job forgets its states: what was waiting is written before it
(``flush``), so the order of the writes is the events' order. The ``submit`` events of
jobs never registered wait here too, to be remembered (``states.remember_submissions``),
and what each event with an id fired, to be kept with the id (decided_firings.py); the
transaction's later events read which jobs' submit events came (``submitted``) here.

A batch of a thousand events over hundreds of callbacks makes hundreds of thousands of
journal entries: past ``MAX_WAITING_ENTRIES`` the entries are written in the open
transaction (``take``) rather than held to its end, as none of its reads needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from executor.model import Event
from executor.sql import Db, PgDb
from executor.triggers import decided_firings, group_writes, journal, states
from executor.triggers.decide import Decision
from executor.triggers.journal import JournalEntry, JournalLimits, SeenEvent

# The most journal entries held for the end of a transaction (each at most a few KB:
# journal.MAX_ENTRY_TEXT_CHARS per text); more are written at once.
MAX_WAITING_ENTRIES: Final = 1000


@dataclass
class DeferredWrites:
    """Journal entries, state records and submissions waiting for their transaction's ``flush``."""

    limits: JournalLimits
    entries: list[JournalEntry] = field(default_factory=list)
    records: list[SeenEvent] = field(default_factory=list)
    submissions: list[SeenEvent] = field(default_factory=list)
    # (event id, what it fired as decided_firings.to_json, and as its verdicts_json)
    decided: list[tuple[str, str, str]] = field(default_factory=list)
    # The jobs whose submit event came in the transaction: seen, though not written yet.
    submitted: set[int] = field(default_factory=set)

    def take(self, db: Db, event: Event, decision: Decision) -> None:
        """Take an applied event's journal entries (out of ``decision``) and what it fired.

        Past ``MAX_WAITING_ENTRIES`` entries they are written now, in ``db``'s open
        transaction: the newest of each callback are what is kept either way.
        """
        self.entries.extend(decision.entries)
        decision.entries = []
        if event.event_id and decision.fired:
            self.decided.append(
                (
                    event.event_id,
                    decided_firings.to_json(decision.fired),
                    decided_firings.verdicts_json(decision.fired),
                )
            )
        if len(self.entries) >= MAX_WAITING_ENTRIES:
            self._write_journal(db)

    def _write_journal(self, db: Db) -> None:
        if isinstance(db, PgDb):
            group_writes.journal(db, self.entries, self.limits)
        elif self.entries:
            journal.append(db, self.entries, self.limits)
        self.entries = []

    def flush(self, db: Db) -> None:
        """Write what waits, in the events' order, in the open transaction.

        On PostgreSQL one statement per table (group_writes.py), not one per row.
        """
        self._write_journal(db)
        if isinstance(db, PgDb):
            group_writes.known_states(db, states.record_rows(self.records))
        elif self.records:
            states.record_all(db, self.records)
        states.remember_submissions(db, self.submissions)
        decided_firings.record(db, self.decided)
        self.records, self.submissions, self.decided = [], [], []
        self.submitted = set()
