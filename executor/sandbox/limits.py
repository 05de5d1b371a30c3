"""Limits: merge a request's limits with the server's defaults and caps, and map them to rlimits.

What each limit really bounds (setrlimit(2)):

- ``cpu_seconds`` -> RLIMIT_CPU, per process, whole seconds: SIGXCPU at the soft limit
  (rounded up), SIGKILL one second later. Processes the callback forks each get their own
  budget; the wall limit bounds the total.
- ``memory_bytes`` -> RLIMIT_AS: virtual address space per process, not RSS. Allocation
  beyond it fails (Python MemoryError, Perl "Out of memory!"). With a writable memory
  cgroup, also the slot's limit on all the callback's processes together.
- ``max_processes`` -> the slot's pids cgroup (``pids.max``) when the host lets us write
  one; otherwise RLIMIT_NPROC, which counts every process of the real uid and is ignored
  for root, so it only isolates callbacks under a dedicated uid.
- ``output_bytes`` is enforced by the reader in the executor, not by the kernel; RLIMIT_FSIZE
  bounds files the callback writes to the same size (at least 64 MiB).
- RLIMIT_NOFILE is 256 open files, whatever the request.
- Without CAP_SYS_RESOURCE none of these can exceed the executor's own hard limit
  (``host_limits``): FSIZE and NOFILE are lowered to it, a request needing more refused.
- ``wall_seconds`` is the executor's deadline (SIGTERM, grace, SIGKILL to everything).
- ``disk_bytes`` is the size of the working directory's private tmpfs (hardened tier,
  ``isolation.py``); elsewhere nothing bounds the total beyond RLIMIT_FSIZE per file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Final

from executor.errors import InvalidRequestError
from executor.model import Limits

OPEN_FILES: Final = 256
# glibc's malloc arenas a callback's process may have (MALLOC_ARENA_MAX): by default each
# thread that allocates gets one of 64 MiB of address space, and RLIMIT_AS capped the
# threads at a dozen (sandbox.md pitfall 4). Both the child's environment and its
# zygote's carry it: glibc reads it when a process starts, and a fork keeps its parent's.
MALLOC_ARENA_MAX: Final = "2"
MIN_FILE_SIZE_BYTES: Final = 64 << 20
# The most a configured limit (default_limits, max_limits, a policy's) may be. More broke
# every run: RLIMIT_CPU and the byte rlimits take at most a signed 64-bit number (the
# child could not start the callback), and pids.max at most the kernel's PID_MAX_LIMIT
# (ERANGE, an internal error). The seconds are bounded alike: 1e9 is about 31 years.
MOST: Final[dict[str, float]] = {
    "cpu_seconds": 1e9,
    "wall_seconds": 1e9,
    "memory_bytes": (1 << 63) - 1,
    "output_bytes": (1 << 63) - 1,
    "max_processes": 4_194_304,
    "disk_bytes": (1 << 63) - 1,
}


def as_written(value: float) -> str:
    """A limit as an admin would write it: 3600, 0.5, 1000000000.5, 1e+300 (never rounded)."""
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e16):
        return str(int(value))
    return repr(value)


def setting_problem(name: str, value: float) -> str | None:
    """Why ``value`` cannot be the configured limit ``name`` (a default or a cap); None if it can."""
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if value <= 0:
        return "must be positive"
    if value > MOST[name]:
        return f"must be at most {as_written(MOST[name])}, got {as_written(value)}"
    return None


def merge(
    requested: Limits, default: Limits, cap: Limits, cap_name: str = "the server's cap"
) -> Limits:
    """Zero fields take the default; anything above the cap, negative, NaN or infinite is rejected.

    ``cap_name`` says whose cap it is in the refusal (a policy's, when one applies).
    """
    values = {}
    for field in dataclasses.fields(Limits):
        asked = getattr(requested, field.name)
        if not math.isfinite(asked):
            raise InvalidRequestError(f"limits.{field.name} must be a finite number (got {asked})")
        if asked < 0:
            raise InvalidRequestError(f"limits.{field.name} must not be negative (got {asked})")
        most = getattr(cap, field.name)
        if asked > most:
            # A cap of 5 s reads "5", whether the settings gave it as 5 or 5.0.
            shown = int(most) if float(most).is_integer() else most
            raise InvalidRequestError(
                f"limits.{field.name} = {asked} exceeds {cap_name} of {shown}"
            )
        values[field.name] = asked or getattr(default, field.name)
    return Limits(**values)


def enforced_cpu_seconds(limits: Limits) -> int:
    """The CPU limit the kernel enforces: RLIMIT_CPU takes whole seconds, and 0 means none."""
    return max(1, math.ceil(limits.cpu_seconds))


def fixed_rlimits(limits: Limits) -> dict[str, int]:
    """The rlimits the server chooses itself (no request field sets them), by name."""
    return {"FSIZE": max(int(limits.output_bytes), MIN_FILE_SIZE_BYTES), "NOFILE": OPEN_FILES}


def rlimits(
    limits: Limits, *, cap_processes_with_nproc: bool, ceilings: Mapping[str, int] | None = None
) -> dict[str, list[int]]:
    """The rlimits the launcher applies in the child, as {NAME: [soft, hard]}.

    ``ceilings``: hard limits a child cannot exceed (``host_limits``); the server's own
    rlimits are lowered to them (a run whose asked limits need more is refused before).
    """
    cpu = enforced_cpu_seconds(limits)
    fixed = {
        name: min(value, (ceilings or {}).get(name, value))
        for name, value in fixed_rlimits(limits).items()
    }
    result = {
        "CPU": [cpu, cpu + 1],
        "AS": [limits.memory_bytes, limits.memory_bytes],
        "FSIZE": [fixed["FSIZE"]] * 2,
        "NOFILE": [fixed["NOFILE"]] * 2,
        "CORE": [0, 0],
    }
    if cap_processes_with_nproc:
        result["NPROC"] = [limits.max_processes, limits.max_processes]
    return result
