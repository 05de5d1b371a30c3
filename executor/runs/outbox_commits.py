"""Storing a message in the outbox: committed alone, or with the others of a turn of the event loop.

``Outbox.put`` and ``Outbox.commit`` say what a caller gets; this module how the rows
go in: another run's message under a key replaces the one there (``_REPLACE``), two
under one key in one commit keep the one that ended last (``latest``), and a fleet's
fence (``outbox_fences``) goes in the same transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, NamedTuple

from executor.errors import TakenOverError, own_copy
from executor.runs.latest import latest_per_key
from executor.runs.outbox_fences import (
    FENCED_INSERT,
    Alongside,
    fence,
    fence_holds,
    fence_parameters,
)
from executor.runs.outbox_table import OutboxTable
from executor.sql import StoreUnavailable, execute_counted, first_row, one_transaction
from executor.storage import writing

_INSERT: Final = (
    "INSERT INTO outbox (key, payload, created_at, owner, lease_until, ended_at, notes)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"
)
# Before _INSERT, when the key is there already: another message under it that ended no
# earlier (a later run of the invocation id) takes the place of the one there, delivered
# or not, as a new row: a new seq, so a delivery of the old one still on its way marks
# nothing. An earlier run's message (one committed late, after a full disk) never
# replaces a later one's: the supervisor's rule (``ReportResultRequest.ended_at``). The
# same message again (a commit retried on a new connection) stays a no-op; once
# delivered, its payload is gone (``DeliveredMarks.mark``), so it would be sent again, and
# the supervisor answers it as the duplicate it is.
_REPLACE: Final = "DELETE FROM outbox WHERE key = ? AND payload <> ? AND ended_at <= ?"


class _Message(NamedTuple):
    """A message to commit: ``_REPLACE``'s values, in its order, then its notes."""

    key: str
    payload: bytes
    ended_at: float  # when the run it reports ended
    notes: str | None = None  # kept with it until the history has the run
    alongside: Alongside | None = None

    @property
    def replaced(self) -> tuple[str, bytes, float]:
        """``_REPLACE``'s values."""
        return self.key, self.payload, self.ended_at


class OutboxCommits:
    """The outbox's commits of messages (``Outbox.put``, ``Outbox.commit``).

    Args:
        table: what they are committed through.
        committed: told after each commit whether it added a message.
    """

    def __init__(self, table: OutboxTable, committed: Callable[[int], None]) -> None:
        self._table = table
        self._committed = committed
        # Messages given to ``commit`` in this turn of the event loop, and their callers.
        self._gathered: list[tuple[_Message, asyncio.Future[None]]] = []

    def put(self, message: _Message) -> bool:
        """Commit one message (``Outbox.put``)."""
        alongside = message.alongside
        db = self._table.db
        if alongside is not None:  # one statement: PostgreSQL's data-modifying WITH
            with writing(self._table.path, self._table.health, store_refusals=True):
                row = first_row(
                    db,
                    FENCED_INSERT.format(fence=fence(alongside)),
                    (
                        *fence_parameters(alongside, message.key, message.payload),
                        *self._row(message),
                    ),
                )
            if not row["held"]:
                raise TakenOverError(
                    f"the fence of the message under {message.key!r} no longer holds"
                )
            added = bool(row["added"])
        else:
            with writing(self._table.path, self._table.health, store_refusals=True):
                added = bool(execute_counted(db, _INSERT, self._row(message)))
        if not added:  # the key is there: a repeat of the message, or another run's
            return self._put_many([message._replace(alongside=None)])[0]  # fenced: held
        self._committed(added)
        return True

    async def commit(self, message: _Message) -> None:
        """Commit one message with the others of this turn of the event loop (``Outbox.commit``)."""
        loop = asyncio.get_running_loop()
        committed = loop.create_future()
        self._gathered.append((message, committed))
        if len(self._gathered) == 1:
            loop.call_soon(self._commit_gathered)
        await committed

    def _commit_gathered(self) -> None:
        gathered, self._gathered = self._gathered, []
        messages = [message for message, _ in gathered]
        try:
            try:
                fenced = self._put_any(messages)
            except StoreUnavailable:
                # A connection PostgreSQL dropped (a restart, an admin's kill) is met by the
                # first statement after it: once more, on a new one. The inserts are
                # idempotent on their message, so a commit that did land is not doubled
                # (nor fenced off by its own fence: its message is there).
                fenced = self._put_any(messages)
        except Exception as err:  # noqa: BLE001 - the storage's, or a bug: each caller hears of it
            for n, (_, committed) in enumerate(gathered):
                if not committed.done():
                    committed.set_exception(err if n == 0 else own_copy(err))
            return
        for n, (message, committed) in enumerate(gathered):
            if committed.done():
                continue
            if n in fenced:
                committed.set_exception(
                    TakenOverError(
                        f"the fence of the message under {message.key!r} no longer holds"
                    )
                )
            else:
                committed.set_result(None)

    def _put_any(self, messages: list[_Message]) -> set[int]:
        """Commit the messages; the positions of those a fence left out."""
        if len(messages) == 1:
            try:
                self.put(messages[0])
            except TakenOverError:
                return {0}
            return set()
        return self._put_many(messages)[1]

    def _put_many(self, messages: list[_Message]) -> tuple[bool, set[int]]:
        """Commit the messages in one transaction: whether any was added, and those fenced off."""
        db = self._table.db
        with (
            writing(self._table.path, self._table.health, store_refusals=True),
            one_transaction(db),
        ):
            fenced = {
                n
                for n, message in enumerate(messages)
                if message.alongside is not None
                and not fence_holds(db, message.alongside, message.key, message.payload)
            }
            # Of two messages under one key, the one whose run ended last.
            latest = latest_per_key(
                [message for n, message in enumerate(messages) if n not in fenced],
                key=lambda message: message.key,
                ended_at=lambda message: message.ended_at,
            )
            added: int = 0
            if latest:
                db.executemany(_REPLACE, [message.replaced for message in latest])
                added = db.executemany(_INSERT, [self._row(message) for message in latest]).rowcount
        # A driver that cannot count the rows of a batch says -1: wake delivery anyway.
        self._committed(added != 0)
        return added != 0, fenced

    def message(
        self,
        key: str,
        payload: bytes,
        ended_at: float | None,
        notes: str | None,
        alongside: Alongside | None,
    ) -> _Message:
        """The message to commit; ValueError for an empty ``payload`` or a misplaced ``alongside``."""
        if not payload:  # a delivered row's payload: a pending one holding it is damaged
            raise ValueError(f"payload: the message under {key!r} is empty")
        if alongside is not None and not self._table.fleet:
            raise ValueError("alongside: a statement committed with a message is a fleet's")
        ended_at = self._table.clock() if ended_at is None else ended_at
        return _Message(key, payload, ended_at, notes, alongside)

    def _row(self, message: _Message) -> tuple[str, bytes, float, str, float, float, str | None]:
        # The replica that ran it delivers it (its lease); another only if it dies.
        now = self._table.clock()
        key, payload, ended_at, notes, _ = message
        lease_until = self._table.leases.now() + self._table.lease_s
        return (key, payload, now, self._table.owner, lease_until, ended_at, notes)
