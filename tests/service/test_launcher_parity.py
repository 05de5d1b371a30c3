"""The warm (zygote) and the cold (fork+exec) launcher give a callback the same.

A policy with binds, a group or a umask starts its children cold, so a callback must
not behave differently there: its exit status as its language decides it (Perl's ``$?``
after its ``END`` blocks), its own peak RSS in the usage (never the executor's, which a
process keeps across exec), ``max_processes`` processes for itself alone, and the same
Perl modules loaded before its code runs.
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
MIB = 1 << 20


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


# -- peak RSS ------------------------------------------------------------------------------

# Each callback allocates 16 MiB and touches it, then prints its own VmHWM (KiB): enough
# to dominate what ran in its process before the code (a cold Perl child was the Python
# launcher until it exec'd perl). The executor (this test process) is larger still.
PEAK_CODE = {
    "python": (
        "import time\n"
        "block = bytearray(16 << 20)\n"
        "for i in range(0, len(block), 4096):\n"
        "    block[i] = 1\n"
        "status = open('/proc/self/status').read()\n"
        "print(status.split('VmHWM:')[1].split()[0], flush=True)\n"
    ),
    "perl": (
        "my $block = 'x' x (16 << 20);\n"
        "open(my $status, '<', '/proc/self/status') or die;\n"
        'while (<$status>) { print "$1\\n" if /^VmHWM:\\s+(\\d+)/ }\n'
        "$| = 1;\n"
    ),
}
SLEEP_IGNORING_SIGTERM = {
    "python": "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(30)\n",
    "perl": "$SIG{TERM} = 'IGNORE';\nsleep 30;\n",
}


def own_peak(response: executor_pb2.ExecuteResponse) -> int:
    return int(response.stdout.split()[0]) * 1024


def assert_own_peak(response: executor_pb2.ExecuteResponse) -> None:
    """The reported peak RSS is the one the callback read of itself, and what it grew by after.

    A little less is allowed: the kernel sums its per-CPU RSS counters approximately
    where it keeps the peak for wait4, exactly where /proc shows it.
    """
    own = own_peak(response)
    assert executor_peak() > own + 8 * MIB  # else the executor's figure could pass for it
    assert own - MIB <= response.usage.peak_rss_bytes <= own + 3 * MIB


def executor_peak() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_the_peak_rss_is_the_callbacks_own(stack: Stack, language: str) -> None:
    # The cold path reported the executor's high-water mark (its child's ru_maxrss
    # carried it through the exec): hundreds of MB for a callback of a few.
    response = await run(stack, language, PEAK_CODE[language])

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    assert_own_peak(response)


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_callback_killed_at_its_deadline_reports_its_own_peak_rss(
    stack: Stack, language: str
) -> None:
    # It ignores SIGTERM, so the grace's SIGKILL ends it: on the cold path the callback
    # first, then its shim, which has reaped it and reported its figures by then.
    code = PEAK_CODE[language] + SLEEP_IGNORING_SIGTERM[language]
    response = await run(stack, language, code, wall_seconds=3)

    assert response.outcome == Outcome.OUTCOME_WALL_TIMEOUT, response.failure.message
    assert_own_peak(response)


# -- max_processes -------------------------------------------------------------------------

FORK_UNTIL_REFUSED = {
    # Children wait on a pipe until the count is known, so all are alive at once.
    "python": (
        "import os\n"
        "r, w = os.pipe()\n"
        "kids = 0\n"
        "while kids < 100:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        os.close(w)\n"
        "        os.read(r, 1)\n"
        "        os._exit(0)\n"
        "    kids += 1\n"
        "os.close(w)\n"
        "print(kids)\n"
        "for _ in range(kids):\n"
        "    os.wait()\n"
    ),
    "perl": (
        'pipe(my $r, my $w) or die "pipe: $!";\n'
        "my $kids = 0;\n"
        "while ($kids < 100) {\n"
        "    my $pid = fork;\n"
        "    last if !defined $pid;\n"
        "    if (!$pid) { close $w; sysread($r, my $byte, 1); exit 0 }\n"
        "    $kids++;\n"
        "}\n"
        "close $w;\n"
        'print "$kids\\n";\n'
        "1 while wait() > 0;\n"
    ),
}


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_max_processes_are_the_callbacks_own_itself_included(
    stack: Stack, language: str
) -> None:
    # The cold launcher's shim was counted in the cell's pids cgroup: one process fewer.
    # And a cold callback killed with its shim was left to init to reap: until then its
    # zombie counted in the cell's pids cgroup and its uid's RLIMIT_NPROC.
    killed = await run(stack, language, SLEEP_IGNORING_SIGTERM[language], wall_seconds=1)
    assert killed.outcome == Outcome.OUTCOME_WALL_TIMEOUT, killed.failure.message
    for max_processes in (6, 11):
        response = await run(
            stack, language, FORK_UNTIL_REFUSED[language], max_processes=max_processes
        )

        assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (
            response.failure.message,
            response.stderr,
        )
        assert response.stdout == f"{max_processes - 1}\n"


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


# -- global destruction -------------------------------------------------------------------


async def test_global_destruction_is_part_of_a_perl_run_only_on_the_cold_path(
    stack: Stack,
) -> None:
    # As the README's Perl section says: plain perl runs an object's DESTROY held by a
    # package variable in global destruction, after the END blocks; the warm path's end
    # mark comes before that, so its output and warnings are not the run's.
    code = (
        'package Foo; sub DESTROY { print "DESTROY ran\\n"; warn "global bye" }\n'
        'package main;\nour $kept = bless {}, "Foo";\nmy $freed = bless {}, "Foo";\n'
        'undef $freed;\nEND { print "END ran\\n" }\nprint "body done\\n";\n'
    )
    response = await run(stack, "perl", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    released = "DESTROY ran\nbody done\nEND ran\n"  # released in the code: on both paths
    if stack.settings.launcher == "cold":
        assert response.stdout == released + "DESTROY ran\n"
        assert response.stderr.endswith(
            "global bye at <callback> line 1 during global destruction.\n"
        )
    else:
        assert response.stdout == released
        assert "global destruction" not in response.stderr


# -- session ------------------------------------------------------------------------------


async def test_the_session_and_group_a_callback_is_in_are_as_documented(stack: Stack) -> None:
    # The one difference the README states: a cold callback is in its shim's session and
    # group (outside its PID namespace), through which the deadline's SIGTERM reaches it.
    code = (
        "import os, time\n"
        "print(os.getsid(0), os.getpgrp(), flush=True)\n"
        "try:\n"
        "    os.setsid()\n"
        "    print('setsid made a session', os.getsid(0), flush=True)\n"
        "except PermissionError:\n"
        "    print('setsid refused', flush=True)\n"
        "try:\n"
        "    time.sleep(30)\n"
        "finally:\n"
        "    print('finally', flush=True)\n"
    )
    response = await run(stack, "python", code, wall_seconds=1)

    assert response.outcome == Outcome.OUTCOME_WALL_TIMEOUT, response.failure.message
    if stack.settings.launcher == "zygote":
        assert response.stdout == "1 1\nsetsid refused\nfinally\n"
    else:  # out of the shim's group, the SIGTERM misses it: the grace's SIGKILL ends it
        assert response.stdout == "0 0\nsetsid made a session 1\n"
