"""A cgroup freezer's hold on a process: whether one holds it, and letting ours out of it.

A process frozen from outside runs nothing, as a stopped one, but /proc does not say
so as it says ``T`` for SIGSTOP: a task the v1 freezer holds shows ``D``, one a v2
freeze holds ``S``. Its cgroup tells, at the price of a few file reads: they are made
only where a run is overdue or being ended, or a process already shows ``D``, never on
a run's ordinary path.

- v1: the freezer hierarchy's cgroup that ``/proc/PID/cgroup`` names, ``FROZEN`` or
  ``FREEZING`` in its ``freezer.state`` (a frozen parent shows in its children's).
  Such a task cannot even die: a SIGKILL waits for the thaw, and with it its reap.
  Thawing it moves it into the hierarchy's root cgroup, which lets out that process
  alone, never the rest of what someone froze.
- v2: ``frozen 1`` in ``cgroup.events`` of its cgroup or an ancestor. SIGKILL ends a
  task a v2 freeze holds, so nothing is thawed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

# As ``cgroup.CGROUP_ROOT`` (which imports this module).
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
FREEZER_V1: Final = CGROUP_ROOT / "freezer"
FROZEN_STATES: Final = (b"FROZEN", b"FREEZING")


def _read(path: str | Path) -> bytes | None:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None


def _v2_root() -> Path:
    """Where the v2 hierarchy is mounted: the cgroup root, or ``unified`` beside v1's."""
    return CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").exists() else CGROUP_ROOT / "unified"


def _cgroups_of(pid: int) -> tuple[str | None, str | None]:
    """The process's v1 freezer cgroup and its v2 cgroup (paths in their hierarchies), if any."""
    listed = _read(f"/proc/{pid}/cgroup")
    v1 = v2 = None
    for line in (listed or b"").decode(errors="replace").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2 = path
        elif "freezer" in controllers.split(","):
            v1 = path
    return v1, v2


def frozen_by(pid: int) -> str | None:
    """The cgroup whose freezer holds ``pid`` (for the log), None when none does or it is gone."""
    v1, v2 = _cgroups_of(pid)
    if v1 is not None:
        state = _read(FREEZER_V1 / v1.lstrip("/") / "freezer.state")
        if state is not None and state.strip() in FROZEN_STATES:
            return f"{FREEZER_V1 / v1.lstrip('/')} ({state.strip().decode()})"
    if v2 is not None:
        root = _v2_root()
        cgroup = root / v2.lstrip("/")
        while cgroup != root and cgroup.is_relative_to(root):
            events = _read(cgroup / "cgroup.events")
            if events is not None and b"\nfrozen 1" in b"\n" + events:
                return f"{cgroup} (cgroup.freeze)"
            cgroup = cgroup.parent
    return None


def thaw(pid: int) -> str | None:
    """Let ``pid`` out of a v1 freezer that holds it; what held it, None when nothing was done.

    Only root may move it; a v2 freeze is left (SIGKILL ends its tasks), as is a process
    no freezer holds.
    """
    v1, _ = _cgroups_of(pid)
    if v1 is None or v1 == "/":
        return None
    held = FREEZER_V1 / v1.lstrip("/")
    state = _read(held / "freezer.state")
    if state is None or state.strip() not in FROZEN_STATES:
        return None
    try:
        fd = os.open(FREEZER_V1 / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
    except OSError:
        return None
    return str(held)
