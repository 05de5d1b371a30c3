"""``isolation._mount_binds``: a bind brings what is mounted inside it, every mount of it restricted.

In a child of the test with a mount namespace of its own (everything it mounts goes with
it): a source with a tmpfs inside (``noexec``, with another tmpfs inside that) bound at a
target, as a run binds; then each mount of the bound tree is asked what it is. With
mount_setattr (Linux 5.12+) and, as on an older kernel, without it (ENOSYS: each mount
remounted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root"),
]

CHILD_DIR: Final = Path(__file__).resolve().parents[2] / "executor" / "child"
PROGRAM: Final = r"""
import ctypes, json, os, sys
sys.path.insert(0, CHILD_DIR)
import isolation

root, writable, without_setattr = sys.argv[1], sys.argv[2] == "rw", sys.argv[3] == "yes"
if isolation._libc.unshare(isolation.CLONE_NEWNS) != 0:
    raise OSError(ctypes.get_errno(), "unshare")
isolation._mount(None, "/", None, isolation.MS_REC | isolation.MS_PRIVATE)
source, target = root + "/source", root + "/target"
isolation._mount("tmpfs", source + "/share", "tmpfs", isolation.MS_NOEXEC, "mode=0777")
os.mkdir(source + "/share/inner")
isolation._mount("tmpfs", source + "/share/inner", "tmpfs", 0, "mode=0777")
if without_setattr:
    def no_such_call(*args):
        ctypes.set_errno(38)  # ENOSYS: a kernel before 5.12
        return -1
    isolation._syscall = no_such_call

def identity(path):
    fd = isolation.open_directory(path)
    try:
        return isolation.identity(fd)
    finally:
        os.close(fd)

bind = {"source": source, "target": target, "writable": writable,
        "source_identity": identity(source), "target_identity": identity(target)}
fd = isolation.open_directory(source)
isolation._mount_binds([bind], [fd], "p")
flags = {"ro": os.ST_RDONLY, "nosuid": os.ST_NOSUID, "nodev": os.ST_NODEV, "noexec": os.ST_NOEXEC}
seen = {}
for point in (target, target + "/share", target + "/share/inner"):
    found = os.statvfs(point).f_flag
    seen[point[len(target):] or "/"] = sorted(name for name, bit in flags.items() if found & bit)
seen["listed"] = sorted(os.listdir(target + "/share"))
print(json.dumps(seen))
"""


@pytest.mark.parametrize("without_setattr", [False, True], ids=["mount_setattr", "remounts"])
@pytest.mark.parametrize("mode", ["ro", "rw"])
def test_every_mount_of_a_bind_is_nosuid_nodev_and_read_only_under_ro(
    tmp_path: Path, mode: str, without_setattr: bool
) -> None:
    for directory in ("source/share", "target"):
        (tmp_path / directory).mkdir(parents=True)
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            PROGRAM.replace("CHILD_DIR", repr(str(CHILD_DIR))),
            str(tmp_path),
            mode,
            "yes" if without_setattr else "no",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    seen = json.loads(found.stdout)
    assert seen["listed"] == ["inner"]
    restricted = ["nodev", "nosuid"] if mode == "rw" else ["nodev", "nosuid", "ro"]
    assert seen["/"] == seen["/share/inner"] == restricted
    # What the host's mount has stays: the share is noexec.
    assert seen["/share"] == sorted([*restricted, "noexec"])
    # Nothing of it on the host: the mounts went with the child's namespace.
    assert os.listdir(tmp_path / "source" / "share") == []
