"""A live process's CPU time and peak RSS, read from the kernel (/proc) while it still runs.

For a run answered at its end mark (``bridge.BridgeServer``), before the child has
exited: what wait4's rusage would say a moment later. CPU is the larger of the whole
process's clock-tick figure (all its threads, and the children it reaped, in 10 ms
steps) and the scheduler's nanosecond count for its main thread plus the reaped
children's ticks; the peak RSS is ``VmHWM``. Never figures the child reports.
"""

from __future__ import annotations

import os
from typing import Final

_TICKS: Final = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def live_usage(pid: int, *, parent: int = 0) -> tuple[float, int] | None:
    """(CPU seconds, peak RSS bytes) of ``pid`` now; None once its memory is gone (exited).

    ``parent``: also None unless ``pid`` is still that process's child (not a later
    process that got its pid once it was reaped).
    """
    try:
        stat = _read(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()
        status = _read(f"/proc/{pid}/status")
        schedstat = _read(f"/proc/{pid}/schedstat").split()
    except OSError:
        return None
    # Fields after the command name: state is [0], the parent's pid [1]; utime, stime,
    # cutime, cstime [11:15].
    if parent and int(stat[1]) != parent:
        return None
    own_ticks = int(stat[11]) + int(stat[12])
    reaped_ticks = int(stat[13]) + int(stat[14])
    cpu = max(
        (own_ticks + reaped_ticks) / _TICKS,
        int(schedstat[0]) / 1e9 + reaped_ticks / _TICKS,
    )
    marker = status.find(b"\nVmHWM:")
    if marker < 0:
        return None  # a zombie: its memory is already released
    peak_kib = int(status[marker + 7 :].split(None, 1)[0])
    return cpu, peak_kib * 1024
