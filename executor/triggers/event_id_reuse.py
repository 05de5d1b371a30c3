"""Telling a resend of an event from another event published under the same event_id.

An ``event_id`` is the publisher's idempotency key: the same event sent again under it
(a call that timed out, a failover) is a repeat and decides nothing. The store kept
only the id (event_ids.py), so another event under an id already used (ids from a
counter reset at a restart, ids per job reused across jobs) was answered ``duplicate``
with the first event's firings, and dropped without a trace, the answer looking like
success (probe 116). So each id's row also keeps a ``fingerprint`` of its event: 8
bytes of the SHA-256 of the event's identity (name, type, job, work item, instance,
host, extra; not its id, and no time), and a repeat whose event has another
fingerprint is refused (``EventIdReusedError``, ALREADY_EXISTS, as an Execute whose
invocation_id names another run is) and logged at WARNING. Two different events under
one id look alike with a chance of 1 in 2^64: then the second is a repeat, as every
such event was before.

A row without a fingerprint (NULL: remembered before the column existed, or written
by a fleet's replica of an earlier version) is unknown and taken for the same event:
a repeat, as before. Only what the first event fired is kept besides
(decided_firings.py), so a refusal names that, or the earlier event of the same call.

The fingerprint is written with the id (one more column of the insert), and read only
when the insert finds the id already there: a first sighting, the event path's usual
case, costs the hash and its 8 bytes (~9 bytes of ``triggers.db`` an id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from executor.errors import EventIdReusedError
from executor.model import Event
from executor.sql import Db
from executor.triggers import decided_firings, event_ids
from executor.triggers.decide import Fired
from executor.visible_text import visible

# The bytes of an event's fingerprint (the first of its SHA-256).
FINGERPRINT_BYTES: Final = 8
# A fleet's PostgreSQL gets the column at ``cbexec store migrate`` (SQLite: store_schema.py).
# Nullable, no default: added without rewriting the table, and the rows already there,
# and those a replica of an earlier version inserts, read as unknown.
PG_COLUMN: Final = "ALTER TABLE seen_events ADD COLUMN IF NOT EXISTS fingerprint BYTEA;"
# How many of what the first event fired a refusal names.
_FIRINGS_SHOWN: Final = 3

_sha256: Final = hashlib.sha256


def fingerprint(event: Event) -> bytes:
    """The first ``FINGERPRINT_BYTES`` of the SHA-256 of the event's identity.

    Of the event as the servicer made it: the fields its type does not have are already
    dropped, so a resend that sets them differently is the same event. Each text follows
    its length (a name may hold any character, NUL too), each number ends with ``:``;
    ~1 us an event on the 2-core dev machine, a third of what JSON took.
    """
    e = event
    identity = (
        f"{len(e.name)}:{e.name}{len(e.type)}:{e.type}{e.job_id}:{len(e.work_name)}:"
        f"{e.work_name}{e.subjob_id}:{len(e.host)}:{e.host}{len(e.extra)}:{e.extra}"
    )
    return _sha256(identity.encode("utf-8", "surrogatepass")).digest()[:FINGERPRINT_BYTES]


def stored(db: Db, event_id: str) -> bytes:
    """The fingerprint kept with an id; b"" when none is (unknown, or the id is not kept)."""
    row = db.execute(
        "SELECT fingerprint FROM seen_events WHERE id_key = ?", (event_ids.key(event_id),)
    ).fetchone()
    return bytes(row[0]) if row is not None and row[0] is not None else b""


def shown(event: Event) -> str:
    """The event as a trigger names it (``complete-work-12-frame7``), with its instance and host."""
    text = f"{event.name}-{event.type}-{event.job_id}"
    if event.item:
        text += f"-{visible(event.item)}"
    if event.type == "work":
        if event.subjob_id != -1:
            text += f" (instance {event.subjob_id})"
        if event.host:
            text += f" (host {visible(event.host)})"
    return text


def refusal(event: Event, index: int, first: str) -> EventIdReusedError:
    """The error for ``event``, whose id was first used for the event ``first`` describes."""
    return EventIdReusedError(
        f"event_id {visible(event.event_id)!r} was first used for another event ({first}),"
        f" not for {shown(event)}; an event_id names one event (a resend of it is a repeat):"
        " publish this one under a new event_id",
        index,
    )


def earlier_in_call(index: int, event: Event) -> str:
    """``refusal``'s ``first`` for an event earlier in the same call."""
    return f"events[{index}] of this call: {shown(event)}"


def what_it_fired(fired: Sequence[Fired]) -> str:
    """``refusal``'s ``first`` for an event applied before: what it fired (it is not kept)."""
    if not fired:
        return "it fired nothing; only a fingerprint of it is kept"
    named = ", ".join(
        f"job {each.callback.job_id} callback {each.callback.callback_id}"
        f" ({visible(each.callback.triggers)})"
        for each in fired[:_FIRINGS_SHOWN]
    )
    more = len(fired) - _FIRINGS_SHOWN
    return f"it fired {named}" + (f" and {more} more" if more > 0 else "")


class FirstUses:
    """The events of one transaction applied first under their ids, with their places in it.

    A repeat of one of those is checked against that event (its row is the same
    transaction's); of any other id, against the fingerprint its row keeps.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, tuple[int, Event]] = {}

    def add(self, index: int, event: Event) -> None:
        """``event``, ``index``-th of the transaction, was applied as its id's first."""
        if event.event_id:
            self._by_id.setdefault(event.event_id, (index, event))

    def check_repeat(self, db: Db, index: int, event: Event, earlier: bytes | None) -> None:
        """EventIdReusedError when the repeat ``event`` is another event than its id's first.

        ``earlier``: the fingerprint its id's row kept (b"": unknown, taken for a match;
        None: not read yet, read here).
        """
        first = self._by_id.get(event.event_id)
        if first is not None:
            if fingerprint(first[1]) != fingerprint(event):
                raise refusal(event, index, earlier_in_call(*first))
            return
        if earlier is None:
            earlier = stored(db, event.event_id)
        if earlier and earlier != fingerprint(event):
            raise refusal(event, index, what_it_fired(decided_firings.fired_by(db, event.event_id)))
