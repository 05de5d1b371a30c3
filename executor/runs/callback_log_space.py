"""What the ``.cb`` logs take: each job's kept within an age and all within a total, the oldest removed whole.

Nothing removed a job's log before: its ``<id>.cb`` and ``<id>.cb.1`` stayed for ever, up
to twice ``callback_log_max_bytes`` each (60 jobs printing 1 MiB made 121 MB of logs
beside a history held to 1 MiB, probe 125). Qube keeps a job's callback log with the job,
and the history's bounds are what an admin counts on to keep the disk: so a job's log
not written for ``retention_days`` (``history_retention_days``) goes, and past
``max_bytes`` in all the logs written longest ago go, never the newest (the one being
written, kept alone when it alone is larger). A log goes whole: its two files, then
its directory and its group's (``<id rounded down to 1000>``) once they are empty.
Only those two names are removed: another file there (Qube's own, when ``log_dir`` is
its spool) keeps the directories.

What each job's log takes is kept in memory, updated by ``written`` after each entry,
so the total is known without reading the tree: a tree of 100,000 jobs takes seconds to
walk, and the bookkeeping thread that prunes (``bookkeeping``) must not stall on it. The
walk that finds what is on disk (the logs written before this start, a log someone else
removed or wrote) visits at most ``WALK_PER_PASS`` job directories per ``prune``, going
on where it left off and round again once done; until its first round is done,
a log written before the start counts once it has been reached.

Removing follows the tree's rules (``owned_dirs``): no link is followed, and only the
executor's own files go. A removal the storage refuses (a directory the executor may
not write in, an immutable one) is logged at WARNING once, later ones at DEBUG: that
log is not counted until the walk finds it again, when it is tried again.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from executor.owned_dirs import OwnedDir, open_subdir, open_tree

logger = logging.getLogger(__name__)

# Job directories one prune walks (~15 ms on the 2-core VM: 20,000 jobs took 20 passes),
# and logs it removes, at most.
WALK_PER_PASS: Final = 1000
REMOVE_PER_PASS: Final = 1000
DAY_S: Final = 86400.0
# A log found written this much after the time known for it was written by someone else
# meanwhile (a replica sharing log_dir): not removed for the older time.
_WRITTEN_SINCE_S: Final = 1.0


@dataclass(slots=True)
class _Log:
    """One job's log: when it was last written (Unix time), and the bytes of its two files."""

    written_at: float
    size: int
    rotated_size: int


class CallbackLogSpace:
    """The ``.cb`` logs under ``root``: what each takes, pruned by age and to ``max_bytes`` in all."""

    def __init__(self, root: Path, *, max_bytes: int, retention_days: float) -> None:
        self._root = root
        self._max_bytes = max_bytes
        self._retention_s = retention_days * DAY_S
        # Each job's log by its group, then by its id; and their bytes in all.
        self._logs: dict[int, dict[int, _Log]] = {}
        self._bytes = 0
        # ``written`` may come from another thread than the prunes' (start-up's recovery).
        self._lock = threading.Lock()
        # The walk: groups left in this round (the next last), and the group it is in
        # with its job directories left.
        self._groups_left: list[int] = []
        self._in_group: tuple[int, list[int]] | None = None
        self._walked_once = False
        self._warned = False

    def knows(self, job_id: int) -> bool:
        """Whether the size of job ``job_id``'s rotated generation is known."""
        return job_id in self._logs.get(_group(job_id), ())

    def written(self, job_id: int, size: int, rotated_size: int | None) -> None:
        """Job ``job_id``'s ``.cb`` is ``size`` bytes now; ``rotated_size``: its ``.cb.1``'s, when known."""
        with self._lock:
            logs = self._logs.setdefault(_group(job_id), {})
            log = logs.get(job_id)
            if log is None:
                log = logs[job_id] = _Log(0.0, 0, 0)
            self._bytes -= log.size + log.rotated_size
            log.written_at = time.time()
            log.size = size
            if rotated_size is not None:
                log.rotated_size = rotated_size
            self._bytes += log.size + log.rotated_size

    def over(self) -> bool:
        """Whether the logs take more than ``max_bytes`` in all (as far as they are known)."""
        return self._bytes > self._max_bytes

    def prune(self, *, walk: bool = True) -> bool:
        """Walk on (when ``walk``), then remove the logs past the age and past the total.

        Returns whether work is left for another pass soon: the first round of the walk is
        not done, or more logs are due than one pass removes.
        """
        if walk:
            self._walk(WALK_PER_PASS)
        removed = self._remove_due(time.time())
        return (walk and not self._walked_once) or removed >= REMOVE_PER_PASS

    def _remove_due(self, now: float) -> int:
        """Remove the logs due, the oldest first: past the age, then past the total."""
        cutoff = now - self._retention_s
        with self._lock:
            oldest = [
                (log.written_at, job_id)
                for logs in self._logs.values()
                for job_id, log in logs.items()
            ]
        heapq.heapify(oldest)
        removed = 0
        while oldest and removed < REMOVE_PER_PASS:
            written_at, job_id = oldest[0]
            # Past the total, never the newest: it is the log being written.
            if written_at >= cutoff and not (self.over() and len(oldest) > 1):
                break
            heapq.heappop(oldest)
            self._remove(job_id, written_at, cutoff)
            removed += 1
        return removed

    def _remove(self, job_id: int, written_at: float, cutoff: float) -> None:
        """Remove job ``job_id``'s log whole, unless it was written since ``written_at``."""
        group = _group(job_id)
        with self._lock:
            log = self._logs.get(group, {}).get(job_id)
            if log is None or log.written_at != written_at:  # written meanwhile
                return
        where = self._root / "job" / str(group) / str(job_id)
        try:
            with (
                open_tree(self._root, ("job",), 0, make=False) as jobs,
                open_subdir(jobs, str(group)) as group_dir,
            ):
                with open_subdir(group_dir, str(job_id)) as job_dir:
                    found = _log_in(job_dir, job_id)
                    if found is not None and found.written_at > max(
                        written_at + _WRITTEN_SINCE_S, cutoff
                    ):  # written by someone else meanwhile: as it is now
                        self._found(job_id, found)
                        return
                    for name in (f"{job_id}.cb.1", f"{job_id}.cb"):
                        with contextlib.suppress(FileNotFoundError):
                            if _ours(job_dir, name) is not None:
                                os.unlink(name, dir_fd=job_dir.fd)
                self._found(job_id, None)
                if _removed_if_empty(group_dir, str(job_id)):
                    _removed_if_empty(jobs, str(group))
        except FileNotFoundError:  # gone already
            self._found(job_id, None)
        except OSError as err:
            # Not counted until the walk finds it again: the total is what can be bounded,
            # and its removal is not tried again at every pass.
            self._found(job_id, None)
            self._refused(where, err)

    def _walk(self, budget: int) -> None:
        """Visit up to ``budget`` job directories, where the last pass left off.

        A pass ends with its round: the next starts the next round.
        """
        try:
            jobs = open_tree(self._root, ("job",), 0, make=False)
        except FileNotFoundError:  # no log written yet, or all removed by hand
            with self._lock:
                self._logs.clear()
                self._bytes = 0
            self._walked_once = True
            return
        except OSError as err:
            self._refused(self._root / "job", err)
            return
        with jobs:
            while budget > 0:
                if self._in_group is None:
                    if not self._groups_left:
                        self._start_round(jobs)
                    if not self._groups_left:  # an empty tree
                        self._walked_once = True
                        return
                    budget -= 1
                    self._enter(jobs, self._groups_left.pop())
                else:
                    budget = self._walk_group(jobs, budget)
                if self._in_group is None and not self._groups_left:
                    self._walked_once = True
                    return

    def _start_round(self, jobs: OwnedDir) -> None:
        """The groups to walk, and forget those that are gone."""
        try:
            groups = _numbered(jobs, lambda n: n % 1000 == 0)
        except OSError as err:  # a log_dir it may not read: the logs known are kept
            self._refused(jobs.path, err)
            return
        with self._lock:
            for group in self._logs.keys() - set(groups):  # removed by someone else
                for log in self._logs.pop(group).values():
                    self._bytes -= log.size + log.rotated_size
        self._groups_left = sorted(groups, reverse=True)

    def _enter(self, jobs: OwnedDir, group: int) -> None:
        """Start on ``group``: its job directories, and forget the logs that are gone from it."""
        try:
            with open_subdir(jobs, str(group)) as group_dir:
                ids = _numbered(group_dir, lambda n: _group(n) == group)
        except FileNotFoundError:
            ids = []
        except OSError as err:
            self._refused(jobs.path / str(group), err)
            return
        with self._lock:
            logs = self._logs.get(group, {})
            for job_id in logs.keys() - set(ids):
                self._bytes -= logs[job_id].size + logs[job_id].rotated_size
                del logs[job_id]
        self._in_group = (group, sorted(ids, reverse=True))

    def _walk_group(self, jobs: OwnedDir, budget: int) -> int:
        """Visit up to ``budget`` job directories of the group it is in; returns the budget left."""
        assert self._in_group is not None  # noqa: S101 - the caller's condition
        group, ids = self._in_group
        try:
            group_dir = open_subdir(jobs, str(group))
        except OSError:  # removed meanwhile, or refused: gone from this round
            ids.clear()
        else:
            with group_dir:
                while ids and budget > 0:
                    job_id = ids.pop()
                    budget -= 1
                    try:
                        with open_subdir(group_dir, str(job_id)) as job_dir:
                            found = _log_in(job_dir, job_id)
                    except OSError:  # gone, or planted (the writer says so: see bookkeeping)
                        found = None
                    self._found(job_id, found)
        if not ids:
            self._in_group = None
        return budget

    def _found(self, job_id: int, log: _Log | None) -> None:
        """Job ``job_id``'s log is ``log`` as found on disk (None: there is none)."""
        group = _group(job_id)
        with self._lock:
            logs = self._logs.get(group)
            known = None if logs is None else logs.pop(job_id, None)
            if known is not None:
                self._bytes -= known.size + known.rotated_size
            if log is not None:
                self._logs.setdefault(group, {})[job_id] = log
                self._bytes += log.size + log.rotated_size
            elif logs is not None and not logs:
                del self._logs[group]

    def _refused(self, where: Path, err: OSError) -> None:
        """Say that the storage refuses a removal or a walk: at WARNING once, not at every pass."""
        reason = err.strerror or str(err)
        if self._warned:
            logger.debug("the .cb logs in %s are not removed: %s", where, reason)
            return
        self._warned = True
        logger.warning(
            "the .cb logs in %s cannot be removed: %s; they stay past history_retention_days"
            " and outside callback_log_total_max_bytes, and are tried again as log_dir is walked"
            " (said once: later refusals are logged at DEBUG)",
            where,
            reason,
        )


def _group(job_id: int) -> int:
    return job_id // 1000 * 1000


def _numbered(directory: OwnedDir, belongs: Callable[[int], bool]) -> list[int]:
    """The names in ``directory`` that are numbers as the logs' paths spell them, and belong."""
    return [
        int(name)
        for name in os.listdir(directory.fd)
        if name.isdigit() and str(int(name)) == name and belongs(int(name))
    ]


def _ours(directory: OwnedDir, name: str) -> os.stat_result | None:
    """``name`` in ``directory`` when it is a regular file of the executor's (or the root owner's)."""
    found = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    if stat.S_ISREG(found.st_mode) and found.st_uid in directory.owners:
        return found
    return None


def _log_in(job_dir: OwnedDir, job_id: int) -> _Log | None:
    """Job ``job_id``'s log as its directory holds it; None when it holds none of ours."""
    sizes = []
    written_at = None
    for name in (f"{job_id}.cb", f"{job_id}.cb.1"):
        try:
            found = _ours(job_dir, name)
        except FileNotFoundError:
            found = None
        sizes.append(0 if found is None else found.st_size)
        if found is not None:
            written_at = max(written_at or 0.0, found.st_mtime)
    return None if written_at is None else _Log(written_at, sizes[0], sizes[1])


def _removed_if_empty(parent: OwnedDir, name: str) -> bool:
    """Remove the directory ``name`` of ``parent`` if it is empty; whether it was."""
    try:
        os.rmdir(name, dir_fd=parent.fd)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            return False
        raise
    return True
