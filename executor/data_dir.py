"""The data dir as start-up finds it: made and usable, or one line saying why not.

``make`` is start-up's (it creates the directory), ``databases`` the files it opens
there; ``inspect`` is ``cbexec serve --check-config``'s, which finds the same problems
without leaving anything behind: what can be seen is looked at (something on the way
that is not a directory, a read-only filesystem, no write permission), and what can
only be found by trying (a pseudo-filesystem such as /proc refuses a mkdir that every
permission allows; a filesystem the kernel stopped writing to after an error still
shows it read-write) is tried with the one directory start-up would make first, or an
empty file made in the data dir, removed again at once.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from executor.errors import ConfigError

if TYPE_CHECKING:
    from executor.config import Settings

# What SQLite makes for a database it opens in WAL mode: its -shm, 32 KiB. A stopped
# executor's databases have none (a stop removes it), so a filesystem with less than that
# free per database refuses start-up ("disk I/O error: the storage refused it"), while
# one with that much starts, NOT_SERVING until space is freed, as when it fills later.
SHM_BYTES: Final = 32 << 10
# A data dir start-up makes, and the missing directories above it (as ``mkdir -p`` under
# root's usual umask 022 makes them), whatever the process umask.
DATA_DIR_MODE: Final = 0o700
PARENT_MODE: Final = 0o755
# The mail queue's spool, a directory the executor makes in the data dir when it first needs it.
MAIL_QUEUE: Final = "mail-queue"


def make(path: Path, databases: Sequence[str] = ()) -> None:
    """Create ``path`` (mode 0700, its missing parents 0755) and check it is usable; ConfigError if not.

    Also when its filesystem has no inodes left for the files opening ``databases``
    makes: SQLite would say only "unable to open database file".
    """
    _existing_problem(path)
    _refuse_a_strange_mail_queue(path)
    if not path.is_dir():
        _writable(_first_missing(path).parent, f"{path} does not exist and")
    try:
        _make_missing(path)
    except OSError as err:
        raise ConfigError(f"data_dir: cannot make {path}: {err.strerror or err}") from err
    _usable(path)
    if problem := _inodes_problem(path, databases):
        raise ConfigError(problem)


def _make_missing(path: Path) -> None:
    """Make ``path`` DATA_DIR_MODE and its missing parents PARENT_MODE, whatever the umask.

    ``mkdir(parents=True)`` gives the parents the umask's mode (0777 under umask 000: any
    local user could then move the data dir away and put their own in its place).
    """
    for step in [*reversed(path.parents), path]:
        if step.is_dir():
            continue
        mode = DATA_DIR_MODE if step == path else PARENT_MODE
        try:
            step.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(step, mode)  # never more than mode (the umask only takes bits away)


def databases(settings: Settings) -> list[str]:
    """The SQLite files start-up opens in the data dir with these settings."""
    names = [] if settings.store else ["runs.db", "triggers.db"]
    if settings.report_results and not settings.store:
        names.append("outbox.db")
    if not settings.supervisor:
        names.append("supervisor.db")  # the embedded reference supervisor's
    return names


def inspect(path: Path) -> str:
    """How start-up would find ``path``: "(exists)" or "(made at start-up)"; ConfigError if unusable."""
    _existing_problem(path)
    _refuse_a_strange_mail_queue(path)
    if path.is_dir():
        _usable(path)
        return f"{path} (exists)"
    first_missing = _first_missing(path)
    _writable(first_missing.parent, f"{path} does not exist and")
    try:
        first_missing.mkdir(mode=0o700)
    except FileExistsError:  # made meanwhile (start-up running?): not ours to remove
        return inspect(path)
    except OSError as err:
        raise ConfigError(f"data_dir: cannot make {path}: {err.strerror or err}") from err
    with contextlib.suppress(OSError):
        first_missing.rmdir()
    return f"{path} (made at start-up)"


def _existing_problem(path: Path) -> None:
    """Something on the way to ``path`` (or at it) that is not a directory."""
    for step in [*reversed(path.parents), path]:
        if step.exists() and not step.is_dir():
            if step == path:
                raise ConfigError(f"data_dir: {path} is not a directory")
            raise ConfigError(f"data_dir: cannot make {path}: {step} is not a directory")


def _refuse_a_strange_mail_queue(path: Path) -> None:
    """ConfigError if something but a directory is where the mail queue's goes (not followed).

    Else every mail run would fail on it, and nothing would say so before.
    """
    spool = path / MAIL_QUEUE
    try:
        mode = os.lstat(spool).st_mode
    except OSError:
        return  # none yet (or no data dir): made when the first mail is handed over
    if stat.S_ISDIR(mode):
        return
    what = "a symbolic link" if stat.S_ISLNK(mode) else "not a directory"
    raise ConfigError(
        f"data_dir: {spool} is {what}; the mail queue's directory goes there: move it away"
    )


def _first_missing(path: Path) -> Path:
    """The first directory start-up would make on the way to ``path``."""
    return next(p for p in [path, *path.parents] if p.parent.exists())


def _usable(path: Path) -> None:
    _writable(path, "")
    _takes_new_files(path)


def _takes_new_files(directory: Path) -> None:
    """ConfigError when the filesystem refuses a new file though it is mounted read-write.

    After an error the kernel stops writes to a filesystem that says so in no flag
    (ext4's errors=remount-ro shows ``rw,emergency_ro``): without this, the databases'
    first write would be the one to fail. Only that refusal (EROFS) stops start-up: a
    full disk is waited out serving NOT_SERVING, as when it fills later. (One with no
    inodes left, ENOSPC here, stops it only when the databases need new files: see
    ``_inodes_problem``, which reads that off ``statvfs``.)
    """
    probe = directory / f".cbexec-start-up-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        if err.errno == errno.EROFS:
            raise ConfigError(
                f"data_dir: {directory} refuses new files ({err.strerror}) although its "
                "filesystem is mounted read-write (the kernel does this after a filesystem "
                "error; its log says why): mend it, then start again"
            ) from err
        return
    os.close(fd)
    with contextlib.suppress(OSError):
        probe.unlink()


def _writable(directory: Path, prefix: str) -> None:
    """ConfigError unless this user can make files in ``directory``."""
    named = f"{prefix} {directory}".strip()
    if _read_only_filesystem(directory):
        raise ConfigError(
            f"data_dir: {named} is not writable by this user (a read-only filesystem)"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"data_dir: {named} is not writable by this user")


def _read_only_filesystem(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def space_problem(path: Path, databases: Sequence[str]) -> str | None:
    """Why start-up would be refused for lack of space to open ``databases`` in ``path``; None if not.

    Read off ``statvfs`` (the blocks and inodes free to this user: root may take the
    reserved ones too), nothing written: ``cbexec serve --check-config``'s.
    """
    needing = [name for name in databases if not (path / f"{name}-shm").exists()]
    on = _on(path)
    if not needing or on is None:
        return None
    try:
        found = os.statvfs(on)
    except OSError:
        return None
    free = (found.f_bfree if os.geteuid() == 0 else found.f_bavail) * found.f_frsize
    need = SHM_BYTES * len(needing)
    if free >= need:
        return _inodes_problem(path, databases)
    return (
        f"data_dir: {path}: its filesystem is full ({free // 1024} KiB free to this user; "
        f"opening {', '.join(needing)} takes {need // 1024} KiB, 32 KiB each for its -shm): "
        "start-up would be refused (disk I/O error: the storage refused it); free space, "
        "then start again"
    )


def _on(path: Path) -> Path | None:
    """The directory whose filesystem ``path``'s files go to: it, or where it would be made."""
    on = path if path.is_dir() else _first_missing(path).parent
    return on if on.is_dir() else None


def _inodes_problem(path: Path, databases: Sequence[str]) -> str | None:
    """Why opening ``databases`` in ``path`` would fail for want of inodes; None if not.

    Each opening makes the files it lacks: the database, its -wal and its -shm (a stop
    removes those two). Free blocks do not help a filesystem with no inodes left (a
    tmpfs's nr_inodes, an ext4 full of small files). Filesystems that count none
    (``f_files`` 0: btrfs, for one) make them as they go: nothing to say there.
    """
    new_files = {
        f"{name}{suffix}": name
        for name in databases
        for suffix in ("", "-wal", "-shm")
        if not (path / f"{name}{suffix}").exists()
    }
    on = _on(path)
    if not new_files or on is None:
        return None
    try:
        found = os.statvfs(on)
    except OSError:
        return None
    free = found.f_ffree if os.geteuid() == 0 else found.f_favail
    if not found.f_files or free >= len(new_files):
        return None
    return (
        f"data_dir: {path}: its filesystem has too few inodes left for new files ({free} free to "
        f"this user; opening {', '.join(dict.fromkeys(new_files.values()))} makes "
        f"{len(new_files)}: {', '.join(new_files)}): start-up would be refused (unable to "
        "open database file: the storage refused it); delete files on it or give it more "
        "inodes, then start again"
    )
