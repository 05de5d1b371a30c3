"""Executors sharing a cgroup hierarchy across PID namespaces (as in containers): each keeps its own cells.

A directory stands in for ``/sys/fs/cgroup`` (flock, the pools' sign of life, works on it
as on cgroupfs); the executors are real processes, one in the test's PID namespace and
others in new ones (``unshare --pid``), where pids say nothing of the other namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

# An executor's cgroup pools over ROOT (v1 layout): prints its pools, holds them until stdin ends.
HOLDER = """
import itertools, sys
from pathlib import Path
from executor.sandbox import cgroup
cgroup.CGROUP_ROOT = Path(sys.argv[1])
cgroups = cgroup.CellCgroups.create(2)
print(cgroups.procs_files(1)[-1], flush=True)  # the pids one
sys.stdin.read()
cgroups.close()
"""


@contextmanager
def executor_pools(root: Path, *, own_pid_namespace: bool) -> Iterator[Path]:
    """An executor holding its pools over ``root`` for the block; yields its cell-1's pids cgroup."""
    argv = [sys.executable, "-c", HOLDER, str(root)]
    if own_pid_namespace:
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare(1)")
        argv = ["unshare", "--pid", "--fork", "--mount-proc", *argv]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        line = holder.stdout.readline().decode().strip()
        if not line:
            holder.kill()
            error = holder.communicate(timeout=10)[1].decode()
            if own_pid_namespace and "unshare" in error:
                pytest.skip(f"cannot make a PID namespace here (needs root): {error.strip()}")
            pytest.fail(f"the executor's pools were not made: {error}")
        try:
            yield Path(line).parent
        finally:
            holder.stdin.close()
            holder.wait(timeout=10)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for controller in ("pids", "memory"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    return tmp_path


def test_a_start_in_another_pid_namespace_keeps_a_running_executors_cells(root: Path) -> None:
    # Its start-up took the pool for a dead executor's (no such pid in its namespace)
    # and removed the idle cells; the running executor's next run there failed INTERNAL.
    with executor_pools(root, own_pid_namespace=False) as running_cell:
        with executor_pools(root, own_pid_namespace=True):
            pass  # started (and stopped) in a container
        assert running_cell.is_dir()


def test_executors_with_the_same_pid_in_two_containers_get_pools_of_their_own(
    root: Path,
) -> None:
    # Each is pid 1 in its namespace: both took cbexec-1, and ran in each other's cells.
    with (
        executor_pools(root, own_pid_namespace=True) as first,
        executor_pools(root, own_pid_namespace=True) as second,
    ):
        assert first.parent.name == "cbexec-1"
        assert second.parent != first.parent


def test_an_unheld_pool_goes_only_when_its_pid_runs_nowhere_here(root: Path) -> None:
    # Above the largest pid_max (2^22): a dead executor's (or one of another namespace
    # that held nothing: an earlier version's, which took no lock).
    dead = root / "pids" / "cbexec-4194305" / "cell-0"
    # Named for a pid that runs here, unheld: an earlier version's running executor.
    older = root / "pids" / f"cbexec-{os.getpid()}.7" / "cell-0"
    for cell in (dead, older):
        cell.mkdir(parents=True)
    with executor_pools(root, own_pid_namespace=False):
        assert not dead.parent.exists()
        assert older.is_dir()
