"""The warm (zygote) and the cold (fork+exec) launcher give a callback the same.

A policy with binds, a group or a umask starts its children cold, so a callback must
not behave differently there: its exit status as its language decides it (Perl's ``$?``
after its ``END`` blocks), and the same Perl modules loaded before its code runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, running_stack, stack_settings

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
]

Outcome = executor_pb2.Outcome


async def run(
    stack: Stack, language: str, code: str, **limits: Any
) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "parity", "user": "alice", "status": "blocked"}])
    return await stack.client.execute_callback(
        language=language, code=code, job=job, limits=limits or None
    )


# -- exit status --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "outcome", "exit_code"),
    [
        ('print "ran\\n";\nEND { $? = 3 }', Outcome.OUTCOME_FAILED, 3),
        ('print "ran\\n";\ndie "x\\n";\nEND { $? = 0 }', Outcome.OUTCOME_SUCCEEDED, 0),
        ('print "ran\\n";\nexit 0;\nEND { $? = 4 }', Outcome.OUTCOME_FAILED, 4),
    ],
    ids=["end-sets-3", "die-then-end-sets-0", "exit-0-then-end-sets-4"],
)
async def test_a_perl_callbacks_exit_status_is_what_its_end_blocks_leave_in_status(
    stack: Stack, code: str, outcome: int, exit_code: int
) -> None:
    # As plain perl: `perl -e 'END { $? = 3 }'` exits 3. The warm path answered at its
    # end mark with the status the done frame implied (SUCCEEDED, and FAILED after die).
    for _ in range(3):  # prepared children too
        response = await run(stack, "perl", code)

        assert (response.outcome, response.exit_code) == (outcome, exit_code), (
            response.failure.message
        )
        assert response.stdout == "ran\n"


# -- Perl modules --------------------------------------------------------------------------

# What the README says a Perl callback finds loaded (and what these load in turn).
DOCUMENTED_PERL_MODULES = {
    "qb.pm",
    "strict.pm",
    "warnings.pm",
    "POSIX.pm",
    "Fcntl.pm",
    "Errno.pm",
    "Config.pm",
    "Carp.pm",
    "Exporter.pm",
    "XSLoader.pm",
}


async def test_perl_callbacks_find_the_same_modules_loaded_on_both_launchers(
    tmp_path: Path,
) -> None:
    # The zygote had POSIX, Fcntl, Config and the rest loaded for itself; a cold child
    # had none of them, so POSIX::floor without `use POSIX` died there.
    code = (
        'print join(" ", sort keys %INC), "\\n";\n'
        'print POSIX::floor(2.5), " ", Fcntl::O_RDONLY(), " ", $Config::Config{osname}, "\\n";\n'
    )
    seen = {}
    for launcher in ("zygote", "cold"):
        settings = stack_settings(tmp_path / launcher, launcher=launcher)
        async with running_stack(settings) as stack:
            response = await run(stack, "perl", code)
        assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (launcher, response.failure.message)
        loaded, used = response.stdout.splitlines()
        assert used == "2 0 linux"
        seen[launcher] = set(loaded.split())

    assert seen["zygote"] == seen["cold"]
    assert seen["cold"] >= DOCUMENTED_PERL_MODULES
