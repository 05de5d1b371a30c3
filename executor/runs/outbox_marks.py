"""Delivered marks: a row the receiver acknowledged is marked delivered, and the oldest such trimmed.

A mark the storage refuses (a full disk) is held in memory: the row is not sent again by
this process, and is marked at the next chance.
"""

from __future__ import annotations

from executor.runs.outbox_space import OutboxSpace
from executor.runs.outbox_table import OutboxTable
from executor.sql import one_transaction
from executor.storage import writing


class DeliveredMarks:
    """The marks of delivered rows, and those acknowledged but not marked yet.

    Args:
        table: the rows (marked on delivery's connection).
        space: measured again after each mark.
        keep_delivered: delivered rows kept (their keys, not their payloads); older
            ones are deleted.
    """

    def __init__(self, table: OutboxTable, space: OutboxSpace, keep_delivered: int) -> None:
        self._table = table
        self._space = space
        self._keep_delivered = keep_delivered
        # Rows the receiver acknowledged whose mark the storage did not take yet (a full
        # disk): never sent again by this process, marked at the next chance.
        self.unmarked: dict[int, str] = {}
        # Results delivered by this process (the count a resumed spell tells).
        self.delivered = 0
        self._delivered_since_trim = 0

    def mark(self, delivered: dict[int, str]) -> None:
        """Record the rows (seq: key) as delivered, in one commit; trim delivered ones now and then.

        A delivered row keeps its key (a repeat of it is not queued again) but not its
        payload: the last ``keep_delivered`` rows of up to a report's size each could
        otherwise hold gigabytes that nothing reads. Its notes are the history's business
        (``Outbox.notes_written``): a row keeping them is not trimmed.

        With those acknowledged earlier whose mark failed (``unmarked``); on failure all
        of them stay there, so that none is sent again.
        """
        self.unmarked.update(delivered)
        seqs = sorted(self.unmarked)
        now = self._table.clock()
        ddb = self._table.ddb
        if self._table.fleet:  # one statement is one transaction: one round trip
            ddb.execute(
                "UPDATE outbox SET delivered_at = ?, payload = ? WHERE seq = ANY(?)",
                (now, b"", seqs),
            )
        else:
            with writing(self._table.path, self._table.health), one_transaction(ddb):
                ddb.executemany(
                    "UPDATE outbox SET delivered_at = ?, payload = ? WHERE seq = ?",
                    [(now, b"", seq) for seq in seqs],
                )
            self._table.checkpoints.committed()
        delivered_now = len(self.unmarked)
        self.unmarked.clear()
        self.delivered += delivered_now
        self._delivered_since_trim += delivered_now
        if self._delivered_since_trim >= 100:
            self._trim()
        self._space.measure()

    def _trim(self) -> None:
        self._delivered_since_trim = 0
        with writing(self._table.path, self._table.health):
            self._table.ddb.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE delivered_at IS NOT NULL"  # noqa: S608
                # A row whose notes are kept stays until its run is in the history.
                " AND notes IS NULL"
                f" ORDER BY seq DESC LIMIT {'ALL' if self._table.fleet else '-1'} OFFSET ?)",
                (self._keep_delivered,),
            )
        self._table.checkpoints.committed()  # measured by mark, its only caller
