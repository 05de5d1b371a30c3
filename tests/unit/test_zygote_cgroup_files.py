"""A zygote's children join their cells' cgroups through files it opened, through the tree held before its cover."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from executor.child import zygote

pytestmark = pytest.mark.unit


def test_a_cells_files_open_through_the_tree_held_before_it_was_covered(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "pids" / "cell-0").mkdir(parents=True)
    procs = tree / "pids" / "cell-0" / "cgroup.procs"
    procs.write_bytes(b"")
    files = zygote.CellCgroupFiles()
    files.hold_roots([str(tree)])
    tree.rename(tmp_path / "elsewhere")  # the path leads nowhere now, as under a mask

    (fd,) = files.opened([str(procs)])
    try:
        os.write(fd, b"0")
        assert (tmp_path / "elsewhere" / "pids" / "cell-0" / "cgroup.procs").read_bytes() == b"0"
        assert files.opened([str(procs)]) == [fd], "opened once, kept for the cell's children"
    finally:
        os.close(fd)


def test_a_cell_whose_files_are_missing_fails_its_spawn_only(tmp_path: Path) -> None:
    files = zygote.CellCgroupFiles()
    files.hold_roots([str(tmp_path)])
    with pytest.raises(zygote.CgroupFilesError, match="cell-9"):
        files.opened([str(tmp_path / "pids" / "cell-9" / "cgroup.procs")])
