"""The data dir as start-up finds it: made and usable, or one line saying why not.

``make`` is start-up's (it creates the directory); ``inspect`` is ``cbexec serve
--check-config``'s, which finds the same problems without leaving anything behind: what
can be seen is looked at (something on the way that is not a directory, a read-only
filesystem, no write permission), and what can only be found by trying (a
pseudo-filesystem such as /proc refuses a mkdir that every permission allows) is tried
with the one directory start-up would make first, removed again at once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from executor.errors import ConfigError


def make(path: Path) -> None:
    """Create ``path`` (mode 0700, with its parents) and check it is usable; ConfigError if not."""
    _existing_problem(path)
    if not path.is_dir():
        _writable(_first_missing(path).parent, f"{path} does not exist and")
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as err:
        raise ConfigError(f"data_dir: cannot make {path}: {err.strerror or err}") from err
    _usable(path)


def inspect(path: Path) -> str:
    """How start-up would find ``path``: "(exists)" or "(made at start-up)"; ConfigError if unusable."""
    _existing_problem(path)
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


def _first_missing(path: Path) -> Path:
    """The first directory start-up would make on the way to ``path``."""
    return next(p for p in [path, *path.parents] if p.parent.exists())


def _usable(path: Path) -> None:
    _writable(path, "")


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
