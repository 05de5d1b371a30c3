"""A run's notes (what its outbox row keeps until the history has the run) read back whole."""

from __future__ import annotations

import dataclasses

from executor.bounds import utf8_size
from executor.runs import run_notes
from executor.runs.callback_log import format_entry
from tests.unit.test_history import invocation, result


def test_notes_read_back_as_the_run_they_were_made_of() -> None:
    run, ran = invocation("n-1", job_id=42), result("n-1")
    notes = run_notes.decode(run_notes.encode(run, ran, 123.5))
    assert notes.result == ran
    assert notes.ended_at == 123.5
    assert (notes.invocation.job_id, notes.invocation.work_name) == (42, "5")
    assert notes.invocation.callback.triggers == run.callback.triggers
    assert notes.invocation.event == run.event


def test_notes_keep_the_first_64_kib_of_a_large_output_with_their_own_marker() -> None:
    # Encoded on the request's path: megabytes of output are not copied in full. Probe
    # 134 F4: the cut was of characters (192 KiB of 3-byte text), and it set the
    # *_truncated flags, so the rebuilt .cb entry blamed the output_bytes limit.
    cap = run_notes.NOTES_OUTPUT_BYTES
    ran = dataclasses.replace(
        result("n-2"), stdout="x" + "€" * 70_000, stderr="\x1bE" * 40_000, stderr_truncated=True
    )
    kept = run_notes.decode(run_notes.encode(invocation("n-2"), ran, 1.0)).result

    for text, whole in ((kept.stdout, ran.stdout), (kept.stderr, ran.stderr)):
        assert cap - 4 < utf8_size(text) <= cap == 64 << 10
        head, marker = text.rsplit("…", 1)
        assert whole.startswith(head)
        assert (
            marker == f"[{utf8_size(whole) - utf8_size(head)} more bytes not in the rebuilt record]"
        )
    assert not kept.stdout_truncated and kept.stderr_truncated  # the run's own flags
    entry = format_entry(invocation("n-2"), kept, 1.0)
    assert "[stdout truncated" not in entry and "[stderr truncated at the output_bytes" in entry


def test_notes_keep_an_output_within_64_kib_whole() -> None:
    ran = dataclasses.replace(result("n-3"), stdout="€" * ((64 << 10) // 3), stderr="e" * 5)
    assert run_notes.decode(run_notes.encode(invocation("n-3"), ran, 1.0)).result == ran
