"""The hardened tier, inside the child's own mount and PID namespaces: a private view, then no root.

Applied by the launcher, as root, in the callback's process (PID 1 of its namespace),
before the runtime starts:

1. every mount becomes private (nothing leaks back to the host);
2. a fresh ``/proc`` shows only the callback's own processes;
3. each *mask* directory (the executor's data dir, ``/tmp``, ``/dev/shm``, and any
   ancestor of a needed path that others cannot traverse, such as ``/root`` on hosts
   whose Python lives there) is covered by an empty tmpfs;
4. the *keep* paths under a mask (the interpreter, the venv, the child code) are
   bind-mounted back, from O_PATH descriptors opened before anything was covered;
   then ``/dev/null`` is bound over each of the executor's *secret files* outside the
   masks (its config file, TLS key, ``env_files``): read, they are empty, whatever
   their mode or the policy's group. Per child, not once in a zygote: a host file
   replaced under its name (an editor's save, ``sed -i``) takes a mount on the old one
   away in every namespace, so each child covers the file the name holds when it starts;
5. the working directory (a path under the masked ``/tmp``, never made on the host) is a
   private tmpfs of the run's ``disk_bytes``, owned by the callback's uid: a disk quota
   (ENOSPC beyond it) that vanishes with the run;
6. the policy's *binds* (host directories a site granted, read-only or read-write) are
   mounted at their targets, from O_PATH descriptors opened before anything was covered,
   with the file systems mounted inside them (a share, an automount), every one of them
   nosuid, nodev, and read-only under a read-only bind (``_restrict``);
   the mounts are this namespace's only. Each path and each target on the host is
   reached with no symbolic link followed and must be the directory start-up checked
   (``BindSpec``'s identities), else the run is refused (``BindChangedError``): whoever
   may write a directory on the way could have swapped it for a link to /run since;
7. the *late masks* (the cgroup tree, ``/sys/fs/cgroup``) are covered too: a cold
   child had to join its cgroups through them first (a zygote covers them once for
   all its children, which join through descriptors it opened: ``zygote.CellCgroupFiles``);
8. a devpts instance of its own is mounted on ``/dev/pts`` (``plan.devpts``, its options:
   at most a few ptys). ``/dev/ptmx`` reaches it with no bind over it: the kernel (4.7+)
   opens the devpts mounted at ``pts`` beside the ptmx node. On the host's instance a
   callback held ptys out of the host's whole pool (``kernel.pty.max``, 4096): it took
   them all, and no one on the host got a terminal until the run ended;
9. the process drops to a dedicated unprivileged uid/gid with no supplementary groups
   but the policy's group, which also drops every capability. RLIMIT_NPROC now counts only this cell's uid.

Before step 3, where the mounts no longer propagate to the host's (private, or a
zygote's slave namespace), every mount at or under a mask, a late mask and (with a
devpts of the child's own) ``/dev/pts`` is detached (``detach_hidden_mounts``): the
host's mounts there (another user's tmpfs under ``/tmp``, the cgroup hierarchies, the
host's ``/dev/shm`` and ptys) are no longer listed in ``/proc/self/mountinfo``, where
the masks alone only hid what they hold. Those that hold a kept path, or lie under
one, stay: they are bound back.

A zygote takes steps 1, 3, 4 (but the secret files) and 7 and the detaching off its
children (``share_masks``): once, in a mount namespace of its own, it covers every mask
but the one that holds the working directories. Each child's namespace is a copy of that
one, so the child only mounts its ``/proc``, its own ``/tmp``, the secret files' covers,
its working directory and its devpts (measured: ~1.1 ms of
CPU less per child, about a sixth of a warm run). The devpts stays per child: one
instance for all of a zygote's children would let one callback take the others' ptys.
It costs a child ~35-60 us of CPU, and ~20-40 us more in kernel threads tearing it
down (``scripts/bench.py --mechanisms-only`` and apart; a noisy machine); a bind of its
ptmx over ``/dev/ptmx`` would add ~10-45 us for nothing.

Stdlib only (ctypes for mount(2) and mount_setattr(2)).
"""

from __future__ import annotations

import ctypes
import os
import re
from errno import EINVAL, ENOENT, ENOSYS, ENOTDIR, EPERM
from os import mkdir, setgroups, setresgid, setresuid  # called by name: see launcher.py
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol import BindSpec

MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
CLONE_NEWNS = 0x00020000
# mount_setattr(2), Linux 5.12+: the same number on x86_64 and aarch64 (the common table).
SYS_MOUNT_SETATTR = 442
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 1
MOUNT_ATTR_NOSUID = 2
MOUNT_ATTR_NODEV = 4
# What statvfs says of a mount a bind's remount keeps (ST_RDONLY and ST_NOEXEC are
# MS_RDONLY's and MS_NOEXEC's values): a remount sets the flags it is given, no others.
_KEPT_ON_REMOUNT = os.ST_RDONLY | os.ST_NOEXEC
# Where a child with a devpts of its own mounts it: the host's instances under it go.
DEV_PTS = "/dev/pts"
# What every child mounts afresh, with what each holds: a bind target that is, holds or
# lies in one would be hidden or break the mount (refused at start-up: policy_binds._bind).
FRESH_PER_CHILD = {"/proc": "proc file system", DEV_PTS: "ptys"}
# Files and directories the working directory may hold (tmpfs inodes cost kernel memory).
MAX_WORKDIR_FILES = 65536

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare  # noqa: B018 - looked up now, as launcher.py explains
_mount_call = _libc.mount  # and called by this name (launcher.py says why)
_umount2 = _libc.umount2
_syscall = _libc.syscall


class _MountAttr(ctypes.Structure):
    """struct mount_attr, mount_setattr(2)'s argument."""

    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    result = _mount_call(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {target}: {os.strerror(errno)}")


def under(path: str, directory: str) -> bool:
    """Whether ``path`` is ``directory`` or lies inside it (by name, no symlinks followed)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _under_any(path: str, directories: list[str]) -> bool:
    # A loop, not any() over a generator: in a zygote's child every first use of a
    # construct writes to pages of the shared heap (see launcher.py).
    for directory in directories:  # noqa: SIM110
        if under(path, directory):
            return True
    return False


def _mount_points() -> list[str]:
    """Every mount point of this process's mount namespace, in /proc/self/mountinfo's order."""
    return [point for _, point in _mounts()]


def _mounts() -> list[tuple[str, str]]:
    """Each mount of this namespace: ("<mount id> <device>", mount point), in mountinfo's order."""
    with open("/proc/self/mountinfo", "rb") as listing:
        lines = listing.read().splitlines()
    found = []
    for line in lines:
        fields = line.split(b" ", 5)
        # The fifth field, with space, tab, newline and backslash as octal escapes.
        point = os.fsdecode(_ESCAPE.sub(_octal, fields[4]))
        found.append((f"{fields[0].decode()} {fields[2].decode()}", point))
    return found


_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _octal(escape: re.Match[bytes]) -> bytes:
    return bytes([int(escape[1], 8)])


def mount_points_under(directory: str) -> list[str]:
    """The mount points at or under ``directory``."""
    return [point for point in _mount_points() if under(point, directory)]


def mounts_under(directory: str) -> list[tuple[str, str]]:
    """The mounts at or under ``directory``, each ("<mount id> <device>", mount point)."""
    return [mount for mount in _mounts() if under(mount[1], directory)]


def detach_hidden_mounts(places: list[str], keep: list[str]) -> None:
    """Detach (MNT_DETACH) every mount at or under ``places`` but those holding or under a kept path.

    Only where this namespace's mounts no longer propagate to the host's (a slave or
    private root): the host keeps them. Stacked mounts are listed once each, and each
    call detaches the top one with what is mounted on it (so those under it are not
    asked again). Best effort: a mount that stays is still covered by its mask.
    """
    detached: list[str] = []
    for point in _mount_points():
        if not _under_any(point, places):
            continue
        if any(under(point, gone) and point != gone for gone in detached):
            continue  # went with the mount it was on
        if any(under(path, point) or under(point, path) for path in keep):
            continue  # bound back from where it is, with what is under it
        _umount2(os.fsencode(point), MNT_DETACH | UMOUNT_NOFOLLOW)
        detached.append(point)


def _cover(masks: list[str], keep: list[str]) -> None:
    """An empty tmpfs over each mask; the ``keep`` paths under them bound back."""
    kept = {}
    for path in keep:
        if _under_any(path, masks):
            kept[path] = os.open(path, os.O_PATH)
    try:
        for mask in masks:
            _mount("tmpfs", mask, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64m")
        for path, fd in sorted(kept.items()):
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.makedirs(path, mode=0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                open(path, "a").close()  # a mount point for a file
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
    finally:
        for fd in kept.values():
            os.close(fd)


def share_masks(
    masks: list[str], keep: list[str], workdir: str, *, own_devpts: bool = False
) -> list[str]:
    """In a zygote, once: cover in a mount namespace of its own every mask not holding ``workdir``.

    Returns the masks covered. The namespace is a slave of the host's: mounts the host
    makes later (automounted project storage) still reach the callbacks, and nothing
    mounted in it, or in a child's copy of it, propagates back. The mask that holds the
    working directories stays per child: each run sees only its own ``/tmp``, and no
    run's mount point is left behind in a shared one. The mounts under every mask (and
    the host's ``/dev/pts`` when each child mounts its own: ``own_devpts``) are detached
    first, once for all the children (``detach_hidden_mounts``).
    """
    if _libc.unshare(CLONE_NEWNS) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWNS): {os.strerror(errno)}")
    _mount(None, "/", None, MS_REC | MS_SLAVE)
    detach_hidden_mounts([*masks, DEV_PTS] if own_devpts else masks, keep)
    shared = [mask for mask in masks if not under(workdir, mask)]
    _cover(shared, keep)
    return shared


# Each step of a walk: the directory itself, never a symbolic link (ENOTDIR then).
_WALK_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_directory(path: str, *, make: bool = False) -> int:
    """An O_PATH descriptor of the directory ``path`` (absolute), reached following no symbolic link.

    One component at a time from ``/``: a component that is a symbolic link or no
    directory is NotADirectoryError, a missing one FileNotFoundError unless ``make``
    (then it is made, 0755). ``.`` and ``..`` are refused: the paths are resolved once,
    at start-up. Mounts on the way are crossed, as any lookup does.
    """
    fd = os.open("/", _WALK_FLAGS)
    try:
        for name in path.split("/"):
            if not name:
                continue
            if name in (".", ".."):
                raise ValueError(f"{path}: not a resolved path")
            try:
                step = os.open(name, _WALK_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not make:
                    raise
                try:  # noqa: SIM105 - not contextlib.suppress: one module fewer (launcher.py)
                    mkdir(name, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                step = os.open(name, _WALK_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = step
    except BaseException:
        os.close(fd)
        raise
    return fd


def identity(fd: int) -> list[int]:
    """Which directory ``fd`` is, as start-up noted it (``BindSpec``).

    [st_dev, st_ino, 1 if a file system is mounted there (its root: another device
    than its parent's) else 0].
    """
    found = os.fstat(fd)
    parent = os.stat("..", dir_fd=fd, follow_symlinks=False)
    return [found.st_dev, found.st_ino, int(found.st_dev != parent.st_dev)]


def _same_place(found: list[int], noted: list[int]) -> bool:
    """The directory noted, or a file system mounted again where one was mounted then.

    An automount that expired and came back, or a share mounted again, is another
    device; mounting takes root, so what is mounted there is still the admin's. A
    directory that is no mount's root must be the very one noted: whoever writes its
    parent could have renamed another into its place.
    """
    return found == noted or (found[2] == 1 and noted[2] == 1)


class BindChangedError(Exception):
    """A bind's path or target is no longer the directory start-up checked: the run is refused."""


def _changed(what: str, path: str, policy: str, how: str) -> BindChangedError:
    return BindChangedError(
        f"the bind {what} {path} of policy {policy} changed since start-up ({how}): "
        "the run was refused; put the directory back, or restart the executor to check the "
        "new one"
    )


def _reach(what: str, path: str, policy: str) -> int:
    """``path`` opened by ``open_directory``; a refusal of the run when it cannot be."""
    try:
        return open_directory(path)
    except FileNotFoundError:
        raise _changed(what, path, policy, "it no longer exists") from None
    except NotADirectoryError:
        raise _changed(
            what, path, policy, "it, or a directory on its way, is a symbolic link or a file now"
        ) from None


def _open_checked(what: str, path: str, noted: list[int] | None, policy: str) -> int:
    """``path`` reached (``_reach``), the directory start-up noted (``_same_place``)."""
    fd = _reach(what, path, policy)
    found = identity(fd)
    if noted is None or not _same_place(found, noted):
        os.close(fd)
        how = (
            "the file system mounted there is not mounted now"
            if noted is not None and noted[2] == 1
            else "another directory is there now"
        )
        raise _changed(what, path, policy, how)
    return fd


def _open_binds(binds: list[BindSpec], policy: str) -> list[int]:
    """O_PATH descriptors of the bind sources, opened while the host's view still shows them.

    Each reached with no symbolic link followed, and the directory start-up checked: a
    writer of a directory on the way could have swapped it since (for a symbolic link
    to /run, say) and the mount would follow.
    """
    fds: list[int] = []
    try:
        for bind in binds:
            fds.append(_open_checked("path", bind["source"], bind["source_identity"], policy))  # noqa: PERF401 - each kept once open
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def _open_target(bind: BindSpec, policy: str) -> int:
    """The mount point: made on a mask's empty tmpfs, else the host's directory start-up checked.

    Never made on the host, and never reached through a symbolic link: one left on a
    target's way would put the bind over what it points to (Perl's @INC, say).
    """
    if bind["target_identity"] is None:  # under a mask (the executor's word)
        return open_directory(bind["target"], make=True)
    return _open_checked("target", bind["target"], bind["target_identity"], policy)


def _mount_binds(binds: list[BindSpec], fds: list[int], policy: str) -> None:
    """Each source at its target, with what is mounted inside; read-only unless writable; never set-uid or devices.

    Mounted recursively from descriptor to descriptor (a plain bind would show a share
    or an automount inside the directory as its empty mount point, and an ``rw`` bind's
    writes would go under it, where the host never looks), then the whole tree
    restricted (``_restrict``) through the target reached again, checked to be the bind
    just made. The namespace's root is private or a slave (``isolate_filesystem``,
    ``share_masks``), and so are the copies: nothing mounted here reaches the host.
    """
    for bind, fd in zip(binds, fds, strict=True):
        target = _open_target(bind, policy)
        try:
            _mount(f"/proc/self/fd/{fd}", f"/proc/self/fd/{target}", None, MS_BIND | MS_REC)
        finally:
            os.close(target)
        mounted = _reach("target", bind["target"], policy)
        source, there = os.fstat(fd), os.fstat(mounted)
        if (there.st_dev, there.st_ino) != (source.st_dev, source.st_ino):
            os.close(mounted)
            raise _changed("target", bind["target"], policy, "another directory is there now")
        try:
            _restrict(mounted, bind["target"], read_only=not bind["writable"])
        finally:
            os.close(mounted)


def _restrict(mounted: int, target: str, *, read_only: bool) -> None:
    """The bind at ``mounted`` and every mount inside it nosuid, nodev, and read-only for ``ro``.

    One mount_setattr(2) for the whole tree (AT_RECURSIVE: all or none), which only adds
    the flags: what the host's mounts have (noexec, read-only) stays. Where the kernel
    has no such call (before 5.12: ENOSYS; EPERM from a filter that predates it), each
    mount is remounted (``_remount_each``).
    """
    attr = _MountAttr(
        attr_set=MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (MOUNT_ATTR_RDONLY if read_only else 0)
    )
    result = _syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_long(mounted),
        b"",
        ctypes.c_long(AT_EMPTY_PATH | AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_long(ctypes.sizeof(attr)),
    )
    if result == 0:
        return
    errno = ctypes.get_errno()
    if errno not in (ENOSYS, EPERM):
        raise OSError(errno, f"mount_setattr {target}: {os.strerror(errno)}")
    _remount_each(target, read_only=read_only)


def _remount_each(target: str, *, read_only: bool) -> None:
    """Without mount_setattr: each mount at or under ``target`` remounted, by its name in mountinfo.

    Each name is reached following no symbolic link, and whatever mount it leads to
    must then have the flags, else the run is refused (OSError). A name that leads
    nowhere, or into a directory of another mount (EINVAL to a remount, that mount's
    own name remounts it), is a mount hidden under another: nothing reaches it. A host
    user renaming directories inside the bound tree at that very moment could keep one
    out of the walk; mount_setattr leaves no such gap.
    """
    needed = os.ST_NOSUID | os.ST_NODEV | (os.ST_RDONLY if read_only else 0)
    reached: list[tuple[str, int]] = []
    try:
        for point in mount_points_under(target):
            try:
                reached.append((point, _open_mount_point(point)))
            except (FileNotFoundError, NotADirectoryError):
                continue
        for _, fd in reached:
            flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
            flags |= os.fstatvfs(fd).f_flag & _KEPT_ON_REMOUNT
            if read_only:
                flags |= MS_RDONLY
            try:
                _mount(None, f"/proc/self/fd/{fd}", None, flags)
            except OSError as err:
                if err.errno != EINVAL:  # EINVAL: a directory of a mount, not its root
                    raise
        for point, fd in reached:  # once all are remounted: EINVAL's mount may come later
            if os.fstatvfs(fd).f_flag & needed != needed:
                raise OSError(
                    f"mount {point}: not {'read-only, ' if read_only else ''}nosuid, nodev after "
                    "its remount"
                )
    finally:
        for _, fd in reached:
            os.close(fd)


def _open_mount_point(path: str) -> int:
    """An O_PATH descriptor of the mount point ``path`` (a directory or a file), no symbolic link followed."""
    parent = open_directory(os.path.dirname(path))
    try:
        return os.open(os.path.basename(path), os.O_PATH | os.O_NOFOLLOW, dir_fd=parent)
    finally:
        os.close(parent)


class FilesystemPlan:
    """``isolate_filesystem``'s work for one cell, worked out ahead: what to mount, encoded.

    A zygote makes it once per cell, before any fork: a forked child then only makes
    the calls (each string encoded, list built or flag wrapped in the child would be a
    write to the shared heap, a page fault). ``workdir`` only decides which masks are
    covered here; any working directory under the same mask ``fits``.

    ``masks`` are existing directories, none inside another (the executor's plan).
    ``shared_masks``: those the zygote covered already (``share_masks``) in the namespace
    this one copies, which also keeps mounts from propagating to the host.
    ``late_masks``: covered here in every case (see step 7 above).
    ``quota`` is ``{"bytes": ..., "uid": ..., "gid": ...}`` for the working directory,
    which must lie under a mask: it is made there, never on the host's disk.
    ``devpts``: the mount options of the child's own devpts instance; "" for none.
    ``secret_files``: files ``/dev/null`` is bound over (step 4 above).
    """

    def __init__(
        self,
        masks: list[str],
        keep: list[str],
        workdir: str,
        quota: dict[str, int],
        shared_masks: list[str] | tuple[str, ...] = (),
        late_masks: list[str] | tuple[str, ...] = (),
        binds: list[BindSpec] | tuple[BindSpec, ...] = (),
        devpts: str = "",
        secret_files: list[str] | tuple[str, ...] = (),
        policy: str = "",
    ) -> None:
        self.private_root = not shared_masks
        # A shared mask is covered again when it holds the working directory: its tmpfs
        # is every child's, and the mount point would be left behind there.
        covered = [m for m in masks if m not in shared_masks or under(workdir, m)]
        covered.extend(late_masks)
        self.covered = covered
        # With a private root (no zygote did it): the mounts to detach before the cover,
        # and what must stay for the binds back (the kept paths, the binds' sources).
        self.detached = [*covered, DEV_PTS] if devpts else covered
        self.held = [*keep, *(bind["source"] for bind in binds)]
        self.covered_targets = [mask.encode() for mask in covered]
        self.keep = keep
        # Whether a kept path lies under a mask covered here, to be bound back (rare: the
        # interpreter, the venv and the child code are rarely under /tmp).
        self.bind_back = any(_under_any(path, covered) for path in keep)
        self.binds = list(binds)
        self.policy = policy  # named when a bind changed since start-up
        self.workdir_mask = next((mask for mask in masks if under(workdir, mask)), None)
        self.workdir_data = (
            f"size={quota['bytes']},nr_inodes={MAX_WORKDIR_FILES},mode=0700,"
            f"uid={quota['uid']},gid={quota['gid']}"
        ).encode()
        self.devpts_data = devpts.encode() if devpts else None
        self.secret_targets = [path.encode() for path in secret_files]

    def fits(self, workdir: str) -> bool:
        """Whether the plan holds for ``workdir`` (under the same mask)."""
        return self.workdir_mask is not None and under(workdir, self.workdir_mask)


_TMPFS = b"tmpfs"
_PROC = b"proc"
_PROC_DIR = b"/proc"
_ROOT = b"/"
_MASK_DATA = b"mode=0755,size=64m"
_DEVPTS = b"devpts"
_DEV_PTS = b"/dev/pts"
# ctypes flags made once: a c_ulong made per call is a new object in a forked child.
_PRIVATE_FLAGS = ctypes.c_ulong(MS_REC | MS_PRIVATE)
_PROC_FLAGS = ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC)
_TMPFS_FLAGS = ctypes.c_ulong(MS_NOSUID | MS_NODEV)
_DEVPTS_FLAGS = ctypes.c_ulong(MS_NOSUID | MS_NOEXEC)
_BIND_FLAGS = ctypes.c_ulong(MS_BIND)
_DEV_NULL = b"/dev/null"
# What a secret file's mount may meet: the name gone, or no longer a file's.
_NOTHING_TO_HIDE = (ENOENT, ENOTDIR)


def _mount_encoded(
    source: bytes | None,
    target: bytes,
    fstype: bytes | None,
    flags: ctypes.c_ulong,
    data: bytes | None,
) -> None:
    if _mount_call(source, target, fstype, flags, data) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {target.decode()}: {os.strerror(errno)}")


def _hide(target: bytes) -> None:
    """``/dev/null`` bound over the file ``target``: it reads empty, writes go nowhere.

    Nothing to do where the name is gone or leads to no file any more.
    """
    if _mount_call(_DEV_NULL, target, None, _BIND_FLAGS, None) != 0:
        error = ctypes.get_errno()
        if error not in _NOTHING_TO_HIDE:
            raise OSError(error, f"mount /dev/null on {target.decode()}: {os.strerror(error)}")


def isolate_filesystem(plan: FilesystemPlan, workdir: str) -> None:
    """Private mounts, fresh /proc, masks, ``keep`` bound back, secrets hidden, own ptys, a quota'd workdir.

    As ``plan`` says; ``workdir`` must fit it (``FilesystemPlan.fits``).
    """
    if not plan.fits(workdir):
        raise OSError(f"working directory {workdir} is not under a masked directory")
    bind_fds = _open_binds(plan.binds, plan.policy) if plan.binds else []
    try:
        if plan.private_root:
            _mount_encoded(None, _ROOT, None, _PRIVATE_FLAGS, None)
            detach_hidden_mounts(plan.detached, plan.held)
        _mount_encoded(_PROC, _PROC_DIR, _PROC, _PROC_FLAGS, None)
        if plan.bind_back:
            _cover(plan.covered, plan.keep)
        else:  # the usual case: nothing to bind back, the masks only
            for target in plan.covered_targets:
                _mount_encoded(_TMPFS, target, _TMPFS, _TMPFS_FLAGS, _MASK_DATA)
        for target in plan.secret_targets:  # before the binds, which may cover one's directory
            _hide(target)
        if bind_fds:
            _mount_binds(plan.binds, bind_fds, plan.policy)
        if plan.devpts_data is not None:  # after the binds: none can hide it
            _mount_encoded(_DEVPTS, _DEV_PTS, _DEVPTS, _DEVPTS_FLAGS, plan.devpts_data)
    finally:
        for fd in bind_fds:
            os.close(fd)
    try:
        mkdir(workdir, 0o700)  # on the masked /tmp: ours alone
    except FileNotFoundError:
        os.makedirs(workdir, mode=0o700, exist_ok=True)
    except FileExistsError:
        pass
    _mount_encoded(_TMPFS, workdir.encode(), _TMPFS, _TMPFS_FLAGS, plan.workdir_data)


def drop_privileges(uid: int, gid: int, groups: list[int] | tuple[int, ...] = ()) -> None:
    """Become uid/gid for good: only ``groups`` beside, no capabilities, no way back."""
    setgroups(list(groups))
    setresgid(gid, gid, gid)
    setresuid(uid, uid, uid)
