"""How a universal-callback directory's files are read: safely, and as one saved state.

Safely: a file is read only if it really is a regular file in its directory, at most
MAX_FILE_BYTES, and neither it, nor its directory, nor a directory its name is looked
up through in there (a symbolic link's way into a sub-directory: ``_loose_way``) may be
written by anyone but root or the executor's own user (``unsafe_directory``,
``_Unsafe``): whoever can write there has code run by the executor, under the
``universal`` policy (sshd's StrictModes).

As one saved state: a load reads ``callbacks.conf``, then each file it names. An editor's
save (vim renames the file away and writes a new one; others truncate, then write) or a
``git checkout`` (each file unlinked and created anew) may land between those reads, and
the set would be one neither before nor after it. So each read notes what it read
(``Reads``) and the load checks, once done, that every file is still what it read and
that none changed in the last SETTLE_NS (``Reads.changed``: a checkout may be half-way
through, its files still as it left them), reading again otherwise
(universal.load_universal).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

MAX_FILE_BYTES: Final = 1 << 20
# A file changed this recently may be one of several a save or a checkout is still writing
# (git writes callbacks.conf, then each file): read again once it has settled.
SETTLE_NS: Final = 100_000_000
# Group or others may write (the sticky bit does not help: they may add files).
_LOOSE: Final = stat.S_IWGRP | stat.S_IWOTH


class Unreadable(Exception):
    """A file refused before it is read: why, given its name and its directory."""

    def why(self, name: str, directory: Path) -> str:
        raise NotImplementedError


class _Outside(Unreadable):
    """The file's real path is not inside its directory's."""

    def why(self, name: str, directory: Path) -> str:
        # A link out of the directory would let whoever may write there read any file
        # the executor can (and see it quoted in this very error): not read at all.
        return f"{name} leads outside {directory} (a symbolic link?): not read"


class _NotRegular(Unreadable):
    """The file is no regular file (a FIFO, a device, a directory, a socket)."""

    def why(self, name: str, directory: Path) -> str:
        # A FIFO's read would wait for its writer, a device's may never end.
        return f"{name} is not a regular file: not read"


class _TooLarge(Unreadable):
    """The file is larger than MAX_FILE_BYTES."""

    def why(self, name: str, directory: Path) -> str:
        return f"{name} is larger than {MAX_FILE_BYTES} bytes"


class _Unsafe(Unreadable):
    """Someone other than root or the executor's user may change the file."""

    def __init__(self, status: os.stat_result) -> None:
        super().__init__()
        self.status = status

    def why(self, name: str, directory: Path) -> str:
        return _unsafe(self.status, name, directory / name, "it") or "unsafe"


class _LooseWay(Unreadable):
    """A directory the file's name is looked up through is not safe (``_loose_way``)."""

    def __init__(self, directory: str, status: os.stat_result) -> None:
        super().__init__()
        self.directory, self.status = directory, status

    def why(self, name: str, directory: Path) -> str:
        way = Path(self.directory)
        return _unsafe(self.status, f"{name} leads through {way}, which", way, "there") or "unsafe"


def _unsafe(status: os.stat_result, name: str, path: Path, pronoun: str) -> str | None:
    """Why a file or directory with ``status`` may not hold callbacks, or None.

    ``pronoun`` is what whoever can write it writes: "it" (a file) or "there" (a directory).
    """
    mode = stat.S_IMODE(status.st_mode)
    if mode & _LOOSE:
        return (
            f"{name} is writable by group or others (mode {mode:04o}): whoever can write "
            f"{pronoun} has code run by the executor; chmod go-w {path}"
        )
    own = os.geteuid()
    if status.st_uid not in (0, own):
        return (
            f"{name} is owned by uid {status.st_uid}, neither root nor the executor's user "
            f"(uid {own}): whoever owns it has code run by the executor; "
            f"chown root {path}"
        )
    return None


def unsafe_directory(directory: Path) -> str | None:
    """Why ``directory`` may not hold callbacks (a ``directory: message`` error), or None.

    None for a directory that does not exist (it adds nothing, said elsewhere).
    """
    try:
        status = os.stat(directory)
    except OSError:
        return None
    why = _unsafe(status, "the directory", directory, "there")
    return f"{directory}: {why}" if why else None


# What a read saw of a file: (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) or None
# when it could not open it, and its text or None when it was not read.
_Identity = tuple[int, int, int, int, int]
_Seen = tuple[_Identity | None, str | None]


def _identity(status: os.stat_result) -> _Identity:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


@dataclass(slots=True)
class Reads:
    """Every file one load read, and what it saw of each."""

    seen: dict[Path, tuple[Path, _Seen]] = field(default_factory=dict)

    def read(self, directory: Path, path: Path) -> str:
        """``read_inside``, noting what it saw (a failure too: a missing file may appear)."""
        seen = _see(directory, path)
        self.seen[path] = (directory, seen)
        # A failed read is read again for its exception: should it succeed now, the
        # file changed, and ``changed`` says so.
        return read_inside(directory, path) if seen[1] is None else seen[1]

    def changed(self) -> set[Path]:
        """The directories of the files not as they were read, or changed just before.

        Each file is read again and compared; one changed within SETTLE_NS (its ctime:
        ``cp -p`` keeps no mtime) may not be taken as saved yet.
        """
        now = time.time_ns()
        return {
            directory
            for path, (directory, seen) in self.seen.items()
            if _see(directory, path) != seen
            # A ctime ahead of the clock (set back since) is no reason to wait for ever.
            or (seen[0] is not None and 0 <= now - seen[0][4] < SETTLE_NS)
        }


def _see(directory: Path, path: Path) -> _Seen:
    """What a read of ``path`` gets now: its identity and text, or what stands there."""
    try:
        text, status = _read(directory, path)
    except (OSError, UnicodeDecodeError, Unreadable):
        try:
            return (_identity(os.stat(path)), None)
        except OSError:
            return (None, None)
    return (_identity(status), text)


def read_inside(directory: Path, path: Path) -> str:
    """``path``'s text, if it is a regular file inside ``directory`` only we or root may change.

    The checks are on the file opened (its /proc/self/fd link, its fstat), so a link
    swapped between a check and the read cannot get around them. O_NONBLOCK: opening
    a FIFO does not wait for a writer (it is then refused, unread).
    """
    return _read(directory, path)[0]


def _read(directory: Path, path: Path) -> tuple[str, os.stat_result]:
    inside = os.path.realpath(directory)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as handle:
        opened = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.commonpath([opened, inside]) != inside:
            raise _Outside
        if loose := _loose_way(inside, path.name):
            raise _LooseWay(*loose)
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise _NotRegular
        if _unsafe(status, "", path, "") is not None:
            raise _Unsafe(status)
        if status.st_size > MAX_FILE_BYTES:
            raise _TooLarge
        data = handle.read(MAX_FILE_BYTES + 1)  # it may have grown since the fstat
        if len(data) > MAX_FILE_BYTES:
            raise _TooLarge
        # "-sig": a Windows editor's byte order mark is no part of the text, in any
        # language (Python's compile() of a str refuses it, perl does not know it there);
        # line ends as a text-mode read gives them (a Windows editor's CRLF is one).
        text = data.decode("utf-8-sig").replace("\r\n", "\n").replace("\r", "\n")
        return text, status


# As the kernel's (MAXSYMLINKS): a longer chain of links is a loop.
_MAX_LINKS: Final = 40


def _loose_way(inside: str, name: str) -> tuple[str, os.stat_result] | None:
    """The first directory ``name`` is looked up through from ``inside`` that is not safe, or None.

    Links followed as the kernel does: a sub-directory the file or a link on its way is
    in decides which file this is, so whoever may write one chooses the code that runs
    (a root-owned file no line names, say). ``inside`` itself is checked for its own
    error (``unsafe_directory``), and so are not the directories on the way to it (an
    absolute link's ``/``, ``/srv``): the setting names them.
    """
    current, parts, links = inside, name.split("/"), 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            current = os.path.dirname(current)
            continue
        if os.path.commonpath([current, inside]) != current:  # neither inside nor on the way
            status = os.stat(current)
            if _unsafe(status, "", Path(current), "") is not None:
                return current, status
        step = os.path.join(current, part)
        if not os.path.islink(step):
            current = step
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), step)
        target = os.readlink(step)
        parts[:0] = target.split("/")
        if target.startswith("/"):
            current = "/"
    return None
