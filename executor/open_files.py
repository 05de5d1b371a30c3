"""The executor's open-file limit: raised at start-up, weighed against the slots, a capacity refusal once spent.

Every run needs descriptors to start (its child's stdout and stderr pipes, its bridge
socketpair, a cold child's pidfd and report pipe), and the idle executor holds many:
measured with ``cbexec serve`` on the development host (cgroup v1, hardened tier), idle
after every cell had run once (so each holds a prepared child), ``ls /proc/PID/fd``
counted 56 with max_concurrent 1, 92 with 4, 140 with 8, 236 with 16 and 429 with 32
(zygote launcher): about 44 for the service itself (databases, log, gRPC, zygotes, the
empty network namespace) and 6 per cell (a slot has one cell per child language): its
uid lock, two kept cgroup counter files, and its prepared child's stdout, stderr and
bridge. The cold launcher adds each prepared shim's pidfd and report pipe: 8 per cell
(106 with 4 slots, 170 with 8). A third counter file per cell counts its CPU (cgroup v2's
cpu.stat, v1's cpuacct.usage where cells join cpuacct).

Out of descriptors (EMFILE, or ENFILE for the whole host) when a run starts is a
capacity refusal, not a bug (``shortage``): nothing of its child is left open. A limit
that cannot hold even what start-up opens for the cells is refused before any is made.
"""

from __future__ import annotations

import errno
import logging
import resource
from typing import Final, TypeGuard

from executor.runtimes.child import CHILD_RUNTIMES

logger = logging.getLogger(__name__)

# The measurements above, rounded up: the service's own, and each cell's by launcher (the
# CPU counter included).
SERVICE_FDS: Final = 64
CELL_FDS: Final = {"zygote": 7, "cold": 9}
# Client connections (one descriptor each), queued requests' among them, and the
# descriptors a run holds only while it starts.
CONNECTIONS_MARGIN_FDS: Final = 256
OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE})
# What each cell holds from start-up on, before any run: its kept counter files (three
# at most) and its uid's lock. Below that start-up cannot make its cells at all.
START_CELL_FDS: Final = 4


def out_of_descriptors(err: BaseException) -> TypeGuard[OSError]:
    """Whether ``err`` says this process (EMFILE) or the host (ENFILE) has no descriptor left."""
    return isinstance(err, OSError) and err.errno in OUT_OF_DESCRIPTORS


def limit() -> int:
    """This process's open-file limit now (the soft one: the one the kernel applies)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_soft_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one, as most servers do; (before, after).

    Often 1024 soft with a far higher hard limit (systemd's default is 1024:524288); a
    callback's own stays 256 (``sandbox.limits``). Left as it was where the kernel
    refuses (a hard limit of "unlimited" is above its nr_open).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as err:
            logger.info("open-file limit left at %d: raising it to %d failed: %s", soft, hard, err)
    return soft, limit()


def reachable_limit() -> int:
    """The open-file limit start-up would run with (``raise_soft_limit``), without raising it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if hard == resource.RLIM_INFINITY else max(soft, hard)


def wanted(slots: int, launcher: str) -> tuple[int, int]:
    """Descriptors the idle executor holds with ``slots`` (see the module doc), and that plus the margin."""
    cells = slots * len(CHILD_RUNTIMES)
    idle = SERVICE_FDS + cells * CELL_FDS.get(launcher, max(CELL_FDS.values()))
    return idle, idle + CONNECTIONS_MARGIN_FDS


def start_problem(open_files: int, slots: int) -> str | None:
    """The start-up refusal when ``open_files`` cannot hold what start-up opens for ``slots``.

    Past the limit the cells' counter files took every descriptor, and start-up died of
    whatever wanted the next one ("No usable temporary directory found"; probe 120).
    """
    cells = slots * len(CHILD_RUNTIMES)
    needed = SERVICE_FDS + cells * START_CELL_FDS
    if open_files >= needed:
        return None
    fits = max(0, open_files - SERVICE_FDS) // (START_CELL_FDS * len(CHILD_RUNTIMES))
    if fits:
        lower = f"or lower max_concurrent (at most {fits} start under this limit)"
    else:  # not "at most 0": max_concurrent 0 is the default (2 per core), which needs more
        one = SERVICE_FDS + len(CHILD_RUNTIMES) * START_CELL_FDS
        lower = f"(not even max_concurrent = 1 starts under it: that needs ~{one})"
    return (
        f"max_concurrent: {slots} needs ~{needed} open files to start (~{START_CELL_FDS} for "
        f"each of its {cells} cells, ~{SERVICE_FDS} for the service), above the open-file "
        f"limit (RLIMIT_NOFILE) of {open_files}: raise the hard limit (systemd LimitNOFILE=, "
        f"ulimit -Hn) {lower}"
    )


def limit_warning(open_files: int, slots: int, launcher: str) -> str | None:
    """The start-up WARNING when ``open_files`` is below what ``slots`` want; None when it is not."""
    idle, needed = wanted(slots, launcher)
    if open_files >= needed:
        return None
    return (
        f"the open-file limit (RLIMIT_NOFILE) is {open_files}, below the ~{needed} descriptors "
        f"max_concurrent = {slots} wants (~{idle} held at idle by the service and its "
        f"{slots * len(CHILD_RUNTIMES)} cells, plus {CONNECTIONS_MARGIN_FDS} for connections): "
        "runs that find none left are refused RESOURCE_EXHAUSTED; raise the hard limit "
        "(systemd LimitNOFILE=, ulimit -Hn) or lower max_concurrent"
    )
