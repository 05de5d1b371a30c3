"""A pool of pre-made pids cgroups, one per concurrency slot: process caps and a complete kill.

Pre-created and reused rather than made per call (mkdir/rmdir per run is what made
isolate slow, sandbox.md §5.3). The launcher joins its slot's cgroup before anything
forks, so every process the callback makes, setsid and double-fork escapes included, is
listed in ``cgroup.procs`` until it dies: ``kill_all`` empties it.

Works with cgroup v2 (a writable subtree with the pids controller) or the v1 pids
hierarchy. When neither is writable, ``PidsCgroups.create`` returns None and the
sandbox falls back to RLIMIT_NPROC.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PREFIX = "cbexec-"


def _pids_root() -> Path | None:
    """The directory under which we may create pids cgroups, if any."""
    v2_controllers = CGROUP_ROOT / "cgroup.controllers"
    if v2_controllers.exists() and "pids" in v2_controllers.read_text().split():
        return CGROUP_ROOT
    v1 = CGROUP_ROOT / "pids"
    if (v1 / "cgroup.procs").exists():
        return v1
    return None


def _remove_stale(root: Path) -> None:
    """Remove pools left by executors that died without cleaning up."""
    for pool in root.glob(f"{PREFIX}*"):
        owner = pool.name[len(PREFIX):]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            for slot in pool.glob("slot-*"):
                _kill_and_remove(slot)
            with contextlib.suppress(OSError):
                pool.rmdir()


def _pids_in(cgroup: Path) -> list[int]:
    try:
        return [int(line) for line in (cgroup / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _kill_and_remove(cgroup: Path) -> None:
    for pid in _pids_in(cgroup):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        cgroup.rmdir()


class PidsCgroups:
    """Slot cgroups under ``<root>/cbexec-<our pid>/slot-<n>``."""

    def __init__(self, pool: Path) -> None:
        self._pool = pool

    @classmethod
    def create(cls, slots: int) -> PidsCgroups | None:
        """Make the pool, or None when the host does not let us."""
        root = _pids_root()
        if root is None:
            return None
        try:
            _remove_stale(root)
            pool = root / f"{PREFIX}{os.getpid()}"
            pool.mkdir(exist_ok=True)
            if root == CGROUP_ROOT:  # v2: slots need the controller enabled below the pool
                (pool / "cgroup.subtree_control").write_text("+pids")
            for slot in range(slots):
                (pool / f"slot-{slot}").mkdir(exist_ok=True)
        except OSError as err:
            logger.info("pids cgroup unavailable (%s); process caps fall back to RLIMIT_NPROC", err)
            return None
        return cls(pool)

    def procs_file(self, slot: int) -> str:
        return str(self._pool / f"slot-{slot}" / "cgroup.procs")

    def set_max(self, slot: int, processes: int) -> None:
        (self._pool / f"slot-{slot}" / "pids.max").write_text(str(processes))

    def pids(self, slot: int) -> list[int]:
        return _pids_in(self._pool / f"slot-{slot}")

    def kill_all(self, slot: int, timeout_s: float = 2.0) -> list[int]:
        """SIGKILL every process in the slot until it is empty; returns the pids killed.

        Killed processes leave cgroup.procs only once reaped; orphans are reaped by init
        (or our subreaper), so this polls briefly instead of assuming instant exit.
        """
        killed: list[int] = []
        deadline = time.monotonic() + timeout_s
        while pids := self.pids(slot):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed.extend(p for p in pids if p not in killed)
            if time.monotonic() > deadline:
                logger.warning("slot %d still has processes %s after SIGKILL", slot, pids)
                break
            time.sleep(0.002)
        return killed

    def close(self) -> None:
        """Kill what is left and remove the pool."""
        for slot_dir in self._pool.glob("slot-*"):
            _kill_and_remove(slot_dir)
        with contextlib.suppress(OSError):
            self._pool.rmdir()
