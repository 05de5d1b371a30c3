"""Start-up under an open-file limit too low for ``max_concurrent``, and start-up failures' cells.

A real ``cbexec serve`` (and ``--check-config``) under a hard RLIMIT_NOFILE of 1024 with
``max_concurrent = 300``: its 600 cells' cgroup files took every descriptor, then
``tempfile`` found "No usable temporary directory" and both exited 1 with a traceback
naming neither the setting nor the limit; ``serve`` left its 600 cells behind (probe 120).
Now both refuse in one line (exit 2). A soft limit below what the cells hold, under a
high enough hard one, is raised by the check as by start-up; and a start-up refused
after its cells were made removes them.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from executor.sandbox.cgroup import CGROUP_ROOT
from tests.conftest import TEST_UID_BASE
from tests.helpers.cli import Said

pytestmark = [pytest.mark.faults, pytest.mark.timeout(180)]


def _launcher(soft: int, hard: int) -> tuple[str, ...]:
    """Python's arguments that set RLIMIT_NOFILE (as ``ulimit -n`` does), then run cbexec."""
    return (
        "-c",
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        "from executor.cli import main; sys.exit(main())",
    )


def _serve(launcher: tuple[str, ...], data_dir: Path, *args: str, **env: str) -> tuple[Said, int]:
    """``cbexec serve ARGS`` under ``launcher`` to its end: what it said, and its pid."""
    with subprocess.Popen(
        [
            sys.executable,
            *launcher,
            "serve",
            "--data-dir",
            str(data_dir),
            "--bind",
            "127.0.0.1:0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "CBEXEC_SANDBOX_UID_BASE": str(TEST_UID_BASE), **env},
    ) as proc:
        try:
            out, err = proc.communicate(timeout=150)
        finally:
            proc.kill()
    return Said(proc.returncode, out, err), proc.pid


def _pools_of(pid: int) -> list[Path]:
    """The cgroup pools process ``pid`` made and left (v1's per hierarchy, v2's one)."""
    return [*CGROUP_ROOT.glob(f"*/cbexec-{pid}*"), *CGROUP_ROOT.glob(f"cbexec-{pid}*")]


LOW_HARD: Final = _launcher(1024, 1024)
REFUSAL: Final = (
    "cbexec: max_concurrent: 300 needs ~2464 open files to start (~4 for each of its 600 "
    "cells, ~64 for the service), above the open-file limit (RLIMIT_NOFILE) of 1024: raise "
    "the hard limit (systemd LimitNOFILE=, ulimit -Hn) or lower max_concurrent (at most "
    "120 start under this limit)"
)


@pytest.mark.parametrize("check", [True, False], ids=["check-config", "serve"])
def test_too_many_slots_for_the_hard_limit_are_refused_in_one_line(
    tmp_path: Path, check: bool
) -> None:
    args = ("--max-concurrent", "300", *(("--check-config",) if check else ()))
    said, pid = _serve(LOW_HARD, tmp_path / "data", *args)

    assert said.code == 2, said.err
    assert "Traceback" not in said.err
    assert said.err.strip().splitlines() == [REFUSAL]
    assert _pools_of(pid) == []


def test_the_check_raises_a_low_soft_limit_as_start_up_does(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2000:
        pytest.skip(f"the hard open-file limit here, {hard}, is below what 60 slots want")
    # 120 cells hold ~360 counter files: past the soft 256, well within the hard limit.
    said, pid = _serve(
        _launcher(256, hard), tmp_path / "data", "--max-concurrent", "60", "--check-config"
    )

    assert said.code == 0, said.err
    assert "ok: start-up would succeed" in said.out
    assert f"open files: limit {hard}" in said.out
    assert _pools_of(pid) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="dedicated uids are root's")
@pytest.mark.parametrize("check", [True, False], ids=["check-config", "serve"])
def test_a_sandbox_refused_after_its_cells_were_made_leaves_none(
    tmp_path: Path, check: bool
) -> None:
    # The cells are made before the dedicated uids are weighed: this refusal comes after.
    said, pid = _serve(
        _launcher(*resource.getrlimit(resource.RLIMIT_NOFILE)),
        tmp_path / "data",
        "--max-concurrent",
        "2",
        *(("--check-config",) if check else ()),
        CBEXEC_PID_NAMESPACE="off",
        CBEXEC_DEDICATED_UID="on",
        CBEXEC_CGROUP="on",
    )

    assert said.code == 2, said.err
    assert said.err.strip().splitlines() == [
        "cbexec: dedicated_uid: 'on' needs root and PID namespaces"
    ]
    assert _pools_of(pid) == []
