"""Directories the executor makes under a root it is given: their mode whatever the umask, nothing planted followed.

``Path.mkdir(parents=True, mode=...)`` gives the mode to the last directory only, the
others taking the process umask's (0777 under umask 000), and a path opened by name
follows whatever link a local user put on the way: with the `.cb` logs' parents 0777,
``logs/job/0/2 -> /any/dir`` had the executor, as root, write job 2's log there (probe 82).
So each level is opened relative to the one above it with ``O_NOFOLLOW``, each directory
made here gets its mode with ``fchmod`` (keeping the setgid bit it inherits, so a setgid
``log_dir``'s group reaches every log), and a link, something that is not a directory,
or an entry owned by neither the executor's user nor the root's owner (who could replace
the whole tree anyway) is refused with an ``UnsafePathError``, nothing written.

The root itself is a setting, the admin's: it is followed as given (``/var/log`` may be
a link), and only its missing parts are made, with the same mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

_DIRECTORY: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# What the executor does with an entry it refuses, said once for every refusal.
_WHY: Final = "not followed: the executor makes and writes only its own directories and files there"


class UnsafePathError(OSError):
    """An entry on the way that the executor did not make: a link, another user's, not a directory.

    An OSError, so a caller's handling of an unusable path takes it; one that retries
    storage errors must not retry this one (no wait mends it).
    """


class OwnedDir:
    """An open directory of the tree (``fd``), shown as ``path``, with the owners trusted in it."""

    def __init__(self, fd: int, path: Path, owners: frozenset[int]) -> None:
        self.fd = fd
        self.path = path
        self.owners = owners

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> OwnedDir:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_tree(root: Path, names: Sequence[str], mode: int, *, make: bool = True) -> OwnedDir:
    """``root/names...`` opened, each missing directory made with ``mode`` (when ``make``).

    Raises UnsafePathError for an entry planted on the way, FileNotFoundError for a
    missing one without ``make``, another OSError for what the storage refuses.
    """
    current = _open_root(root, mode, make)
    for name in names:
        current = _step(current, name, mode, make)
    return current


def open_subdir(parent: OwnedDir, name: str) -> OwnedDir:
    """The directory ``name`` that is in ``parent`` (left open), checked as ``open_tree`` checks it.

    Raises UnsafePathError for an entry planted there, FileNotFoundError when it is missing.
    """
    return _step(OwnedDir(os.dup(parent.fd), parent.path, parent.owners), name, 0, make=False)


def open_file(directory: OwnedDir, name: str, flags: int, mode: int) -> int:
    """``name`` in ``directory`` opened with ``flags``; made with ``mode`` when missing and ``O_CREAT``.

    With ``O_EXCL`` only a new file is opened, as ``os.open`` would. A file made here
    gets exactly ``mode`` (the umask takes no bits from it); one that was there keeps
    its own. A link, anything but a regular file, or a file of another owner is refused.
    """
    path = directory.path / name
    # O_NONBLOCK: a FIFO planted there is refused, not waited on (no effect on a file).
    base = (flags & ~os.O_CREAT) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    if not flags & os.O_EXCL:  # else only a new file will do
        try:
            fd = os.open(name, base, dir_fd=directory.fd)
        except FileNotFoundError:
            if not flags & os.O_CREAT:
                raise
        except OSError as err:
            raise _refusal(err, directory, name, "a regular file") from err
        else:
            with _closed_on_error(fd):
                _check(os.fstat(fd), path, directory.owners, stat.S_ISREG, "a regular file")
            return fd
    try:
        fd = os.open(name, base | os.O_CREAT | os.O_EXCL, mode, dir_fd=directory.fd)
    except FileExistsError:
        if flags & os.O_EXCL:
            raise
        return open_file(directory, name, flags & ~os.O_CREAT, mode)  # made meanwhile
    with _closed_on_error(fd):
        os.fchmod(fd, mode)
    return fd


def _open_root(root: Path, mode: int, make: bool) -> OwnedDir:
    """The root, followed as its setting gives it; its missing parts made with ``mode``."""
    try:
        fd = os.open(root, _DIRECTORY)
    except FileNotFoundError:
        if not make:
            raise
    else:
        with _closed_on_error(fd):
            owner = os.fstat(fd).st_uid
        return OwnedDir(fd, root, frozenset({os.geteuid(), owner}))
    missing = [root]
    while not missing[-1].parent.exists() and missing[-1].parent != missing[-1]:
        missing.append(missing[-1].parent)
    above = missing[-1].parent
    current = OwnedDir(os.open(above, _DIRECTORY), above, frozenset({os.geteuid()}))
    for part in reversed(missing):
        current = _step(current, part.name, mode, make=True)
    return current


def _step(parent: OwnedDir, name: str, mode: int, make: bool) -> OwnedDir:
    """The directory ``name`` in ``parent`` (``parent`` closed), made with ``mode`` when missing."""
    path = parent.path / name
    made = False
    with parent:
        try:
            try:  # most calls find it: one open, no mkdir
                fd = os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=parent.fd)
            except FileNotFoundError:
                if not make:
                    raise
                with contextlib.suppress(FileExistsError):  # made meanwhile: checked as found
                    os.mkdir(name, mode, dir_fd=parent.fd)
                    made = True
                fd = os.open(name, _DIRECTORY | os.O_NOFOLLOW, dir_fd=parent.fd)
        except OSError as err:
            raise _refusal(err, parent, name, "a directory") from err
    with _closed_on_error(fd):
        found = os.fstat(fd)
        _check(found, path, parent.owners, stat.S_ISDIR, "a directory")
        if made:  # ours: its mode whatever the umask, with the setgid bit it inherited
            os.fchmod(fd, mode | (found.st_mode & stat.S_ISGID))
    return OwnedDir(fd, path, parent.owners)


@contextlib.contextmanager
def _closed_on_error(fd: int) -> Iterator[None]:
    try:
        yield
    except BaseException:
        os.close(fd)
        raise


def _refusal(err: OSError, parent: OwnedDir, name: str, named: str) -> OSError:
    """``err`` as an UnsafePathError when the entry is a link or not ``named``; else itself."""
    if err.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO):
        return err
    try:
        found = os.lstat(name, dir_fd=parent.fd)
    except OSError:
        return err
    path = parent.path / name
    if stat.S_ISLNK(found.st_mode):
        return UnsafePathError(f"{path} is a symbolic link ({_WHY})")
    return UnsafePathError(f"{path} is not {named} ({_WHY})")


def _check(
    found: os.stat_result,
    path: Path,
    owners: frozenset[int],
    kind: Callable[[int], bool],
    named: str,
) -> None:
    if not kind(found.st_mode):
        raise UnsafePathError(f"{path} is not {named} ({_WHY})")
    if found.st_uid not in owners:
        raise UnsafePathError(f"{path} belongs to uid {found.st_uid}, not the executor's ({_WHY})")
