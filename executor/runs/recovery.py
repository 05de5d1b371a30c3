"""At start-up, the history records and ``.cb`` entries a crash lost, rebuilt from the outbox.

A run's outbox row is committed before its caller is answered, with the run's notes
(``run_notes``); its history record and ``.cb`` entry are written just after the answer,
and the notes are dropped once the history has committed the run (``Outbox.notes_written``;
a clean stop drops the last ones). A ``kill -9`` in between leaves the notes and no
history record: this writes both from them, before the executor serves (so ``ListRuns``
and the repeated-id check see the run), then drops the notes of every row read. A run's
.cb entry is written only when its job's log lacks it (the writer puts entries before
records): an entry of its invocation id that ended at another time is another run's (a
resend's earlier run). The metrics are counters in memory, lost with the process anyway.

Never a run the history pruned: notes can outlive their run's record only when a crash
came between the history's commit and the outbox's, and a run that ended before the
oldest run the history keeps began is one its bounds dropped (or would drop first):
rebuilt, it would push the newest runs out (the bound makes room for it) and append a
long-rotated ``.cb`` entry again.

In a fleet's store, the rows are every replica's: a run another replica answered in the
moment before this start, and has not written yet, may be written by both (the same
history record; its ``.cb`` entry in each one's log directory, twice if they share one).
"""

from __future__ import annotations

import logging
from typing import Final

from executor.errors import UnavailableError
from executor.runs import run_notes
from executor.runs.callback_log import CallbackLog, entry_stamp
from executor.runs.history import RunHistory
from executor.runs.outbox import Outbox
from executor.runs.outbox_notes import KeptNotes

logger = logging.getLogger(__name__)

# The history reckons a run's end from its start and wall time: a float's rounding apart.
_SAME_END_S: Final = 1e-3


def recover_lost_bookkeeping(
    outbox: Outbox, history: RunHistory, callback_log: CallbackLog
) -> int | None:
    """Write the runs the outbox has notes of and the history lacks; how many.

    Never stops a start. None when the storage refused (another process holding a
    database locked, a full disk): logged in a line, the notes stay, and the caller tries
    again once the storage takes writes. Anything else is logged with its traceback, and
    the notes stay for the next start.
    """
    try:
        return _recover(outbox, history, callback_log)
    except UnavailableError as err:
        logger.error(
            "the rebuild of the history of runs a crash interrupted did not finish: %s; it"
            " is tried again once the storage takes writes",
            err,
        )
        return None
    except Exception:
        logger.exception("the history of runs a crash interrupted was not rebuilt")
        return 0


def _recover(outbox: Outbox, history: RunHistory, callback_log: CallbackLog) -> int:
    kept = outbox.kept_notes()
    if not kept:
        return 0
    ends = history.ends([row.key for row in kept])
    oldest = history.oldest_start()
    lost = [row for row in kept if not _in_history(row, ends) and not _pruned(row, oldest)]
    notes = outbox.notes([row.seq for row in lost])
    runs = []
    for row in lost:
        try:
            runs.append(run_notes.decode(notes[row.seq]))
        except (KeyError, ValueError, TypeError) as err:  # another version's, or damaged
            logger.warning("run %s: its notes cannot be read (%r); not rebuilt", row.key, err)
    if runs:
        history.record_many(
            [(r.invocation, r.result, r.ended_at - r.result.usage.wall_seconds) for r in runs]
        )
        _append_unlogged(callback_log, runs)
        # Said now: dropping the notes below may meet a refusing storage, and the try
        # after it finds these runs in the history, with nothing left to rebuild.
        logger.warning(
            "rebuilt the history record and .cb entry of %d runs answered just before the"
            " executor stopped without writing them (a crash, a kill -9, or a stop while"
            " the history refused them)",
            len(runs),
        )
    outbox.forget_notes([row.seq for row in kept])
    return len(runs)


def _append_unlogged(callback_log: CallbackLog, runs: list[run_notes.RunNotes]) -> None:
    """The .cb entries of ``runs`` their job's log does not have yet.

    The writer appends a batch's .cb entries before its history records
    (``bookkeeping``): a crash in between left the entries and not the records. An
    entry of the run's id with another time is an earlier run's (a resend's was written,
    its own not yet): the run's own is written all the same.
    """
    logged: dict[int, set[tuple[str, str]]] = {}
    for run in runs:
        job_id = run.invocation.job_id
        try:
            if job_id not in logged:
                logged[job_id] = callback_log.logged(job_id)
            if (run.result.invocation_id, entry_stamp(run.ended_at)) not in logged[job_id]:
                callback_log.append(run.invocation, run.result, run.ended_at)
        except OSError as err:
            logger.warning(
                "run %s: its .cb entry was not written: %s", run.result.invocation_id, err
            )


def _pruned(row: KeptNotes, oldest_start: float | None) -> bool:
    """Whether the row's run ended before the oldest run the history keeps began."""
    return oldest_start is not None and row.ended_at < oldest_start


def _in_history(row: KeptNotes, ends: dict[str, float]) -> bool:
    """Whether the history has this row's run, or a later run of its invocation id."""
    end = ends.get(row.key)
    return end is not None and end >= row.ended_at - _SAME_END_S
