"""Pre-made cgroups, one per cell (slot and child language): process and memory caps, a full kill.

Pre-created and reused rather than made per call (mkdir/rmdir per run is what made
isolate slow, sandbox.md §5.3). The launcher joins its cell's cgroups before anything
forks, so every process the callback makes, setsid and double-fork escapes included, is
listed in ``cgroup.procs`` until it dies: ``kill_all`` empties it.

Two controllers, each used when the host lets us write it:

- pids: ``pids.max`` caps the callback's processes and threads together;
- memory: the limit caps what all of the callback's processes hold together (RLIMIT_AS
  only bounds each process, so four children could each hold the whole limit). Beyond
  it the kernel's OOM killer picks one of them; ``oom_kills`` counts those kills so the
  run can be reported as MEMORY_LIMIT. Swap is off for the cell, so the limit is real.

And a counter: the CPU time of every process the cell held (``cpu_seconds``), reaped
or not. Cgroup v2 keeps it in every cgroup; v1 only in the cpuacct hierarchy, which
cells join beside the others (with either of them) unless it is mounted with the cpu
controller, where a cell would also become a CPU scheduling group.

Limits are written before each child is started, while its cell is empty (v1 refuses
a memory limit below what the cell's processes hold, and v2 would OOM-kill one of them:
written later, a run could go on under its cell's last limit, or die for it); an
unchanged value is not written again (each write is a syscall on the request's path).

Works with cgroup v2 (a writable subtree with the controllers) or the v1 hierarchies.
When neither controller is writable, ``CellCgroups.create`` returns None and the
sandbox falls back to RLIMIT_NPROC and RLIMIT_AS alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from executor.open_files import out_of_descriptors
from executor.sandbox import freezer

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PREFIX = "cbexec-"
READ_CHUNK = 64 << 10
# Pools and cells, whatever the umask: under umask 000 they were 0777, and a local user
# made a cgroup in a cell (v1 gives its files to whoever makes it), parked processes
# there against the cell's pids and memory limits, and they outlived the runs (probe 108).
CGROUP_DIR_MODE = 0o755

# How long the killed processes of a cell being removed (a dead executor's, or ours at
# a stop) get to die and be reaped before the cell is found impossible to remove.
REMOVE_WAIT_S: Final = 1.0

# Names tried for one pool before giving up (each taken one was made by another executor).
MAX_POOL_NAMES = 64

# Pools made by this process so far: a second executor in one process (tests, an
# embedded run beside a service object) gets ``cbexec-<pid>.<n>``, so stopping one
# never removes the other's cells.
_pools_made = itertools.count()


@dataclass(frozen=True, slots=True)
class _Hierarchy:
    """Where one kind of cell cgroup lives and which files carry its limits."""

    root: Path
    v2: bool

    def files(self, controller: str) -> dict[str, str]:
        if controller == "cpuacct":  # v1 only: v2 keeps the CPU counter in every cgroup
            return {"usage": "cpuacct.usage"}
        if controller == "pids":
            return {"max": "pids.max", "current": "pids.current"}
        if self.v2:
            return {"max": "memory.max", "events": "memory.events", "swap": "memory.swap.max"}
        return {
            "max": "memory.limit_in_bytes",
            "events": "memory.oom_control",
            "swap": "memory.swappiness",
            "force_empty": "memory.force_empty",
        }


class MemoryLimitTooLowError(Exception):
    """A cell's memory limit is below what it holds with no process in it: nothing can start in it."""

    def __init__(self, memory_bytes: int) -> None:
        super().__init__(f"memory limit {memory_bytes} is below what the empty cell holds")
        self.memory_bytes = memory_bytes


def _hierarchies() -> dict[str, _Hierarchy]:
    """The writable hierarchy of each controller we use, by controller name."""
    v2_controllers = CGROUP_ROOT / "cgroup.controllers"
    if v2_controllers.exists():
        available = v2_controllers.read_text().split()
        return {c: _Hierarchy(CGROUP_ROOT, v2=True) for c in ("pids", "memory") if c in available}
    found = {}
    for controller in ("pids", "memory", "cpuacct"):
        if (CGROUP_ROOT / controller / "cgroup.procs").exists():
            found[controller] = _Hierarchy(CGROUP_ROOT / controller, v2=False)
    if (CGROUP_ROOT / "cpuacct" / "cpu.shares").exists():
        # Mounted with cpu: all callbacks together would weigh as one task against
        # every other process of the host. Their CPU then goes uncounted, not slowed.
        found.pop("cpuacct", None)
    return found


def _hold(pool: Path) -> int | None:
    """A descriptor of ``pool`` holding its lock; None when another process holds it.

    An flock on the pool's directory, taken by its executor for its lifetime and let go
    by the kernel when it dies (however it dies): the one sign of life that holds
    across PID namespaces (an executor in a container sharing the host's cgroups), where
    the pid in a pool's name may be another process's, or nobody's, in ours.
    """
    fd = os.open(pool, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_stale(root: Path) -> None:
    """Remove pools left by executors that died without cleaning up.

    Stale: held by nobody (``_hold``) and named for a pid that does not run here. A
    held pool is a running executor's, whatever its PID namespace. An unheld one may
    still be an executor's of an earlier version, which takes no lock: while its pid
    runs it is kept, as that version kept it. Cells that still hold processes (a dead
    executor's orphans) are killed first; one that cannot be removed even so (a process
    a freezer holds that could not be let out, one stuck in the kernel) is said with a
    WARNING, and tried again at the next start.
    """
    for pool in root.glob(f"{PREFIX}*"):
        owner = pool.name[len(PREFIX) :].partition(".")[0]
        if not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        try:
            fd = _hold(pool)
        except OSError:  # gone meanwhile, or not a directory
            continue
        if fd is None:
            continue  # its executor runs, in another PID namespace
        try:
            kept = [why for cell in pool.glob("cell-*") for why in _kill_and_remove(cell)]
            kept = kept or _remove(pool)  # (a cell kept keeps its pool: said once)
        finally:
            os.close(fd)
        if kept:
            logger.warning(
                "the cgroups of a dead executor (%s) could not all be removed; they are "
                "tried again at the next start: %s",
                pool,
                "; ".join(kept),
            )


def _read_whole(fd: int) -> bytes:
    """The whole file from its start (a cgroup file is generated anew at offset 0)."""
    content = b""
    while chunk := os.pread(fd, READ_CHUNK, len(content)):
        content += chunk
    return content


def _pids_in(cgroup: Path | str) -> list[int]:
    try:
        fd = os.open(f"{cgroup}/cgroup.procs", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        content = _read_whole(fd)
    except OSError:
        return []
    finally:
        os.close(fd)
    return [int(line) for line in content.split()]


def _below(cgroup: Path) -> list[Path]:
    """The cgroups made inside ``cgroup`` (not itself), deepest first; none if it cannot be read."""
    found: list[Path] = []
    with contextlib.suppress(OSError), os.scandir(cgroup) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                found.extend(_below(Path(entry.path)))
                found.append(Path(entry.path))
    return found


def _kill_and_remove(cgroup: Path) -> list[str]:
    """SIGKILL what ``cgroup`` and the cgroups made inside it hold, and remove them all.

    Inside first: a cgroup with one inside cannot be removed. A process a v1 freezer
    holds is let out of it first (``freezer.thaw``): frozen, it would not die. Returns
    why each cgroup that stays could not be removed (none: all are gone).
    """
    groups = [*_below(cgroup), cgroup]
    for group in groups:
        for pid in _pids_in(group):
            freezer.thaw(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + REMOVE_WAIT_S
    return [why for group in groups for why in _remove(group, deadline)]


def _remove(cgroup: Path, deadline: float = 0.0) -> list[str]:
    """Remove the cgroup, trying until ``deadline`` while its killed processes end; why not, if not."""
    while True:
        try:
            cgroup.rmdir()
        except FileNotFoundError:
            return []
        except OSError as err:
            if err.errno == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            return [f"{cgroup}: {err.strerror}{_held_by(cgroup)}"]
        return []


def _held_by(cgroup: Path) -> str:
    """What the cgroup still holds, and why each process did not end, for the log."""
    held = []
    for pid in _pids_in(cgroup):
        frozen = freezer.frozen_by(pid)
        held.append(
            f"process {pid} frozen by the cgroup freezer {frozen}"
            if frozen is not None
            else f"process {pid} not ended by its SIGKILL"
        )
    return f" (it holds {', '.join(held)})" if held else ""


def pool_name(pid: int, instance: int) -> str:
    """``cbexec-<pid>`` for a process's first pool, ``cbexec-<pid>.<n>`` after it."""
    return f"{PREFIX}{pid}" if instance == 0 else f"{PREFIX}{pid}.{instance}"


def _make_pool(
    controllers: list[str], hierarchy: _Hierarchy, cells: int, name: str
) -> tuple[Path, int]:
    """A pool of ours, made afresh and held (see ``_hold``): its path and its lock's descriptor.

    Under ``name``, or the next free one when that is taken: an executor in another PID
    namespace may have our pid, and a dead one's pool its orphans kept.
    """
    _remove_stale(hierarchy.root)
    for _ in range(MAX_POOL_NAMES):
        pool = hierarchy.root / name
        with contextlib.suppress(FileExistsError):
            _mkdir(pool)
            lock = _hold(pool)
            # Held and still the one we made: a sweep may take a pool between its mkdir
            # and its lock (and removes it, being empty).
            if lock is not None:
                try:
                    if os.path.samestat(os.fstat(lock), os.stat(pool)):
                        _fill_pool(pool, controllers, hierarchy, cells)
                        return pool, lock
                except BaseException:
                    os.close(lock)  # unheld, the next start's sweep removes it
                    raise
                os.close(lock)
        name = pool_name(os.getpid(), next(_pools_made))
    raise OSError(errno.EEXIST, f"no free pool name under {hierarchy.root}")


def _fill_pool(pool: Path, controllers: list[str], hierarchy: _Hierarchy, cells: int) -> None:
    if hierarchy.v2:  # cells need the controllers enabled below the pool
        (pool / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in controllers))
    for cell in range(cells):
        _mkdir(pool / f"cell-{cell}", exist_ok=True)


def _mkdir(path: Path, *, exist_ok: bool = False) -> None:
    """A cgroup made with CGROUP_DIR_MODE: never more (the umask only takes bits away), never less."""
    path.mkdir(mode=CGROUP_DIR_MODE, exist_ok=exist_ok)
    os.chmod(path, CGROUP_DIR_MODE)


class CellCgroups:
    """Cell cgroups under ``<hierarchy>/<pool_name>/cell-<n>``, per controller."""

    def __init__(
        self, pools: dict[str, Path], hierarchies: dict[str, _Hierarchy], locks: list[int]
    ) -> None:
        self._pools = pools
        self._hierarchies = hierarchies
        # Each pool's lock (``_hold``), held until close(): what tells other executors'
        # start-ups it is not a dead one's.
        self._locks = locks
        # Where to list a cell's processes: any of our cgroups holds all of them.
        self._listing = pools.get("pids") or next(iter(pools.values()))
        self._written: dict[str, str] = {}
        # Counter files read on every run, open for good: a fresh open of a cgroup file
        # costs the executor ~25 us, a pread of an open one ~2 us (it is generated anew
        # from offset 0). Not cgroup.procs: see pids().
        self._readers: dict[str, int] = {}
        self._paths: dict[tuple[str, int, str], str] = {}
        self._distinct_pools = sorted(set(pools.values()))
        # Cells made again after someone removed them, by number: their new names.
        self._cell_names: dict[int, str] = {}
        self._remade = 0

    @classmethod
    def create(cls, cells: int, *, memory: bool = True) -> CellCgroups | None:
        """Make the pools, or None when the host lets us write no controller at all."""
        hierarchies = _hierarchies()
        if not memory:
            hierarchies.pop("memory", None)
        pools: dict[str, Path] = {}
        locks: list[int] = []
        name = pool_name(os.getpid(), next(_pools_made))
        for controller, hierarchy in hierarchies.items():
            if controller == "cpuacct" and not pools:
                continue  # a counter alone caps nothing: no cells without pids or memory
            try:
                if hierarchy.v2 and pools:  # one v2 cgroup carries both controllers
                    pools[controller] = next(iter(pools.values()))
                    continue
                wanted = [c for c, h in hierarchies.items() if h == hierarchy]
                pools[controller], lock = _make_pool(wanted, hierarchy, cells, name)
                locks.append(lock)
            except OSError as err:
                logger.info("%s cgroup unavailable (%s)", controller, err)
        if not pools:
            return None
        cgroups = cls(pools, hierarchies, locks)
        if "memory" in pools:
            for cell in range(cells):
                # v1: swappiness 0 keeps anonymous memory in RAM; v2: no swap at all.
                with contextlib.suppress(OSError):
                    cgroups._write(cgroups._file("memory", cell, "swap"), "0")
        cgroups._open_counters(cells)
        return cgroups

    def _open_counters(self, cells: int) -> None:
        """Open every cell's kept counter files now, not on some run's path.

        The executor then holds them from the start (its idle count, ``open_files``), and
        a run never finds one unreadable for want of a descriptor.
        """
        for cell in range(cells):
            paths = [
                self._file(controller, cell, role)
                for controller, role in (("pids", "current"), ("memory", "events"))
                if controller in self._pools
            ]
            if (cpu_counter := self._cpu_counter(cell)) is not None:
                paths.append(cpu_counter)
            for path in paths:
                with contextlib.suppress(OSError):  # read on a run's path; it says then
                    self._read(path)

    @property
    def controllers(self) -> tuple[str, ...]:
        return tuple(self._pools)

    def _file(self, controller: str, cell: int, role: str) -> str:
        path = self._paths.get((controller, cell, role))
        if path is None:  # a few per run, every run: made once
            name = self._hierarchies[controller].files(controller)[role]
            path = self._paths[controller, cell, role] = (
                f"{self._pools[controller]}/{self._cell_name(cell)}/{name}"
            )
        return path

    def _write(self, path: str, value: str) -> None:
        if self._written.get(path) == value:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
        self._written[path] = value

    def _read(self, path: str) -> bytes:
        """The whole file, through a kept descriptor; OSError when it cannot be read."""
        fd = self._readers.get(path)
        if fd is None:
            fd = self._readers[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return _read_whole(fd)

    def procs_files(self, cell: int) -> list[str]:
        """The ``cgroup.procs`` files a child joins, one per distinct cgroup."""
        name = self._cell_name(cell)
        return sorted({f"{pool}/{name}/cgroup.procs" for pool in self._pools.values()})

    def set_limits(self, cell: int, *, processes: int, memory_bytes: int) -> bool:
        """Set the cell's caps for its next child: only while the cell is empty.

        A memory limit below what the cell is charged with is refused by cgroup v1
        (EBUSY), its processes gone or not: the page cache and kernel objects its earlier
        runs left. Those are reclaimed (``memory.force_empty``, allowed only in an empty
        cgroup) and the limit written again; MemoryLimitTooLowError when it still does
        not fit (below ~1 MiB, under what any process needs). Cgroup v2 never refuses: it
        reclaims, and beyond that the next charge is an OOM kill.

        A cell removed from outside (an executor of an earlier version, which judged our
        pool dead by its pid; an admin) is made again first, with a WARNING, under a new
        name (see ``_remake``): True then, and its ``procs_files`` are new.
        """
        # A stat per pool and run (~1 us each): an unchanged limit is not written, and
        # nothing else on a run's path would notice the cell gone before its child did.
        remade = not all(
            os.path.isdir(f"{pool}/{self._cell_name(cell)}") for pool in self._distinct_pools
        )
        if remade:
            self._remake(cell)
        self._set_limits(cell, processes=processes, memory_bytes=memory_bytes)
        return remade

    def _set_limits(self, cell: int, *, processes: int, memory_bytes: int) -> None:
        if "pids" in self._pools:
            self._write(self._file("pids", cell, "max"), str(processes))
        if "memory" not in self._pools:
            return
        limit = self._file("memory", cell, "max")
        try:
            self._write(limit, str(memory_bytes))
        except OSError as err:
            if err.errno != errno.EBUSY or self._hierarchies["memory"].v2:
                raise
            try:
                self._write(self._file("memory", cell, "force_empty"), "0")
                self._write(limit, str(memory_bytes))
            except OSError as again:
                if again.errno != errno.EBUSY:
                    raise
                raise MemoryLimitTooLowError(memory_bytes) from again
            finally:
                self._written.pop(self._file("memory", cell, "force_empty"), None)

    def _cell_name(self, cell: int) -> str:
        return self._cell_names.get(cell) or f"cell-{cell}"

    def _remake(self, cell: int) -> None:
        """Make the cell's cgroups again (its pool too when gone), under a new name.

        A new name: a zygote keeps the descriptors of each cell's ``cgroup.procs`` it
        opened, and a child writing to a removed cgroup's fails (ENODEV); under a new
        path the zygote opens the new cell's.
        """
        old = self._cell_name(cell)
        self._remade += 1
        name = self._cell_names[cell] = f"cell-{cell}.{self._remade}"
        logger.warning(
            "cell %d's cgroups (%s) were removed by someone else: made again as %s",
            cell,
            ", ".join(f"{pool}/{old}" for pool in self._distinct_pools),
            name,
        )
        for pool in self._distinct_pools:
            if not pool.exists():  # as it was made; ours now as before
                controllers = [c for c, p in self._pools.items() if p == pool]
                _mkdir(pool)
                if (lock := _hold(pool)) is not None:
                    self._locks.append(lock)
                _fill_pool(pool, controllers, self._hierarchies[controllers[0]], 0)
            _mkdir(pool / name, exist_ok=True)
        # Every file of the old cell: its kept descriptors, what was written to it.
        for path in [p for p in self._written if f"/{old}/" in p]:
            del self._written[path]
        for path in [p for p in self._readers if f"/{old}/" in p]:
            os.close(self._readers.pop(path))
        self._paths = {key: path for key, path in self._paths.items() if key[1] != cell}
        if "memory" in self._pools:
            with contextlib.suppress(OSError):
                self._write(self._file("memory", cell, "swap"), "0")

    def oom_kills(self, cell: int) -> int:
        """Processes of the cell the kernel has killed for memory, since the pool was made."""
        if "memory" not in self._pools:
            return 0
        try:
            text = self._read(self._file("memory", cell, "events"))
        except OSError as err:
            if out_of_descriptors(err):
                raise  # 0 now would count every earlier kill against the run
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(b" ")
            if key == b"oom_kill":
                return int(value)
        return 0

    def cpu_seconds(self, cell: int) -> float | None:
        """CPU time of every process the cell has held, since it was made; None where unknown.

        It counts what a callback's processes used whether or not anyone reaped them:
        v2's ``cpu.stat`` (with or without the cpu controller), v1's ``cpuacct.usage``.
        """
        counter = self._cpu_counter(cell)
        if counter is None:
            return None
        try:
            text = self._read(counter)
            if "cpuacct" in self._pools:
                return int(text) / 1e9  # nanoseconds
        except (OSError, ValueError):
            return None
        for line in text.splitlines():
            key, _, value = line.partition(b" ")
            if key == b"usage_usec":
                return int(value) / 1e6
        return None

    def _cpu_counter(self, cell: int) -> str | None:
        """The file counting the cell's CPU time: v1's cpuacct cgroup, else v2's ``cpu.stat``."""
        if "cpuacct" in self._pools:
            return self._file("cpuacct", cell, "usage")
        pool = next((p for c, p in self._pools.items() if self._hierarchies[c].v2), None)
        return None if pool is None else f"{pool}/{self._cell_name(cell)}/cpu.stat"

    def has_processes(self, cell: int) -> bool:
        """Whether anything is left in the cell: its pids counter, else its process list.

        The counter is read through a kept descriptor: after nearly every run it says 0,
        and the list (opened afresh, see ``pids``) is needed only when it does not. The
        counter includes the processes of cgroups made inside the cell; without it,
        those cgroups are looked for too (``kill_all``).
        """
        if "pids" in self._pools:
            with contextlib.suppress(OSError, ValueError):
                return int(self._read(self._file("pids", cell, "current"))) > 0
        name = self._cell_name(cell)
        return bool(self.pids(cell)) or any(_below(pool / name) for pool in self._distinct_pools)

    def tasks(self, cell: int) -> int | None:
        """The cell's processes and threads now, zombies not yet reaped included; None unknown."""
        if "pids" in self._pools:
            with contextlib.suppress(OSError, ValueError):
                return int(self._read(self._file("pids", cell, "current")))
        return None

    def pids(self, cell: int) -> list[int]:
        # Opened afresh each time: cgroup v1 keeps serving an open cgroup.procs the pid
        # list it built first (a kept descriptor would miss escaped processes).
        return _pids_in(f"{self._listing}/{self._cell_name(cell)}")

    def kill_all(self, cell: int, timeout_s: float = 2.0) -> list[int]:
        """SIGKILL every process in the cell until it is empty; returns the cell's pids killed.

        Killed processes leave cgroup.procs only once reaped; orphans are reaped by init
        (or our subreaper), so this polls briefly instead of assuming instant exit.

        A cgroup made inside the cell is someone else's (the executor makes none, and
        the callback's uid cannot): what it holds counts against the cell's limits
        (v1 and v2 count a cgroup's processes and memory with its parent's), so it is
        said with a WARNING, its processes are killed too and it is removed. Only the
        cell's own pids are returned: the others were not the callback's.
        """
        killed: list[int] = []
        deadline = time.monotonic() + timeout_s
        foreign = self._foreign(cell)
        rounds = 0
        while True:
            own = self.pids(cell)
            strangers = [pid for group in foreign for pid in _pids_in(group)]
            if not own and not strangers:
                break
            rounds += 1
            for pid in (*own, *strangers):
                if rounds == 2:  # outlived one SIGKILL: a v1 freezer's hold would keep it
                    self._thaw(cell, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed.extend(p for p in own if p not in killed)
            if time.monotonic() > deadline:
                logger.warning(
                    "cell %d still has processes %s after SIGKILL", cell, own + strangers
                )
                break
            time.sleep(0.002)
        for group in foreign:
            with contextlib.suppress(OSError):
                group.rmdir()
        return killed

    @staticmethod
    def _thaw(cell: int, pid: int) -> None:
        held = freezer.thaw(pid)
        if held is not None:
            logger.warning(
                "cell %d: process %d was frozen from outside (cgroup freezer %s); let out "
                "of it to be killed",
                cell,
                pid,
                held,
            )

    def _foreign(self, cell: int) -> list[Path]:
        """The cgroups someone made inside the cell, deepest first, said with a WARNING."""
        name = self._cell_name(cell)
        foreign = [group for pool in self._distinct_pools for group in _below(pool / name)]
        if foreign:
            logger.warning(
                "cell %d holds cgroups the executor did not make (%s): the processes in "
                "them are killed and they are removed; only root can make them (the "
                "cells are 0755): look for what did",
                cell,
                ", ".join(map(str, foreign)),
            )
        return foreign

    def close(self) -> None:
        """Kill what is left and remove the pools; a WARNING says what stays, and why."""
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
        for pool in set(self._pools.values()):
            kept = [why for cell in pool.glob("cell-*") for why in _kill_and_remove(cell)]
            kept = kept or _remove(pool)  # (a cell kept keeps its pool: said once)
            if kept:
                logger.warning(
                    "the executor's cgroups (%s) could not all be removed; the next start "
                    "removes them: %s",
                    pool,
                    "; ".join(kept),
                )
        for lock in self._locks:
            os.close(lock)
        self._locks.clear()
