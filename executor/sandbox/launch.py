"""What a cell's child is launched with: its launch spec, its cell's cgroup caps, its environment.

A cell keeps the launch spec its last child was made with, and what it was made from
(``made_for``): its next child gets a copy, with its own working directory and warm-up,
unless the run's limits or policy differ (or a secret file or a bind's directory is
another file now). The cell's caps are written before each child is started, while the
cell is empty. The environment is the same for every run: nothing of the executor's.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from executor.child.protocol import LaunchSpec
from executor.model import Limits
from executor.policies import DEFAULT_UMASK, Policy
from executor.policy_binds import directories_now
from executor.runtimes.child import ChildRuntime
from executor.sandbox import host_limits
from executor.sandbox import limits as sandbox_limits

if TYPE_CHECKING:
    from executor.sandbox.process import SandboxOptions

SAFE_PATH: Final = "/usr/local/bin:/usr/bin:/bin"
# Set in every callback's environment, valued with the executor's pid, so a leak check can
# find the processes (escaped ones included) that one executor started.
SANDBOX_MARKER: Final = "CBEXEC_SANDBOX"


class LaunchSpecs:
    """Each cell's launch spec, kept for its next child while what it was made for holds."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        # Each cell's last launch spec and what it was made from: the next child's, but
        # for its workdir and warm-up, unless the run's limits or policy differ.
        self._cell_specs: dict[int, tuple[tuple[object, ...], LaunchSpec]] = {}

    def spec(
        self,
        runtime: ChildRuntime,
        limits: Limits,
        cell: int,
        made_for: tuple[object, ...],
        *,
        workdir: str,
        warm_up: bool,
        policy: Policy | None,
    ) -> LaunchSpec:
        """A child's launch spec: the cell's last one when made for the same (see ``made_for``)."""
        made, spec = self._cell_specs.get(cell, ((), None))
        if spec is None or made != made_for:
            spec = self._new_launch_spec(runtime, limits, cell, policy)
            self._cell_specs[cell] = (made_for, spec)
        spec = spec.copy()
        spec["workdir"] = workdir
        spec["warm_up"] = warm_up
        return spec

    def _new_launch_spec(
        self, runtime: ChildRuntime, limits: Limits, cell: int, policy: Policy | None
    ) -> LaunchSpec:
        """The one place a child's launch spec is made (its workdir and warm-up left blank)."""
        cgroups = self.options.cgroups
        isolation = self.options.isolation
        cell_isolation = isolation.for_cell(cell) if isolation is not None else None
        host_network = self.options.network
        if policy is not None:
            host_network = policy.host_network
            if cell_isolation is not None:
                cell_isolation["binds"] = [
                    {
                        "source": b.path,
                        "target": b.target,
                        "writable": b.writable,
                        "source_identity": list(b.path_identity),
                        "target_identity": (
                            None if b.target_identity is None else list(b.target_identity)
                        ),
                    }
                    for b in policy.binds
                ]
                cell_isolation["groups"] = [policy.group] if policy.group is not None else []
        return {
            "language": runtime.language.value,
            "argv": runtime.argv(),
            "site_paths": list(self.options.site_paths),
            "pid_namespace": self.options.pid_namespace,
            # An empty network namespace per callback, unless the spawner's children
            # already start in one (a zygote makes one per cell, once: netns creation is
            # slow).
            "unshare_network": not host_network,
            "cell": cell,
            "ipc_namespace": self.options.ipc_namespace,
            "cgroup_namespace": self.options.cgroup_namespace,
            "seccomp_filter": self.options.seccomp_filter,
            "seccomp_zygote_filter": self.options.seccomp_zygote_filter,
            "seccomp_closing_filter": self.options.seccomp_closing_filter,
            "cgroup_procs": cgroups.procs_files(cell) if cgroups is not None else [],
            "rlimits": sandbox_limits.rlimits(
                limits,
                cap_processes_with_nproc=self.options.caps_processes_with_nproc,
                ceilings=host_limits.ceilings(),
            ),
            "isolation": cell_isolation,
            "disk_bytes": limits.disk_bytes,
            "workdir": "",
            "warm_up": False,
            "policy": policy.name if policy is not None else "job",
            "umask": policy.umask if policy is not None else DEFAULT_UMASK,
        }

    def set_cgroup_limits(self, cell: int, limits: Limits) -> None:
        """The cell's caps, written while it is empty: before its child is started.

        MemoryLimitTooLowError when the memory limit is below what the empty cell holds.
        """
        if self.options.cgroups is not None and self.options.cgroups.set_limits(
            cell, processes=limits.max_processes, memory_bytes=limits.memory_bytes
        ):
            self._cell_specs.pop(cell, None)  # made again elsewhere: its cgroup.procs moved


def made_for(
    runtime: ChildRuntime, limits: Limits, policy: Policy | None, secret_files: tuple[str, ...]
) -> tuple[object, ...]:
    """What, beside the cell and the runner's options, a child is made from and for.

    Every limit but the wall clock's, which the executor alone enforces; and which file
    each secret file's path names (``_files_named``), and which directory each of the
    policy's binds (``directories_now``): a child hides and mounts those it named then.
    """
    confined = (
        limits.cpu_seconds,
        limits.memory_bytes,
        limits.output_bytes,
        limits.max_processes,
        limits.disk_bytes,
    )
    binds = directories_now(policy.binds) if policy is not None and policy.binds else ()
    return (
        runtime.language,
        tuple(runtime.argv()),
        confined,
        policy,
        _files_named(secret_files),
        binds,
    )


def _files_named(paths: tuple[str, ...]) -> tuple[tuple[int, int] | None, ...]:
    """(st_dev, st_ino) of the file at each path now; None where there is none.

    A file replaced by rename, as editors save, takes every mount on the old one with it,
    a prepared child's ``/dev/null`` cover too, and the new file is there to read: such a
    child no longer fits a run (``CellChildren.take``). Taken before a child is started, so a child
    that covered the new file already is only discarded needlessly.
    """
    named: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            found = os.lstat(path)
        except OSError:
            named.append(None)
        else:
            named.append((found.st_dev, found.st_ino))
    return tuple(named)


def child_environment(workdir: str) -> dict[str, str]:
    """The environment a child starts with: nothing of the executor's, the same for every run.

    A policy's variables (``Policy.env``, secrets among them) are not here: they travel in
    the run's start frame, straight to the child, which sets them before the code runs.
    The zygote keeps freed memory of every spawn request it read, and each later child
    is a copy of it: anything a spawn request held, every later callback could read.
    """
    return {
        "PATH": SAFE_PATH,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        # Read at a process's start: a cold child's, and what a callback execs (a zygote's
        # child keeps its zygote's, spawners.py).
        "MALLOC_ARENA_MAX": sandbox_limits.MALLOC_ARENA_MAX,
        SANDBOX_MARKER: str(os.getpid()),
    }
