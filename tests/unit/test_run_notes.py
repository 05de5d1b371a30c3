"""A run's notes (what its outbox row keeps until the history has the run) read back whole."""

from __future__ import annotations

import dataclasses

from executor.runs import run_notes
from tests.unit.test_history import invocation, result


def test_notes_read_back_as_the_run_they_were_made_of() -> None:
    run, ran = invocation("n-1", job_id=42), result("n-1")
    notes = run_notes.decode(run_notes.encode(run, ran, 123.5))
    assert notes.result == ran
    assert notes.ended_at == 123.5
    assert (notes.invocation.job_id, notes.invocation.work_name) == (42, "5")
    assert notes.invocation.callback.triggers == run.callback.triggers
    assert notes.invocation.event == run.event


def test_notes_keep_the_start_of_a_large_output_marked_truncated() -> None:
    # Encoded on the request's path: megabytes of output are not copied in full.
    cap = run_notes.NOTES_OUTPUT_CHARS
    ran = dataclasses.replace(result("n-2"), stdout="o" * (cap + 10), stderr="e" * 5)
    kept = run_notes.decode(run_notes.encode(invocation("n-2"), ran, 1.0)).result
    assert (kept.stdout, kept.stdout_truncated) == ("o" * cap, True)
    assert (kept.stderr, kept.stderr_truncated) == ("e" * 5, False)
