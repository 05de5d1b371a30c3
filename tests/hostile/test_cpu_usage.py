"""The CPU a run reports counts all of its processes, however they end, on both launchers.

A forked process that ignores SIGTERM is killed only at the grace's SIGKILL, and nobody
reaps it into the main process's figure: its CPU comes from the cell's cgroup counter.
"""

from __future__ import annotations

import pytest

from executor.sandbox import cgroup
from tests.hostile.harness import Arena, Outcome, assert_outcome

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(90)]

SPINNER_IGNORING_TERM = {
    "python": (
        "import os, signal, time\n"
        "if os.fork() == 0:\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "    while True:\n"
        "        pass\n"
        "time.sleep(30)\n"
    ),
    "perl": ("if (!fork) { $SIG{TERM} = 'IGNORE'; 1 while 1; }\nsleep 30;\n"),
}

# The main process spins ~1 s of its own CPU and returns: a run like any other.
SPIN_ONE_SECOND = {
    "python": "import time\nstart = time.process_time()\nwhile time.process_time() - start < 1:\n    pass\n",
    "perl": "my $start = times;\n1 while times - $start < 1;\n",
}


def require_cell_cpu_counter(arena: Arena) -> None:
    """The host keeps a CPU counter cells can join: cgroup v2, or v1's cpuacct apart from cpu."""
    root = cgroup.CGROUP_ROOT
    joinable = (root / "cgroup.controllers").exists() or (
        (root / "cpuacct" / "cgroup.procs").exists()
        and not (root / "cpuacct" / "cpu.shares").exists()
    )
    if arena.stack.running.options.cgroups is None or not joinable:
        pytest.xfail("no cell CPU counter here: a process nobody reaped is not counted")


async def test_a_forked_spinner_ignoring_sigterm_counts_to_the_wall_limit(
    arena: Arena, language: str
) -> None:
    require_cell_cpu_counter(arena)
    response = await arena.attack(
        SPINNER_IGNORING_TERM[language],
        language=language,
        limits={"wall_seconds": 3, "cpu_seconds": 20},
    )

    assert_outcome(response, Outcome.OUTCOME_WALL_TIMEOUT)
    # ~3 s spun while the main process slept; counted at all is what matters (the main
    # process alone is ~0 s), and a loaded machine gave the spinner 1.15 s of its 3.
    assert response.usage.cpu_seconds >= 0.5, response.usage


async def test_a_normal_runs_cpu_is_its_own(arena: Arena, language: str) -> None:
    response = await arena.attack(
        SPIN_ONE_SECOND[language], language=language, limits={"wall_seconds": 20}
    )

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    # Its second of spinning and its start-up, and no more than the one process could use.
    assert 0.9 <= response.usage.cpu_seconds <= response.usage.wall_seconds + 0.1, response.usage
