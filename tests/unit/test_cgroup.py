"""Slot cgroups on both layouts (v1 hierarchies, one v2 tree), against a directory standing in for /sys/fs/cgroup.

The real kernel files are exercised by the hostile suite; this pins which file carries
which limit on the layout the development machine does not have.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest

from executor.sandbox import cgroup
from executor.sandbox.cgroup import CellCgroups

pytestmark = pytest.mark.unit


@pytest.fixture
def v1_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for controller in ("pids", "memory"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    monkeypatch.setattr(cgroup, "CGROUP_ROOT", tmp_path)
    # Executors earlier in this process made pools: start the count afresh.
    monkeypatch.setattr(cgroup, "_pools_made", itertools.count())
    return tmp_path


@pytest.fixture
def v2_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    monkeypatch.setattr(cgroup, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(cgroup, "_pools_made", itertools.count())
    return tmp_path


def test_v1_puts_each_limit_in_its_own_hierarchy(v1_root: Path) -> None:
    cgroups = CellCgroups.create(2)
    assert cgroups is not None and cgroups.controllers == ("pids", "memory")

    cgroups.set_limits(1, processes=16, memory_bytes=256 << 20)

    pool = f"cbexec-{os.getpid()}"
    assert (v1_root / "pids" / pool / "cell-1" / "pids.max").read_text() == "16"
    assert (v1_root / "memory" / pool / "cell-1" / "memory.limit_in_bytes").read_text() == str(
        256 << 20
    )
    assert (v1_root / "memory" / pool / "cell-1" / "memory.swappiness").read_text() == "0"
    assert cgroups.procs_files(1) == sorted(
        str(v1_root / c / pool / "cell-1" / "cgroup.procs") for c in ("memory", "pids")
    )


def test_v2_uses_one_cgroup_with_both_controllers(v2_root: Path) -> None:
    cgroups = CellCgroups.create(1)
    assert cgroups is not None

    cgroups.set_limits(0, processes=8, memory_bytes=1 << 30)

    pool = v2_root / f"cbexec-{os.getpid()}"
    assert (pool / "cgroup.subtree_control").read_text() == "+pids +memory"
    assert (pool / "cell-0" / "pids.max").read_text() == "8"
    assert (pool / "cell-0" / "memory.max").read_text() == str(1 << 30)
    assert (pool / "cell-0" / "memory.swap.max").read_text() == "0"
    assert cgroups.procs_files(0) == [str(pool / "cell-0" / "cgroup.procs")]


def test_two_executors_in_one_process_keep_their_own_cells(v2_root: Path) -> None:
    first = CellCgroups.create(1)
    second = CellCgroups.create(1)
    assert first is not None and second is not None
    # Stopping one removes only its own pool (a real cgroup rmdir; here a directory).
    assert first.procs_files(0) == [str(v2_root / f"cbexec-{os.getpid()}/cell-0/cgroup.procs")]
    assert second.procs_files(0) == [str(v2_root / f"cbexec-{os.getpid()}.1/cell-0/cgroup.procs")]


def test_oom_kills_are_read_from_either_layout(v1_root: Path) -> None:
    cgroups = CellCgroups.create(1)
    assert cgroups is not None
    assert cgroups.oom_kills(0) == 0  # no file yet: nothing known, nothing killed

    control = next((v1_root / "memory").glob("cbexec-*/cell-0")) / "memory.oom_control"
    control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")

    assert cgroups.oom_kills(0) == 3


def test_a_cells_cpu_time_comes_from_v2s_cpu_stat(v1_root: Path, tmp_path: Path) -> None:
    v1 = CellCgroups.create(1)
    assert v1 is not None and v1.cpu_seconds(0) is None  # no cpuacct hierarchy here

    root = tmp_path / "v2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("memory pids\n")
    cgroup.CGROUP_ROOT = root  # restored by the fixture's monkeypatch
    v2 = CellCgroups.create(1)
    assert v2 is not None
    stat = next(root.glob("cbexec-*/cell-0")) / "cpu.stat"
    assert v2.cpu_seconds(0) is None  # no file: nothing known
    stat.write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    assert v2.cpu_seconds(0) == 1.5
    stat.write_text("usage_usec 4250000\nuser_usec 4000000\nsystem_usec 250000\n")
    assert v2.cpu_seconds(0) == 4.25  # read anew each time


def test_v1_cells_join_cpuacct_for_their_cpu_time(v1_root: Path) -> None:
    (v1_root / "cpuacct").mkdir()
    (v1_root / "cpuacct" / "cgroup.procs").write_text("")
    cgroups = CellCgroups.create(1)
    assert cgroups is not None

    pool = f"cbexec-{os.getpid()}"
    assert cgroups.procs_files(0) == sorted(
        str(v1_root / c / pool / "cell-0" / "cgroup.procs") for c in ("cpuacct", "memory", "pids")
    )
    usage = v1_root / "cpuacct" / pool / "cell-0" / "cpuacct.usage"
    usage.write_text("2500000000\n")  # nanoseconds
    assert cgroups.cpu_seconds(0) == 2.5
    usage.write_text("")
    assert cgroups.cpu_seconds(0) is None  # unreadable: nothing known


def test_cpuacct_mounted_with_cpu_is_not_joined(v1_root: Path) -> None:
    # A cell there would be a CPU scheduling group too, weighing as one task.
    (v1_root / "cpuacct").mkdir()
    for name in ("cgroup.procs", "cpu.shares"):
        (v1_root / "cpuacct" / name).write_text("")
    cgroups = CellCgroups.create(1)

    assert cgroups is not None and cgroups.controllers == ("pids", "memory")
    assert cgroups.cpu_seconds(0) is None


def test_cpuacct_alone_makes_no_cells(v1_root: Path) -> None:
    for controller in ("pids", "memory"):
        (v1_root / controller / "cgroup.procs").unlink()
    (v1_root / "cpuacct").mkdir()
    (v1_root / "cpuacct" / "cgroup.procs").write_text("")

    assert CellCgroups.create(1) is None  # a counter caps nothing


def test_without_the_memory_controller_only_processes_are_capped(v1_root: Path) -> None:
    cgroups = CellCgroups.create(1, memory=False)
    assert cgroups is not None and cgroups.controllers == ("pids",)

    cgroups.set_limits(0, processes=4, memory_bytes=1 << 20)

    assert cgroups.oom_kills(0) == 0
    assert not list((v1_root / "memory").glob("cbexec-*"))


def test_no_writable_controller_means_no_cgroups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgroup, "CGROUP_ROOT", tmp_path)
    assert CellCgroups.create(2) is None


def test_whether_a_cell_has_processes_is_its_pids_counter(v2_root: Path) -> None:
    cgroups = CellCgroups.create(1)
    assert cgroups is not None
    cell = v2_root / f"cbexec-{os.getpid()}" / "cell-0"
    (cell / "cgroup.procs").write_text("4242\n")  # a counter, where there is one, says more
    (cell / "pids.current").write_text("0\n")
    assert not cgroups.has_processes(0)

    (cell / "pids.current").write_text("2\n")  # the kept descriptor reads it anew
    assert cgroups.has_processes(0)


def test_without_a_pids_counter_a_cell_lists_its_processes(v1_root: Path) -> None:
    cgroups = CellCgroups.create(1)
    assert cgroups is not None
    cell = next((v1_root / "pids").glob("cbexec-*/cell-0"))
    (cell / "cgroup.procs").write_text("")
    assert not cgroups.has_processes(0)  # no pids.current file: the list decides

    (cell / "cgroup.procs").write_text("4242\n")
    assert cgroups.has_processes(0)


def test_a_cell_removed_from_outside_is_made_again_before_its_next_child(
    v1_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its next run failed INTERNAL (FileNotFoundError: .../cell-1/pids.max), and every later one.
    cgroups = CellCgroups.create(2)
    assert cgroups is not None
    cgroups.set_limits(1, processes=16, memory_bytes=256 << 20)
    pool = f"cbexec-{os.getpid()}"
    for controller in ("pids", "memory"):
        shutil.rmtree(v1_root / controller / pool / "cell-1")  # another executor's sweep
    cgroups.set_limits(1, processes=16, memory_bytes=256 << 20)  # the same limits as before
    # Under a new name: a zygote's descriptors of the old cell's cgroup.procs are dead.
    joined = [Path(f).parent for f in cgroups.procs_files(1)]
    assert sorted(c.parent for c in joined) == [v1_root / c / pool for c in ("memory", "pids")]
    memory, pids = joined
    assert pids.name != "cell-1"
    assert (pids / "pids.max").read_text() == "16"
    assert (memory / "memory.limit_in_bytes").read_text() == str(256 << 20)
    assert (memory / "memory.swappiness").read_text() == "0"
    assert cgroups.pids(1) == []
    assert "were removed by someone else: made again as cell-1.1" in caplog.text
    cgroups.close()
