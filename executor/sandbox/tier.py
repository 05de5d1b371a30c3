"""Probe the host once at start-up and decide the sandbox tier: namespaces, cgroups, the hardened plan.

What the host allows (a PID namespace, a writable cgroup, root for private mounts and
dedicated uids) against what the settings ask (``on`` must be satisfiable, ``auto``
takes what there is), and the one line that says which mechanisms are active.
"""

from __future__ import annotations

import logging
import os
import site
import subprocess
import sys
import tempfile
from typing import Final

from executor.child.isolation import under
from executor.config import Settings
from executor.errors import ConfigError
from executor.runtimes.child import CHILD_DIR
from executor.sandbox.cgroup import CellCgroups
from executor.sandbox.process import IsolationPlan, SandboxOptions, SandboxRunner

logger = logging.getLogger(__name__)

_PROBE_PID_NAMESPACE: Final = (
    "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
    "os._exit(0 if libc.unshare(0x20000000) == 0 else 1)"
)


def probe_pid_namespace(python: str) -> bool:
    """Whether a child may unshare a PID namespace here (root, or unprivileged userns)."""
    probe = subprocess.run(
        [python, "-I", "-S", "-c", _PROBE_PID_NAMESPACE], check=False, capture_output=True
    )
    return probe.returncode == 0


# World-writable places where a callback could leave files for the host or the next one.
SHARED_WRITABLE_DIRS: Final = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")


def _hidden_ancestors(path: str) -> list[str]:
    """Ancestors of ``path`` that others may not traverse (e.g. /root, mode 0700)."""
    hidden = []
    parent = os.path.dirname(path)
    while parent not in ("/", ""):
        if not os.stat(parent).st_mode & 0o001:
            hidden.append(parent)
        parent = os.path.dirname(parent)
    return hidden


def isolation_plan(settings: Settings, site_paths: tuple[str, ...]) -> IsolationPlan:
    """What a hardened child hides (data, temp dirs, closed ancestors) and keeps visible."""
    keep = sorted(
        {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, str(CHILD_DIR), *site_paths)}
    )
    masks = {str(settings.data_dir.resolve()), tempfile.gettempdir(), *SHARED_WRITABLE_DIRS}
    for path in keep:
        masks.update(_hidden_ancestors(path))
    return IsolationPlan(
        _outermost_dirs(masks),
        tuple(keep),
        settings.sandbox_uid_base,
        SandboxRunner.cells(settings.max_concurrent),
    )


def _outermost_dirs(paths: set[str]) -> tuple[str, ...]:
    """The directories among ``paths`` that exist and lie in no other: one tmpfs covers the rest."""
    existing = sorted((p for p in paths if os.path.isdir(p)), key=len)
    outer = [p for i, p in enumerate(existing) if not any(under(p, o) for o in existing[:i])]
    return tuple(sorted(outer))


def sandbox_options(settings: Settings) -> SandboxOptions:
    """Probe the host once and decide the sandbox tier; 'on' settings must be satisfiable."""
    python = sys.executable
    pid_namespace = settings.pid_namespace != "off" and probe_pid_namespace(python)
    if settings.pid_namespace == "on" and not pid_namespace:
        raise ConfigError("pid_namespace: 'on' but this host does not allow a PID namespace")
    if settings.network == "none" and not pid_namespace:
        raise ConfigError("network: 'none' needs namespaces, which this host does not allow")
    host_network = settings.network == "host" or not pid_namespace
    if settings.network == "auto" and host_network:
        logger.warning(
            "no namespaces here: callbacks share the host network, and can reach "
            "this executor's port; set auth_token"
        )
    cells = SandboxRunner.cells(settings.max_concurrent)
    cgroups = None if settings.cgroup == "off" else CellCgroups.create(cells)
    if settings.cgroup == "on" and cgroups is None:
        raise ConfigError("cgroup: 'on' but no writable pids or memory cgroup was found")
    site_paths = tuple(p for p in site.getsitepackages() if os.path.isdir(p))
    isolation = None
    if settings.dedicated_uid != "off" and os.geteuid() == 0 and pid_namespace:
        isolation = isolation_plan(settings, site_paths)
    if settings.dedicated_uid == "on" and isolation is None:
        raise ConfigError("dedicated_uid: 'on' needs root and PID namespaces")
    return SandboxOptions(
        isolation=isolation,
        site_paths=site_paths,
        pid_namespace=pid_namespace,
        network=host_network,
        grace_s=settings.grace_seconds,
        cgroups=cgroups,
    )


def describe_tier(options: SandboxOptions) -> str:
    """One line saying which sandbox mechanisms are active."""
    parts = [
        "rlimits(cpu,as,fsize,nofile,core)",
        f"dedicated uids {options.isolation.uid_base}-"
        f"{options.isolation.uid_base + options.isolation.uid_count - 1} (one per cell), "
        "private mounts, "
        "tmpfs working directory (disk_bytes quota)"
        if options.isolation
        else "callbacks run as the executor's uid, working directory on the host disk (no quota)",
        "pid namespace" if options.pid_namespace else "NO pid namespace (same-uid kill risk)",
        "pids cgroup"
        if options.cgroups and "pids" in options.cgroups.controllers
        else "RLIMIT_NPROC process cap (ignored for root)",
        "memory cgroup (all processes together)"
        if options.cgroups and "memory" in options.cgroups.controllers
        else "NO memory cgroup (memory limit per process only)",
        "host network" if options.network else "private network namespace",
    ]
    return ", ".join(parts)


def mechanisms(options: SandboxOptions) -> dict[str, bool]:
    """Which sandbox mechanisms every callback gets: the flags behind ``describe_tier``."""
    controllers = options.cgroups.controllers if options.cgroups is not None else ()
    return {
        "pid_namespace": options.pid_namespace,
        "network_namespace": not options.network,
        "dedicated_uid": options.isolation is not None,
        "pids_cgroup": "pids" in controllers,
        "memory_cgroup": "memory" in controllers,
    }
