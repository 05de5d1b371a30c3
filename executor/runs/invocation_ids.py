"""Whether a caller's invocation id is taken already: by a firing, or by a recorded run.

``Execute`` asks before it runs a callback under an id its caller chose
(``CallbackExecutorServicer._refuse_another_runs_id``): a firing decided and not yet run
to its end has it (the engine made it), or the history records (or is writing) a run
under it, and whether the engine made that one (``RunIdentity.fired``). A single
executor answers both at once from memory and a local file. A fleet's answers are in
the shared store: asked apart they were two round trips on the request's path, so
``FleetIds`` asks both in one statement.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Final, NamedTuple

from executor.runs import run_notes
from executor.runs.history import RunIdentity
from executor.sql import Db

# One round trip: whether a firing holds the id, the run the history has under it, and
# where it has none yet, the notes its outbox row keeps until it has: a run another
# replica ended a moment ago is in neither the firings nor the history (probe 64).
_QUERY: Final = (
    "SELECT EXISTS (SELECT 1 FROM firings WHERE invocation_id = ?) AS firing,"
    " runs.job_id, runs.callback_id, runs.language, runs.triggers, runs.source, runs.fired,"
    " CASE WHEN runs.job_id IS NULL THEN (SELECT notes FROM outbox WHERE key = ?) END AS notes"
    " FROM (SELECT 1) AS one LEFT JOIN runs ON runs.invocation_id = ?"
)


class IdUse(NamedTuple):
    """What an invocation id names already."""

    firing: bool  # a firing not yet run to its end holds it
    recorded: RunIdentity | None  # whose run the history records, or is writing (fired or not)


class LocalIds:
    """A single executor's: its firing queue (in memory) first, then its history."""

    def __init__(
        self,
        holds_firing: Callable[[str], bool],
        recorded: Callable[[str], RunIdentity | None],
    ) -> None:
        self._holds_firing = holds_firing
        self._recorded = recorded

    def __call__(self, invocation_id: str) -> IdUse:
        if self._holds_firing(invocation_id):
            return IdUse(True, None)
        return IdUse(False, self._recorded(invocation_id))


class FleetIds:
    """A fleet's: one statement on the shared store.

    Made on ``connection``, the trigger store's connection for statements outside a
    transaction (``TriggerStore.outside_transaction``): the event loop's, which never
    waits for a group's transaction or the history's writes. ``pending``: the runs this
    replica is still writing to the history (``Recorder.pending``), looked at first.
    """

    def __init__(
        self,
        connection: Callable[[], AbstractContextManager[Db]],
        pending: Callable[[str], RunIdentity | None],
    ) -> None:
        self._connection = connection
        self._pending = pending

    def __call__(self, invocation_id: str) -> IdUse:
        with self._connection() as db:
            row = db.execute(_QUERY, (invocation_id,) * 3).fetchone()
        recorded = self._pending(invocation_id)
        if recorded is None and row["job_id"] is not None:
            recorded = RunIdentity(
                row["job_id"],
                row["callback_id"],
                row["language"].lower(),
                row["triggers"],
                row["source"],
                bool(row["fired"]),
            )
        if recorded is None and row["notes"] is not None:
            recorded = _noted(row["notes"])
        return IdUse(bool(row["firing"]), recorded)


def _noted(notes: str) -> RunIdentity | None:
    """Whose run an outbox row's notes describe; None for notes that cannot be read."""
    try:
        return RunIdentity.of(run_notes.decode(notes).invocation)
    except (ValueError, KeyError, TypeError):
        return None  # a damaged row: delivery sets it aside, and it names no run
