"""One executor per data dir: a lock held from start-up to the stop.

Two executors on one data dir share its SQLite databases and the embedded supervisor's
socket: the one that stops first removes the socket, and every qb call of the other
fails from then on while its health still says SERVING (probe 55). A second one is
refused at start instead, naming the first. The lock is ``flock`` on a file in the data
dir, so it goes with the process however it ends. A fleet's replicas share PostgreSQL,
never a data dir.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Final

from executor.errors import ConfigError

LOCK_FILE: Final = "cbexec.lock"


class DataDirLock:
    """The data dir held by this process until ``release``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, data_dir: Path) -> DataDirLock:
        """Hold ``data_dir``, or raise ConfigError naming the executor that holds it."""
        fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(data_dir, fd) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        os.close(self._fd)

    @staticmethod
    def check(data_dir: Path) -> None:
        """Raise as ``take`` would, holding nothing (``cbexec serve --check-config``)."""
        try:
            fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # no lock file (or no data dir yet): no executor holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(data_dir, fd) from None  # it closes fd
        os.close(fd)


def _in_use(data_dir: Path, fd: int) -> ConfigError:
    """The refusal, naming the holder's pid as it wrote it (closes ``fd``)."""
    holder = ""
    with contextlib.suppress(OSError, ValueError):
        holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
    os.close(fd)
    return ConfigError(
        f"data_dir: {data_dir} is in use by another executor{holder}: give each executor "
        "its own data dir (a fleet's replicas share PostgreSQL, never a data dir)"
    )
