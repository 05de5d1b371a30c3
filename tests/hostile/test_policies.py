"""Attacks on what a widened policy grants: its binds stay its own, read-only and set-uid-free.

The arena runs the attacker under the widened ``universal`` policy of conftest.py (a
read-write bind at ``GRANTED_TARGET``, a read-only one, a group, umask 007); the
innocent callback beside it runs under ``job``. Every case ends with the arena's checks:
nothing survives, the sentinel and the data dir are untouched, the service answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.hostile.conftest import GRANTED_GROUP, GRANTED_TARGET, _arena
from tests.hostile.harness import Arena, assert_outcome

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(os.geteuid() != 0, reason="binds need the hardened tier (root)"),
]

Outcome = executor_pb2.Outcome


@pytest.fixture
async def widened(tmp_path: Path) -> AsyncIterator[Arena]:
    async with _arena("widened", tmp_path) as arena:
        yield arena


ABUSE_THE_BINDS = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
RW, RO, SENTINEL = RW_PATH, RO_PATH, SENTINEL_PATH
seen = {}

def attempt(name, action):
    try:
        action()
        seen[name] = "done"
    except OSError as err:
        seen[name] = errno.errorcode.get(err.errno, str(err.errno))

def remount_rw():
    if libc.mount(None, RO.encode(), None, 32 | 4096, None) != 0:  # MS_REMOUNT | MS_BIND
        raise OSError(ctypes.get_errno(), "mount")
def unmount_ro():
    if libc.umount2(RO.encode(), 2) != 0:  # MNT_DETACH
        raise OSError(ctypes.get_errno(), "umount")
attempt("write_ro", lambda: open(RO + "/planted.txt", "w").close())
attempt("remount_ro_rw", remount_rw)
attempt("unmount_ro", unmount_ro)
attempt("sentinel_visible", lambda: os.listdir(SENTINEL))
attempt("escape_dotdot", lambda: open(RW + "/../../" + SENTINEL + "/notes.txt", "a").close())
os.symlink(SENTINEL + "/notes.txt", RW + "/to-sentinel")
attempt("through_symlink", lambda: open(RW + "/to-sentinel", "a").close())
attempt("chown_to_root", lambda: os.chown(RW, 0, 0))
with open(RW + "/suid", "w") as f:
    f.write("#!/bin/sh\nid -u\n")
attempt("setuid_in_rw", lambda: os.chmod(RW + "/suid", 0o4755))
mounts = {}
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    mounts[fields[4]] = fields[5]
seen["rw_options"] = mounts.get(RW, "")
seen["ro_options"] = mounts.get(RO, "")
print(json.dumps(seen))
"""


async def test_a_widened_callback_cannot_widen_its_binds(widened: Arena, tmp_path: Path) -> None:
    ro = str(tmp_path / "granted-ro")
    code = (
        ABUSE_THE_BINDS.replace("RW_PATH", repr(GRANTED_TARGET))
        .replace("RO_PATH", repr(ro))
        .replace("SENTINEL_PATH", repr(str(widened.planted.sentinel)))
    )
    response = await widened.attack(code)
    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    seen = json.loads(response.stdout)
    assert seen["write_ro"] == "EROFS"
    assert seen["remount_ro_rw"] == "EPERM" and seen["unmount_ro"] == "EPERM"
    # The rest of /tmp is the callback's private one: the sentinel is not there.
    assert seen["sentinel_visible"] == seen["escape_dotdot"] == "ENOENT"
    assert seen["through_symlink"] == "ENOENT"
    assert seen["chown_to_root"] == "EPERM"
    for options in (seen["rw_options"], seen["ro_options"]):
        assert {"nosuid", "nodev"} <= set(options.split(",")), options
    assert "ro" in seen["ro_options"].split(",") and "rw" in seen["rw_options"].split(",")
    # What it wrote on the host is the sandbox uid's, never root's, and never set-uid:
    # the host's view of the bind is not nosuid.
    assert seen["setuid_in_rw"] == "EPERM"
    suid = tmp_path / "granted-rw" / "suid"
    assert suid.stat().st_uid >= widened.stack.settings.sandbox_uid_base
    assert suid.stat().st_gid == GRANTED_GROUP
    assert not suid.stat().st_mode & 0o6000
    assert not (tmp_path / "granted-ro" / "planted.txt").exists()


HOLD_THE_BIND = (
    "import time\nwith open(GRANTED + '/held.txt', 'w') as f:\n"
    "    f.write('held')\n    time.sleep(1.5)\nprint('held')\n"
)
LOOK_FOR_THE_BIND = (
    "import os, time\ntime.sleep(0.5)\n"
    "print(os.path.exists(GRANTED), os.path.exists(GRANTED + '/held.txt'))\n"
)


async def test_a_bind_in_use_is_invisible_to_a_job_callback_beside_it(widened: Arena) -> None:
    target = repr(GRANTED_TARGET)
    holder, looker = await asyncio.gather(
        widened.run(HOLD_THE_BIND.replace("GRANTED", target)),
        widened.stack.client.execute_callback(
            language="python",
            code=LOOK_FOR_THE_BIND.replace("GRANTED", target),
            job=widened.stack.supervisor.job(widened.innocent_job_id),
            owner="alice",  # not among the policy's users: the job policy
            timeout=30,
        ),
    )
    assert_outcome(holder, Outcome.OUTCOME_SUCCEEDED)
    assert_outcome(looker, Outcome.OUTCOME_SUCCEEDED)
    assert looker.stdout.split() == ["False", "False"]
    await widened.assert_nothing_survives()


@contextlib.contextmanager
def tmpfs_on(directory: Path, options: str) -> Iterator[None]:
    """A small tmpfs mounted on ``directory`` (a share, an automount), unmounted after."""
    directory.mkdir(exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size=1m,{options}", "tmpfs", str(directory)]
    subprocess.run(mount, check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


USE_THE_SUBMOUNTS = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
RW, RO = RW_PATH, RO_PATH
seen = {"share": sorted(os.listdir(RO + "/share")), "inner": sorted(os.listdir(RO + "/share/inner"))}

def attempt(name, action):
    try:
        action()
        seen[name] = "done"
    except OSError as err:
        seen[name] = errno.errorcode.get(err.errno, str(err.errno))

def write(path):
    with open(path, "w") as f:
        f.write("result\n")

class MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("set", "clr", "propagation", "userns")]

def clear_read_only():  # mount_setattr(AT_FDCWD, path, AT_RECURSIVE, {attr_clr: RDONLY})
    attr = MountAttr(0, 1, 0, 0)
    if libc.syscall(442, -100, (RO + "/share").encode(), 0x8000, ctypes.byref(attr), 32) != 0:
        raise OSError(ctypes.get_errno(), "mount_setattr")

attempt("write_share", lambda: write(RO + "/share/planted.txt"))
attempt("write_inner", lambda: write(RO + "/share/inner/planted.txt"))
attempt("clear_read_only", clear_read_only)
attempt("write_project", lambda: write(RW + "/project/result.txt"))
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    if fields[4].startswith((RO + "/", RW + "/")):
        seen[fields[4]] = sorted(fields[5].split(","))
print(json.dumps(seen))
"""


async def test_a_bind_brings_what_is_mounted_inside_it_read_only_under_ro(tmp_path: Path) -> None:
    # A share inside a read-only bind (with another inside it), a project share inside a
    # read-write one: each came as its empty mount point, and the write went under it.
    rw, ro = tmp_path / "granted-rw", tmp_path / "granted-ro"
    ro.mkdir()
    rw.mkdir()
    with contextlib.ExitStack() as mounted:
        mounted.enter_context(tmpfs_on(ro / "share", "mode=0777"))
        (ro / "share" / "data.txt").write_text("shared\n")
        mounted.enter_context(tmpfs_on(ro / "share" / "inner", "mode=0777"))
        mounted.enter_context(tmpfs_on(rw / "project", f"mode=2770,gid={GRANTED_GROUP}"))
        async with _arena("widened", tmp_path) as widened:
            code = USE_THE_SUBMOUNTS.replace("RW_PATH", repr(GRANTED_TARGET)).replace(
                "RO_PATH", repr(str(ro))
            )
            response = await widened.attack(code)
        assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
        seen = json.loads(response.stdout)
        assert seen["share"] == ["data.txt", "inner"] and seen["inner"] == []
        assert seen["write_share"] == seen["write_inner"] == "EROFS"
        assert seen["clear_read_only"] == "EPERM"
        assert seen["write_project"] == "done"
        for point in (f"{ro}/share", f"{ro}/share/inner", f"{GRANTED_TARGET}/project"):
            writable = "rw" if point.startswith(GRANTED_TARGET) else "ro"
            assert {writable, "nosuid", "nodev"} <= set(seen[point]), (point, seen[point])
        # On the host: the share has the result, nothing was planted.
        assert (rw / "project" / "result.txt").read_text() == "result\n"
        assert sorted(os.listdir(ro / "share")) == ["data.txt", "inner"]
        assert os.listdir(ro / "share" / "inner") == []
