"""A run's bookkeeping as its outbox row keeps it, until the history has the run.

The history record and ``.cb`` entry of a run are written just after its caller is
answered (``bookkeeping.BookkeepingWriter``); the outbox row is committed before. So the
row carries these notes, in the same INSERT (no second commit on the request's path),
and a start-up after a crash or ``kill -9`` rebuilds from them what the writer never
wrote (``recovery``). They hold what the history and the ``.cb`` entry need and nothing
else: not the callback's code, the job's other fields, nor the limits; and of each output
stream its first ``NOTES_OUTPUT_BYTES`` of UTF-8, since they are encoded and committed on
the request's path, where a run's megabytes of output would double. That cut is marked in
the text (``…[N more bytes not in the rebuilt record]``), not by the ``*_truncated``
flags: those say the run's ``output_bytes`` limit cut it, and the rebuilt ``.cb`` entry
says so for them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Final

from executor.bounds import cut_utf8
from executor.model import CallbackSpec, Event, Invocation, Limits, RunResult
from executor.runs.history import result_from_plain, result_to_plain

# An Invocation needs limits; neither the history nor the .cb entry shows them.
_NO_LIMITS: Final = Limits(0.0, 0.0, 0, 0, 0, 0)
# Of each stream, what a rebuilt record keeps (the history's own record keeps it all).
NOTES_OUTPUT_BYTES: Final = 64 << 10
NOTES_CUT_MARKER: Final = "more bytes not in the rebuilt record"


@dataclass(frozen=True, slots=True)
class RunNotes:
    """One finished run, as its bookkeeping needs it."""

    invocation: Invocation
    result: RunResult
    ended_at: float  # Unix time, the outbox row's ``ended_at``


def encode(invocation: Invocation, result: RunResult, ended_at: float) -> str:
    """The notes of one run, as JSON text."""
    callback = invocation.callback
    return json.dumps(
        {
            "job_id": invocation.job_id,
            "callback": {
                "id": callback.id,
                "language": callback.language,
                "triggers": callback.triggers,
                "user": callback.user,
                "source": callback.source,
            },
            "event": None if invocation.event is None else invocation.event.as_dict(),
            "work_name": invocation.work_name,
            "subjob_id": invocation.subjob_id,
            "source": invocation.source,
            "policy": invocation.policy,
            "shadow": invocation.shadow,
            "ended_at": ended_at,
            "result": result_to_plain(_cut_output(result)),
        },
        separators=(",", ":"),
    )


def decode(text: str) -> RunNotes:
    """The run ``encode`` wrote; ValueError (or KeyError, TypeError) when it cannot be read."""
    data: dict[str, Any] = json.loads(text)
    result = result_from_plain(data["result"])
    event = data["event"]
    invocation = Invocation(
        invocation_id=result.invocation_id,
        callback=CallbackSpec(code="", **data["callback"]),
        job={"id": int(data["job_id"])},
        limits=_NO_LIMITS,
        event=None if event is None else Event.from_dict(event),
        work_name=data["work_name"],
        subjob_id=int(data["subjob_id"]),
        source=data["source"],
        policy=data["policy"],
        shadow=bool(data["shadow"]),
    )
    return RunNotes(invocation, result, float(data["ended_at"]))


def _cut_output(result: RunResult) -> RunResult:
    """``result`` with each output stream cut to ``NOTES_OUTPUT_BYTES``, marked in its text."""
    if (
        len(result.stdout) <= NOTES_OUTPUT_BYTES // 4
        and len(result.stderr) <= NOTES_OUTPUT_BYTES // 4
    ):
        return result  # within the bytes whatever its characters: not encoded to be measured
    return dataclasses.replace(
        result,
        stdout=cut_utf8(result.stdout, NOTES_OUTPUT_BYTES, NOTES_CUT_MARKER),
        stderr=cut_utf8(result.stderr, NOTES_OUTPUT_BYTES, NOTES_CUT_MARKER),
    )
