"""One executor per data dir: a lock held from start-up to the stop.

Two executors on one data dir share its SQLite databases and the embedded supervisor's
socket: the one that stops first removes the socket, and every qb call of the other
fails from then on while its health still says SERVING (probe 55), and a firing the
first has in flight the second runs again (probe 61). A second one is refused at start
instead, naming the first. A fleet's replicas share PostgreSQL, never a data dir.

The lock is ``flock`` on the data dir itself (a descriptor of the directory), so it goes
with the process however it ends, and nothing done to a file in the dir undoes it: it
was once on ``cbexec.lock`` alone, and deleting that file let a second executor in.
``cbexec.lock`` is still locked too, as the versions that locked only it check it, and it
holds the pid the refusal names. The versions before any lock took none; in embedded mode
they listen on ``<data_dir>/supervisor.sock``, so a socket there that takes a connection
is an executor running too (a stale one refuses it, and start-up removes it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from pathlib import Path
from typing import Final

from executor.errors import ConfigError

LOCK_FILE: Final = "cbexec.lock"
# Where the embedded supervisor listens (``executor.api.embedded``), in every version.
SUPERVISOR_SOCKET: Final = "supervisor.sock"
# A listener that has not taken the connection by then is busy, not gone.
CONNECT_TIMEOUT_S: Final = 1.0


class DataDirLock:
    """The data dir held by this process until ``release``."""

    def __init__(self, fds: list[int]) -> None:
        self._fds = fds

    @classmethod
    def take(cls, data_dir: Path) -> DataDirLock:
        """Hold ``data_dir``, or raise ConfigError naming the executor that holds it."""
        held: list[int] = []
        try:
            directory = _open_directory(data_dir)
            if directory is not None:
                held.append(directory)
                _lock(directory, fcntl.LOCK_EX, data_dir)
            _refuse_a_strange_lock_file(data_dir)
            try:
                file = os.open(
                    data_dir / LOCK_FILE,
                    os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
                    0o600,
                )
            except OSError as err:  # a link or a directory put there meanwhile, say
                raise ConfigError(
                    f"data_dir: cannot open {data_dir / LOCK_FILE}: {err.strerror or err}"
                ) from err
            held.append(file)
            _lock(file, fcntl.LOCK_EX, data_dir)
            _refuse_a_listener(data_dir)
        except BaseException:
            for fd in held:
                os.close(fd)
            raise
        os.ftruncate(file, 0)
        os.pwrite(file, f"{os.getpid()}\n".encode(), 0)
        return cls(held)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)

    @staticmethod
    def check(data_dir: Path) -> None:
        """Raise as ``take`` would, holding nothing (``cbexec serve --check-config``)."""
        _refuse_a_strange_lock_file(data_dir)
        for fd in (_open_directory(data_dir), _open_file(data_dir / LOCK_FILE)):
            if fd is None:
                continue  # no data dir or lock file yet: no executor holds it
            try:
                _lock(fd, fcntl.LOCK_SH, data_dir)
            finally:
                os.close(fd)
        _refuse_a_listener(data_dir)


def _open_directory(data_dir: Path) -> int | None:
    """A descriptor of ``data_dir`` to lock; None when it cannot be opened (no dir yet)."""
    return _open_file(data_dir, os.O_DIRECTORY)


def _open_file(path: Path, flags: int = 0) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    except OSError:
        return None


def _lock(fd: int, kind: int, data_dir: Path) -> None:
    """``flock`` ``fd`` without waiting; ConfigError naming the holder if another holds it.

    A filesystem that locks no directory (NFS emulates flock with byte-range locks,
    which a directory opened read-only cannot take) leaves the lock file's lock alone
    to hold the dir, as before the directory was locked.
    """
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(data_dir) from None
    except OSError:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise


def _in_use(data_dir: Path) -> ConfigError:
    """The refusal, naming the holder's pid as it wrote it in the lock file."""
    holder = ""
    with contextlib.suppress(OSError, ValueError):
        holder = f" (pid {int((data_dir / LOCK_FILE).read_text().strip())})"
    return ConfigError(
        f"data_dir: {data_dir} is in use by another executor{holder}: give each executor "
        "its own data dir (a fleet's replicas share PostgreSQL, never a data dir)"
    )


def _refuse_a_strange_lock_file(data_dir: Path) -> None:
    """ConfigError if something but a file is where ``cbexec.lock`` goes.

    Start-up cannot lock a directory there (it died with a traceback), and through a
    link it would truncate the file the link points to.
    """
    path = data_dir / LOCK_FILE
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # none yet (or no data dir): start-up makes it
    if stat.S_ISREG(mode):
        return
    what = {stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symbolic link"}.get(
        stat.S_IFMT(mode), "not a file"
    )
    raise ConfigError(
        f"data_dir: {path} is {what}; the executor's lock file goes there: move it away"
    )


def _refuse_a_listener(data_dir: Path) -> None:
    """ConfigError if something takes connections on the data dir's supervisor socket.

    No executor of this version listens there without holding the lock first: it is an
    executor of a version before ``cbexec.lock`` (an upgrade started while the old one
    still drains). A socket file nobody listens on is left for start-up to replace.
    """
    path = data_dir / SUPERVISOR_SOCKET
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return
    if stat.S_ISDIR(mode):  # start-up replaces what is there: it cannot replace a directory
        raise ConfigError(
            f"data_dir: {path} is a directory; the embedded supervisor's socket goes there: "
            "move it away"
        )
    if not stat.S_ISSOCK(mode):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CONNECT_TIMEOUT_S)
        try:
            probe.connect(str(path))
        except TimeoutError:
            pass  # a listener whose backlog is full: running, and busy
        except OSError:
            return  # refused: a stale socket, which start-up replaces
    raise ConfigError(
        f"data_dir: {data_dir} is in use by another executor: one listens on {path} (an "
        "executor of an earlier version, which takes no cbexec.lock, still running?): stop "
        "it first, and give each executor its own data dir (a fleet's replicas share "
        "PostgreSQL, never a data dir)"
    )
