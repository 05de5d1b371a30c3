"""Actions applied once: the reference supervisor's answers by ``(invocation_id, action_seq)``.

A callback may run twice with the same invocation id (in a fleet, a replica that dies
mid-run loses its lease and another re-runs the firing). The executor numbers each
action of a run (``action_seq``, from 1, supervisor.proto), and the supervisor keeps the
answer it gave each numbered action, in the same transaction that applied it. A repeat
is answered from here and applies nothing: the same ``changed`` and message, or the same
error (a refused action is remembered too, outside the transaction that refused it,
which rolled back and changed nothing).

The key is the position; the action kept with it (verb, job or targets and arguments,
not the actor) tells a repeat from another action under the same pair: a re-run whose
callback asks something else at that position (it read the clock, say), or another
callback under a reused invocation id (its first run cut off by a kill -9 before the
executor recorded it), is refused with ActionConflictError, never given the other
action's answer. An answer kept before the action was (column ``action`` empty) answers
any request at its position, as it did, with a warning. Unnumbered actions
(``action_seq`` 0, or no invocation id: an operator's, or an older executor's) are
applied every time.

Bounded: an answer is kept ``retention_s`` (7 days by default), long past any lease or
retry that re-runs a firing; older ones are deleted, at most once an hour, when a new
one is kept. The table lives in the supervisor's database, so it survives restarts.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from dataclasses import dataclass
from typing import Final

from supervisor_client.arguments import check_seconds
from supervisor_client.reference.errors import (
    ActionConflictError,
    NoSuchJobError,
    NoSuchWorkError,
    PermissionDeniedError,
    SubmitError,
)

logger = logging.getLogger(__name__)

DEFAULT_RETENTION_S: Final = 7 * 86400.0
PRUNE_EVERY_S: Final = 3600.0
# A request's description is kept up to this length (then a digest of the whole).
_REQUEST_CHARS: Final = 200

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS applied_actions (
    invocation_id TEXT NOT NULL, action_seq INTEGER NOT NULL, time REAL NOT NULL,
    request TEXT NOT NULL, changed INTEGER NOT NULL, message TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '', action TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (invocation_id, action_seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS applied_actions_by_time ON applied_actions (time);
"""

#: The refusals a repeat gets again, by the name they are kept under.
REMEMBERED_ERRORS: Final[dict[str, type[Exception]]] = {
    error.__name__: error
    for error in (NoSuchWorkError, NoSuchJobError, PermissionDeniedError, SubmitError, ValueError)
}


@dataclass(frozen=True, slots=True)
class ActionKey:
    """One numbered action of one run."""

    invocation_id: str
    action_seq: int

    @staticmethod
    def of(invocation_id: str, action_seq: int) -> ActionKey | None:
        """The key of a numbered action; None when the action is not numbered."""
        if not invocation_id or action_seq <= 0:
            return None
        return ActionKey(invocation_id, action_seq)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the supervisor answered an action: ``changed`` and message, or an error."""

    request: str
    changed: int
    message: str
    # The error's name in REMEMBERED_ERRORS; "" for an answer that was not an error.
    error: str = ""
    # What the action was, without its actor (``describe``); "" in rows kept before.
    action: str = ""

    def raise_error(self) -> None:
        """Raise the remembered error again, if the answer was one."""
        if self.error:
            raise REMEMBERED_ERRORS.get(self.error, ValueError)(self.message)


def describe(*parts: object) -> str:
    """A request as kept beside its answer: its words, or a prefix and a digest when long."""
    text = " ".join(str(part) for part in parts)
    if len(text) <= _REQUEST_CHARS:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{text[: _REQUEST_CHARS - 30]}… sha256:{digest}"


class AppliedActions:
    """The ``applied_actions`` table of one supervisor database (used under its lock)."""

    def __init__(self, db: sqlite3.Connection, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self._db = db
        # Named as ReferenceSupervisor takes it; NaN would keep every answer for ever.
        self._retention_s = check_seconds("action_retention_s", retention_s)
        self._pruned_at = float("-inf")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(applied_actions)")}
        if "action" not in columns:  # a database from before actions were compared
            db.execute("ALTER TABLE applied_actions ADD COLUMN action TEXT NOT NULL DEFAULT ''")

    def find(self, key: ActionKey, request: str, action: str) -> Answer | None:
        """The answer given to ``key`` before, or None.

        Raises ActionConflictError when ``key`` was applied for another ``action``; an
        answer kept without its action is given whatever the request, with a warning.
        """
        row = self._db.execute(
            "SELECT request, changed, message, error, action FROM applied_actions"
            " WHERE invocation_id = ? AND action_seq = ?",
            (key.invocation_id, key.action_seq),
        ).fetchone()
        if row is None:
            return None
        answer = Answer(row[0], row[1], row[2], row[3], row[4])
        if answer.action and answer.action != action:
            raise ActionConflictError(
                f"action_seq {key.action_seq} of invocation {key.invocation_id!r} was applied"
                f" as {answer.action!r}; {action!r} is another action, not its repeat: refused"
                " (was the invocation id reused for another callback?)"
            )
        if answer.request != request:
            logger.warning(
                "action %d of invocation %s repeated as %r, first made as %r:"
                " answered as the first time (actions are matched by position)",
                key.action_seq,
                key.invocation_id,
                request,
                answer.request,
            )
        return answer

    def remember(self, key: ActionKey, answer: Answer, now: float) -> None:
        """Keep ``answer`` for ``key`` (the first one kept wins); prune old answers hourly."""
        self._db.execute(
            "INSERT INTO applied_actions"
            " (invocation_id, action_seq, time, request, changed, message, error, action)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (invocation_id, action_seq) DO NOTHING",
            (
                key.invocation_id,
                key.action_seq,
                now,
                answer.request,
                answer.changed,
                answer.message,
                answer.error,
                answer.action,
            ),
        )
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = now
            self._db.execute(
                "DELETE FROM applied_actions WHERE time < ?", (now - self._retention_s,)
            )

    def count(self) -> int:
        """How many answers are kept."""
        (count,) = self._db.execute("SELECT count(*) FROM applied_actions").fetchone()
        return int(count)
