"""A Perl DESTROY still running when the run is ended is cut short as the code would be.

The bootstrap's TERM and XCPU handlers end the run through exit, and exit did end the
DESTROY it landed in; but perl left its object half freed and called that DESTROY again,
from the start, in global destruction, where no second signal came: it ran on to the
grace's or the hard limit's SIGKILL (probe 53). Warm and cold alike, a cut-short DESTROY
is not called again (as Python calls a __del__ once), the run ends with the status the
code's own path gives (143, 152), and the wall limit's SIGTERM leaves a one-line note.
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

CUT_SHORT_NOTE = "DESTROY was cut short: the run was stopped (SIGTERM)\n"


def released_in_the_code(destroy: str) -> str:
    """Code whose object, with this DESTROY body, is released as its block ends."""
    return (
        'END { print "END runs\\n" }\n'
        "package O; sub new { bless {}, shift }\n"
        f"sub DESTROY {{ {destroy} }}\n"
        "package main;\n"
        "{ my $o = O->new; }\n"
        'print "code went on\\n";\n'
    )


async def run(stack: Stack, code: str, **limits: Any) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "destroying", "user": "alice"}])
    return await stack.client.execute_callback(language="perl", code=code, job=job, limits=limits)


@pytest.mark.parametrize(
    "destroy",
    [
        'print "DESTROY begins\\n"; sleep 30; print "DESTROY went on\\n"',
        # perl runs the handler as the DESTROY returns, before the object is freed.
        'my $self = shift; print "DESTROY begins\\n"; sleep 30',
    ],
    ids=["mid-body", "last-statement"],
)
async def test_the_wall_limits_sigterm_cuts_a_sleeping_destroy_short(
    stack: Stack, destroy: str
) -> None:
    response = await run(stack, released_in_the_code(destroy), wall_seconds=1)

    assert response.outcome == Outcome.OUTCOME_WALL_TIMEOUT, response
    # Ended by the SIGTERM's handler (exit 143), not by the grace's SIGKILL.
    assert (response.signal, response.exit_code) == (0, 143), response
    # END blocks run, as after the code's own exit; the DESTROY is not called again.
    assert response.stdout == "DESTROY begins\nEND runs\n"
    assert response.stderr == CUT_SHORT_NOTE


async def test_the_cpu_limits_sigxcpu_ends_a_spinning_destroy_at_the_soft_limit(
    stack: Stack,
) -> None:
    code = released_in_the_code("1 while 1")

    response = await run(stack, code, cpu_seconds=1, wall_seconds=10)

    assert response.outcome == Outcome.OUTCOME_CPU_LIMIT, response
    # SIGXCPU's handler (exit 152) at the soft limit, not the hard limit's SIGKILL 1 s on.
    assert (response.signal, response.exit_code) == (0, 152), response
    assert response.usage.cpu_seconds < 1.5, response.usage
    assert response.stdout == "END runs\n"
    assert response.stderr == ""


async def test_a_destroy_under_way_in_a_destroy_runs_once(stack: Stack) -> None:
    # P's DESTROY, freed in O's, ends with its sleep; the handler ends O's.
    code = (
        "package P; sub new { bless [], shift }\n"
        'sub DESTROY { print "P begins\\n"; sleep 30 }\n'
        "package O; sub new { bless {}, shift }\n"
        'sub DESTROY { print "O begins\\n"; { my $p = P->new; } print "O went on\\n" }\n'
        "package main;\n"
        "{ my $o = O->new; }\n"
    )

    response = await run(stack, code, wall_seconds=1)

    assert response.outcome == Outcome.OUTCOME_WALL_TIMEOUT, response
    assert (response.signal, response.exit_code) == (0, 143), response
    assert response.stdout == "O begins\nP begins\n"
    assert response.stderr == CUT_SHORT_NOTE


async def test_a_destroy_in_an_end_block_is_cut_short_and_the_next_end_block_runs(
    stack: Stack,
) -> None:
    code = (
        'END { print "the next END block runs\\n" }\n'
        'END { { my $o = O->new; } print "END went on\\n" }\n'
        "package O; sub new { bless {}, shift }\n"
        'sub DESTROY { print "DESTROY begins\\n"; sleep 30 }\n'
        "package main;\n"
        'print "code done\\n";\n'
    )

    response = await run(stack, code, wall_seconds=1)

    assert response.outcome == Outcome.OUTCOME_WALL_TIMEOUT, response
    assert (response.signal, response.exit_code) == (0, 143), response
    assert response.stdout == "code done\nDESTROY begins\nthe next END block runs\n"
    assert response.stderr == CUT_SHORT_NOTE


async def test_a_one_line_eval_looks_like_a_returned_destroy_but_still_ends_at_once(
    stack: Stack,
) -> None:
    # The handler comes back once per signal: one more statement of the eval may run
    # first, no more (the next sleep would hold the run until the grace's SIGKILL).
    code = 'eval { print "a\\n"; sleep 30; print "b\\n"; sleep 30; print "c\\n" };\n'

    response = await run(stack, code, wall_seconds=1)

    assert response.outcome == Outcome.OUTCOME_WALL_TIMEOUT, response
    assert (response.signal, response.exit_code) == (0, 143), response
    assert response.stdout in ("a\n", "a\nb\n")
    assert response.stderr == ""
