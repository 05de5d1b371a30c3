"""This executor's sandbox uids: a range claimed for as long as it runs, so no other executor uses it.

Each cell runs its callbacks as a dedicated uid (``sandbox_uid_base`` + cell). Anything
the kernel keys by uid (RLIMIT_NPROC, the user keyring, IPC objects' owners, files a
callback leaves in a world-writable place) would cross between two executors on one
host that used the same uids: two sites' instances, or a fleet's replicas side by side.
So the range is claimed at start: one lock file per uid under ``/run/cbexec/uids``,
each held with ``flock`` by this process. A uid already held by a live executor stops
start-up with a clear message naming it; the locks go with the process, on a stop or a
``kill -9`` alike, so a crashed executor never leaves its range taken. ``cbexec serve
--check-config`` says the same without claiming the range (``UidClaim.check``).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
from pathlib import Path
from typing import Final

from executor.errors import ConfigError
from executor.owned_dirs import UnsafePathError, open_file, open_tree

CLAIM_DIR: Final = Path("/run/cbexec/uids")
# Below this are the host's system accounts (and root); Debian, Fedora and others begin
# regular accounts here.
LOWEST_SANDBOX_UID: Final = 1000
# uids the kernel or the host give a meaning: nobody/nogroup, the 16-bit (uid_t)-1, and
# the 32-bit (uid_t)-1 that setresuid takes as "leave unchanged".
RESERVED_UIDS: Final = (65534, 65535, 2**32 - 1)


def check_uid_range(first: int, count: int) -> None:
    """Refuse a sandbox range a callback must not run in: root, system or host accounts.

    A callback runs as uid and gid ``first`` + cell; any of them that is also a host
    account or group would give callbacks that account's files.
    """
    last = first + count - 1
    where = f"sandbox_uid_base: the sandbox uids {first}-{last} (one per cell)"
    if first < LOWEST_SANDBOX_UID:
        raise ConfigError(
            f"{where} start below {LOWEST_SANDBOX_UID}, among root and the host's system "
            f"accounts; choose a base of {LOWEST_SANDBOX_UID} or more that no account uses"
        )
    if last >= 2**32 - 1:
        raise ConfigError(f"{where} do not fit below {2**32 - 1}, the largest uid")
    for reserved in RESERVED_UIDS:
        if first <= reserved <= last:
            raise ConfigError(f"{where} include the reserved uid {reserved}; choose another base")
    for uid in range(first, last + 1):
        for kind, lookup in (("account", pwd.getpwuid), ("group", grp.getgrgid)):
            try:
                name = lookup(uid)[0]
            except KeyError:
                continue
            raise ConfigError(
                f"{where} include {uid}, the host {kind} {name!r}: callbacks would run "
                "as it; choose a base whose range no host account or group uses"
            )


class UidClaim:
    """The uids ``first`` .. ``first + count - 1``, held until ``release``."""

    def __init__(self, first: int, count: int, fds: list[int]) -> None:
        self.first = first
        self.count = count
        self._fds = fds

    @classmethod
    def take(cls, first: int, count: int, directory: Path = CLAIM_DIR) -> UidClaim:
        """Claim the range, or raise ConfigError naming the uid another executor holds."""
        # Made 0755 whatever the umask, and nothing planted in it followed: root creates
        # and truncates these files (owned_dirs; a link at a lock file would have it
        # truncate whatever file the link names).
        fds: list[int] = []
        try:
            with open_tree(directory.parent, [directory.name], 0o755) as claims:
                for uid in range(first, first + count):
                    fd = open_file(claims, f"{uid}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                    fds.append(fd)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise _in_use(uid, first, count, fd) from None
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException as err:
            for fd in fds:
                os.close(fd)
            if isinstance(err, UnsafePathError):
                raise ConfigError(f"sandbox uids: {err}") from None
            raise
        return cls(first, count, fds)

    @classmethod
    def check(cls, first: int, count: int, directory: Path = CLAIM_DIR) -> None:
        """Raise as ``take`` would, without claiming anything (``cbexec serve --check-config``).

        Each uid's lock is tried and let go at once; nothing is created or written, and a
        uid with no lock file is held by no one.
        """
        for uid in range(first, first + count):
            try:
                fd = os.open(directory / f"{uid}.lock", os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise _in_use(uid, first, count, fd) from None
            finally:
                os.close(fd)

    @classmethod
    def free_first(
        cls, first: int, count: int, *, tries: int = 64, directory: Path = CLAIM_DIR
    ) -> int:
        """The first range of ``count`` uids from ``first`` on that no executor holds now.

        For a throwaway executor (``cbexec run --embedded``) beside a running one: it
        takes the next free range instead of refusing to start. Its own ``take`` at
        start still decides: a range claimed in between is refused as usual.
        """
        for attempt in range(tries):
            candidate = first + attempt * count
            try:
                cls.take(candidate, count, directory).release()
            except ConfigError:
                continue
            return candidate
        raise ConfigError(
            f"sandbox_uid_base: no free range of {count} uids from {first} to "
            f"{first + tries * count - 1}; stop an executor or set sandbox_uid_base"
        )

    def release(self) -> None:
        """Let the range go (closing the files drops the locks); again is harmless."""
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __str__(self) -> str:
        return f"{self.first}-{self.first + self.count - 1}"


def _in_use(uid: int, first: int, count: int, fd: int) -> ConfigError:
    """The refusal naming the executor (its pid, from the lock file) that holds ``uid``."""
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    return ConfigError(
        f"sandbox_uid_base: uid {uid} of this executor's range {first}-"
        f"{first + count - 1} is in use by another executor (pid {holder}); "
        f"give each executor on a host its own range, e.g. "
        f"sandbox_uid_base = {first + count}"
    )
