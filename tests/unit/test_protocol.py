"""The bridge contract: what a child may send is checked field by field; one list of qb error kinds."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any, get_args

import pytest

from executor.child import protocol
from executor.child.protocol import (
    BRIDGE_FD,
    MAX_CHILD_FRAME_BYTES,
    QB_ERROR_KINDS,
    FrameError,
    QbErrorKind,
    parse_child_frame,
)

pytestmark = pytest.mark.unit

CHILD = Path(protocol.__file__).resolve().parent


def body(message: Any) -> bytes:
    return json.dumps(message).encode()


CALL = {"type": "call", "id": 7, "fn": "jobinfo", "args": ["-id", 12], "kwargs": {"x": [1]}}


@pytest.mark.parametrize(
    "frame",
    [
        CALL,
        {"type": "call", "id": 1, "fn": "unblock", "args": [], "kwargs": {}},
        {"type": "done", "status": "ok", "exit_code": 0},
        {"type": "done", "status": "ok"},
        {"type": "done", "status": "exit", "exit_code": 3},
        {"type": "done", "status": "exit", "exit_code": -1},
        {
            "type": "done",
            "status": "exception",
            "exception_type": "ValueError",
            "message": "ValueError: bad",
            "traceback": "Traceback ...",
        },
        {"type": "done", "status": "memory", "exception_type": "MemoryError", "message": "m"},
        {"type": "done", "status": "rejected", "message": "the callback does not compile"},
    ],
)
def test_well_formed_child_frames_pass_unchanged(frame: dict[str, Any]) -> None:
    assert parse_child_frame(body(frame)) == frame


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2, 3]", "not a JSON object with a 'type'"),
        (body({"type": 5}), "not a JSON object with a 'type'"),
        (b"[" * 100_000, "not UTF-8 JSON"),
        # UTF-8 JSON, but a number Python does not convert (sys.get_int_max_str_digits).
        (
            b'{"type":"call","id":1,"fn":"jobstatus","args":[' + b"1" * 5000 + b'],"kwargs":{}}',
            "frame holds a number of more than 4300 digits",
        ),
        (body({"type": "start", "code": ""}), "a child may not send a 'start' frame"),
        (body({"type": "reply", "id": 1, "ok": True}), "a child may not send a 'reply' frame"),
        # call frames
        (body({"type": "call", "fn": "jobinfo", "args": [], "kwargs": {}}), "without 'id'"),
        (body({**CALL, "id": "7"}), "call frame's 'id' must be an integer, not str"),
        (body({**CALL, "id": True}), "call frame's 'id' must be an integer, not bool"),
        (body({**CALL, "id": 1.5}), "call frame's 'id' must be an integer, not float"),
        (body({**CALL, "fn": ["jobinfo"]}), "call frame's 'fn' must be a string, not list"),
        (body({**CALL, "fn": ""}), "call frame with an empty 'fn'"),
        (body({**CALL, "args": "no"}), "call frame's 'args' must be a list, not str"),
        (body({**CALL, "kwargs": 5}), "call frame's 'kwargs' must be an object, not int"),
        (body({**CALL, "extra": 1}), "call frame with an unknown field 'extra'"),
        # done frames
        (body({"type": "done"}), "done frame without 'status'"),
        (body({"type": "done", "status": "fine"}), "done frame's status 'fine' is not one of"),
        (body({"type": "done", "status": 0}), "done frame's 'status' must be a string"),
        (body({"type": "done", "status": "exit"}), "status 'exit' without 'exit_code'"),
        (
            body({"type": "done", "status": "exit", "exit_code": "3"}),
            "done frame's 'exit_code' must be an integer, not str",
        ),
        (
            body({"type": "done", "status": "exit", "exit_code": False}),
            "done frame's 'exit_code' must be an integer, not bool",
        ),
        (
            body({"type": "done", "status": "exception", "message": 42}),
            "done frame's 'message' must be a string, not int",
        ),
        (
            body({"type": "done", "status": "ok", "traceback": None}),
            "done frame's 'traceback' must be a string, not NoneType",
        ),
        (
            body({"type": "done", "status": "ok", "pid": 1}),
            "done frame with an unknown field 'pid'",
        ),
    ],
)
def test_malformed_child_frames_are_refused_with_the_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as refused:
        parse_child_frame(raw)

    assert reason in str(refused.value)


def test_a_frame_beyond_the_child_limit_is_refused_by_its_size() -> None:
    padded = body({**CALL, "args": ["x" * MAX_CHILD_FRAME_BYTES]})

    with pytest.raises(FrameError, match=f"exceeds {MAX_CHILD_FRAME_BYTES}"):
        parse_child_frame(padded)


def test_a_lone_surrogate_anywhere_in_a_child_frame_becomes_a_replacement_character() -> None:
    done = {
        "type": "done",
        "status": "exception",
        "exception_type": "Bad\udc80",
        "message": "bad \ud800 but \U0001f600 stays",
        "traceback": "\udfff",
    }
    call = {
        "type": "call",
        "id": 1,
        "fn": "jobinfo",
        "args": [["\ud800"]],
        "kwargs": {"\udc00": "x"},
    }

    assert parse_child_frame(body(done)) == {
        **done,
        "exception_type": "Bad\ufffd",
        "message": "bad \ufffd but \U0001f600 stays",
        "traceback": "\ufffd",
    }
    assert parse_child_frame(body(call)) == {
        **call,
        "args": [["\ufffd"]],
        "kwargs": {"\ufffd": "x"},
    }
    # A pair written as two escapes is one character, and an escaped backslash is no escape.
    assert parse_child_frame(
        rb'{"type":"done","status":"ok","message":"\ud83d\ude00 \\ud800"}'
    ) == {
        "type": "done",
        "status": "ok",
        "message": "\U0001f600 \\ud800",
    }


def test_a_frame_round_trips_through_its_encoding() -> None:
    frame = protocol.encode(CALL)

    (size,) = protocol.HEADER.unpack_from(frame)
    assert size == len(frame) - protocol.HEADER.size
    assert parse_child_frame(frame[protocol.HEADER.size :]) == CALL


def test_a_spawn_message_round_trips_with_the_cells_part_apart() -> None:
    spec = {"language": "python", "cell": 3, "workdir": "/tmp/cbexec-run-ab", "warm_up": True}
    env = {"PATH": "/usr/bin", "HOME": "/tmp/cbexec-run-ab", "ODD": "a=b\nc \u00e9"}

    message = protocol.encode_spawn(7, spec, env)  # type: ignore[arg-type]  # a partial spec

    request_id, cell_part, workdir, warm_up, variables = protocol.decode_spawn(message)
    assert (request_id, workdir, warm_up) == (7, "/tmp/cbexec-run-ab", True)
    assert json.loads(cell_part) == {"language": "python", "cell": 3}
    assert variables == [b"PATH=/usr/bin", b"HOME=/tmp/cbexec-run-ab", "ODD=a=b\nc \u00e9".encode()]
    # The cell's part is the same bytes for the next child of the cell: a zygote's key.
    next_spec = {**spec, "workdir": "/tmp/x", "warm_up": False}
    other = protocol.encode_spawn(8, next_spec, env)  # type: ignore[arg-type]
    assert protocol.decode_spawn(other)[1] == cell_part


def test_a_spawn_message_refuses_what_libc_would() -> None:
    spec = {"workdir": "/tmp/w", "warm_up": False}
    for env in ({"A": "nul\0"}, {"A=B": "x"}):
        with pytest.raises(ValueError, match="environment variable"):
            protocol.encode_spawn(1, spec, env)  # type: ignore[arg-type]


def test_one_list_of_qb_error_kinds() -> None:
    assert set(QB_ERROR_KINDS) == set(get_args(QbErrorKind))
    # Python's qb: a class per kind, named as the kind, and the table that raises them.
    tree = ast.parse((CHILD / "qb.py").read_text())
    classes = {
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and (node.name == "QbError" or any(ast.unparse(b) == "QbError" for b in node.bases))
    }
    (table,) = [
        node
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "_ERRORS"
    ]
    assert isinstance(table.value, ast.Dict)
    assert classes == set(QB_ERROR_KINDS)
    assert {ast.literal_eval(key) for key in table.value.keys if key} == set(QB_ERROR_KINDS)
    # Perl's qb::Error kinds are the same names (qb.pm documents them).
    documented = re.search(r"QbErrorKind \(([^)]*)\)", (CHILD / "perl" / "qb.pm").read_text())
    assert documented is not None
    assert set(re.split(r"[\s,#]+", documented.group(1))) - {""} == set(QB_ERROR_KINDS)


def test_the_bridge_fd_is_spelled_the_same_everywhere() -> None:
    launcher = (CHILD / "launcher.py").read_text()
    zygote_pl = (CHILD / "perl" / "zygote.pl").read_text()

    assert re.search(rf"^BRIDGE_FD = {BRIDGE_FD}$", launcher, re.MULTILINE)
    assert re.search(rf"^sub BRIDGE_FD \(\) +\{{ {BRIDGE_FD} \}}", zygote_pl, re.MULTILINE)


def test_qb_pm_spells_the_frame_limits_and_depth_as_protocol_does() -> None:
    qb_pm = (CHILD / "perl" / "qb.pm").read_text()
    spelled = {
        name: eval(value)  # noqa: S307 - an integer expression such as "64 << 20", from our file
        for name, value in re.findall(r"^sub (\w+) \(\) +\{ ([0-9 <]+) \}", qb_pm, re.MULTILINE)
    }

    assert spelled["MAX_FRAME_BYTES"] == MAX_CHILD_FRAME_BYTES
    assert spelled["MAX_PARENT_FRAME_BYTES"] == protocol.MAX_PARENT_FRAME_BYTES
    assert spelled["MAX_ARG_DEPTH"] == protocol.MAX_ARG_DEPTH
