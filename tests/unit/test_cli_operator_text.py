"""What ``cbexec`` prints that others wrote (an executor's error, a supervisor's refusal): escaped in place."""

from __future__ import annotations

import argparse
from typing import TextIO

import grpc
import pytest

from executor.cli.connection import EXIT_RPC, rpc_command
from executor.cli.outbox import describe_dead_letter
from supervisor_client import ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2

pytestmark = pytest.mark.unit

# A submitter's work name: clear the screen, then draw what follows backwards.
HOSTILE = "f\x1b[2J\u202ered"


def test_an_rpc_error_quoting_a_submitters_name_reaches_stderr_escaped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def failing(args: argparse.Namespace, out: TextIO) -> int:
        raise ExecutorRpcError(
            grpc.StatusCode.NOT_FOUND, f"job 1: no work item 'x'; its agenda is 1, {HOSTILE}\nFAKE"
        )

    assert rpc_command(failing)(argparse.Namespace()) == EXIT_RPC
    assert capsys.readouterr().err == (
        "cbexec: NOT_FOUND: job 1: no work item 'x'; its agenda is 1, f\\x1b[2J\\u202ered\\nFAKE\n"
    )


@pytest.mark.parametrize(("attempts", "said"), [(1, "1 refusal"), (3, "3 refusals")])
def test_a_dead_letter_shows_the_supervisors_refusal_escaped_on_its_own_line(
    attempts: int, said: str
) -> None:
    letter = executor_pb2.DeadLetter(
        invocation_id="abc",
        dead_at=1_700_000_000.0,
        size_bytes=12,
        attempts=attempts,
        last_error=f"refused\n{HOSTILE}",
    )
    head, refusal = describe_dead_letter(letter).split("\n")
    assert head.startswith("abc  set aside ")
    assert head.endswith(f"  12 bytes  {said}")
    assert refusal == "  refused\\nf\\x1b[2J\\u202ered"
