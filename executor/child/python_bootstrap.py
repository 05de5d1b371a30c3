"""Run one Python callback inside the sandbox: bind ``qb``, exec the code, report a ``done`` frame.

Runs after the launcher has applied the limits. ``sys.exit()`` ends only this process
(reported as status ``exit``); a ``MemoryError`` under RLIMIT_AS is status ``memory``;
code that does not compile is ``rejected`` and never runs. A process the callback forks
that comes back here ends as Python would end it (its own status, an uncaught
exception's traceback on its stderr) and reports nothing: the run is its callback's own
process's to report and end.
"""

from __future__ import annotations

import _sitebuiltins
import builtins
import ctypes
import os
import signal
import sys
import traceback
import types
from _signal import (  # type: ignore[import-not-found]  # not signal's wrappers: see launcher.py
    SIG_DFL,
    SIG_IGN,
    SIGINT,
    default_int_handler,
    getsignal,
    valid_signals,
)
from _signal import signal as set_handler
from functools import partial
from itertools import compress
from linecache import cache as source_lines
from os import environ, getpid
from typing import TYPE_CHECKING, Any

import protocol
import qb
from protocol import GO_FRAME, decode_trusted, read_frame, read_go, write_all, write_frame

if TYPE_CHECKING:
    from collections.abc import Callable

    from protocol import DoneFrame, DoneStatus, ParentFrame, StartFrame

CALLBACK_FILENAME = "<callback>"
SIGTERM = int(signal.SIGTERM)  # an int: the enum member would be one more object to touch
EXIT_ON_SIGTERM = 128 + SIGTERM
# The callback never ran: no start frame, or code that does not compile (as bootstrap.pl).
EXIT_BAD_START = 2
# Each text of a done frame is cut to this many characters, with a marker: never below the
# executor's bounds (256 characters, 4 KiB, 64 KiB: it cuts further, by UTF-8 bytes), and
# the frame stays under the bridge's 1 MiB (JSON may spend 12 bytes on a character).
DONE_TYPE_CHARS, DONE_MESSAGE_CHARS, DONE_TRACEBACK_CHARS = 1 << 10, 4 << 10, 64 << 10
# An exception escaped the bootstrap after the start frame: the callback may have run, so
# this is not the launcher's EXIT_LAUNCH_FAILED (the executor's exit_status.py says which).
EXIT_REPORT_FAILED = 122

SIGXCPU = int(signal.SIGXCPU)
# Signals whose handler, once the callback's code and threads are done, is what their
# default action would be anyway (SIG_DFL): ignored ones, and those the kernel sends for
# a fault. SIGTERM gets the bootstrap's own handler back, SIGXCPU the one the run started
# with (launcher.py's in a PID 1); every other one is ignored (see _set_handlers_aside).
_DEFAULT_AFTER_THE_RUN = frozenset(
    int(signum)
    for signum in (
        signal.SIGCHLD,
        signal.SIGURG,
        signal.SIGWINCH,
        signal.SIGCONT,
        signal.SIGSEGV,
        signal.SIGBUS,
        signal.SIGFPE,
        signal.SIGILL,
        signal.SIGABRT,
        signal.SIGSYS,
        signal.SIGTRAP,
    )
)
_HANDLED_SIGNALS = tuple(
    sorted(int(s) for s in valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
)
# libc's signal(signum, SIG_IGN) as a one-argument call, so that one C-level call
# (sorted's key) sets many at once: no Python code, so no handler, runs in between.
_ignore_in_kernel = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)(
    ("signal", ctypes.CDLL(None)), ((1, "signum"), (1, "handler", SIG_IGN))
)
# The SIGXCPU handler the run started with (run() records it): launcher.py's in a PID 1.
_sigxcpu_handler: Any = SIG_DFL
# A class's own name, never its metaclass's __name__ (Python code, which may raise or exit).
_class_name = vars(type)["__name__"].__get__

# site's exit() and quit(), which plain python and Qube's embedded Python have: the child
# runs without site (-S). Set once, at import: in a zygote, before its children are forked.
builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")


class Terminated(SystemExit):
    """SIGTERM arrived: a SystemExit, so the callback's ``finally`` blocks run."""


def _within(text: str, most: int) -> str:
    """``text``, or its first characters with a marker: ``most`` characters in all."""
    if len(text) <= most:
        return text
    return f"{text[: most - 32]}…[{len(text) - most + 32} more characters]"


def _within_end(text: str, most: int) -> str:
    """``text``, or a marker and its last characters: a traceback's cause is at its end."""
    if len(text) <= most:
        return text
    return f"…[{len(text) - most + 32} earlier characters]{text[-(most - 32) :]}"


def _on_sigterm(signum: int, frame: types.FrameType | None) -> None:
    # The executor's wall deadline or stop (it knows those itself), or someone else's
    # kill: unwind the callback before SIGKILL, and say in the done frame how it ended.
    raise Terminated(EXIT_ON_SIGTERM)


def _report_unraisable(unraisable: Any) -> None:
    """``sys.unraisablehook``: SIGTERM's ``Terminated`` in an exit handler as a one-line note.

    Python reports an exception an ``atexit`` handler raised, and goes on to the next one:
    for the executor's SIGTERM (the wall limit, a stop) that report named this file and
    ``python_bootstrap.Terminated``, none of the callback's business. Any other exception
    is reported as Python reports it.
    """
    if not isinstance(unraisable.exc_value, Terminated):
        sys.__unraisablehook__(unraisable)
        return
    # Its function's name, and whether it ran as an exit handler or as another cleanup
    # (a __del__, say) whose exception Python also cannot raise anywhere.
    name = getattr(unraisable.object, "__qualname__", None)
    kind = "exit handler" if "atexit" in str(unraisable.err_msg) else "cleanup"
    what = f"{kind} {name}()" if isinstance(name, str) else kind
    try:  # noqa: SIM105 - not contextlib.suppress: one more module for a child to touch
        sys.stderr.write(f"{what} was cut short: the run was stopped (SIGTERM)\n")
    except Exception:  # noqa: BLE001, S110 - its stderr may be gone
        pass


def note_cut_short_exit_handlers() -> None:
    """Report SIGTERM in an exit handler as a note (``_report_unraisable``), in this process and its forks.

    Called by a zygote before its children are forked and by the cold launcher, not per
    child: a callback that sets a hook of its own has its own.
    """
    sys.unraisablehook = _report_unraisable


def _user_traceback(err: BaseException) -> str:
    """The traceback restricted to the callback's own frames."""
    summary = traceback.TracebackException.from_exception(err)
    summary.stack = traceback.StackSummary.from_list(
        [frame for frame in summary.stack if frame.filename == CALLBACK_FILENAME]
    )
    return "".join(summary.format())


def _to_stderr(text: str) -> None:
    """Write ``text`` to the callback's stderr as python would: ``sys.stderr``, else the original.

    Python writes to fd 2 when ``sys.stderr`` is None; whatever the callback left there
    (a tee whose write raises or exits) stops nothing.
    """
    for stream in (sys.stderr, sys.__stderr__):
        try:
            stream.write(text)  # type: ignore[union-attr]  # None raises, as anything else may
        except Terminated:
            raise  # SIGTERM: the run ends with its status, as everywhere
        except BaseException:  # noqa: BLE001, S110 - the callback's stream, broken: the next
            pass
        else:
            return


def _exited(err: SystemExit) -> DoneFrame:
    """The done frame of ``sys.exit(code)``, as CPython exits.

    A code neither None nor an int (``sys.exit("no frames")``) is the status 1, its str()
    printed to stderr and sent as the frame's message (nothing when its str() fails).
    """
    code = err.code
    if code is None:
        return {"type": "done", "status": "exit", "exit_code": 0}
    if isinstance(code, int):
        return {"type": "done", "status": "exit", "exit_code": int(code)}  # a bool: 0 or 1
    try:
        reason = "%s" % (code,)  # noqa: UP031 - a str, never a subclass with methods of its own
    except Terminated:
        raise
    except BaseException:  # noqa: BLE001 - its str() raised or exited: the exit is still 1
        return {"type": "done", "status": "exit", "exit_code": 1}
    _to_stderr(reason + "\n")
    return {"type": "done", "status": "exit", "exit_code": 1, "message": reason}


def _raised(status: DoneStatus, err: BaseException, message: str = "") -> DoneFrame:
    """The done frame of an exception; never raises, whatever the exception's str() does.

    Its str() may even raise SystemExit (a __str__ that calls sys.exit): the callback
    raised, so the run failed, as plain python exits 1 then.
    """
    name = _class_name(type(err))
    try:
        message = message or f"{name}: {err}"
    except Terminated:
        raise
    except BaseException:  # noqa: BLE001 - the callback's own __str__ raised or exited
        message = f"{name}: <its str() raised>"
    try:
        trace = _user_traceback(err)
    except Terminated:
        raise
    except BaseException:  # noqa: BLE001 - as above, inside the traceback's formatting
        trace = ""
    return {
        "type": "done",
        "status": status,
        "exception_type": name,
        "message": message,
        "traceback": trace,
    }


# A start frame of the usual shape, for the warm-up below.
_WARM_UP_FRAME = protocol.encode(
    {
        "type": "start",
        "language": "python",
        "code": "x = qb.jobid()",
        "context": {
            "job": {"id": 1},
            "event": None,
            "work_name": "",
            "subjob_id": -1,
            "callback": {
                "id": 1,
                "pid": 0,
                "triggers": "",
                "language": "python",
                "user": "",
                "count": 0,
                "maximum": 0,
            },
        },
    }
)


# Its body, cut once: the warm-up decodes it without a slice made per child.
_WARM_UP_BODY = _WARM_UP_FRAME[protocol.HEADER.size :]

# The done frame of a callback that ran to its end, encoded once (the common case
# writes it without json: an encoder run in a forked child touches shared pages).
_DONE_OK = protocol.encode({"type": "done", "status": "ok", "exit_code": 0})


def _warm_up() -> None:
    """Walk the path of a trivial run once before the start frame arrives.

    A child forked from the zygote shares its heap copy-on-write; the first run through
    the frame codec, compile and exec writes reference counts on hundreds of shared
    pages, and each first write is a page fault and a copy. A child prepared ahead takes
    those faults here, while it waits, instead of on the request's path (measured: the
    start frame to the done frame of a trivial callback, 1.5 ms without, 1.2 ms with).
    It walks the run's own path (the real ``qb``, no frame encoded: a run that ends
    well sends ``_DONE_OK``), since every page touched only here is a fault for nothing.
    """
    start = decode_trusted(_WARM_UP_BODY)
    qb._bind(-1, start["context"])  # run() binds the bridge and the real context
    code = compile(start["code"], CALLBACK_FILENAME, "exec", dont_inherit=True)
    exec(code, {"__name__": "__main__", "__builtins__": builtins, "qb": qb})


def warm_zygote() -> None:
    """Run the trivial path once in the zygote, so its children find everything made.

    Above all ``compile()``: its first call builds the AST types. When the modules came
    from ``.pyc`` files (as ``pip install`` leaves them) nothing in the zygote ever
    compiled, and every child paid for building them: ~2.5 ms of CPU per Python child.
    The frame encoder too, for the children's qb calls.
    """
    _warm_up()
    protocol.encode({"type": "done", "status": "ok", "exit_code": 0})
    # The frame's way in and the done frame's way out, and the flush of stdio that ends
    # a run: their method lookups fill the type cache here, not in every child.
    read_end, write_end = os.pipe()
    try:
        write_all(write_end, _WARM_UP_FRAME + GO_FRAME + _DONE_OK)
        read_frame(read_end)
        read_go(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)
    sys.stdout.flush()
    sys.stderr.flush()


def _wait_for_threads() -> None:
    """Wait for the callback's non-daemon threads, as Python's own exit does before atexit.

    A child never reaches the interpreter's exit (``zygote._child`` and, on the cold
    path, ``launcher.end_cold_callback`` end with ``_exit``), so without this a thread
    the callback started would be dropped unseen, its output and qb calls with it.
    Done before the done frame: the run is over when its threads are. Python's own
    function, so ``concurrent.futures`` workers are shut down as at a normal exit; the
    executor's SIGTERM at the wall limit interrupts the wait.
    """
    threading = sys.modules.get("threading")
    if threading is not None:  # no thread was started through it otherwise
        threading._shutdown()


def _handler_after_the_run(signum: int) -> Any:
    """The handler ``signum`` keeps once the callback's code and threads are done."""
    if signum == SIGTERM:
        return _on_sigterm
    if signum == SIGXCPU:
        return _sigxcpu_handler
    return SIG_DFL if signum in _DEFAULT_AFTER_THE_RUN else SIG_IGN


def _kernel_quieting() -> Callable[[], object]:
    """One call that ignores, in the kernel, every signal with a Python handler at its call.

    Made before the callback's code and called once it and its threads are done: a C-level
    call (the iterators are lazy, so the handlers are looked at then), so no handler can
    run from its start to its end, and after it none of those signals can make one due
    (a timer left running, a signal a thread or another process sends). Handlers already
    due still run at the next point where Python runs handlers.
    """
    with_handlers = compress(_HANDLED_SIGNALS, map(callable, map(getsignal, _HANDLED_SIGNALS)))
    return partial(sorted, with_handlers, key=_ignore_in_kernel)


def _set_handlers_aside() -> None:
    """Give every signal with a Python handler its handler after the run (SIGINT included).

    After ``_kernel_quieting``'s call, which left Python's handlers in place. ``signal()``
    runs a handler still due first, which may raise: the caller calls this again until a
    call gets through; each call does what is left.
    """
    for signum in [s for s in _HANDLED_SIGNALS if callable(getsignal(s))]:
        set_handler(signum, _handler_after_the_run(signum))


def _done_frame(ended: BaseException | None) -> DoneFrame:
    """The done frame of a run that ended with ``ended`` (None: its code ran to the end)."""
    if ended is None:
        return {"type": "done", "status": "ok", "exit_code": 0}
    if isinstance(ended, Terminated):
        return {"type": "done", "status": "terminated", "exit_code": EXIT_ON_SIGTERM}
    if isinstance(ended, SystemExit):
        return _exited(ended)
    if isinstance(ended, MemoryError):
        return _raised("memory", ended, "the callback ran out of memory (memory limit)")
    return _raised("exception", ended)


def _execute(
    code: types.CodeType, namespace: dict[str, Any], quiet: Callable[[], object]
) -> DoneFrame:
    """Run the callback's code, wait for its threads, set its handlers aside; how it ended.

    ``quiet``: ``_kernel_quieting()``'s call. The run's exception is the first one raised:
    the code's own, else one a signal handler raised while its threads were waited for
    or its handlers set aside. A handler can raise wherever Python runs handlers (a
    call's start or return, a loop's turn), so every step from the code's start to the
    handlers set aside is in a try whose except clause calls nothing (no such point in
    it) and falls through to the next step, the quieting first: after it only handlers
    due already can raise, one raise each. The setting aside's retries are loops: a raise
    at the inner loop's turn is the outer try's; only a third raise in a row, at the
    outer loop's turn, would escape (three handlers due at once), and run() reports that
    as EXIT_REPORT_FAILED, never as a launch failure.
    """
    ended: BaseException | None = None
    try:
        exec(code, namespace)
    except BaseException as err:  # noqa: BLE001 - everything the callback raises is reported
        ended = err
    try:
        _wait_for_threads()
    except BaseException as err:  # noqa: BLE001 - a handler's raise during the wait
        if ended is None:  # not `ended or err`: an exception's __bool__ may be Python code
            ended = err
    try:
        quiet()
    except BaseException as err:  # noqa: BLE001 - a handler due already, at its return
        if ended is None:
            ended = err
    aside = False
    while not aside:
        try:
            while not aside:
                try:
                    _set_handlers_aside()
                    aside = True
                except BaseException as err:  # noqa: BLE001 - a handler due before
                    if ended is None:
                        ended = err
        except BaseException as err:  # noqa: BLE001 - a raise at the inner loop's turn
            if ended is None:
                ended = err
    return _done_frame(ended)


def _start_frame(bridge_fd: int) -> ParentFrame:
    """The run's start frame; the callback's signal handlers once it has come.

    Until then a prepared child is idle, and PID 1 of its namespace gets only the
    signals it has handlers for (its zygote ignores SIGINT, and so does it until here):
    an operator's pkill of the cell's uid leaves it ready for its run, instead of ending
    it or breaking the run it was made for.
    """
    start = read_frame(bridge_fd)
    set_handler(SIGTERM, _on_sigterm)
    set_handler(SIGINT, default_int_handler)
    return start


def run(bridge_fd: int, *, warm_up: bool = False) -> int:
    """Execute the callback the executor sends; returns the process exit code.

    ``warm_up``: the child was started ahead of its run and waits for it anyway. The
    protocol's functions are imported by name, as launcher.py explains. Once the start
    frame has come, an exception that escapes (the callback's signal handlers, however
    unlikely after ``_execute``, or a fault of ours) ends the process with
    EXIT_REPORT_FAILED: the callback may have run, so it is no launch failure. A
    SystemExit goes on: SIGTERM's (the executor's deadline or stop) ends the process
    with its status, as it did the run.
    """
    global _sigxcpu_handler
    if warm_up:
        _warm_up()
    start = _start_frame(bridge_fd)
    if start["type"] != "start":
        return EXIT_BAD_START
    _sigxcpu_handler = getsignal(SIGXCPU)  # launcher.py's in a PID 1: kept after the run
    try:
        return _run_started(bridge_fd, start)
    except SystemExit:
        raise
    except BaseException as err:  # noqa: BLE001 - reported by the exit status, not a frame
        try:  # noqa: SIM105 - not contextlib.suppress: one more module for a child to touch
            traceback.print_exception(err)
        except BaseException:  # noqa: BLE001, S110 - its stderr may be gone; the status says it
            pass
        return EXIT_REPORT_FAILED


def _flush_output(trace: str) -> None:
    """Flush stdout and stderr, writing ``trace`` (an uncaught exception's, or "") to stderr first.

    Whatever the callback left in ``sys.stdout`` and ``sys.stderr`` (None, a tee with
    ``write`` alone, a flush that raises or exits, its stdio closed), the done frame
    still goes. Then the originals, when replaced: a tee over one leaves what it wrote in
    its buffer. Inline, not a loop of calls: each object a forked child touches is a
    page fault.
    """
    try:
        sys.stdout.flush()  # None too: it raises, as anything else may
    except Terminated:
        raise  # SIGTERM: the run ends with its status, as everywhere
    except BaseException:  # noqa: BLE001, S110 - the callback's stream: as Python's exit
        pass
    if trace:
        _to_stderr(trace)  # printed as Python prints one (the callback's frames)
    try:
        sys.stderr.flush()
    except Terminated:
        raise
    except BaseException:  # noqa: BLE001, S110 - as above
        pass
    if sys.stdout is not sys.__stdout__ or sys.stderr is not sys.__stderr__:
        for stream in (sys.__stdout__, sys.__stderr__):
            try:  # noqa: SIM105 - not contextlib.suppress: one more module for a child to touch
                stream.flush()  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001, S110 - closed by the callback: its output is gone
                pass


def _run_started(bridge_fd: int, start: StartFrame) -> int:
    """Run the callback of ``start`` and report how it ended; the process exit code."""
    if "env" in start:
        environ.update(start["env"])  # putenv too: what the callback starts sees them
    source = start["code"]
    qb._bind(bridge_fd, start["context"])
    sys.modules["qb"] = qb

    try:
        code = compile(source, CALLBACK_FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as err:
        write_frame(
            bridge_fd,
            {
                "type": "done",
                "status": "rejected",
                "exception_type": type(err).__name__,
                "message": f"the callback does not compile: {err}",
                "traceback": "".join(traceback.format_exception_only(err)),
            },
        )
        return EXIT_BAD_START
    source_lines[CALLBACK_FILENAME] = (len(source), None, source.splitlines(True), "")
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, "qb": qb}
    main_pid = getpid()  # the callback's own process: one it forks reports nothing
    quiet = _kernel_quieting()
    if start.get("gated") and not read_go(bridge_fd):
        return EXIT_BAD_START  # refused: the executor kills it meanwhile

    done = _execute(code, namespace, quiet)
    forked = getpid() != main_pid
    _flush_output(done.get("traceback", "") if forked else "")
    if not forked:  # a forked process's ending is its own, not the run's: no done frame
        trace = done.get("traceback", "")  # whole, for stderr if the frame cannot go
        if "exception_type" in done:
            done["exception_type"] = _within(done["exception_type"], DONE_TYPE_CHARS)
        if "message" in done:
            done["message"] = _within(done["message"], DONE_MESSAGE_CHARS)
        if "traceback" in done:
            done["traceback"] = _within_end(done["traceback"], DONE_TRACEBACK_CHARS)
        # Not contextlib.suppress: it is one more module a forked child would touch.
        try:
            qb._finish_sending()  # a call frame a signal handler's exception cut short
            if done["status"] == "ok":
                write_all(bridge_fd, _DONE_OK)
            else:
                write_frame(bridge_fd, done)
        except OSError:
            # The callback closed or shut down its bridge (or a process it forked did):
            # the exit status still tells the executor, and the exception goes to stderr,
            # as plain python prints it, rather than nowhere.
            _flush_output(trace)
    if done["status"] == "ok":
        return 0
    return done.get("exit_code", 1)
