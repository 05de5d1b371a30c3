"""A zygote's children join their cells' cgroups through files it opened, through the tree held before its cover.

And the mount table it reads to hold each mount of the tree, and to detach what the masks hide.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from executor.child import isolation, zygote

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


def test_a_cells_files_open_through_the_mount_they_are_on_when_it_was_detached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cgroup v1 hierarchy: a mount under the tree, held on its own, since the zygote
    # detaches it (isolation.share_masks) and the tree's path no longer leads into it.
    tree = tmp_path / "tree"
    hierarchy = tree / "pids"
    (hierarchy / "cell-0").mkdir(parents=True)
    (hierarchy / "cell-0" / "cgroup.procs").write_bytes(b"")
    (tree / "cgroup.procs").write_bytes(b"")
    isolation_in_the_zygote = vars(zygote)["isolation_module"]  # its top-level name's
    monkeypatch.setattr(
        isolation_in_the_zygote, "mount_points_under", lambda mask: [str(tree), str(hierarchy)]
    )
    files = zygote.CellCgroupFiles()
    files.hold_roots([str(tree)])
    hierarchy.rename(tmp_path / "detached")  # gone from the tree, as a detached mount

    (fd,) = files.opened([str(hierarchy / "cell-0" / "cgroup.procs")])
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
    assert (tmp_path / "detached" / "cell-0" / "cgroup.procs").read_bytes() == b"0"


def test_the_mount_table_is_read_with_its_escapes_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    table = (
        b"22 1 0:21 / / rw - ext4 /dev/vda rw\n"
        b"31 22 0:40 / /tmp/a\\040b\\134c rw - tmpfs tmpfs rw\n"
        b"32 31 0:41 / /tmp/a\\040b\\134c/d rw - tmpfs tmpfs rw\n"
        b"33 22 0:42 / /tmpx rw - tmpfs tmpfs rw\n"
    )
    real_open = open

    def fake_open(path: str, *args: object, **kwargs: object) -> object:
        if path == "/proc/self/mountinfo":
            return io.BytesIO(table)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(isolation, "open", fake_open, raising=False)

    assert isolation.mount_points_under("/tmp") == ["/tmp/a b\\c", "/tmp/a b\\c/d"]
