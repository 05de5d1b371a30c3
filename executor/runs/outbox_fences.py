"""A fence committed with an outbox message: a fleet's write that must hold for the message to go in.

A fleet's only (PostgreSQL's data-modifying WITH): ``outbox_commits`` runs the fence of
each message in the message's own transaction.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from executor.sql import Db, first_row


class Alongside(NamedTuple):
    """A fence committed with a message, in its transaction (a fleet's: PostgreSQL's).

    A write returning a row while the message may be committed (``RETURNING 1``), ``?``
    for its parameters: an Execute's release of its claim on the invocation id
    (``invocation_ids.FleetIds``) goes with its result, so the answer waits for one
    round trip, not two, and the claim ends exactly as the result becomes the id's
    record. A claim gone (another replica's run of the id took it over) leaves the
    message out, and ``commit`` raises TakenOverError; unless that same message is there
    already (a commit retried after its answer was lost).
    """

    sql: str
    parameters: tuple[str | int | float, ...]


# The outbox's INSERT (``outbox_commits``) where a fence (Alongside, a WITH query before
# it) holds: one statement that says whether it held and whether the message was added.
FENCED_INSERT: Final = (
    "{fence}, added AS (INSERT INTO outbox"
    " (key, payload, created_at, owner, lease_until, ended_at, notes)"
    " SELECT ?::text, ?::bytea, ?::float8, ?::text, ?::float8, ?::float8, ?::text"
    " WHERE EXISTS (SELECT 1 FROM held)"
    " ON CONFLICT (key) DO NOTHING RETURNING 1)"
    " SELECT EXISTS (SELECT 1 FROM held) AS held, EXISTS (SELECT 1 FROM added) AS added"
)


def fence(alongside: Alongside) -> str:
    """The WITH clause of a fenced write: ``held`` has a row while it may be committed.

    The fence's own row, or the same message there already (a retried commit).
    """
    return (
        f"WITH alongside AS ({alongside.sql}), held AS (SELECT 1 FROM alongside"  # noqa: S608 - the executor's own statement
        " UNION ALL SELECT 1 FROM outbox WHERE key = ? AND payload = ?)"
    )


def fence_parameters(alongside: Alongside, key: str, payload: bytes) -> tuple[object, ...]:
    """``fence``'s parameters, for the message under ``key`` with ``payload``."""
    return (*alongside.parameters, key, payload)


def fence_holds(db: Db, alongside: Alongside, key: str, payload: bytes) -> bool:
    """Run a message's fence (in the open transaction); whether it held.

    A message not the latest under its key keeps its fence too: it ends that claim.
    """
    sql = f"{fence(alongside)} SELECT EXISTS (SELECT 1 FROM held) AS held"  # noqa: S608 - constants
    return bool(first_row(db, sql, fence_parameters(alongside, key, payload))["held"])
