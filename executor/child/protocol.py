"""Parent<->child contracts: the launch spec, the bridge frames and their framing and validation.

Stdlib only: this module runs inside the sandbox (imported as ``protocol``) and in the
executor (as ``executor.child.protocol``). JSON keeps the Perl side to core modules.

On the bridge socket (fd ``BRIDGE_FD`` in every child), each frame is a 4-byte
big-endian length, then one UTF-8 JSON object, by ``type``:

parent -> child
    ``start``  ``StartFrame``: language, code, context (job {id}, event, work_name,
               subjob_id, callback), and ``gated``: the code waits for a go
    ``go``     ``GO_FRAME``, once, after a gated start frame: the code may run now
               (never sent when the run is refused: the child is killed unrun)
    ``reply``  ``ReplyOk`` {id, ok: true, value} | ``ReplyFailed`` {id, ok: false,
               error: {kind, message}}; ``kind`` is a ``QbErrorKind``
child -> parent
    ``call``   ``CallFrame`` {id, fn, args: [...], kwargs: {...}}: one qb function call,
               answered by a reply
    ``done``   ``DoneFrame`` {status, exit_code?, exception_type?, message?, traceback?}
               status: ok | exit | exception | memory | rejected | terminated
    ``launch_failed``  ``LaunchFailedFrame`` {reason, errno?}: the launcher (or a zygote's
               child) could not start the callback; sent only before the start frame
               is read, then the process exits 121 (never on a run that starts)

The executor checks every frame a child sends (``parse_child_frame``): the child is
running untrusted code. The child takes the executor's frames as typed (``read_frame``).

A child is started from a ``LaunchSpec`` (the cold launcher's argument, or the
``spec`` of a ``SpawnRequest`` to a zygote); the zygotes' control messages are typed
here too.

No ``from __future__ import annotations`` here: the TypedDicts below would then hold
string annotations, which typing compiles one by one when each class is made (~1 ms
more for every cold child).
"""

import json
import re
import struct
import sys
from collections.abc import Mapping
from os import read, write
from typing import Any, Final, Literal, NotRequired, TypedDict, cast

HEADER: Final = struct.Struct(">I")
# Child frames are small calls; a larger one is a protocol violation by the callback.
MAX_CHILD_FRAME_BYTES: Final = 1 << 20
# Parent frames carry the start context and jobinfo replies (a pgrp with big agendas).
MAX_PARENT_FRAME_BYTES: Final = 64 << 20
# How deep the lists and dicts (Perl: array and hash references) in a qb call's
# arguments may nest; deeper calls are refused by qb.py and qb.pm (InvalidArgument)
# before they are sent. No qb function takes more than a list of ids (2 with the call's
# own list); the executor's JSON parser would take the frame as broken at ~1000.
MAX_ARG_DEPTH: Final = 32
# The most digits an integer in a child's frame may have: Python's default limit on
# converting an int from text (sys.int_info.default_max_str_digits), which the
# executor's JSON parser applies. qb.py refuses a larger one (InvalidArgument) before
# it is sent; no id has that many digits.
MAX_INT_DIGITS: Final = 4300
# Where every child has its end of the bridge: the zygotes dup it there, and so does the
# cold launcher.
BRIDGE_FD: Final = 3

# The exceptions a qb call can raise in a callback: Python's qb.<kind> classes, Perl's
# qb::Error kinds, the host API's HostCallError kinds.
QbErrorKind = Literal[
    "QbError",
    "PermissionDenied",
    "NoSuchJob",
    "NoSuchWork",
    "InvalidArgument",
    "SupervisorUnavailable",
]
QB_ERROR_KINDS: Final[tuple[QbErrorKind, ...]] = (
    "QbError",
    "PermissionDenied",
    "NoSuchJob",
    "NoSuchWork",
    "InvalidArgument",
    "SupervisorUnavailable",
)

# How a callback ended, in its own words.
DoneStatus = Literal["ok", "exit", "exception", "memory", "rejected", "terminated"]
DONE_STATUSES: Final[tuple[DoneStatus, ...]] = (
    "ok",
    "exit",
    "exception",
    "memory",
    "rejected",
    "terminated",
)


class FrameError(Exception):
    """A frame was malformed, too large, or the peer closed mid-frame."""


# -- the start frame -------------------------------------------------------------------


class EventContext(TypedDict):
    """The triggering event as ``qb.event()`` shows it."""

    name: str
    type: str
    context: str
    extra: str


class CallbackContext(TypedDict):
    """The running callback's record, as ``qb.callback()`` shows it."""

    id: int
    pid: int  # the job it runs for (Qube's stored callbacks name their job so)
    triggers: str
    language: str
    user: str
    count: int  # its firings so far, this run's included
    maximum: int


class StartJob(TypedDict):
    """The job as the start frame names it: its id alone.

    All the ``qb`` module answers locally of its job (Python and Perl alike); the rest is
    the supervisor's to answer (``qb.jobinfo``). The whole job here was ~15 times its
    size on the wire (~74 bytes of JSON for a work item of 5): a job within the request
    size made a frame past ``MAX_PARENT_FRAME_BYTES``, so none of its callbacks could start.
    """

    id: int


class StartContext(TypedDict):
    """What the callback's ``qb`` module knows without asking."""

    job: StartJob
    event: EventContext | None
    work_name: str
    subjob_id: int
    callback: CallbackContext


class StartFrame(TypedDict):
    """parent -> child, once: the code to run and its context."""

    type: Literal["start"]
    language: str
    code: str
    context: StartContext
    # The policy's variables (secrets among them), set by the child before the code
    # runs: they never pass through a zygote, whose memory every later child copies.
    env: NotRequired[dict[str, str]]
    # The child prepares the run (reads the frame, compiles the code) and then waits for
    # ``GO_FRAME`` before the code runs: the executor decides meanwhile whether it may
    # (an Execute's invocation id, claimed in a fleet's store: ``invocation_ids.IdGate``).
    gated: NotRequired[bool]


# parent -> child, after a gated start frame: the code may run. Compared as bytes by the
# child, which reads exactly this many.
GO_FRAME: Final = HEADER.pack(13) + b'{"type":"go"}'


# -- qb calls --------------------------------------------------------------------------


class CallFrame(TypedDict):
    """child -> parent: one qb function call."""

    type: Literal["call"]
    id: int
    fn: str
    args: list[Any]
    kwargs: dict[str, Any]


class QbErrorBody(TypedDict):
    """Why a qb call failed: the exception the callback gets."""

    kind: QbErrorKind
    message: str


class ReplyOk(TypedDict):
    """parent -> child: a qb call's value."""

    type: Literal["reply"]
    id: int
    ok: Literal[True]
    value: Any


class ReplyFailed(TypedDict):
    """parent -> child: a qb call failed."""

    type: Literal["reply"]
    id: int
    ok: Literal[False]
    error: QbErrorBody


# -- the end ---------------------------------------------------------------------------


class DoneFrame(TypedDict):
    """child -> parent, last: how the callback ended (``exit_code`` always with ``exit``).

    With ``exit``, a ``message`` is the reason of a ``sys.exit("reason")``.
    """

    type: Literal["done"]
    status: DoneStatus
    exit_code: NotRequired[int]
    exception_type: NotRequired[str]
    message: NotRequired[str]
    traceback: NotRequired[str]


class LaunchFailedFrame(TypedDict):
    """child -> parent, alone: the callback could not be started (why, for the operator)."""

    type: Literal["launch_failed"]
    reason: str
    # The failure's errno when it was an OSError: EAGAIN (a fork the process limit
    # refused) makes the run a capacity refusal rather than a failed callback.
    errno: NotRequired[int]


ReplyFrame = ReplyOk | ReplyFailed
ParentFrame = StartFrame | ReplyOk | ReplyFailed
ChildFrame = CallFrame | DoneFrame | LaunchFailedFrame


# -- launching a child -----------------------------------------------------------------


class BindSpec(TypedDict):
    """A host directory ``source`` shown at ``target`` in the child's mount namespace.

    Both resolved at start-up, no symbolic link left in them; the identities are the
    directories start-up checked, [st_dev, st_ino, mounted there] (``isolation.identity``):
    a run mounts those, or a file system mounted again where one was, or none.
    """

    source: str
    target: str
    writable: bool
    source_identity: list[int]
    # None for a target made afresh in a masked directory's tmpfs (under /tmp, /run, ...).
    target_identity: list[int] | None


class IsolationSpec(TypedDict):
    """The hardened tier for one cell: what to hide and keep, the uid to become."""

    masks: list[str]
    keep: list[str]
    uid: int
    gid: int
    # The masks a zygote covered already for all its children; [] otherwise.
    shared_masks: list[str]
    # Covered by each child itself once it has joined its cgroups (the cgroup tree).
    late_masks: list[str]
    # The policy's binds, mounted after the masks; its group, the uid's only supplementary one.
    binds: list[BindSpec]
    groups: list[int]
    # Mount options of the child's own devpts instance on /dev/pts (its ptys, at most the
    # ``max`` they name); "" where the host cannot give it one (the host's ptys, then).
    devpts: str
    # The executor's secret files outside the masks (its config file, TLS key, env_files):
    # /dev/null is bound over each, in each child (a file replaced on the host since the
    # zygote started is hidden too).
    secret_files: list[str]


class LaunchSpec(TypedDict):
    """How to confine one child and start its runtime (launcher.confine_and_run)."""

    language: str
    # Exec'd once the child is confined; [] runs Python in the launcher's own interpreter.
    argv: list[str]
    site_paths: list[str]
    pid_namespace: bool
    unshare_network: bool
    # The child's cell: a zygote with a private network gives each cell its own empty
    # network namespace, which every child of the cell joins.
    cell: int
    # With the PID namespace: a new IPC namespace (SysV and POSIX IPC die with the run),
    # and a cgroup namespace rooted at the cell's cgroups, made after joining them.
    ipc_namespace: bool
    cgroup_namespace: bool
    # The syscall filter (seccomp.py's program, hex), installed last; "" for none.
    seccomp_filter: str
    # For a zygote: the filter it puts itself under (the whole one, seccomp.CONFINING
    # allowed), and what its children add to it instead of the whole one; "" for none.
    seccomp_zygote_filter: str
    seccomp_closing_filter: str
    cgroup_procs: list[str]
    # {NAME: [soft, hard]} for resource.RLIMIT_<NAME>.
    rlimits: dict[str, list[int]]
    isolation: IsolationSpec | None
    disk_bytes: int
    workdir: str
    # Started ahead of its run: walk a trivial run's path while waiting for the start frame.
    warm_up: bool
    # The run's sandbox policy (executor/policies.py): its name picks the zygote.
    policy: str
    umask: int


# executor -> zygote, with SCM_RIGHTS fds [stdout_w, stderr_w, bridge] (``encode_spawn``):
# (id, the cell's part of the launch spec as sent, workdir, warm_up, the environment with
# each variable as b"NAME=value"). A plain tuple: a NamedTuple class costs every cold
# child that imports this module its making.
SpawnRequest = tuple[int, bytes, str, bool, list[bytes]]


# The fields of a LaunchSpec that differ from one child of a cell to the next.
SPAWN_RUN_FIELDS: Final = ("workdir", "warm_up")


def spawn_cell_fields(spec: LaunchSpec) -> dict[str, object]:
    """The cell's part of ``spec``: all of it but ``SPAWN_RUN_FIELDS``."""
    return {key: value for key, value in spec.items() if key not in SPAWN_RUN_FIELDS}


def encode_spawn(
    request_id: int, spec: LaunchSpec, env: dict[str, str], cell_part: bytes | None = None
) -> bytes:
    """A spawn message: the cell's part of ``spec`` (JSON), a newline, then the run's part.

    The cell's part is the same bytes for every child of a cell with the same limits:
    a zygote parses it once and keeps it. The run's part is NUL-separated, no JSON to
    parse per child: id, warm_up (0/1), workdir, then each variable as NAME=value, as
    libc keeps them. ValueError for a NUL in the environment (libc refuses it too).
    ``cell_part``: the cell's part already encoded (the JSON of ``spawn_cell_fields``).
    """
    if cell_part is None:
        cell_part = json.dumps(spawn_cell_fields(spec)).encode()
    fields = [str(request_id), "1" if spec["warm_up"] else "0", spec["workdir"]]
    for name, value in env.items():
        if "\0" in name or "\0" in value or "=" in name:
            raise ValueError(f"environment variable {name!r}: no NUL, and no = in its name")
        fields.append(f"{name}={value}")
    run_part = "\0".join(fields).encode("utf-8", "surrogateescape")
    return cell_part + b"\n" + run_part


def decode_spawn(data: bytes) -> SpawnRequest:
    """``encode_spawn``'s message back, the cell's part left as bytes (a zygote's cache key)."""
    cell_part, _, run_part = data.partition(b"\n")
    request_id, warm_up, workdir, *env = run_part.split(b"\0")
    workdir_name = workdir.decode("utf-8", "surrogateescape")
    return int(request_id), cell_part, workdir_name, warm_up == b"1", env


class ZygoteStarted(TypedDict):
    """zygote -> executor: the child of request ``id`` runs as ``pid``."""

    type: Literal["started"]
    id: int
    pid: int


class ZygoteFailed(TypedDict):
    """zygote -> executor: request ``id`` started no child."""

    type: Literal["failed"]
    id: int | None
    error: str
    # The fork's errno when the fork failed: EAGAIN is the executor's process limit.
    errno: NotRequired[int]


class ZygoteExited(TypedDict):
    """zygote -> executor: a child ended; its wait status and rusage."""

    type: Literal["exited"]
    pid: int
    status: int
    cpu: float
    maxrss_kib: int


class ZygotePong(TypedDict):
    """zygote -> executor: the answer to ``ZYGOTE_PING``, proof that its loop still turns."""

    type: Literal["pong"]


# executor -> zygote: a message that is not a spawn (no newline, no fds), answered at
# once with ``ZYGOTE_PONG``: the executor's watchdog asks it while the zygote owes it
# answers (``spawners._Zygote``).
ZYGOTE_PING: Final = b"ping"
ZYGOTE_PONG: Final = b'{"type":"pong"}'

ZygoteMessage = ZygoteStarted | ZygoteFailed | ZygoteExited | ZygotePong


# -- framing ---------------------------------------------------------------------------


def encode(message: Mapping[str, object]) -> bytes:
    """Serialise one frame."""
    body = json.dumps(message, separators=(",", ":"), default=str).encode("utf-8")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse one frame body, insisting on a JSON object with a string ``type``."""
    try:
        message = json.loads(body.decode("utf-8"))
    except ValueError as err:
        if type(err) is ValueError:
            # Not json's own errors (JSONDecodeError, UnicodeDecodeError: subclasses):
            # the only plain one is int()'s limit on digits, which the JSON was not at fault for.
            raise FrameError(
                f"frame holds a number of more than {sys.get_int_max_str_digits()} digits"
            ) from err
        raise FrameError(f"frame is not UTF-8 JSON: {err}") from err
    except RecursionError as err:  # 1 MiB of '[' recurses
        raise FrameError(f"frame is not UTF-8 JSON: {err}") from err
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise FrameError("frame is not a JSON object with a 'type'")
    return message


# json's C scanner, for the executor's frames (see decode_trusted).
_scan_once = json.decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]  # (C, untyped)


def decode_trusted(body: bytes) -> dict[str, Any]:
    """A frame body from the executor, parsed by json's C scanner alone (the child side).

    Unchecked (see ``read_frame``) and without json.loads's Python layers (loads,
    decode, raw_decode and two regex matches): in a forked child every page they write
    is a page fault (~12 a child). The executor's frames have no whitespace around them.
    """
    try:
        message, _end = _scan_once(body.decode("utf-8"), 0)
    except (StopIteration, ValueError) as err:  # StopIteration: no JSON value at all
        raise FrameError(f"frame is not UTF-8 JSON: {err!r}") from err
    return message  # type: ignore[no-any-return]


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = read(fd, min(remaining, 1 << 20))  # by name: see launcher.py
        if not chunk:
            raise FrameError("bridge closed mid-frame" if chunks or size != HEADER.size else "eof")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, max_bytes: int = MAX_PARENT_FRAME_BYTES) -> ParentFrame:
    """Blocking read of one frame from the executor (the child side).

    Taken as typed, not checked field by field: the executor built it from these
    types, and the child's path to its callback has no room for the work.
    """
    (size,) = HEADER.unpack(_read_exactly(fd, HEADER.size))
    if size > max_bytes:
        raise FrameError(f"frame of {size} bytes exceeds {max_bytes}")
    return decode_trusted(_read_exactly(fd, size))  # type: ignore[return-value]  # see above


def read_go(fd: int) -> bool:
    """Block until the executor's go after a gated start frame; False if the bridge ends first."""
    try:
        return _read_exactly(fd, len(GO_FRAME)) == GO_FRAME
    except FrameError:
        return False


def write_frame(fd: int, message: CallFrame | DoneFrame) -> None:
    """Blocking write of one frame (the child side)."""
    write_all(fd, encode(message))


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of encoded frames (the child side)."""
    while data:
        written = write(fd, data)
        data = data[written:]


# -- validation of what a child sends ------------------------------------------------------

_TYPE_NAMES: Final = {str: "a string", int: "an integer", list: "a list", dict: "an object"}
# Every field a child frame may have, with its type; the required ones.
_CALL_FIELDS: Final[dict[str, type]] = {
    "type": str,
    "id": int,
    "fn": str,
    "args": list,
    "kwargs": dict,
}
_CALL_REQUIRED: Final = ("id", "fn", "args", "kwargs")
_DONE_FIELDS: Final[dict[str, type]] = {
    "type": str,
    "status": str,
    "exit_code": int,
    "exception_type": str,
    "message": str,
    "traceback": str,
}
_DONE_REQUIRED: Final = ("status",)
_LAUNCH_FAILED_FIELDS: Final[dict[str, type]] = {"type": str, "reason": str, "errno": int}


def _check_fields(
    message: dict[str, Any], kind: str, fields: dict[str, type], required: tuple[str, ...]
) -> None:
    for name in required:
        if name not in message:
            raise FrameError(f"{kind} frame without {name!r}")
    for name, value in message.items():
        expected = fields.get(name)
        if expected is None:
            raise FrameError(f"{kind} frame with an unknown field {name!r}")
        # bool is an int to isinstance, never to the schema.
        if not isinstance(value, expected) or isinstance(value, bool):
            raise FrameError(
                f"{kind} frame's {name!r} must be {_TYPE_NAMES[expected]}, "
                f"not {type(value).__name__} {value!r:.40}"
            )


# A JSON escape of a UTF-16 surrogate (\uD800-\uDFFF), upper or lower case: the only way a
# frame that is valid UTF-8 gives strings with a lone surrogate. Patterns, not compiled
# here: re's cache compiles them on first use, in the executor, not in every cold child.
_SURROGATE_ESCAPE: Final = rb"\\u[dD][89abcdefABCDEF]"
_LONE_SURROGATE: Final = "[\ud800-\udfff]"


def _replace_lone_surrogates(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with every lone surrogate in its strings and keys made U+FFFD.

    A string holding one cannot be encoded as UTF-8, so protobuf, SQLite and the logs
    would all fail on it later. json joins escaped pairs, so any surrogate left is lone.
    Iterative: a frame may nest as deep as json's recursion limit allows.
    """

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return re.sub(_LONE_SURROGATE, "\ufffd", value)
        if isinstance(value, dict):
            cleaned: dict[str, Any] = {}
            pending.append((value, cleaned))
            return cleaned
        if isinstance(value, list):
            items: list[Any] = []
            pending.append((value, items))
            return items
        return value

    root: dict[str, Any] = {}
    pending: list[tuple[Any, Any]] = [(message, root)]
    while pending:
        source, target = pending.pop()
        if isinstance(source, dict):
            for key, value in source.items():
                target[clean(key)] = clean(value)
        else:
            target.extend(clean(value) for value in source)
    return root


def parse_child_frame(body: bytes) -> ChildFrame:
    r"""One frame body from a child, checked against its schema.

    Raises FrameError saying what is wrong: not a JSON object, too large, a type that
    a child may not send, a missing, unknown or mistyped field, a status that is not a
    ``DoneStatus``, an ``exit`` without its exit code. A lone surrogate in any string
    (``raise ValueError('\ud800')``) becomes U+FFFD, as invalid UTF-8 in output does.
    """
    if len(body) > MAX_CHILD_FRAME_BYTES:
        raise FrameError(f"frame of {len(body)} bytes exceeds {MAX_CHILD_FRAME_BYTES}")
    message = decode_body(body)
    if re.search(_SURROGATE_ESCAPE, body):
        message = _replace_lone_surrogates(message)
    kind = message["type"]
    if kind == "call":
        _check_fields(message, "call", _CALL_FIELDS, _CALL_REQUIRED)
        if not message["fn"]:
            raise FrameError("call frame with an empty 'fn'")
        return cast(CallFrame, message)
    if kind == "done":
        _check_fields(message, "done", _DONE_FIELDS, _DONE_REQUIRED)
        if message["status"] not in DONE_STATUSES:
            raise FrameError(
                f"done frame's status {message['status']!r:.40} is not one of "
                f"{', '.join(DONE_STATUSES)}"
            )
        if message["status"] == "exit" and "exit_code" not in message:
            raise FrameError("done frame with status 'exit' without 'exit_code'")
        return cast(DoneFrame, message)
    if kind == "launch_failed":
        _check_fields(message, "launch_failed", _LAUNCH_FAILED_FIELDS, ("reason",))
        return cast(LaunchFailedFrame, message)
    raise FrameError(
        f"a child may not send a {kind!r:.40} frame, only 'call', 'done' and 'launch_failed'"
    )
