"""A Perl END block still running when the run is ended is cut short as the code would be.

perl's main() puts every signal with a %SIG handler back to its default action before it
runs the END blocks, and a callback is PID 1 of its namespace, which ignores a signal at
its default action: the executor's SIGTERM (the wall limit) and the CPU limit's SIGXCPU
did nothing to an END block, which ran on until the grace's or the hard limit's SIGKILL
(probe 49). Warm and cold alike, the bootstrap's handlers now hold in the END blocks, as
Python's do in its atexit handlers: the block the signal lands in ends, perl goes on to
the next, and the run ends with the status the code's own path gives (143, 152, 141).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [
    pytest.mark.service,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
]

Outcome = executor_pb2.Outcome

CUT_SHORT_NOTE = "END block was cut short: the run was stopped (SIGTERM)\n"


async def run(stack: Stack, code: str, **limits: Any) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "ending", "user": "alice"}])
    return await stack.client.execute_callback(language="perl", code=code, job=job, limits=limits)


@pytest.mark.parametrize(
    "ending", ["", "exit 0;\n", "exit 3;\n"], ids=["code-ends", "exit-0", "exit-3"]
)
async def test_the_wall_limits_sigterm_cuts_a_sleeping_end_block_short(
    stack: Stack, ending: str
) -> None:
    code = (
        'END { print "the next END block runs\\n" }\n'
        'END { print "END begins\\n"; sleep 30; print "END went on\\n" }\n'
        'print "code done\\n";\n' + ending
    )

    response = await run(stack, code, wall_seconds=1)

    assert response.outcome == Outcome.OUTCOME_WALL_TIMEOUT, response
    # Ended by the SIGTERM's handler (exit 143), not by the grace's SIGKILL.
    assert (response.signal, response.exit_code) == (0, 143), response
    assert response.stdout == "code done\nEND begins\nthe next END block runs\n"
    assert response.stderr == CUT_SHORT_NOTE


async def test_an_end_block_cut_short_in_its_last_statement_is_named_an_end_block(
    stack: Stack,
) -> None:
    # The SIGTERM is handed over as the sleeping END block returns, in the frames perl
    # also calls a returning DESTROY in: no object, so no DESTROY to name.
    code = 'END { print "the next END block runs\\n" }\nEND { sleep 30 }\nprint "code done\\n";\n'

    response = await run(stack, code, wall_seconds=1)

    assert response.outcome == Outcome.OUTCOME_WALL_TIMEOUT, response
    assert (response.signal, response.exit_code) == (0, 143), response
    assert response.stdout == "code done\nthe next END block runs\n"
    assert response.stderr == CUT_SHORT_NOTE


async def test_the_cpu_limits_sigxcpu_ends_a_spinning_end_block_at_the_soft_limit(
    stack: Stack,
) -> None:
    code = 'END { 1 while 1 }\nprint "code done\\n";\n'

    response = await run(stack, code, cpu_seconds=1, wall_seconds=10)

    assert response.outcome == Outcome.OUTCOME_CPU_LIMIT, response
    # SIGXCPU's handler (exit 152) at the soft limit, not the hard limit's SIGKILL 1 s on.
    assert (response.signal, response.exit_code) == (0, 152), response
    assert response.usage.cpu_seconds < 1.5, response.usage
    assert response.stdout == "code done\n"


async def test_a_write_with_no_reader_in_an_end_block_ends_it_as_sigpipe_ends_plain_perl(
    stack: Stack,
) -> None:
    # Plain perl dies of the SIGPIPE there too; the sandbox's PID 1 got EPIPE and went on.
    code = (
        'END { pipe(my $r, my $w) or die; close $r; syswrite($w, "x"); print "went on\\n" }\n'
        'print "code done\\n";\n'
    )

    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    assert (response.signal, response.exit_code) == (0, 141), response
    assert response.stdout == "code done\n"
