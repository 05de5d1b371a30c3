"""Trampoline that runs first in every sandboxed child: confine, limit, then start the runtime.

Started by the executor as ``python -I -S -B launcher.py SPEC_JSON BRIDGE_FD`` in a new
session with a scrubbed environment and only stdio plus the bridge socket open (the
``protocol.LaunchSpec`` and the fd the bridge came on, which it moves to fd 3 first, where
a zygote's children have it too); a zygote's children call ``confine_and_run`` instead.
Stdlib only: it must never import grpc or the executor. It enters the run's working
directory itself (``spec["workdir"]``): one the executor made, or in the hardened tier a
private tmpfs that exists only inside the callback's mount namespace.

In order: forbid privilege gain, die with the parent (set again after the uid drop,
which clears it: ``die_with_parent``), and, when asked, move the callback
into a new PID namespace (PID 1 inside, so ``kill(-1)``, ``getppid()`` and pids of the
host do not reach the executor). The zygote forks its children straight into a fresh
PID namespace, having joined their cell's cgroups for them; the cold launcher forks its
callback itself and stays outside as a small *shim*, its parent as a zygote is for its
children: the callback joins the cell's cgroups first thing (so every later process
counts, and the shim does not: ``max_processes`` is the callback's alone), and the shim
reaps it, writes its wait status and rusage to the executor (the figures of the
callback's own process: the shim's own would carry its start-up, and the executor's
memory from before the exec), then mirrors how it ended. With the PID namespace come a
new IPC namespace and a cgroup namespace (rooted at the cell's cgroups, joined just
before), a private network namespace on the cold path (a zygote's children join their
cell's), the hardened tier's mounts, the rlimits (before the uid drop, while they may
still exceed the executor's own hard limits), the hardened tier's uid; then umask, then the
syscall filter (``seccomp.py``, the last step: everything before it may use what it
denies), then the language runtime.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from _signal import signal as set_handler  # type: ignore[import-not-found]  # signal's wrappers: ~70 page faults in a child
from atexit import _run_exitfuncs
from os import O_WRONLY, _exit, chdir, dup2, getpid, read, umask, write
from os import close as close_fd
from os import open as open_fd
from resource import setrlimit
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from collections.abc import Callable

    from protocol import LaunchSpec

CHILD_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, CHILD_DIR)  # protocol, qb and the bootstraps are siblings

import isolation as hardened  # noqa: E402 - a sibling, found through CHILD_DIR
import seccomp  # noqa: E402 - a sibling
from isolation import drop_privileges, isolate_filesystem  # noqa: E402 - a sibling
from seccomp import install as install_filter  # noqa: E402 - a sibling

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
POLLHUP = 0x10
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
# Ints: the enum members would be more objects for a forked child to touch.
SIGKILL = int(signal.SIGKILL)
SIGXCPU = int(signal.SIGXCPU)
# Exit code the shim uses when it could not start the callback at all.
EXIT_LAUNCH_FAILED = 121
# protocol.BRIDGE_FD, spelled out: a cold Perl child never imports protocol (its types
# cost ~0.5 ms to make); tests/unit/test_protocol.py holds the two equal.
BRIDGE_FD = 3

_libc = ctypes.CDLL(None, use_errno=True)
# Looked up now and called by these names: a zygote's children then find them made (a
# first lookup in a forked child builds the function object on the shared heap, ~50
# page faults). The same goes for the os and resource calls imported by name above: an
# attribute lookup (``os.getpid``, ``_libc.prctl``) holds the name, the owner and its
# dict while it runs, three objects whose reference counts a forked child writes (page
# faults); a lookup of this module's globals writes none of them.
_prctl = _libc.prctl
_unshare = _libc.unshare
_shutdown = _libc.shutdown
_poll = _libc.poll
SHUT_WR = 1


class _PollFd(ctypes.Structure):
    _fields_ = (("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short))


# The bridge's struct pollfd, made once (as the names above): no events asked, as POLLHUP
# is reported whatever is asked.
_bridge_pollfd = _PollFd(BRIDGE_FD, 0, 0)
_bridge_pollfd_pointer = ctypes.pointer(_bridge_pollfd)


def mark_end() -> None:
    """The end mark: shut the bridge down for writing, then wait for the executor.

    After the done frame, exit handlers and flushed output, it tells the executor the
    run is over. Waiting (a read until the executor's side closes) keeps the process
    and its figures in /proc for the executor to read: it answers at once and then
    kills this process, or, when it goes by the exit instead, closes its side and this
    process goes on to ``_exit`` (``process.py``). Not ``socket.shutdown``: no socket
    object to build in a forked child. Only the callback's own process makes it
    (``zygote._child``): a process the callback forks shares the bridge, and its end is
    not the run's. A cold child makes none: its run is answered at its exit.
    """
    if _shutdown(BRIDGE_FD, SHUT_WR) != 0:
        return
    try:
        while read(BRIDGE_FD, 4096):
            pass
    except OSError:
        pass


def flush_stdio() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr``, whatever the callback left there, then the originals.

    At a Python child's end, on both paths (``zygote._child``, ``end_cold_callback``).
    The originals when replaced: a callback that replaced sys.stdout (a tee over it) may
    have left output in the real one's buffer, which finalization would have flushed.
    """
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - not contextlib.suppress: as in _report
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - closed, None, no flush: as Python's exit
            pass
    if sys.stdout is not sys.__stdout__ or sys.stderr is not sys.__stderr__:
        for stream in (sys.__stdout__, sys.__stderr__):
            try:  # noqa: SIM105
                stream.flush()  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001, S110
                pass


def silence_daemon_threads() -> None:
    """Point fds 1 and 2 at /dev/null: nothing this process's threads write reaches the run now.

    Once the exit handlers have run and the output is flushed, in the callback's own
    process on both paths (``zygote._child``, ``end_cold_callback``). Neither ends with
    Python's exit, which would stop daemon threads: they run on until the process is
    gone, and their output (the traceback of a qb call the end of the bridge broke)
    would land in the run's stdout and stderr.
    """
    try:
        null = open_fd("/dev/null", O_WRONLY)
        dup2(null, 1)
        dup2(null, 2)
        close_fd(null)
    except OSError:  # no fd left (the callback's RLIMIT_NOFILE): its output still goes
        pass


def report_launch_failure(reason: str, errno: int | None = None) -> int:
    """Tell the executor on the bridge that the callback could not be started; EXIT_LAUNCH_FAILED.

    Only before the runtime has read its start frame: the executor believes it only
    when the kernel shows that frame was never read (``exit_status``), so an exit 121
    of a callback that ran is its own exit status, and this frame costs a run that
    starts nothing. Formatted here (``protocol.LaunchFailedFrame``): a cold Perl child
    never imports protocol.
    """
    frame: dict[str, object] = {"type": "launch_failed", "reason": reason[-4000:]}
    if errno:  # EAGAIN: the executor's process limit, a refusal rather than a failure
        frame["errno"] = errno
    body = json.dumps(frame).encode()
    try:  # noqa: SIM105 - not contextlib.suppress: one module fewer for a cold start
        os.write(BRIDGE_FD, len(body).to_bytes(4, "big") + body)
    except OSError:
        pass  # no bridge: the exit status alone is then no launch failure
    return EXIT_LAUNCH_FAILED


def check(result: int, what: str) -> None:
    """Raise OSError (with errno) when a libc call failed."""
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def set_process_flag(option: int, value: int) -> None:
    if _prctl(option, value, 0, 0, 0) != 0:  # the message made only when needed
        check(-1, f"prctl({option})")


def die_with_parent() -> None:
    """Be SIGKILLed when the parent dies; end now if the executor is gone already.

    Called again after the last credential change: the kernel clears the parent-death
    signal on every change of uid or gid (``drop_privileges``), which left a hardened
    callback running, unbounded, after a kill -9 of the executor. A parent that died
    before this call sends nothing, and ``getppid()`` cannot tell (it reads 0 in a PID
    namespace): the executor's end of the bridge can. It hangs up (POLLHUP, buffered
    frames or not) only when the executor closed it, at the run's end or its own death,
    and the parents in between (zygote, shim) die with the executor.
    """
    set_process_flag(PR_SET_PDEATHSIG, SIGKILL)
    if _poll(_bridge_pollfd_pointer, 1, 0) == 1 and _bridge_pollfd.revents & POLLHUP:
        _exit(EXIT_LAUNCH_FAILED)


def _join_cgroups(procs_files: list[bytes]) -> None:
    for procs in procs_files:
        # os-level calls: no file object to build (each costs a forked child page faults).
        fd = os.open(procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")  # this process: its pid may be 1 of its own namespace
        finally:
            os.close(fd)


def join_cgroups_through(procs_fds: list[int]) -> None:
    """Join the cgroups whose ``cgroup.procs`` files a zygote opened for this child."""
    for fd in procs_fds:
        write(fd, b"0")


def _apply_rlimits(rlimits: list[tuple[int, tuple[int, int]]]) -> None:
    for which, limits in rlimits:
        setrlimit(which, limits)


# The filters made ready for prctl, by their hex: the spec's whole one, or a zygote's
# closing one (seccomp.build_closing).
_filters: dict[str, seccomp.Prepared] = {}


def prepare_filter(program: str) -> seccomp.Prepared | None:
    """A syscall filter made ready once; a zygote calls this before it forks.

    Its children then find it made: a ctypes object built in a forked child would cost
    it page faults on the shared heap.
    """
    if not program:
        return None
    prepared = _filters.get(program)
    if prepared is None:
        if len(_filters) >= 4:  # the executor sends one or two, for its lifetime
            _filters.clear()
        prepared = _filters[program] = seccomp.Prepared(bytes.fromhex(program))
    return prepared


class Confinement:
    """A launch spec's confinement worked out ahead: each call's arguments, made.

    A zygote makes one per cell and limits before it forks (``zygote.CellSpecs``); its
    children only make the calls: every string encoded, list built or name looked up in
    a forked child is a write to the shared heap, a page fault. The cold path makes its
    own: both confine alike. ``spec``'s working directory only picks the masks it covers
    (``isolation.FilesystemPlan``); ``fits`` tells whether another one does too.
    """

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        cgroup_procs_fds: list[int] | None = None,
        filter_program: str | None = None,
    ) -> None:
        self.site_paths = spec["site_paths"]
        # Opened by a zygote (``join_cgroups_through``), or here by path.
        self.cgroup_procs_fds = cgroup_procs_fds or []
        self.cgroup_procs = (
            [] if cgroup_procs_fds is not None else [p.encode() for p in spec["cgroup_procs"]]
        )
        # The namespaces made after joining the cgroups (CLONE_NEWPID apart: a zygote's
        # child is forked into its own, a cold one makes it).
        flags = 0
        if spec["unshare_network"]:
            flags |= CLONE_NEWNET
        if spec["isolation"] is not None:
            flags |= CLONE_NEWNS
        if spec["ipc_namespace"]:
            flags |= CLONE_NEWIPC
        if spec["cgroup_namespace"]:
            # After _join_cgroups: its root is the cell's cgroup, so /proc/self/cgroup
            # names nothing of the executor's.
            flags |= CLONE_NEWCGROUP
        self.namespace_flags = flags
        isolation = spec["isolation"]
        self.isolation = isolation
        self.filesystem = (
            None
            if isolation is None
            else hardened.FilesystemPlan(
                isolation["masks"],
                isolation["keep"],
                spec["workdir"],
                {"bytes": spec["disk_bytes"], "uid": isolation["uid"], "gid": isolation["gid"]},
                isolation["shared_masks"],  # those a zygote covered already
                isolation["late_masks"],  # the cgroup tree, joined before
                isolation["binds"],  # the policy's, in this namespace only
                isolation["devpts"],  # the callback's own ptys
                isolation["secret_files"],  # the executor's, hidden in each child
                spec["policy"],  # named if a bind changed since start-up
            )
        )
        self.rlimits = [
            (getattr(resource, f"RLIMIT_{name}"), (soft, hard))
            for name, (soft, hard) in spec["rlimits"].items()
        ]
        # Installed last: the spec's whole filter, or what a zygote under its own adds.
        self.filter = prepare_filter(
            spec["seccomp_filter"] if filter_program is None else filter_program
        )

    def fits(self, workdir: str) -> bool:
        """Whether this confinement holds for a working directory other than its spec's."""
        return self.filesystem is None or self.filesystem.fits(workdir)


def _enter_namespaces(flags: int) -> None:
    if flags:
        check(_unshare(flags), "unshare")


def exited_message(pid: int, status: int, usage: resource.struct_rusage) -> bytes:
    """``protocol.ZygoteExited`` of a reaped child: a zygote's, and the cold shim's, report."""
    return b'{"type":"exited","pid":%d,"status":%d,"cpu":%.6f,"maxrss_kib":%d}' % (
        pid,
        status,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss,
    )


def _report(report_fd: int, message: bytes) -> None:
    """One line of the shim's report; an executor that stopped reading is not our concern."""
    try:  # noqa: SIM105 - not contextlib.suppress: one module fewer for a cold start
        os.write(report_fd, message + b"\n")
    except OSError:
        pass


def _shim(pid: int, report_fd: int) -> int:
    """The cold path's parent of the callback: report its pid and its end, then end the same way.

    Never dumpable: nothing of the callback's uid opens its report pipe through /proc.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the callback handles the deadline
    set_process_flag(PR_SET_DUMPABLE, 0)
    _report(report_fd, b'{"type":"started","id":0,"pid":%d}' % pid)
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            break
        except ChildProcessError:
            return EXIT_LAUNCH_FAILED
        except InterruptedError:
            continue
    _report(report_fd, exited_message(pid, status, usage))
    os.close(report_fd)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # theirs cannot be set (EINVAL)
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else EXIT_LAUNCH_FAILED


def _exit_on_sigxcpu(signum: int, frame: object) -> None:
    os._exit(128 + SIGXCPU)


# The callback's own process on the cold path, set in it once forked (None in the shim).
_callback_pid: int | None = None


def end_cold_callback(code: int) -> NoReturn:
    """End a cold Python child whose run returned ``code``, as a zygote's child ends: no finalization.

    Its exit handlers run, its output is flushed, the callback's own process silences
    its daemon threads, then ``_exit``. Python's own exit would finalize the interpreter
    under daemon threads still writing: one holding stdout's lock at that moment makes
    it abort ("could not acquire lock ... at interpreter shutdown"), a run that
    succeeded reported killed. A process the callback forked ends the same way, its
    output left alone (as ``zygote._child``). ``code & 0xFF``: the status ``sys.exit``
    would give, where ``_exit`` refuses an int past C's.
    """
    try:
        _run_exitfuncs()  # SIGTERM in one: a one-line note, then the next (python_bootstrap)
    finally:
        try:
            flush_stdio()
            if getpid() == _callback_pid:
                silence_daemon_threads()
        finally:
            # Whatever raises above (SIGTERM's handler), the run's status, as before.
            _exit(code & 0xFF)


# The Python runtime's entry (``python_bootstrap.run``), set by a zygote that imported it:
# its children then skip the import statement (its lookups write to shared pages).
python_run: Callable[..., int] | None = None


def _run_runtime(spec: LaunchSpec) -> int:
    if spec["language"] == "python":
        if getpid() == 1:
            # PID 1 ignores signals it has no handler for, SIGXCPU included.
            set_handler(SIGXCPU, _exit_on_sigxcpu)
        run = python_run
        if run is None:  # a cold child
            import python_bootstrap

            run = python_bootstrap.run
        # Not int(): a call returning would be one more point where a handler may raise.
        return run(BRIDGE_FD, warm_up=spec["warm_up"])
    argv = spec["argv"]
    os.execv(argv[0], argv)


def _fork_callback(spec: LaunchSpec, confinement: Confinement, report_fd: int) -> int:
    """The cold path: fork the callback (into its PID namespace); -1 in it, else the shim's exit code.

    The callback joins its cell's cgroups, and then makes its cgroup namespace (rooted
    there), itself: the shim stays out of both, as a zygote does.
    """
    namespaces = confinement.namespace_flags & ~CLONE_NEWCGROUP
    if spec["pid_namespace"]:
        namespaces |= CLONE_NEWPID
    _enter_namespaces(namespaces)
    pid = os.fork()
    if pid:
        os.close(BRIDGE_FD)  # EOF on the bridge must mean the callback is gone
        return _shim(pid, report_fd)
    os.close(report_fd)  # the shim's alone to write
    global _callback_pid
    _callback_pid = getpid()
    die_with_parent()  # the shim's death: set again after a uid change (confine_and_run)
    _join_cgroups(confinement.cgroup_procs)
    _enter_namespaces(confinement.namespace_flags & CLONE_NEWCGROUP)
    return -1


def confine_and_run(
    spec: LaunchSpec, confinement: Confinement | None = None, *, report_fd: int | None = None
) -> int:
    """Confine this process as the spec says, then run the callback's runtime.

    Shared by the cold path (``main``, a fresh interpreter, with the pipe ``report_fd``
    to the executor: it forks the callback and stays its parent, ``_fork_callback``) and
    the zygote (a fork of a warm one, with the ``confinement`` it made for the spec's
    cell, its cgroups joined), so both apply exactly the same limits.
    """
    if confinement is None:
        confinement = Confinement(spec)
    # Started with -S (site's .pth processing is most of a cold start): add the
    # site-packages directories themselves so callbacks can import installed packages
    # (a zygote's children have them already; nothing of sys's to touch then).
    if confinement.site_paths:
        sys.path.extend(confinement.site_paths)
    isolation = confinement.isolation
    workdir = spec["workdir"]
    if isolation is None:
        chdir(workdir)  # made by the executor; in the hardened tier it is made below
    set_process_flag(PR_SET_NO_NEW_PRIVS, 1)
    die_with_parent()
    if report_fd is not None:
        shim_exit = _fork_callback(spec, confinement, report_fd)
        if shim_exit >= 0:
            return shim_exit
    elif spec["pid_namespace"]:
        _enter_namespaces(confinement.namespace_flags)  # forked into its PID namespace
    filesystem = confinement.filesystem if spec["pid_namespace"] else None
    if filesystem is not None:
        isolate_filesystem(filesystem, workdir)
        chdir(workdir)  # the working directory's own tmpfs
    # While still root: a hard limit above the executor's own (a unit's LimitNOFILE=, say)
    # needs CAP_SYS_RESOURCE, which the uid drop takes away.
    _apply_rlimits(confinement.rlimits)
    if filesystem is not None and isolation is not None:
        drop_privileges(isolation["uid"], isolation["gid"], isolation["groups"])
        die_with_parent()  # the uid change cleared it
    umask(spec["umask"])
    # Not dumpable, so /proc/self's files stay root's: a dumpable process could reset the
    # peak RSS its usage reports (clear_refs). A uid change leaves it to fs.suid_dumpable,
    # and the filter refuses setting it back; an exec'd Perl sets it itself (bootstrap.pl).
    set_process_flag(PR_SET_DUMPABLE, 0)
    if confinement.filter is not None:
        install_filter(confinement.filter)  # survives the exec of Perl on the cold path
    return _run_runtime(spec)


def main(argv: list[str]) -> int:
    """Cold path: ``python -I -S -B launcher.py SPEC_JSON BRIDGE_FD REPORT_FD``."""
    for stream in (sys.stdout, sys.stderr):  # as a zygote's children have them
        stream.reconfigure(encoding="utf-8", errors="backslashreplace")  # type: ignore[union-attr]
    bridge, report = int(argv[2]), int(argv[3])
    if report == BRIDGE_FD:  # out of the bridge's way
        report = os.dup(report)  # not inheritable: the shim's alone
        os.close(BRIDGE_FD)
    if bridge != BRIDGE_FD:
        os.dup2(bridge, BRIDGE_FD)  # inheritable: an exec'd Perl finds it there too
        os.close(bridge)
    spec: LaunchSpec = json.loads(argv[1])
    if spec["language"] == "python":
        # Imported before the callback is forked, as a zygote does: the callback's
        # figures are then its own run's, not its runtime's import (~20 ms of CPU).
        global python_run
        import python_bootstrap

        python_run = python_bootstrap.run
        python_bootstrap.note_cut_short_exit_handlers()
    try:
        code = confine_and_run(spec, report_fd=report)
    except SystemExit as err:  # SIGTERM's, from the bootstrap (143)
        if _callback_pid is None:
            raise
        code = err.code if isinstance(err.code, int) else 1
    except Exception as err:  # noqa: BLE001 - before the start frame: the callback never ran
        # No traceback module: a mount that failed half way may have covered the stdlib.
        reason = f"{type(err).__name__}: {err}"
        try:  # noqa: SIM105 - as in _report
            os.write(2, f"launcher: could not start the callback: {reason}\n".encode())
        except OSError:
            pass
        return report_launch_failure(reason, getattr(err, "errno", None))
    if _callback_pid is None:  # the shim, mirroring the callback's end
        return code
    end_cold_callback(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
