"""Warm fork server: forks one confined child per callback from a pre-loaded interpreter.

Why: a cold ``python -I -S`` child spends ~50 ms importing json, traceback and ctypes
and tearing down; a fork of this already-warm, single-threaded process costs ~1 ms
(sandbox.md §5.1). The executor itself never forks without exec (gRPC's fork handlers);
it starts this process with fork+exec and talks to it over a SOCK_SEQPACKET socket:

executor -> zygote   ``{"type":"spawn","id":N,"workdir":W,"warm_up":B,"env":{...}}``, a
                     newline, the cell's part of the launch spec ``{...}``, with
                     SCM_RIGHTS fds [stdout_w, stderr_w, bridge]
executor -> zygote   ``ping`` (no fds), answered ``{"type":"pong"}`` at once: the
                     executor's watchdog, while this process owes it answers
zygote -> executor   ``{"type":"started","id":N,"pid":P}`` or ``{"type":"failed","id":N,...}``
                     (with the fork's ``errno`` when it was the fork that failed)
                     ``{"type":"exited","pid":P,"status":S,"cpu":C,"maxrss_kib":K}``

(``protocol.SpawnRequest``, ``encode_spawn``, ``ZygoteStarted``, ``ZygoteFailed``,
``ZygoteExited``, ``ZYGOTE_PING``.) A cell's part of the spec is parsed once (``CellSpecs``).

This process's end of the socket blocks (the executor makes only its own end
non-blocking): a report that finds the socket full waits until the executor has read
the ones before it, never fails. The executor queues what finds its end full, in order.

The child does what the cold path's Popen + launcher do: new session, stdin from
/dev/null, the passed stdout/stderr, the bridge as fd 3, every other fd closed, the
given environment, then ``launcher.confine_and_run`` (which enters the working
directory). When the spec asks for a PID namespace, the zygote forks the child straight
into a fresh one (it is PID 1 there): the cold path's shim, a second fork of a Python
process and its exit on every run, is not needed. The zygote reaps its children (each watched through a pidfd) and
reports their wait status and rusage. If this process dies, its children die with it
(PR_SET_PDEATHSIG) and the executor reports them as killed.

With ``--private-network`` each cell (one run at a time) has an empty network namespace
of its own, made here on its first child (~1 ms, once) and entered before each of its
children is forked (a setns, microseconds): abstract Unix sockets, which live in a
network namespace, never reach another cell's callbacks. The syscall filter of the
spec is made ready here before the fork too (``launcher.Confinement``). This process
puts itself under that filter, with the calls its children confine themselves with
allowed (``OwnFilter``); each child adds a closing program of a few instructions
instead of installing the whole filter, which cost it ~0.3 ms of CPU.
"""

from __future__ import annotations

import array
import ctypes
import gc
import io
import json
import os
import resource
import select
import signal
import socket
import sys
from atexit import _run_exitfuncs
from os import _exit, closerange, dup2, getpid, setsid
from typing import TYPE_CHECKING

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I leaves it out

import attribute_cache
import isolation as isolation_module
import launcher
import protocol  # warm for the children
import python_bootstrap
import qb
import seccomp
from launcher import (
    EXIT_LAUNCH_FAILED,
    confine_and_run,
    exited_message,
    flush_stdio,
    join_cgroups_through,
    mark_end,
    report_launch_failure,
    silence_daemon_threads,
)

if TYPE_CHECKING:
    from protocol import LaunchSpec, ZygoteFailed

BRIDGE_FD = protocol.BRIDGE_FD
ZYGOTE_PING = protocol.ZYGOTE_PING
ZYGOTE_PONG = protocol.ZYGOTE_PONG
MAX_MESSAGE = 64 << 10  # spawner.py's; larger spawn messages are never sent
# Every fd above the bridge is closed in a child (looked up once, not per child).
MAX_FD = os.sysconf("SC_OPEN_MAX")
# Cells' spec parts kept parsed (cells x their limits); more and the cache starts over.
MAX_CELL_SPECS = 256
PR_SET_DUMPABLE = 4

_libc = ctypes.CDLL(None, use_errno=True)
# The modules whose code runs in a child, from the fork to its exit (this one: _child).
CHILD_MODULES = (
    sys.modules[__name__],
    launcher,
    isolation_module,
    seccomp,
    protocol,
    python_bootstrap,
    qb,
)


class PidNamespaces:
    """Puts each next child in a PID namespace of its own, or in ours.

    unshare(CLONE_NEWPID) only sets the namespace of the *next* children, and refuses
    once that differs from our own; setns back to our own namespace first re-arms it.
    That is done before the next fork, not after each one: a call after the fork costs
    the zygote ~17 page faults per child (the child shares every page it writes), and
    the last child's spent namespace is all it keeps alive meanwhile.
    """

    def __init__(self) -> None:
        self._own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self._next_in_own = True

    def before_fork(self, *, new: bool) -> None:
        """The next child: PID 1 of a new namespace, or in ours."""
        if new or not self._next_in_own:
            launcher.check(_libc.setns(self._own, launcher.CLONE_NEWPID), "setns")
            self._next_in_own = True
        if new:
            self._next_in_own = False  # whether unshare works or not: re-arm next time
            launcher.check(_libc.unshare(launcher.CLONE_NEWPID), "unshare(CLONE_NEWPID)")


class CellNetworks:
    """Puts each next child in its cell's own empty network namespace, with no earlier child's socket.

    Made on the cell's first child (unshare, ~1 ms under a kernel-wide lock) and kept
    open; later children of the cell are forked after a setns into it. Done before the
    fork, as PidNamespaces is: nothing for the child to do.

    A cell runs one child at a time, so when the next is forked no socket should be left
    in its namespace. One can be: a socket a callback hid in flight (an ``SCM_RIGHTS``
    cycle) outlives its processes until the kernel's garbage collector frees it, which
    it may not have done yet, and an abstract name it bound would reach the next run
    (measured: one run in three). The namespace's socket count (``sockstat``, ~9 us of
    CPU to read) tells; then the cell gets a fresh namespace, and the old one goes when
    the collector frees what it holds. A new namespace per child would cost ~0.35 ms.
    """

    def __init__(self) -> None:
        self._cells: dict[int, int] = {}
        self._current = -1

    def before_fork(self, cell: int) -> None:
        """The next child starts in ``cell``'s network namespace, where no socket is left."""
        if cell != self._current:
            self._current = -1  # unknown until the calls below succeed
            fd = self._cells.get(cell)
            if fd is None:
                self._make(cell)
            else:
                launcher.check(_libc.setns(fd, launcher.CLONE_NEWNET), "setns(network)")
            self._current = cell
        if _sockets_in_use():
            self._current = -1
            os.close(self._cells.pop(cell))
            self._make(cell)
            self._current = cell

    def _make(self, cell: int) -> None:
        launcher.check(_libc.unshare(launcher.CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        self._cells[cell] = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _sockets_in_use() -> int:
    """How many sockets this process's network namespace holds (``sockets: used N``)."""
    fd = os.open("/proc/self/net/sockstat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        first_line = os.read(fd, 256).split(b"\n", 1)[0]
    finally:
        os.close(fd)
    return int(first_line.rsplit(b" ", 1)[1])


_libc.clearenv, _libc.putenv  # noqa: B018 - looked up now, as launcher.py explains


class ChildEnvironment:
    """Makes the next child's environment this process's own, just before the fork.

    The child then has nothing to do for it: setting it there, first write after first
    write to the shared heap, cost each child ~55 page faults. Here it touches pages the
    loop writes for every child anyway. The zygote itself never reads its environment.
    """

    def __init__(self) -> None:
        # The variables libc's environment points into (putenv keeps the pointer).
        self._variables: list[bytes] = []

    def before_fork(self, variables: list[bytes]) -> None:
        """This process's environment (libc's, ``os.environ``) becomes ``variables`` (b"NAME=value")."""
        _libc.clearenv()
        encoded = {}
        for variable in variables:
            launcher.check(_libc.putenv(variable), "putenv")
            name, _, value = variable.partition(b"=")
            encoded[name] = value
        self._variables = variables
        os.environ._data = encoded  # type: ignore[attr-defined]  # the mapping's own store


class CgroupFilesError(Exception):
    """A cell's ``cgroup.procs`` file could not be opened: its children cannot start."""


class CellCgroupFiles:
    """Each cell's ``cgroup.procs`` files, opened by the zygote and kept for its children.

    A child joins its cell's cgroups by writing to the descriptors it inherits: it
    opens nothing, and the cgroup tree (a late mask, which it had to join through
    before covering it) can be covered once here with the other masks instead of by a
    tmpfs mounted in every child (measured: ~0.1-0.3 ms of CPU per child, the mount and
    its teardown). The files are opened relative to the tree's directories, held from
    before the zygote covered them: the tree's own and each mount's in it (the cgroup
    v1 hierarchies), which the zygote then detaches (``isolation.share_masks``). A
    cell's cgroups live as long as the executor, which outlives this process.
    """

    def __init__(self) -> None:
        # A late mask, or a mount point under one -> an O_PATH descriptor of it.
        self._roots: dict[str, int] = {}
        self._files: dict[str, int] = {}  # a cgroup.procs path -> its descriptor

    def hold_roots(self, late_masks: list[str]) -> None:
        """Keep a way into each late mask and each mount in it; call before covering them."""
        for mask in late_masks:
            for root in (mask, *isolation_module.mount_points_under(mask)):
                if root not in self._roots:
                    try:  # noqa: SIM105 - no contextlib in the zygote for one call
                        self._roots[root] = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    except NotADirectoryError:
                        pass  # a file mounted there: no cgroup.procs under it

    def opened(self, procs_files: list[str]) -> list[int]:
        """The descriptors of ``procs_files`` (opened on their first use); CgroupFilesError."""
        fds = []
        for path in procs_files:
            fd = self._files.get(path)
            if fd is None:
                try:
                    fd = self._open(path)
                except OSError as err:
                    raise CgroupFilesError(f"could not open {path}: {err}") from err
                self._files[path] = fd
            fds.append(fd)
        return fds

    def _open(self, path: str) -> int:
        flags = os.O_WRONLY | os.O_CLOEXEC
        held = [root for root in self._roots if isolation_module.under(path, root)]
        if held:
            innermost = max(held, key=len)  # the mount the file is on
            return os.open(os.path.relpath(path, innermost), flags, dir_fd=self._roots[innermost])
        return os.open(path, flags)


class SharedMasks:
    """The hardened tier's masks this zygote covered once for all its children (``isolation.share_masks``).

    Done at the first spawn that asks for the tier, since only then is the plan known.
    The late masks (the cgroup tree) are covered here too: the children join their
    cgroups through ``CellCgroupFiles``.
    """

    def __init__(self, cgroup_files: CellCgroupFiles) -> None:
        self._plan: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None = None
        self._shared: list[str] = []
        self._cgroup_files = cgroup_files

    def apply(self, spec: LaunchSpec) -> LaunchSpec:
        """``spec`` as the child needs it: its isolation names the masks already covered.

        OSError when they could not be covered; this process's mounts are then in an
        unknown state, so the zygote must not fork from it any more.
        """
        isolation = spec["isolation"]
        if isolation is None:
            return spec
        plan = (tuple(isolation["masks"]), tuple(isolation["keep"]), tuple(isolation["late_masks"]))
        if self._plan is None:
            self._plan = plan
            self._cgroup_files.hold_roots(isolation["late_masks"])
            self._shared = isolation_module.share_masks(
                [*isolation["masks"], *isolation["late_masks"]],
                isolation["keep"],
                spec["workdir"],
                own_devpts=bool(isolation["devpts"]),
            )
        if plan != self._plan:
            return spec  # another plan: the child covers every mask itself
        covered = isolation.copy()
        covered["shared_masks"] = self._shared
        # Covered here, unless one holds the working directories (then each child does).
        covered["late_masks"] = [m for m in isolation["late_masks"] if m not in self._shared]
        confined = spec.copy()
        confined["isolation"] = covered
        return confined


class OwnFilter:
    """This zygote's own syscall filter, and the program its children add to it.

    The spec's ``seccomp_zygote_filter`` (the whole filter, ``seccomp.CONFINING``
    allowed) goes on this process once, before its first fork under it. Children then
    install only ``seccomp_closing_filter``, and end up deciding every call as the
    whole filter does. Where that cannot hold (the kernel refused, or a spec brings
    another filter) the children install the spec's whole filter, stacked on this one.
    """

    def __init__(self) -> None:
        self._installed = ""  # its hex; "-" once the kernel refused it

    def children_program(self, spec: LaunchSpec) -> str:
        own = spec["seccomp_zygote_filter"]
        if own and not self._installed:
            try:
                launcher.set_process_flag(launcher.PR_SET_NO_NEW_PRIVS, 1)
                seccomp.install(seccomp.Prepared(bytes.fromhex(own)))
                self._installed = own
            except OSError:
                self._installed = "-"
        if own and own == self._installed:
            return spec["seccomp_closing_filter"]
        return spec["seccomp_filter"]


class CellSpecs:
    """Each cell's part of the launch spec, parsed and its confinement made once.

    The part (``protocol.encode_spawn``) is the same bytes for every child of a cell
    with the same limits. Parsing the whole spec per spawn cost the zygote ~85 page
    faults per fork (json allocates on pages the last child shares), and making the
    confinement's arguments in each child ~100 more. The hardened tier's shared masks
    are applied once too.
    """

    def __init__(self) -> None:
        self._specs: dict[bytes, tuple[LaunchSpec, launcher.Confinement]] = {}
        self._cgroup_files = CellCgroupFiles()
        self._shared_masks = SharedMasks(self._cgroup_files)
        self._site_paths: list[str] | None = None
        self._own_filter = OwnFilter()

    def spec(
        self, cell_part: bytes, workdir: str, *, warm_up: bool
    ) -> tuple[LaunchSpec, launcher.Confinement]:
        """A child's launch spec and confinement; OSError as ``SharedMasks.apply``, CgroupFilesError."""
        cached = self._specs.get(cell_part)
        if cached is None:
            parsed = json.loads(cell_part)
            parsed["workdir"] = workdir
            spec = self._shared_masks.apply(parsed)
            cached = (spec, self._confinement(spec))
            if len(self._specs) >= MAX_CELL_SPECS:
                self._specs.clear()
            self._specs[cell_part] = cached
        spec = cached[0].copy()
        spec["workdir"] = workdir
        spec["warm_up"] = warm_up
        confinement = cached[1]
        if not confinement.fits(workdir):  # under another mask: one made for this child
            confinement = self._confinement(spec)
        return spec, confinement

    def _confinement(self, spec: LaunchSpec) -> launcher.Confinement:
        """The spec's confinement, its cgroups joined through descriptors this process holds.

        The site-packages directories go on this process's own ``sys.path`` (the first
        cell's; the executor's are the same for all): its children inherit them instead
        of each extending the list, a write to the shared heap.
        """
        held = self._cgroup_files.opened(spec["cgroup_procs"])
        confinement = launcher.Confinement(
            spec,
            cgroup_procs_fds=held,
            filter_program=self._own_filter.children_program(spec),
        )
        if self._site_paths is None:
            self._site_paths = confinement.site_paths
            sys.path.extend(self._site_paths)
        if confinement.site_paths == self._site_paths:
            confinement.site_paths = []  # on the path already
        return confinement


def _child(
    spec: LaunchSpec, confinement: launcher.Confinement, fds: list[int], devnull: int
) -> None:
    """In the forked child: take the passed fds, confine, run; never returns.

    Its calls are imported by name (see launcher.py): ``os.dup2`` here would write the
    reference counts of the name, os and its dict, page faults a global lookup saves.
    A process the callback forks comes back here too when it ends (its ``run`` returns,
    its exit handlers run): it exits with its own status, without the end mark, which
    is its callback's own process's alone to make.
    """
    code = EXIT_LAUNCH_FAILED
    own = getpid()
    try:
        setsid()
        stdout_w, stderr_w, bridge = fds
        # No loop over pairs: each tuple made here would be one more write to the heap.
        dup2(devnull, 0)
        dup2(stdout_w, 1)
        dup2(stderr_w, 2)
        dup2(bridge, BRIDGE_FD)
        join_cgroups_through(confinement.cgroup_procs_fds)  # before they are closed
        closerange(BRIDGE_FD + 1, MAX_FD)
        # sys.stdout and sys.stderr are the zygote's own, set up in main(): they write to
        # fds 1 and 2, which now are the run's pipes.
        code = confine_and_run(spec, confinement)
        _run_exitfuncs()
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException as err:  # noqa: BLE001 - report anything, then leave without the zygote's cleanup
        import traceback

        traceback.print_exc()
        # Only before the start frame is read: the bootstrap reports whatever escapes a
        # run that started itself (EXIT_REPORT_FAILED). Not marked: the end mark's wait
        # would read the unread start frame, the executor's evidence that the callback
        # never ran.
        code = report_launch_failure(f"{type(err).__name__}: {err}", getattr(err, "errno", None))
        own = -1
    finally:
        try:
            flush_stdio()
            if getpid() == own:
                silence_daemon_threads()
                mark_end()  # after the exit handlers: nothing of the run's is left to do
        finally:
            # Whatever raises above (SIGTERM's handler in the end mark's wait), this
            # process never returns to the zygote's loop, and leaves with the run's status.
            _exit(code)


def _send(control: socket.socket, message: ZygoteFailed) -> None:
    control.send(json.dumps(message).encode())


# The two messages of every child, formatted without json: an encoder made per message
# costs the zygote ~20 page faults right after each fork.
def _started(request_id: int, pid: int) -> bytes:
    return b'{"type":"started","id":%d,"pid":%d}' % (request_id, pid)


# Ancillary room for the three fds of a spawn request, computed once.
_FDS_SPACE = socket.CMSG_SPACE(3 * 4)


def _receive(control: socket.socket) -> tuple[bytes, list[int]]:
    """One control message and the fds it carried (``socket.recv_fds`` without its array)."""
    data, ancillary, _flags, _address = control.recvmsg(MAX_MESSAGE, _FDS_SPACE)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            # array, not a comprehension: no function object made per message
            fds += array.array("i", payload[: len(payload) - len(payload) % 4])
    return data, fds


def _not_a_spawn(control: socket.socket, data: bytes, fds: list[int]) -> bool:
    """Answer a message that starts no child: the watchdog's ping, or one without its 3 fds."""
    if data == ZYGOTE_PING:
        answer = ZYGOTE_PONG
    elif len(fds) != 3:
        failed = {"type": "failed", "id": protocol.decode_spawn(data)[0], "error": "expected 3 fds"}
        answer = json.dumps(failed).encode()
    else:
        return False
    for fd in fds:
        os.close(fd)
    control.send(answer)
    return True


class Children:
    """The children alive, each watched through a pidfd in the loop's poll; reaped, reported.

    No SIGCHLD handler and wakeup fd: each child would have them to undo (~16 page faults).
    """

    def __init__(self, control: socket.socket, poller: select.poll) -> None:
        self._control = control
        self._poller = poller
        self._pids: dict[int, int] = {}  # pidfd -> pid

    def add(self, pid: int) -> None:
        """Watch ``pid``, just forked and reported started."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            # Unwatched, its end would never be reported: ended now instead.
            os.kill(pid, signal.SIGKILL)
            self._report(pid)
            return
        self._pids[pidfd] = pid
        self._poller.register(pidfd, select.POLLIN)

    def reap(self, pidfd: int) -> bool:
        """Reap and report the child of ``pidfd`` when it is one of ours (it has exited)."""
        pid = self._pids.pop(pidfd, 0)
        if not pid:
            return False
        self._poller.unregister(pidfd)
        os.close(pidfd)
        self._report(pid)
        return True

    def _report(self, pid: int) -> None:
        _, status, usage = os.wait4(pid, 0)
        self._control.send(exited_message(pid, status, usage))


def serve(control: socket.socket, *, private_network: bool = False) -> None:
    """Serve spawn requests until the executor closes the control socket."""
    devnull = os.open(os.devnull, os.O_RDONLY)  # each child's stdin
    # poll, not selectors: less Python per message (each page it writes is a fault here,
    # as the last child forked shares them all).
    poller = select.poll()
    poller.register(control, select.POLLIN)
    children = Children(control, poller)
    namespaces = PidNamespaces()
    networks = CellNetworks() if private_network else None
    cell_specs = CellSpecs()
    environment = ChildEnvironment()
    # Last before the freeze: the children's module lookups find their cache entries made.
    attribute_cache.warm_module_lookups(attribute_cache.names_used_by(CHILD_MODULES))
    gc.freeze()  # keep the warm heap shared with the children (copy-on-write)
    while True:
        for ready, _ in poller.poll():
            if children.reap(ready):
                continue
            data, fds = _receive(control)
            if not data:
                return  # the executor is gone; our children follow via PDEATHSIG
            if _not_a_spawn(control, data, fds):
                continue
            request_id, cell_part, workdir, warm_up, env = protocol.decode_spawn(data)
            pid = -1
            error = ""
            error_number = 0
            try:
                spec, confinement = cell_specs.spec(cell_part, workdir, warm_up=warm_up)
            except CgroupFilesError as err:
                for fd in fds:
                    os.close(fd)
                _send(control, {"type": "failed", "id": request_id, "error": str(err)})
                continue
            except OSError as err:
                for fd in fds:
                    os.close(fd)
                error = f"could not cover the masks: {err}"
                _send(control, {"type": "failed", "id": request_id, "error": error})
                return  # the executor starts a new zygote, or the cold path
            try:
                if networks is not None:
                    networks.before_fork(spec["cell"])
                namespaces.before_fork(new=spec["pid_namespace"])
                environment.before_fork(env)
                pid = os.fork()
            except OSError as err:
                error, error_number = str(err), err.errno or 0
            if pid == 0:
                # The child leaves our objects alone (each touch is a page fault) and
                # never returns to them: closing fds above its bridge closes their fds.
                _child(spec, confinement, fds, devnull)
            for fd in fds:
                os.close(fd)
            if pid > 0:
                control.send(_started(request_id, pid))
                children.add(pid)
            else:
                _send(
                    control,
                    {"type": "failed", "id": request_id, "error": error, "errno": error_number},
                )


def _stdio_stream(fd: int, name: str, *, line_buffering: bool) -> io.TextIOWrapper:
    """A text stream over ``fd`` as Python's start-up makes one, in UTF-8 with backslash escapes."""
    buffered = open(fd, "wb", closefd=False)  # noqa: SIM115 - sys's for good
    buffered.raw.name = name  # type: ignore[attr-defined]  # a FileIO's, as Python names it
    return io.TextIOWrapper(
        buffered,
        encoding="utf-8",
        errors="backslashreplace",
        newline="\n",
        line_buffering=line_buffering,
    )


def _make_children_stdio() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` once for every child, as Python makes them over a pipe.

    A child keeps them (a fresh wrapper per child would cost it ~0.4 ms of page faults)
    and writes through them to fds 1 and 2, which ``_child`` makes its run's pipes. A
    stream asks its file once whether it can seek, and keeps the answer: made over this
    process's own stdout (/dev/null) they took themselves for seekable, and a callback's
    ``sys.stdout.reconfigure(encoding=...)`` or ``tell()`` sought on its pipe (ESPIPE).
    So they are made while a pipe stands on fds 1 and 2, before any child is forked.
    Buffered as Python's (stderr by lines). The zygote itself never writes to stdout,
    and to stderr only when it fails, so no child inherits buffered output.
    """
    read_end, write_end = os.pipe()
    own = os.dup(1), os.dup(2)
    try:
        dup2(write_end, 1)
        dup2(write_end, 2)
        stdout = _stdio_stream(1, "<stdout>", line_buffering=False)
        stderr = _stdio_stream(2, "<stderr>", line_buffering=True)
    finally:
        dup2(own[0], 1)
        dup2(own[1], 2)
        for fd in (*own, read_end, write_end):
            os.close(fd)
    sys.stdout = sys.__stdout__ = stdout  # type: ignore[misc]  # typeshed's Final: the originals now
    sys.stderr = sys.__stderr__ = stderr  # type: ignore[misc]


def main(argv: list[str]) -> int:
    """``python -I -S -B zygote.py CONTROL_FD``."""
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no /proc/<pid>/mem or environ for callbacks
    _libc.prctl(launcher.PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # A Ctrl-C reaches the executor's whole process group: the executor stops, and ends
    # this process when it has finished. Its children inherit the ignoring until their
    # start frame (python_bootstrap._start_frame): an idle child is not broken by one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    private_network = "--private-network" in argv[2:]
    # Out of the host's network at once; each cell gets one of its own (CellNetworks).
    # The control socket, a socketpair, keeps working across namespaces.
    if private_network and _libc.unshare(launcher.CLONE_NEWNET) != 0:
        return 1
    _make_children_stdio()
    control = socket.socket(fileno=int(argv[1]))
    python_bootstrap.warm_zygote()  # before serve()'s gc.freeze: shared by every child
    python_bootstrap.note_cut_short_exit_handlers()
    launcher.python_run = python_bootstrap.run
    try:  # noqa: SIM105 - not contextlib.suppress: one more module for the children to share
        serve(control, private_network=private_network)
    except ConnectionError:
        # The executor is gone as an EOF is (killed with messages of ours unread: the
        # read is ECONNRESET; or a write to it, EPIPE): our children follow via PDEATHSIG.
        pass
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main(sys.argv))
