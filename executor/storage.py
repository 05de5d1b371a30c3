"""The executor's SQLite files: what a failed read or write of one means.

Two kinds of trouble, two answers:

- A file that is not a database (damaged, or something else at that path), or is
  another of the executor's databases (its kind is in its header), found at start-up
  is a ``ConfigError`` naming the file and what to do; the executor never
  deletes or rewrites it (``database_opening``: ``open_database``, ``check_database``,
  ``unusable``; ``database_kinds``).
- A write that fails for a reason outside the executor (the disk is full, an I/O error,
  the file became read-only, another process holds the database locked past the busy
  timeout) is a ``StorageError`` (``storage_failures``): an ``UnavailableError`` naming
  the file and the cause, which the caller gets instead of a success without a durable
  record (``writing``), never an internal error. ``StorageHealth`` (``storage_health``)
  remembers the last such failure, so health and metrics show the degraded state, and
  probes until a write works again; then everything resumes by itself.

This module ties them together: ``writing`` and ``reading`` turn what a write or a read
meets into the error its caller gets (telling ``StorageHealth`` of a write's), and the
names the stores import from those modules are offered here as well.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from executor.database_kinds import holding
from executor.database_opening import (
    LOOP_BUSY_TIMEOUT_S,
    LOOP_CHECKPOINT_BUSY_TIMEOUT_S,
    check_database,
    open_database,
    opening,
    unusable,
    wait_briefly_for_locks,
)
from executor.errors import DataLossError, UnavailableError
from executor.sql import StoreLockTimeout, StoreUnavailable
from executor.sqlite_codes import primary_code
from executor.storage_failures import (
    FAILING_STORAGE_CODES,
    DatabaseLocked,
    StorageError,
    StoreRefused,
    is_busy,
    is_damage,
    is_locked,
    is_storage_failure,
    refused_by_store,
    why_refused,
)
from executor.storage_health import StorageHealth, runs_nothing, write_mark

# What the stores import from here: this module's own, and its pieces' that they use.
__all__ = [
    "LOOP_BUSY_TIMEOUT_S",
    "LOOP_CHECKPOINT_BUSY_TIMEOUT_S",
    "DatabaseLocked",
    "StorageError",
    "StorageHealth",
    "StoreRefused",
    "check_database",
    "damaged_in_service",
    "is_busy",
    "open_database",
    "opening",
    "reading",
    "runs_nothing",
    "unusable",
    "wait_briefly_for_locks",
    "write_refusal",
    "writing",
]

logger = logging.getLogger(__name__)


def damaged_in_service(path: Path, why: str) -> str:
    """What a read that met damage in the database at ``path`` answers: what it holds, what to do."""
    return (
        f"{path}: {why}: the file is damaged{holding(path)}. Stop the executor, then restore it from "
        "a backup, or move it aside (with its -wal and -shm) to start with an empty one"
    )


# Files whose damage a read met, logged once each (every ListRuns of a dashboard meets it).
_DAMAGE_LOGGED: set[str] = set()


@contextlib.contextmanager
def reading(path: Path | str) -> Iterator[None]:
    """Turn an SQLite error a read meets into an error naming ``path`` and saying what it means.

    A damaged page (start-up reads only part of the history) is a DataLossError, logged
    at ERROR once per file: no retry mends it. A failing storage (an I/O error) or a lock
    held past the busy timeout is an UnavailableError: the same read may work later.
    Anything else is a bug of ours, raised as it is.
    """
    try:
        yield
    except sqlite3.Error as err:
        if is_damage(err):
            said = damaged_in_service(Path(path), str(err))
            if str(path) not in _DAMAGE_LOGGED:
                _DAMAGE_LOGGED.add(str(path))
                logger.error("%s", said)
            raise DataLossError(said) from err
        if is_busy(err):
            raise UnavailableError(
                f"cannot read {path}: {err} (another process holds it locked); try again"
            ) from err
        if primary_code(err) in FAILING_STORAGE_CODES:
            raise UnavailableError(
                f"cannot read {path}: {why_refused(Path(path), err)}; the storage under it "
                "failed (the file is not known to be damaged): the executor's data dir needs "
                "attention"
            ) from err
        raise


def write_refusal(path: Path) -> StorageError | None:
    """Why the database at ``path`` takes no write now, in a write's own words; None if it takes one.

    What a look at a database whose reads go on while its writes fail needs: a lock
    another process holds (``DatabaseLocked``), a full disk or failing I/O.
    """
    try:
        with writing(path):
            write_mark(path)
    except StorageError as err:
        return err
    except sqlite3.Error as err:  # not the storage's (the file cannot be opened, say)
        return StorageError(path, str(err))
    return None


@contextlib.contextmanager
def writing(
    path: Path | str,
    health: StorageHealth | None = None,
    *,
    lock_degrades: bool = True,
    store_refusals: bool = False,
) -> Iterator[None]:
    """Turn a storage failure inside the block into a StorageError naming ``path``.

    A lock held past the busy timeout is one too (``DatabaseLocked``). ``lock_degrades``
    False: ``health`` does not hear of it (the history's, whose runs wait in memory while
    their results are recorded in the outbox: nothing is lost, so nothing need stop).
    ``store_refusals``: a fleet's PostgreSQL refusing the write for a reason of its own
    (``refused_by_store``) is one too (``StoreRefused``): a result's commit, which must
    wait for the store rather than be lost, as the run's effects have happened. So is,
    there only, a lock waited for past the lock timeout (``StoreLockTimeout``): a new
    result's row waits only for a lock on the whole outbox (an admin's ``LOCK TABLE``),
    and while it is held no run's result can be recorded. Elsewhere a held lock fails
    only what needs it and ``health`` does not hear of it.
    """
    try:
        yield
    except sqlite3.Error as err:
        error: StorageError
        if is_locked(err):
            error = DatabaseLocked(path, str(err))
            if not lock_degrades:
                raise error from err
        elif is_storage_failure(err):
            error = StorageError(path, why_refused(Path(path), err))
        else:
            raise
        if health is not None:
            health.failed(error)
        raise error from err
    except StoreUnavailable as err:  # a fleet's PostgreSQL (its message names no URL)
        if health is not None:
            health.failed(err)
        raise
    except StoreLockTimeout as err:
        if store_refusals and health is not None:
            health.failed(err)
        raise
    except Exception as err:
        if not (store_refusals and refused_by_store(err)):
            raise
        refused = StoreRefused(str(path), (str(err).splitlines() or [""])[0])
        if health is not None:
            health.failed(refused)
        raise refused from err
