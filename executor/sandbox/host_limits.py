"""The executor's own hard rlimits: the most a callback's rlimit can be on this host.

A child sets its rlimits (``child/launcher.py``, ``perl/zygote.pl``) before the uid drop,
with the executor's capabilities. With CAP_SYS_RESOURCE (root, as usual) it sets any
value. Without it (a container's bounding set, a unit's ``CapabilityBoundingSet=``, or an
unprivileged executor) no hard limit can go above the one the executor inherited
(``prlimit``, a unit's ``LimitNOFILE=``...): setrlimit fails, and every run with it
failed "not allowed to raise maximum limit". So, against those *ceilings*:

- RLIMIT_NOFILE and RLIMIT_FSIZE, the server's own choice (``limits.py``), are lowered to
  the ceiling (a start-up WARNING says so);
- a run whose CPU, memory or process limit needs more is refused, naming the rlimit
  (``refusal``), never started to fail; a default or cap above one is a start-up WARNING.
"""

from __future__ import annotations

import functools
import math
import resource
from collections.abc import Mapping
from typing import Final

from executor.model import Limits
from executor.sandbox.limits import fixed_rlimits

CAP_SYS_RESOURCE: Final = 24
# The rlimits a child sets, and each one's systemd setting (for the WARNING's advice).
NAMES: Final = {"CPU": "LimitCPU", "AS": "LimitAS", "FSIZE": "LimitFSIZE", "NOFILE": "LimitNOFILE"}
NPROC_SETTING: Final = "LimitNPROC"


def can_raise() -> bool:
    """Whether this process (and so a child before its uid drop) may raise a hard limit."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    except OSError:
        pass
    return False


@functools.cache
def ceilings() -> Mapping[str, int]:
    """{rlimit name: the executor's hard limit} for those a child cannot exceed; read once."""
    if can_raise():
        return {}
    found = {}
    for name in (*NAMES, "NPROC"):
        hard = resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))[1]
        if hard != resource.RLIM_INFINITY:
            found[name] = hard
    return found


def _needs(limits: Limits, *, nproc: bool) -> dict[str, tuple[str, float, int]]:
    """{rlimit: (limits field, the field's value, the hard limit it needs)} of a run's limits."""
    # RLIMIT_CPU's hard limit is one second above the soft one (limits.rlimits).
    cpu = max(1, math.ceil(limits.cpu_seconds))
    needs = {
        "CPU": ("cpu_seconds", limits.cpu_seconds, cpu + 1),
        "AS": ("memory_bytes", limits.memory_bytes, int(limits.memory_bytes)),
    }
    if nproc:
        needs["NPROC"] = ("max_processes", limits.max_processes, int(limits.max_processes))
    return needs


def _advice(name: str) -> str:
    setting = NAMES.get(name, NPROC_SETTING)
    return (
        f"raise the executor's hard limit (systemd {setting}=, prlimit) or give it CAP_SYS_RESOURCE"
    )


def refusal(limits: Limits, *, nproc: bool, found: Mapping[str, int] | None = None) -> str | None:
    """Why a run with ``limits`` cannot be enforced here; None when it can.

    ``nproc``: the run's processes are capped by RLIMIT_NPROC (no pids cgroup, or the
    hardened tier). ``found``: the ceilings (``ceilings()`` when None).
    """
    found = ceilings() if found is None else found
    for name, (field, value, hard) in _needs(limits, nproc=nproc).items():
        ceiling = found.get(name)
        if ceiling is not None and hard > ceiling:
            shown = int(value) if float(value).is_integer() else value
            return (
                f"limits.{field} = {shown} cannot be enforced on this host: it needs "
                f"RLIMIT_{name} {hard}, above the executor's hard limit of {ceiling} "
                f"({_advice(name)})"
            )
    return None


def lowered(name: str, value: int, found: Mapping[str, int] | None = None) -> int:
    """``value`` for rlimit ``name``, at most its ceiling."""
    ceiling = (ceilings() if found is None else found).get(name)
    return value if ceiling is None else min(value, ceiling)


def warnings(
    default: Limits,
    cap: Limits,
    *,
    nproc: bool,
    found: Mapping[str, int] | None = None,
) -> list[str]:
    """The start-up WARNINGs: the server's own rlimits lowered, defaults and caps unenforceable.

    ``nproc`` as ``refusal``'s. Shown by ``--check-config`` too.
    """
    found = ceilings() if found is None else found
    said = []
    for name, given in fixed_rlimits(default).items():
        ceiling = found.get(name)
        if ceiling is not None and given > ceiling:
            said.append(
                f"the executor's hard RLIMIT_{name} is {ceiling}, below the {given} each "
                f"callback is given: callbacks get {ceiling} ({_advice(name)})"
            )
    for what, limits in (("default_limits", default), ("max_limits", cap)):
        for name, (field, value, hard) in _needs(limits, nproc=nproc).items():
            ceiling = found.get(name)
            if ceiling is not None and hard > ceiling:
                shown = int(value) if float(value).is_integer() else value
                outcome = (
                    "every run that leaves it at the default is refused"
                    if what == "default_limits"
                    else "runs that ask for more than it allows are refused"
                )
                said.append(
                    f"{what}.{field} = {shown} needs RLIMIT_{name} {hard}, above the "
                    f"executor's hard limit of {ceiling}: {outcome} ({_advice(name)})"
                )
    return said
