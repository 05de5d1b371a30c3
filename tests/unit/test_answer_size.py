"""What a callback makes the executor send stays within the README's bytes, whatever its characters.

README (Limits and outcomes): a run's actions are kept up to 1 MiB together, its failure's
message 4 KiB and traceback 64 KiB, so an Execute answer is at most 2 x ``output_bytes``
+ about 1.1 MiB. The cuts counted characters: 4-byte characters made 3.7 MiB of actions
and a 16 KB failure message (probe 49). Here the worst a callback can choose goes through
the same cuts and the same conversion as an answer.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from executor.api.convert import response_from_result
from executor.bounds import (
    ACTION_FRAMING_BYTES,
    MAX_ACTIONS_BYTES,
    MAX_EXCEPTION_TYPE_CHARS,
    MAX_FAILURE_MESSAGE_BYTES,
    MAX_TARGET_CHARS,
    MAX_TRACEBACK_BYTES,
    cut,
    utf8_size,
)
from executor.child.protocol import DoneFrame
from executor.host_api import MAX_CALLS_PER_RUN, ActionLog
from executor.model import Limits, Outcome, RunResult
from executor.sandbox.capture import CapturedStream
from executor.sandbox.exit_status import ChildExit, sandbox_result

pytestmark = pytest.mark.unit

WIDE = "\U0001f600"  # four bytes of UTF-8
MIB = 1 << 20
# The README's "about 1.1 MiB" beyond the output, for an Execute answer.
ANSWER_BEYOND_OUTPUT = int(1.1 * MIB)
# The last record, which counts the calls left out.
NOTE_BYTES = 200
INVOCATION_ID = "i" * 128  # the longest a request may give


def limits(output_bytes: int) -> Limits:
    return Limits(
        cpu_seconds=2,
        wall_seconds=5,
        memory_bytes=1 << 28,
        output_bytes=output_bytes,
        max_processes=8,
        disk_bytes=1 << 20,
    )


def stream(cap: int, data: bytes) -> CapturedStream:
    captured = CapturedStream(cap)
    captured.feed(data)
    return captured


def failed_child(text: str, output_bytes: int = 1024, traceback: str | None = None) -> ChildExit:
    """A child that raised with ``text`` as its exception's type, message and traceback."""
    frame: dict[str, Any] = {
        "status": "exception",
        "exception_type": text,
        "message": text,
        "traceback": text if traceback is None else traceback,
    }
    return ChildExit(
        wait_status=1 << 8,
        done=cast("DoneFrame", frame),
        stdout=stream(output_bytes, WIDE.encode() * output_bytes),
        stderr=stream(output_bytes, b"\xff" * output_bytes),  # 3 bytes each once replaced
    )


def answer(log: ActionLog, child: ChildExit | None = None, output_bytes: int = 1024) -> RunResult:
    if child is None:
        return RunResult(INVOCATION_ID, Outcome.SUCCEEDED, actions=tuple(log.records))
    result = sandbox_result(child, limits(output_bytes))
    return RunResult(
        INVOCATION_ID,
        result.outcome,
        result.exit_code,
        result.signal,
        result.stdout,
        result.stderr,
        result.stdout_truncated,
        result.stderr_truncated,
        result.failure,
        result.usage,
        tuple(log.records),
    )


def wide_calls() -> ActionLog:
    """The probe's: 6000 calls, each target 600 four-byte characters (cut to 512)."""
    log = ActionLog()
    for n in range(6000):
        log.add("workstatus", cut(f"1:{WIDE * 600}{n}", MAX_TARGET_CHARS), False, WIDE * 2000)
    return log


def most_calls() -> ActionLog:
    """As many calls as a run may make, their records together just within the budget."""
    log = ActionLog()
    text = "v" * ((MAX_ACTIONS_BYTES // MAX_CALLS_PER_RUN - ACTION_FRAMING_BYTES) // 3)
    for _ in range(MAX_CALLS_PER_RUN):
        log.add(text, text, True, text)
    return log


def widest_framing() -> ActionLog:
    """Records whose framing is at its largest: each field's length takes two bytes, ok set."""
    log = ActionLog()
    for _ in range(MAX_CALLS_PER_RUN):
        log.add("\u00e9" * 64, "t" * 128, True, "m" * 128)
    return log


def test_a_failure_of_four_byte_characters_is_cut_to_the_readmes_bytes() -> None:
    failure = answer(ActionLog(), failed_child(WIDE * 20_000)).failure

    assert failure is not None
    assert utf8_size(failure.message) <= MAX_FAILURE_MESSAGE_BYTES == 4096
    assert utf8_size(failure.traceback) <= MAX_TRACEBACK_BYTES == 64 << 10
    assert failure.traceback.startswith("…[") and failure.traceback.endswith(WIDE)
    # The exception type is stated in characters.
    assert len(failure.exception_type) <= MAX_EXCEPTION_TYPE_CHARS == 256


def test_a_long_traceback_keeps_its_end_where_the_cause_is() -> None:
    # Probe 134 F3: the cut kept the first 64 KiB and lost the exception line.
    frames = "".join(
        f'  File "<callback>", line {n}, in f{n}\n    {"€" * 60}\n' for n in range(400)
    )
    traceback = f"Traceback (most recent call last):\n{frames}ValueError: cause\n"
    failure = answer(ActionLog(), failed_child("x", traceback=traceback)).failure

    assert failure is not None and utf8_size(failure.traceback) <= MAX_TRACEBACK_BYTES
    assert failure.traceback.startswith("…[") and " earlier bytes]" in failure.traceback[:40]
    assert failure.traceback.endswith("in f399\n    " + "€" * 60 + "\nValueError: cause\n")


@pytest.mark.parametrize(
    "log", [wide_calls, most_calls, widest_framing], ids=["wide", "many", "framing"]
)
def test_the_actions_as_an_answer_carries_them_are_within_their_budget(
    log: Any,
) -> None:
    actions = log()
    wire = response_from_result(answer(actions))
    bare = response_from_result(answer(ActionLog()))

    assert wire.ByteSize() - bare.ByteSize() <= MAX_ACTIONS_BYTES + NOTE_BYTES


@pytest.mark.parametrize("output_bytes", [1000, 1 * MIB])
@pytest.mark.parametrize(
    "log", [wide_calls, most_calls, widest_framing], ids=["wide", "many", "framing"]
)
def test_an_execute_answer_is_at_most_twice_output_bytes_and_about_1_1_mib(
    log: Any, output_bytes: int
) -> None:
    result = answer(log(), failed_child(WIDE * 20_000, output_bytes), output_bytes)

    size = response_from_result(result).ByteSize()

    assert size <= 2 * output_bytes + ANSWER_BEYOND_OUTPUT, size - 2 * output_bytes
