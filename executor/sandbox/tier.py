"""Probe the host once at start-up and decide the sandbox tier: namespaces, cgroups, the hardened plan.

What the host allows (PID, IPC and cgroup namespaces, a syscall filter, a writable
cgroup, root for private mounts, a devpts instance per child, dedicated uids and the
bridge's empty network namespace) against what the settings ask (``on`` must be
satisfiable, ``auto`` takes what there is), and the one line that says which mechanisms
are active, and why not where one is not.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import site
import subprocess
import sys
import tempfile
from typing import Final

from executor import open_files
from executor.child import seccomp
from executor.child.isolation import under
from executor.config import Settings
from executor.errors import ConfigError
from executor.policy_host import no_empty_network
from executor.runtimes.child import CHILD_DIR
from executor.sandbox.cgroup import CGROUP_ROOT, CellCgroups
from executor.sandbox.identity import check_uid_range
from executor.sandbox.netns import EmptyNetwork
from executor.sandbox.process import IsolationPlan, SandboxOptions, SandboxRunner
from executor.secret_files import secret_files

logger = logging.getLogger(__name__)

# Run as ``python -I -S -c _PROBE CHILD_DIR FILTER_HEX DEVPTS_OPTIONS``; prints what a
# child may do here, each in a fork of its own (unshare changes the process that calls it).
_PROBE: Final = r"""
import ctypes, errno, json, os, sys
sys.path.insert(0, sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)

def in_child(test):
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if test() else 1)
        except BaseException:
            os._exit(2)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0

def filtered():
    import seccomp
    if libc.prctl(38, 1, 0, 0, 0) != 0:
        return False
    seccomp.install(seccomp.Prepared(bytes.fromhex(sys.argv[2])))
    denied = libc.unshare(0x10000000) != 0 and ctypes.get_errno() == errno.EPERM
    return denied and in_child(lambda: True)

def own_devpts():
    # In a private mount namespace (nothing propagates to the host): a devpts instance
    # on /dev/pts, which /dev/ptmx reaches (its first pty is there).
    if libc.unshare(0x00020000) != 0:
        return False
    if libc.mount(None, b"/", None, ctypes.c_ulong(0x44000), None) != 0:  # MS_REC|MS_PRIVATE
        return False
    options = sys.argv[3].encode()
    if libc.mount(b"devpts", b"/dev/pts", b"devpts", ctypes.c_ulong(10), options) != 0:
        return False
    os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
    return sorted(os.listdir("/dev/pts")) == ["0", "ptmx"]

print(json.dumps({
    name: in_child(lambda: libc.unshare(flag) == 0)
    for name, flag in (("pid", 0x20000000), ("ipc", 0x08000000), ("cgroup", 0x02000000))
} | {"seccomp": bool(sys.argv[2]) and in_child(filtered), "devpts": in_child(own_devpts)}))
"""


def probe_host(python: str, program: bytes) -> dict[str, bool]:
    """What a child may do here: pid, ipc and cgroup namespaces, the seccomp ``program``, devpts."""
    probe = subprocess.run(
        [python, "-I", "-S", "-c", _PROBE, str(CHILD_DIR), program.hex(), devpts_options()],
        check=False,
        capture_output=True,
    )
    try:
        found = json.loads(probe.stdout)
    except ValueError:
        logger.warning("sandbox probe failed: %s", probe.stderr.decode(errors="replace")[-500:])
        return {}
    return {str(name): bool(value) for name, value in found.items()}


# Ptys a callback may hold at once: the ``max`` of the devpts instance each child mounts
# on its /dev/pts. Every instance draws on the host's one pool (kernel.pty.max, 4096 by
# default); a callback on the host's own instance took all of it.
PTYS_PER_CHILD: Final = 16


def devpts_options(ptys: int = PTYS_PER_CHILD) -> str:
    """The mount options of a child's own devpts instance: at most ``ptys`` ptys, the callback's.

    Its ptmx opens for anyone (the sandbox uid); each pty's end is its opener's, mode
    0620 and group tty where the host has one, as on the host's own instance.
    """
    options = f"newinstance,ptmxmode=0666,mode=0620,max={ptys}"
    try:
        return f"{options},gid={grp.getgrnam('tty').gr_gid}"
    except KeyError:
        return options


# World-writable places where a callback could leave files for the host or the next one.
SHARED_WRITABLE_DIRS: Final = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue")
# What a callback has no business seeing of the host: its daemons' sockets and state
# (/run; /var/run is a link to it on most hosts) and its network interfaces in sysfs.
HOST_INFORMATION_DIRS: Final = ("/run", "/var/run", "/sys/class/net")
SYS_CLASS_NET: Final = "/sys/class/net"
# The tier report's name for each child's devpts instance (else the host's ptys, shared).
OWN_DEVPTS: Final = "own /dev/pts per child"


def _network_device_dirs() -> set[str]:
    """The sysfs directories that hold the host's network interfaces.

    Masking /sys/class/net alone would leave each interface under its device
    (/sys/devices/virtual/net/..., /sys/devices/pci.../net/eth0).
    """
    try:
        names = os.listdir(SYS_CLASS_NET)
    except OSError:
        return set()
    return {os.path.dirname(os.path.realpath(f"{SYS_CLASS_NET}/{name}")) for name in names}


def _hidden_ancestors(path: str) -> list[str]:
    """Ancestors of ``path`` that others may not traverse (e.g. /root, mode 0700)."""
    hidden = []
    parent = os.path.dirname(path)
    while parent not in ("/", ""):
        if not os.stat(parent).st_mode & 0o001:
            hidden.append(parent)
        parent = os.path.dirname(parent)
    return hidden


def isolation_plan(
    settings: Settings, site_paths: tuple[str, ...], *, devpts: str = ""
) -> IsolationPlan:
    """What a hardened child hides (data, temp dirs, closed ancestors) and keeps visible.

    ``devpts``: the options of each child's own devpts instance ("" for none).
    """
    keep = sorted(
        {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, str(CHILD_DIR), *site_paths)}
    )
    masks = {str(settings.data_dir.resolve()), tempfile.gettempdir(), *SHARED_WRITABLE_DIRS}
    masks.update(os.path.realpath(path) for path in HOST_INFORMATION_DIRS)
    masks.update(_network_device_dirs())
    for path in keep:
        masks.update(_hidden_ancestors(path))
    # The cgroup tree: every cell's counters and the executor's pid in its paths. Joined
    # through it first, so each child covers it itself (IsolationPlan.late_masks).
    late = (str(CGROUP_ROOT),) if CGROUP_ROOT.is_dir() else ()
    outermost = _outermost_dirs(masks)
    return IsolationPlan(
        outermost,
        tuple(keep),
        settings.sandbox_uid_base,
        SandboxRunner.cells(settings.max_concurrent),
        late_masks=late,
        devpts=devpts,
        secret_files=files_to_hide([p for _, p in secret_files(settings)], outermost, keep),
    )


def files_to_hide(paths: list[str], masks: tuple[str, ...], keep: list[str]) -> tuple[str, ...]:
    """The real paths of the files among ``paths`` that a callback would see: each child hides them.

    A file under a mask is hidden with it already, unless a kept path bound back holds it.
    """
    found = set()
    for path in paths:
        real = os.path.realpath(path)
        if not os.path.isfile(real):
            continue  # gone, or not a file: nothing of the executor's to hide there
        if any(under(real, m) for m in masks) and not any(under(real, k) for k in keep):
            continue
        found.add(real)
    return tuple(sorted(found))


def _outermost_dirs(paths: set[str]) -> tuple[str, ...]:
    """The directories among ``paths`` that exist and lie in no other: one tmpfs covers the rest."""
    existing = sorted((p for p in paths if os.path.isdir(p)), key=len)
    outer = [p for i, p in enumerate(existing) if not any(under(p, o) for o in existing[:i])]
    return tuple(sorted(outer))


def _hardened_plan(
    settings: Settings,
    site_paths: tuple[str, ...],
    probed: dict[str, bool],
    inactive: list[tuple[str, str]],
) -> IsolationPlan:
    """The hardened tier's plan, for a root executor with PID namespaces; its uids checked.

    Each child's own devpts where the probe mounted one; else that goes in ``inactive``.
    """
    own_devpts = probed.get("devpts", False)
    isolation = isolation_plan(settings, site_paths, devpts=devpts_options() if own_devpts else "")
    check_uid_range(isolation.uid_base, isolation.uid_count)
    if not own_devpts:
        inactive.append((OWN_DEVPTS, "the host refused a child a devpts instance of its own"))
    return isolation


def sandbox_options(settings: Settings) -> SandboxOptions:
    """Probe the host once and decide the sandbox tier; 'on' settings must be satisfiable.

    A refusal leaves nothing made behind (the cells, the empty network namespace): the
    caller closes them only once it has the options.
    """
    if problem := open_files.start_problem(open_files.limit(), settings.max_concurrent):
        raise ConfigError(problem)
    with contextlib.ExitStack() as made:
        options = _decide(settings, made)
        made.pop_all()
    return options


def _decide(settings: Settings, made: contextlib.ExitStack) -> SandboxOptions:
    """``sandbox_options``' work; what it makes goes on ``made``, to close if it refuses."""
    python = sys.executable
    inactive: list[tuple[str, str]] = []
    arch = seccomp.native_arch()
    program = seccomp.build(arch) if arch is not None else b""
    probed = probe_host(python, program) if settings.pid_namespace != "off" or program else {}
    pid_namespace = settings.pid_namespace != "off" and probed.get("pid", False)
    if settings.pid_namespace == "on" and not pid_namespace:
        raise ConfigError("pid_namespace: 'on' but this host does not allow a PID namespace")
    if settings.network == "none" and not pid_namespace:
        raise ConfigError(f"network: {no_empty_network(settings.pid_namespace)}")
    host_network = settings.network == "host" or not pid_namespace
    no_namespaces = (
        "no PID namespace here" if settings.pid_namespace != "off" else ("pid_namespace is off")
    )
    ipc_namespace = pid_namespace and probed.get("ipc", False)
    if not ipc_namespace:
        inactive.append(("IPC namespace", no_namespaces if not pid_namespace else "refused"))
    cgroup_namespace = pid_namespace and probed.get("cgroup", False)
    if not cgroup_namespace:
        inactive.append(("cgroup namespace", no_namespaces if not pid_namespace else "refused"))
    seccomp_filter = program.hex() if probed.get("seccomp", False) else ""
    if not seccomp_filter:
        inactive.append(
            (
                "syscall filter",
                f"no syscall table for {os.uname().machine}"
                if arch is None
                else "the kernel refused the filter",
            )
        )
    bridge_network = None
    if host_network:
        inactive.append(("network namespace per cell", "callbacks use the host network"))
    network = EmptyNetwork.create() if pid_namespace else no_namespaces
    if isinstance(network, EmptyNetwork):
        bridge_network = network
        made.callback(network.close)
    else:
        inactive.append(("bridge in an empty network namespace", network))
    cells = SandboxRunner.cells(settings.max_concurrent)
    cgroups = None if settings.cgroup == "off" else CellCgroups.create(cells)
    if cgroups is not None:
        made.callback(cgroups.close)
    if settings.cgroup == "on" and cgroups is None:
        raise ConfigError("cgroup: 'on' but no writable pids or memory cgroup was found")
    site_paths = tuple(p for p in site.getsitepackages() if os.path.isdir(p))
    isolation = None
    if settings.dedicated_uid != "off" and os.geteuid() == 0 and pid_namespace:
        isolation = _hardened_plan(settings, site_paths, probed, inactive)
    if settings.dedicated_uid == "on" and isolation is None:
        raise ConfigError("dedicated_uid: 'on' needs root and PID namespaces")
    if settings.dedicated_uid == "auto" and isolation is None and os.geteuid() == 0:
        # Without its own uid a callback of a root executor is root, capabilities and all.
        raise ConfigError(
            f"dedicated_uid: callbacks would run as root with full capabilities "
            f"({no_namespaces}: a dedicated uid needs a PID namespace); set "
            'pid_namespace = "auto" on a host that allows PID namespaces, run the executor '
            'as an unprivileged user, or set dedicated_uid = "off" to run callbacks as root'
        )
    if isolation is None:
        inactive.append(("masks of /run, host interfaces and the cgroup tree", "no private mounts"))
        inactive.append((OWN_DEVPTS, "no private mounts"))
    return SandboxOptions(
        isolation=isolation,
        site_paths=site_paths,
        pid_namespace=pid_namespace,
        network=host_network,
        grace_s=settings.grace_seconds,
        cgroups=cgroups,
        ipc_namespace=ipc_namespace,
        cgroup_namespace=cgroup_namespace,
        seccomp_filter=seccomp_filter,
        seccomp_zygote_filter=(
            seccomp.build(arch, allowing=seccomp.CONFINING).hex()
            if seccomp_filter and arch is not None
            else ""
        ),
        seccomp_closing_filter=(
            seccomp.build_closing(arch).hex() if seccomp_filter and arch is not None else ""
        ),
        bridge_network=bridge_network,
        inactive=tuple(inactive),
    )


def root_warnings(options: SandboxOptions) -> list[str]:
    """The start-up WARNING for callbacks that run as root (``dedicated_uid = "off"``)."""
    if options.isolation is not None or os.geteuid() != 0:
        return []
    return [
        "callbacks run as root with full capabilities (dedicated_uid is off): any callback "
        'can read and change everything on this host; set dedicated_uid = "auto" or run '
        "the executor as an unprivileged user"
    ]


def describe_tier(options: SandboxOptions) -> str:
    """One line saying which sandbox mechanisms are active, and why each missing one is not."""
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
        "host network"
        if options.network
        else "private network namespace (an empty one per cell; per child when cold)",
    ]
    if options.ipc_namespace:
        parts.append("IPC namespace per child")
    if options.cgroup_namespace:
        parts.append("cgroup namespace per child")
    if options.seccomp_filter:
        parts.append(f"syscall filter ({len(options.seccomp_filter) // 16} BPF instructions)")
    if options.isolation and options.isolation.devpts:
        parts.append(f"{OWN_DEVPTS} (at most {PTYS_PER_CHILD} ptys)")
    if options.isolation:
        masked = [*options.isolation.late_masks]
        masked += [m for m in options.isolation.masks if m.startswith(("/run", "/sys"))]
        parts.append(f"masked {', '.join(sorted(masked))}")
        if options.isolation.secret_files:
            parts.append(f"hidden {', '.join(options.isolation.secret_files)}")
    if options.bridge_network:
        parts.append("bridge made in an empty network namespace")
    parts += [f"NO {name} ({reason})" for name, reason in options.inactive]
    return ", ".join(parts)


def describe_sandbox(options: SandboxOptions, launcher: str) -> str:
    """The sandbox in one line: the tier, then how children start (``launcher``).

    The start-up log, ``cbexec serve --check-config`` and GetMetrics'
    ``sandbox.description`` all say it with this.
    """
    return f"{describe_tier(options)}, {launcher} launcher"


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
