"""The notes a result's outbox row keeps until the history has its run: read by recovery, then dropped.

A row's notes (``run_notes``) are what a start-up after a crash rebuilds the run's
history record from; once the history has the run, they only take space (they count
against ``outbox_max_bytes``), so the bookkeeping thread says so (``notes_written``) and
they are dropped soon after, on the connection that owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple

from executor.errors import UnavailableError
from executor.runs.outbox_rows import DamagedRow, read_seq, read_time, shown_key
from executor.runs.outbox_table import OutboxTable
from executor.sql import Db, PgDb, in_lists, one_transaction
from executor.storage import writing

logger = logging.getLogger(__name__)

# A run the history has (its key, when it ended): its row's notes go, not a later run's.
_FORGET_WRITTEN: Final = (
    "UPDATE outbox SET notes = NULL WHERE key = ? AND ended_at <= ? AND notes IS NOT NULL"
)
# Runs whose notes a refusing storage kept from being dropped, kept for the next try.
MAX_WRITTEN_KEPT: Final = 10_000


class KeptNotes(NamedTuple):
    """A row whose notes are kept: its run may not be in the history yet."""

    seq: int
    key: str
    ended_at: float


class OutboxNotes:
    """The outbox rows' notes (``Outbox.kept_notes`` .. ``Outbox.forget_written``).

    Args:
        table: the rows.
        committed_freeing: told after a commit on the loop that dropped notes.
    """

    def __init__(self, table: OutboxTable, committed_freeing: Callable[[], None]) -> None:
        self._table = table
        self._committed_freeing = committed_freeing
        # Runs the history has committed (key, ended_at), told by the bookkeeping thread:
        # their rows' notes are dropped on the loop (``notes_written``).
        self._written: list[tuple[str, float]] = []
        self._written_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._forgetting: asyncio.Task[None] | None = None
        self._closed = False

    def kept_notes(self) -> list[KeptNotes]:
        """``Outbox.kept_notes``."""
        rows = self._table.db.execute(
            "SELECT seq, key, ended_at FROM outbox WHERE notes IS NOT NULL ORDER BY seq"
        ).fetchall()
        kept = []
        for seq, key, ended_at in rows:
            try:
                kept.append(
                    KeptNotes(read_seq(seq), shown_key(key), read_time("ended_at", ended_at))
                )
            except DamagedRow:  # delivery sets it aside (``outbox_rows``), as damaged
                logger.warning(
                    "outbox row %r: its ended_at %r is no time; not rebuilt", seq, ended_at
                )
        return kept

    def notes(self, seqs: list[int]) -> dict[int, str]:
        """``Outbox.notes``."""
        found: dict[int, str] = {}
        for chunk, marks in in_lists(seqs):
            found.update(
                (int(seq), str(notes))
                for seq, notes in self._table.db.execute(
                    f"SELECT seq, notes FROM outbox WHERE seq IN ({marks})"  # noqa: S608 - ? marks
                    " AND notes IS NOT NULL",
                    chunk,
                ).fetchall()
            )
        return found

    def forget_notes(self, seqs: list[int]) -> None:
        """``Outbox.forget_notes``."""
        if not seqs:
            return
        db = self._table.db
        with writing(self._table.path, self._table.health), one_transaction(db):
            for chunk, marks in in_lists(seqs):
                db.execute(
                    f"UPDATE outbox SET notes = NULL WHERE seq IN ({marks})",  # noqa: S608
                    chunk,
                )
        self._committed_freeing()

    def notes_written(self, runs: Sequence[tuple[str, float]]) -> None:
        """``Outbox.notes_written``: kept, and the loop told to drop them (any thread)."""
        with self._written_lock:
            wake = not self._written
            self._written.extend(runs)
        loop = self._loop
        if wake and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (a stop)
                loop.call_soon_threadsafe(self._forget_written_soon)

    def started(self, loop: asyncio.AbstractEventLoop) -> None:
        """Delivery started on ``loop``: the notes told of are dropped there from now on."""
        self._loop = loop
        if self._written:  # told before the start (recovery's writes, say)
            self._forget_written_soon()

    def _forget_written_soon(self) -> None:
        """(On the loop) Drop the notes told of: inline on SQLite, in a thread in a fleet."""
        if self._closed:
            return
        if not self._table.fleet:
            self.forget_written()
        elif self._forgetting is None or self._forgetting.done():
            self._forgetting = asyncio.get_running_loop().create_task(self._forget_in_thread())

    async def _forget_in_thread(self) -> None:
        # On delivery's connection (its lock takes turns with delivery's own statements,
        # also in threads): no sixth connection per replica for an UPDATE now and then.
        while self._written and not self._closed:
            await asyncio.to_thread(self.forget_written, self._table.ddb)

    def forget_written(self, db: Db | None = None) -> None:
        """``Outbox.forget_written``."""
        with self._written_lock:
            written, self._written = self._written, []
        if not written:
            return
        db = self._table.db if db is None else db
        try:
            with writing(self._table.path):  # no health: notes kept too long harm nothing
                if isinstance(db, PgDb):
                    db.executemany(_FORGET_WRITTEN, written)
                else:
                    db.execute("BEGIN")
                    try:
                        db.executemany(_FORGET_WRITTEN, written)
                        db.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(Exception):
                            db.execute("ROLLBACK")
                        raise
        except UnavailableError as err:
            with self._written_lock:
                self._written[:0] = written[-MAX_WRITTEN_KEPT:]
            logger.debug("outbox: notes of %d written runs kept for now: %s", len(written), err)
            return
        if db is self._table.db:
            self._committed_freeing()

    async def close(self) -> None:
        """(The writer has stopped) Drop the notes of what it wrote last; none dropped after."""
        self._closed = True
        if self._forgetting is not None:
            await asyncio.gather(self._forgetting, return_exceptions=True)
        self.forget_written()
