"""At start-up, the history records and ``.cb`` entries a crash lost, rebuilt from the outbox.

A run's outbox row is committed before its caller is answered, with the run's notes
(``run_notes``); its history record and ``.cb`` entry are written just after the answer.
A ``kill -9`` in between leaves the notes and no history record: this writes both from
them, before the executor serves (so ``ListRuns`` and the repeated-id check see the run),
then drops the notes of every row whose run the history now has. The metrics are counters
in memory, lost with the process anyway.

In a fleet's store, the rows are every replica's: a run another replica answered in the
moment before this start, and has not written yet, may be written by both (the same
history record; its ``.cb`` entry twice, if the replicas share the log directory).
"""

from __future__ import annotations

import logging
from typing import Final

from executor.runs import run_notes
from executor.runs.callback_log import CallbackLog
from executor.runs.history import RunHistory
from executor.runs.outbox import KeptNotes, Outbox

logger = logging.getLogger(__name__)

# The history reckons a run's end from its start and wall time: a float's rounding apart.
_SAME_END_S: Final = 1e-3


def recover_lost_bookkeeping(outbox: Outbox, history: RunHistory, callback_log: CallbackLog) -> int:
    """Write the runs the outbox has notes of and the history lacks; how many.

    A storage that fails is logged: the notes stay, for the next start.
    """
    kept = outbox.kept_notes()
    if not kept:
        return 0
    ends = history.ends([row.key for row in kept])
    lost = [row for row in kept if not _in_history(row, ends)]
    notes = outbox.notes([row.seq for row in lost])
    runs = []
    for row in lost:
        try:
            runs.append(run_notes.decode(notes[row.seq]))
        except (KeyError, ValueError, TypeError) as err:  # another version's, or damaged
            logger.warning("run %s: its notes cannot be read (%r); not rebuilt", row.key, err)
    try:
        if runs:
            history.record_many(
                [(r.invocation, r.result, r.ended_at - r.result.usage.wall_seconds) for r in runs]
            )
            for run in runs:
                try:
                    callback_log.append(run.invocation, run.result, run.ended_at)
                except OSError as err:
                    logger.warning(
                        "run %s: its .cb entry was not written: %s", run.result.invocation_id, err
                    )
        outbox.forget_notes([row.seq for row in kept])
    except Exception:
        logger.exception("the history of runs a crash interrupted was not rebuilt")
        return 0
    if runs:
        logger.warning(
            "rebuilt the history record and .cb entry of %d runs answered just before the"
            " executor stopped without writing them (a crash or kill -9)",
            len(runs),
        )
    return len(runs)


def _in_history(row: KeptNotes, ends: dict[str, float]) -> bool:
    """Whether the history has this row's run, or a later run of its invocation id."""
    end = ends.get(row.key)
    return end is not None and end >= row.ended_at - _SAME_END_S
