"""The executor's own process limit: what counts against it, its refusals, its start-up warning.

Every thread of the executor (gRPC's, the bookkeeping writer's, one per HTTP side-port
connection, ...) and every process it forks counts against the pids limit of its own
cgroup (systemd's ``TasksMax=``) until that process joins its cell: a zygote for good, a
cold child's launcher and a zygote's child for a moment. Measured with ``cbexec serve`` on
the development host (cgroup v1, hardened tier): 11 tasks before the first run, 13 after
runs with 4 slots (the two zygotes), peaks of 13 with 4 slots and 21 with 16 under 24
clients. The cells' own processes count in the cells' cgroups, not here.

At that limit fork() and pthread_create() fail with EAGAIN. A run whose child could not
be started so is refused RESOURCE_EXHAUSTED with a retry-after, as one out of descriptors
is (``shortage``), and nothing of it is left; a thread that could not be started costs
only what it was for (a side-port connection, a checkpoint put off). gRPC's own threads
are its to retry: with its fork handlers off (``executor/__init__``) it goes on serving.
"""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path
from typing import Final, TypeGuard

from executor.runtimes.child import CHILD_RUNTIMES
from executor.sandbox.cgroup import CGROUP_ROOT

# The measurements above, rounded up: the service's own tasks, the HTTP side port's
# connection threads at most (``web.server.MAX_CONNECTIONS``) and headroom for a fleet's
# pool; and per cell one child on its way to its cell.
SERVICE_TASKS: Final = 96
CELL_TASKS: Final = 2
OUT_OF_PROCESSES: Final = errno.EAGAIN


def out_of_processes(err: BaseException) -> TypeGuard[OSError]:
    """Whether ``err`` is a fork (or clone) refused for the process limit (EAGAIN)."""
    return isinstance(err, OSError) and err.errno == OUT_OF_PROCESSES


def own_limit(proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, str] | None:
    """This process's task limit and what sets it; None when nothing limits it.

    The pids.max of its own cgroup (v2, or v1's pids hierarchy), and for a user other
    than root RLIMIT_NPROC (root is not held to it): the lower of the two.
    """
    limits: list[tuple[int, str]] = []
    cgroup = _own_pids_cgroup(proc_cgroup)
    if cgroup is not None:
        try:
            value = (cgroup / "pids.max").read_text().strip()
        except OSError:
            value = "max"
        if value != "max":
            limits.append((int(value), f"pids.max of its cgroup {cgroup}"))
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if os.geteuid() != 0 and soft != resource.RLIM_INFINITY:
        limits.append((soft, "RLIMIT_NPROC"))
    return min(limits) if limits else None


def _own_pids_cgroup(proc_cgroup: Path) -> Path | None:
    """The directory of this process's pids cgroup (v2's single one, or v1's pids)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: every controller in one hierarchy
            return CGROUP_ROOT / path.lstrip("/")
        if "pids" in controllers.split(","):
            return CGROUP_ROOT / "pids" / path.lstrip("/")
    return None


def wanted(slots: int) -> int:
    """Tasks the executor may want at once with ``slots`` (see the module doc)."""
    return SERVICE_TASKS + slots * len(CHILD_RUNTIMES) * CELL_TASKS


def limit_warning(limit: tuple[int, str] | None, slots: int) -> str | None:
    """The start-up WARNING when ``limit`` is below what ``slots`` want; None when it is not."""
    needed = wanted(slots)
    if limit is None or limit[0] >= needed:
        return None
    tasks, source = limit
    return (
        f"the executor's own process limit ({source}) is {tasks}, below the ~{needed} "
        f"tasks max_concurrent = {slots} may want (its threads, its zygotes and the "
        "children on their way to their cells): runs that find no process left are refused "
        "RESOURCE_EXHAUSTED; raise it (systemd TasksMax=) or lower max_concurrent"
    )
