"""The callback-scoped ``qb`` module Python callbacks use (Qube's embedded callback API).

Pre-bound in the callback's namespace and importable (``import qb``). Context functions
(``jobid``, ``subid``, ``workid``, ``event``) answer locally; everything that reads or
changes a job is one ``call`` frame to the executor, which validates the arguments,
applies the callback owner's permissions through the supervisor and answers with a
``reply``. Argument parsing lives in the executor (``executor/host_args.py``) so Python,
Perl and qube callbacks behave the same: the functions that call take any arguments and
send them, so a call that does not fit (``qb.jobstatus()``) is the executor's
``InvalidArgument``, naming the function and what it takes, never a ``TypeError``.
Errors raise subclasses of ``QbError``.

A process the callback forks shares its bridge: its calls are refused (``QbError``), as
two processes' frames on one socket would break the protocol; the context functions
still answer in it. Threads share it too: their calls take turns (a lock held from a
call's frame to its reply), so each gets its own answer.
"""

from __future__ import annotations

import itertools
from _signal import (  # type: ignore[import-not-found]  # as python_bootstrap.py
    SIG_BLOCK,
    SIG_UNBLOCK,
    pthread_sigmask,
    valid_signals,
)
from _thread import allocate_lock, get_ident
from os import fstat, getpid, read, write
from select import POLLIN, poll
from typing import TYPE_CHECKING, Any

import protocol

if TYPE_CHECKING:
    from protocol import CallbackContext, EventContext, QbErrorKind, StartContext

QB_TIME_EPOCH_OFFSET = 946702800

_bridge_fd = -1
_context: StartContext
_pid = -1  # the callback's own process, the only one whose calls go on the bridge
# What the bridge descriptor was at the start (st_dev, st_ino): a callback that put another
# file there (os.dup2) would wait for ever for an answer from it.
_bridge_file = (0, 0)
_call_ids = itertools.count(1)
# One exchange (call frame, then its reply) on the bridge at a time: two threads' frames
# interleaved would each read the other's reply. Its holder's thread id, to refuse a
# call from a signal handler that interrupted one (it would wait for itself forever).
_exchange = allocate_lock()
_exchange_thread = 0
# A signal handler that raises (a SIGALRM timeout) can end a call at any point of its
# exchange, so the exchange keeps its state here, not in locals, and the next call picks
# it up: the bytes read from the bridge but not yet taken as a frame (a partial frame
# stays), and the rest of a call frame cut short mid-write (sent before the next one).
# Ids are given out under the lock, in the order frames are sent, and the executor
# answers in that order: a reply with a lower id than the call's answers a call that was
# abandoned mid-wait, and is dropped. Windows remain: a handler's exception between a
# write returning and its count being kept (a few bytecodes), or between a read
# returning and its bytes being kept when another thread took the signal (this one
# holds them there), loses track of those bytes, and the bridge is out of step.
_inbox = bytearray()
_outbox = bytearray()
_HELD_SIGNALS = frozenset(valid_signals())
# Why the bridge went out of step (a frame that cannot be one): every later call is
# refused at once, rather than sent and its answer looked for in bytes out of step.
_out_of_step = ""
_OWN_GLOBALS = globals()  # tells this module's frames from a signal handler's (_the_bridges)


class QbError(Exception):
    """A qb call failed; the message says why."""


class PermissionDenied(QbError):
    """The callback's owner may not do this to that job."""


class NoSuchJob(QbError):
    """The job id does not exist."""


class NoSuchWork(QbError):
    """The work item does not exist in that job."""


class InvalidArgument(QbError):
    """The call's arguments are malformed."""


class SupervisorUnavailable(QbError):
    """The supervisor is unavailable, did not answer in time, or failed the call."""


# Why a call from a process the callback forked is refused (qb.pm says the same).
_FORKED_CALL = "qb calls work only in the callback's own process, not in a process it forked"
_NESTED_CALL = (
    "a qb call cannot be made while the same thread's qb call is under way (a signal handler's)"
)

# Every protocol.QbErrorKind (tests/unit/test_protocol.py holds them equal).
_ERRORS: dict[QbErrorKind, type[QbError]] = {
    "QbError": QbError,
    "PermissionDenied": PermissionDenied,
    "NoSuchJob": NoSuchJob,
    "NoSuchWork": NoSuchWork,
    "InvalidArgument": InvalidArgument,
    "SupervisorUnavailable": SupervisorUnavailable,
}


def _bind(bridge_fd: int, context: StartContext) -> None:
    """Called once by the bootstrap before user code runs."""
    global _bridge_fd, _bridge_file, _context, _pid
    _bridge_fd = bridge_fd
    _context = context
    _pid = getpid()
    if bridge_fd >= 0:  # -1: the zygote's warm-up, no bridge
        bridge = fstat(bridge_fd)
        _bridge_file = (bridge.st_dev, bridge.st_ino)


# An int this large (in magnitude) has more digits than a frame may hold.
_TOO_MANY_DIGITS = 10**protocol.MAX_INT_DIGITS


def _unsendable(values: list[Any]) -> str:
    """What ``values``, a call's arguments, do that cannot be sent; "" when they can be.

    Lists and dicts nesting beyond ``protocol.MAX_ARG_DEPTH``, or an int of more than
    ``protocol.MAX_INT_DIGITS`` digits: the executor would take either frame as broken
    (too deep for its JSON parser, a number it does not convert) and end the run.
    Iterative, so a self-containing list is found too (it nests without end).
    """
    pending = [(value, 1) for value in values]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, int):
            if int.__abs__(value) >= _TOO_MANY_DIGITS:  # int's own: a subclass may override
                return f"hold an integer of more than {protocol.MAX_INT_DIGITS} digits"
            continue
        if isinstance(value, dict):
            value = [*value, *value.values()]  # its int keys are written as digits too
        elif not isinstance(value, list | tuple):
            continue
        if depth > protocol.MAX_ARG_DEPTH:
            return f"nest lists or dicts more than {protocol.MAX_ARG_DEPTH} deep"
        pending.extend((item, depth + 1) for item in value)
    return ""


def _call(fn: str, *args: Any, **kwargs: Any) -> Any:
    global _exchange_thread
    if getpid() != _pid:
        raise QbError(_FORKED_CALL)
    if unsendable := _unsendable([*args, *kwargs.values()]):
        # Refused here, as an oversized call is: the executor would end the run.
        raise InvalidArgument(f"qb.{fn}: its arguments {unsendable}")
    body = protocol.encode({"type": "call", "fn": fn, "args": list(args), "kwargs": kwargs})[
        protocol.HEADER.size :
    ]
    me = get_ident()
    if _exchange_thread == me:
        raise QbError(_NESTED_CALL)
    with _exchange:
        _exchange_thread = me
        try:
            if _out_of_step:
                raise QbError(
                    f"qb.{fn} was not sent: the bridge to the executor went out of step "
                    f"after an interrupted call ({_out_of_step})"
                )
            # The id goes in here, under the lock (see _inbox): the arguments were
            # encoded before, outside it (their __str__ may take its time, or call qb).
            call_id = next(_call_ids)
            frame = b'{"id":%d,' % call_id + body[1:]
            if len(frame) > protocol.MAX_CHILD_FRAME_BYTES:
                # Refused here: a frame beyond the limit breaks the bridge protocol, and
                # the executor would end the run.
                raise InvalidArgument(
                    f"qb.{fn}: the call is {len(frame) + protocol.HEADER.size} bytes; at "
                    f"most {protocol.MAX_CHILD_FRAME_BYTES} can be sent"
                )
            _send(fn, protocol.HEADER.pack(len(frame)) + frame)
            reply = _receive(fn, call_id)
        finally:
            _exchange_thread = 0
    if reply["type"] != "reply":
        raise QbError(f"unexpected answer to qb.{fn}: {reply['type']!r}")
    if reply["id"] != call_id:
        # The answers go to whichever process reads the shared socket first.
        raise QbError(_ANOTHER_CALLS_ANSWER.format(fn=fn, id=reply["id"], own=call_id))
    if reply["ok"]:
        return reply["value"]
    error = reply["error"]
    raise _ERRORS.get(error["kind"], QbError)(error["message"])


def _the_bridges(err: OSError) -> bool:
    """Whether ``err`` came from a call of this module's on the bridge, not from a signal handler.

    A handler that raises while a call is under way ends it with its exception, raised
    out of the syscall it interrupted (``write``, ``poll``) or at the next bytecode: a
    ``TimeoutError`` or an ``InterruptedError`` is an OSError too, and is the callback's
    to catch, never a broken bridge. Raised in the handler, its traceback ends in the
    handler's frame; a syscall's own ends in this module's frame that made it.
    """
    last = err.__traceback__
    while last is not None and last.tb_next is not None:
        last = last.tb_next
    return last is None or last.tb_frame.f_globals is _OWN_GLOBALS


def _write_out() -> None:
    while _outbox:
        del _outbox[: write(_bridge_fd, _outbox)]  # by name: see launcher.py


def _send(fn: str, frame: bytes) -> None:
    """Send a call frame, after the rest of one an interruption cut short."""
    try:
        now = fstat(_bridge_fd)
        if (now.st_dev, now.st_ino) != _bridge_file:
            raise QbError(
                f"qb.{fn} could not be sent: the bridge to the executor is broken (its "
                f"descriptor {_bridge_fd} is another file now: the callback replaced it)"
            )
        _write_out()
        _outbox.extend(frame)
        try:
            _write_out()
        except BaseException:
            if len(_outbox) == len(frame):
                _outbox.clear()  # none of it went: nothing to finish, no answer to come
            raise
    except OSError as err:
        if not _the_bridges(err):
            raise
        raise QbError(
            f"qb.{fn} could not be sent: the bridge to the executor is broken ({err})"
        ) from err


_ANOTHER_CALLS_ANSWER = (
    "qb.{fn} got the answer to another call (id {id}; its own is {own}): a call frame "
    "written to the bridge other than through qb (by a process the callback forked, say) "
    "took this call's answer"
)


def _receive(fn: str, call_id: int) -> protocol.ParentFrame:
    """The answer to ``call_id``, dropping those to calls abandoned before it."""
    try:
        while True:
            answer = _next_frame()
            if answer["type"] != "reply" or answer["id"] >= call_id:
                return answer
    except (OSError, protocol.FrameError) as err:
        if isinstance(err, OSError) and not _the_bridges(err):
            raise
        raise QbError(
            f"qb.{fn} was sent but no answer came: the bridge to the executor is broken "
            f"({err}); it may have been applied"
        ) from err


def _next_frame() -> protocol.ParentFrame:
    """The next frame from the executor, read through ``_inbox``.

    A length or body that cannot be a frame means bytes were lost (see ``_inbox``): the
    bridge is out of step for good.
    """
    global _out_of_step
    header = protocol.HEADER.size
    while True:
        wanted = header
        if len(_inbox) >= header:
            (size,) = protocol.HEADER.unpack_from(_inbox)
            if size > protocol.MAX_PARENT_FRAME_BYTES:
                _out_of_step = f"frame of {size} bytes exceeds {protocol.MAX_PARENT_FRAME_BYTES}"
                raise protocol.FrameError(_out_of_step)
            wanted = header + size
            if len(_inbox) >= wanted:
                body = bytes(_inbox[header:wanted])
                # Interrupted from here on, the frame is gone: it answers the call the
                # interruption ends.
                del _inbox[:wanted]
                try:
                    return protocol.decode_trusted(body)  # type: ignore[return-value]
                except protocol.FrameError as err:
                    _out_of_step = str(err)
                    raise
        # The wait a handler may interrupt: nothing read yet. poll, not select (FD_SETSIZE).
        waiting = poll()
        waiting.register(_bridge_fd, POLLIN)
        waiting.poll()
        # The read and its keeping with this thread's signals held: a handler's raise
        # comes after them (at the unblock), not between them, which would lose bytes.
        held = _HELD_SIGNALS - pthread_sigmask(SIG_BLOCK, ())
        try:
            pthread_sigmask(SIG_BLOCK, held)
            chunk = read(_bridge_fd, min(wanted - len(_inbox), 1 << 20))
            _inbox.extend(chunk)
        finally:
            pthread_sigmask(SIG_UNBLOCK, held)
        if not chunk:
            raise protocol.FrameError("bridge closed mid-frame" if _inbox else "eof")


def _finish_sending() -> None:
    """Send the rest of a call frame an interruption cut short (before the done frame).

    Under the lock: a thread the wait for threads was interrupted from may be mid-call.
    """
    with _exchange:
        _write_out()


# -- context, answered locally ---------------------------------------------------------


def _takes_nothing(fn: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    # As the executor words a call that does not fit (host_args.check_shape).
    if args or kwargs:
        given = len(args) + len(kwargs)
        arguments = "argument" if given == 1 else "arguments"
        raise InvalidArgument(
            f"qb.{fn} takes no arguments, as in qb.{fn}(); it was given {given} {arguments}"
        )


def jobid(*args: Any, **kwargs: Any) -> int:
    """Id of the job that owns the callback."""
    _takes_nothing("jobid", args, kwargs)
    return int(_context["job"]["id"])


def subid(*args: Any, **kwargs: Any) -> int:
    """The triggering instance (subjob) id, or -1 when a subjob event did not fire this."""
    _takes_nothing("subid", args, kwargs)
    return int(_context["subjob_id"])


def workid(*args: Any, **kwargs: Any) -> str:
    """Name of the triggering work item, or '' when a work event did not fire this."""
    _takes_nothing("workid", args, kwargs)
    return str(_context["work_name"])


def event(*args: Any, **kwargs: Any) -> EventContext | None:
    """The triggering event: {'name', 'type', 'context', 'extra'}, or None when run by hand.

    ``context`` is the id of the job it happened to, or an Execute's context as given
    when the executor cannot resolve it (a label, ``parent``).
    """
    _takes_nothing("event", args, kwargs)
    ev = _context["event"]
    return ev.copy() if ev else None


def callback(*args: Any, **kwargs: Any) -> CallbackContext:
    """The running callback's record: id, pid, triggers, language, user, count, maximum.

    ``count`` is its firings so far, this run's included (1 in a fired run's first);
    an Execute's is the caller's, as given (0 when none).
    """
    _takes_nothing("callback", args, kwargs)
    return _context["callback"].copy()


# -- supervisor calls --------------------------------------------------------------------


def jobinfo(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Job dicts, as Qube spells the call: ``'-id', n``, ``'-pgrp', n``, ``id=n``, ``pgrp=n``.

    Add ``callbacks=True`` (or the flag '-callbacks') to include each job's callbacks;
    ``fields=['name', ...]`` keeps only those keys of each job, and its ``id``
    (``'callbacks'`` among them includes the callbacks); ``status='running'`` keeps only
    jobs in that status; ``agenda``/``subjobs`` are always there unless set false. An
    unknown job id gives ``[]``.
    """
    return list(_call("jobinfo", *args, **kwargs))


def jobstatus(*args: Any, **kwargs: Any) -> str:
    """Status string of a job ('blocked', 'running', ...): ``qb.jobstatus(12)``."""
    return str(_call("jobstatus", *args, **kwargs))


def workstatus(*args: Any, **kwargs: Any) -> str:
    """Status string of a work item: ``qb.workstatus('<jobid>:<workname>')``."""
    return str(_call("workstatus", *args, **kwargs))


def subjobstatus(*args: Any, **kwargs: Any) -> str:
    """Status string of an instance: ``qb.subjobstatus('<jobid>.<subid>')``."""
    return str(_call("subjobstatus", *args, **kwargs))


def _verb(name: str) -> Any:
    def verb(*targets: Any, **kwargs: Any) -> int:
        return int(_call(name, *targets, **kwargs))

    verb.__name__ = name
    verb.__doc__ = f"qb.{name}(...): returns how many jobs, items or instances changed."
    return verb


_JOB_VERBS = [
    "unblock",
    "block",
    "kill",
    "remove",
    "retry",
    "requeue",
    "preempt",
    "interrupt",
    "migrate",
    "suspend",
    "resume",
    "complete",
    "retire",
    "fail",
]
_WORK_VERBS = ["unblock", "block", "kill", "retry", "requeue", "complete", "retire", "fail"]
# Mirrors executor.supervisor_link.SUBJOB_VERBS (this module may not import it).
_SUBJOB_VERBS = [verb for verb in _JOB_VERBS if verb not in ("remove", "retire")]

# ``from qb import *`` gives the API, not this module's own imports (read, write, select
# would shadow the callback's names). Built once at import, in the zygote.
__all__ = [  # noqa: PLE0604  # the verbs' names come from their lists, as the verbs do
    "QB_TIME_EPOCH_OFFSET",
    *protocol.QB_ERROR_KINDS,  # the exception classes
    "jobid",
    "subid",
    "workid",
    "event",
    "callback",
    "jobinfo",
    "jobstatus",
    "workstatus",
    "subjobstatus",
    *_JOB_VERBS,
    *(spelling for verb in _WORK_VERBS for spelling in ("work" + verb, verb + "work")),
    *("subjob" + verb for verb in _SUBJOB_VERBS),
]

for _name in _JOB_VERBS:
    globals()[_name] = _verb(_name)
for _name in _WORK_VERBS:
    # Qube spells these both ways: workunblock / unblockwork.
    globals()["work" + _name] = _verb("work" + _name)
    globals()[_name + "work"] = globals()["work" + _name]
for _name in _SUBJOB_VERBS:
    # Instance verbs: qb.subjobunblock('12.0'), or '12' for every instance.
    globals()["subjob" + _name] = _verb("subjob" + _name)
del _name
