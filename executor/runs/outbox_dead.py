"""The outbox's dead letters: results set aside from delivery, listed, queued again, kept within a bound.

A letter is set aside when the receiver refuses it for good, keeps refusing it, or its
row is damaged (``Outbox``'s docstring says when); it waits for a person (``cbexec
outbox dead`` lists it, ``cbexec outbox retry`` queues it again). On SQLite they keep to
``outbox_max_bytes`` of their own, apart from the results that wait (``outbox_space``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from executor.errors import UnavailableError
from executor.runs import outbox_space
from executor.runs.outbox_rows import listed_count, listed_time, shown_key
from executor.runs.outbox_space import OutboxSpace
from executor.runs.outbox_table import OutboxTable
from executor.sql import in_lists, one_transaction
from executor.storage import reading, writing
from executor.visible_text import escaped

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message set aside: never delivered, kept for a person to look at or retry."""

    key: str
    created_at: float
    dead_at: float
    attempts: int
    last_error: str
    size_bytes: int


class DeadLetters:
    """The outbox rows set aside (``Outbox.dead_letters``, ``Outbox.retry_dead``).

    Args:
        table: the rows.
        space: told what they take, and measured again as they change.
    """

    def __init__(self, table: OutboxTable, space: OutboxSpace) -> None:
        self._table = table
        self._space = space

    def set_aside(self, seq: object, key: str, why: str) -> None:
        """Set a row aside as a dead letter, logged at ERROR; ``seq`` as read (a damaged row's too)."""
        # The receiver's words (a supervisor may echo a job's text): a CR/LF or an escape
        # sequence in them must not split the log line or act on a terminal showing it.
        logger.error("outbox: %s set aside as a dead letter: %s", escaped(key), escaped(why))
        with writing(self._table.path, self._table.health):
            self._table.ddb.execute(
                "UPDATE outbox SET dead_at = ?, last_error = ? WHERE seq = ?",
                (self._table.clock(), why, seq),
            )
        self._table.checkpoints.committed()
        self.bound()
        self._space.measure()

    def bound(self) -> None:
        """(SQLite, with ``max_bytes``) Keep the dead letters within ``max_bytes`` too.

        A supervisor that refuses every result (another version of the proto, say) would
        otherwise fill the data dir's disk with them. Past the bound the oldest go, each
        logged at WARNING; never the newest, nor one whose notes are kept (its run may not
        be in the history yet). The WARNING does not promise the run is in the history:
        the history's own bounds may have dropped it already (its records may take more
        bytes than the dead letters of the same runs).
        """
        max_bytes = self._space.max_bytes
        if max_bytes is None or self._table.fleet:
            return
        db = self._table.db
        try:
            self._space.dead_bytes = self._letter_bytes()
            if self._space.dead_bytes <= max_bytes:
                return
            oldest = db.execute(
                "SELECT seq, key, length(payload) FROM outbox WHERE dead_at IS NOT NULL"
                " AND notes IS NULL AND seq <> (SELECT seq FROM outbox WHERE dead_at IS NOT NULL"
                " ORDER BY dead_at DESC, seq DESC LIMIT 1) ORDER BY dead_at, seq"
            ).fetchall()
            dropped: list[tuple[object, object]] = []
            excess = self._space.dead_bytes - max_bytes
            for seq, key, size in oldest:
                if excess <= 0:
                    break
                dropped.append((seq, key))
                excess -= int(size or 0)
            with writing(self._table.path, self._table.health):
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _ in dropped])
            self._table.checkpoints.committed()
            self._space.dead_bytes = self._letter_bytes()
        except (sqlite3.Error, UnavailableError) as err:  # the storage's: its writes say so
            logger.debug("outbox: dead letters not bounded now: %s", err)
            return
        for _, key in dropped:
            logger.warning(
                "outbox: dead letter %s dropped: the dead letters passed outbox_max_bytes"
                " (%.1f MiB), the oldest go first; its result was not delivered, and its run"
                " is in the history only as long as the history's own bounds keep it"
                " (history_max_runs, history_max_bytes, history_retention_days)",
                escaped(shown_key(key)),
                max_bytes / outbox_space.MIB,
            )

    def _letter_bytes(self) -> int:
        """What the dead letters' payloads take (their sizes: no payload is read)."""
        row = self._table.db.execute(
            "SELECT coalesce(sum(length(payload)), 0) FROM outbox WHERE dead_at IS NOT NULL"
        ).fetchone()
        return int(row[0])

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        """``Outbox.dead_letters``."""
        with reading(self._table.path):
            rows = self._table.db.execute(
                "SELECT key, created_at, dead_at, attempts, last_error, length(payload)"
                " FROM outbox WHERE dead_at IS NOT NULL ORDER BY dead_at DESC, seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        # A damaged row's columns show as they can: its last_error names the damage.
        return [
            DeadLetter(
                shown_key(k), listed_time(c), listed_time(d), listed_count(a), str(e), int(n)
            )
            for k, c, d, a, e, n in rows
        ]

    def retry_dead(self, keys: Sequence[str] | None) -> int:
        """``Outbox.retry_dead``, but for waking delivery."""
        queued = 0
        db = self._table.db
        with writing(self._table.path, self._table.health):
            if keys is None:
                queued = int(
                    db.execute(
                        "UPDATE outbox SET dead_at = NULL, attempts = 0, retry_at = 0"
                        " WHERE dead_at IS NOT NULL"
                    ).rowcount
                )
            else:
                with one_transaction(db):
                    for chunk, marks in in_lists(list(dict.fromkeys(keys))):
                        sql = (
                            "UPDATE outbox SET dead_at = NULL, attempts = 0, retry_at = 0"  # noqa: S608 - ? marks
                            f" WHERE key IN ({marks}) AND dead_at IS NOT NULL"
                        )
                        queued += int(db.execute(sql, chunk).rowcount)
        self._table.checkpoints.committed()
        if queued:
            # Queued again, they are results waiting: the bound counts them once more.
            self.bound()
            self._space.measure()
        return queued
