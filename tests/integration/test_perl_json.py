"""qb.pm's own JSON codec agrees with Python's json on what the bridge carries."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from executor.runtimes.child import PERL_DIR

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
]

ROUND_TRIP = "require qb; local $/; print qb::JSON::encode(qb::_to_text(qb::JSON::decode(<STDIN>)))"


def perl_round_trip(value: Any) -> Any:
    data = json.dumps(value).encode()
    out = subprocess.run(
        ["perl", f"-I{PERL_DIR}", "-e", ROUND_TRIP], input=data, capture_output=True, check=True
    ).stdout
    return json.loads(out.decode("utf-8"))


@pytest.mark.parametrize(
    "value",
    [
        {"job": {"id": 12, "name": "shot 010", "agenda": [{"name": "1-10", "status": "blocked"}]}},
        {"text": 'quote " backslash \\ newline \n tab \t nul \u0000 bell \u0007'},
        {"unicode": "caf\u00e9 \u263a \U0001f600 \u4e2d\u6587"},
        {"numbers": [0, -1, 123456789012, 1.5, -2.5e-3], "empty": {}, "none": None, "list": []},
        {"deep": [[[[{"a": [1, [2, [3]]]}]]]]},
    ],
    ids=["job", "escapes", "unicode", "numbers", "nested"],
)
def test_round_trip(value: Any) -> None:
    assert perl_round_trip(value) == value


def test_booleans_decode_to_numbers() -> None:
    assert perl_round_trip({"t": True, "f": False}) == {"t": 1, "f": 0}


def test_malformed_input_dies_with_the_position() -> None:
    result = subprocess.run(
        ["perl", f"-I{PERL_DIR}", "-e", 'require qb; qb::JSON::decode(q({"a": [1, 2}))'],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "expected ',' or ']' at byte" in result.stderr


def test_characters_without_utf8_encode_as_replacement_characters() -> None:
    # A surrogate or a code point beyond U+10FFFF: the frame stays valid UTF-8.
    encode = (
        "require qb; print qb::JSON::encode("
        '{m => "bad " . chr(0xD800) . " " . chr(0x110000) . " \\x{263A}", chr(0xDFFF) => 1})'
    )
    out = subprocess.run(
        ["perl", "-w", f"-I{PERL_DIR}", "-e", encode], capture_output=True, check=True
    )

    assert json.loads(out.stdout.decode("utf-8")) == {"m": "bad \ufffd \ufffd \u263a", "\ufffd": 1}
    assert out.stderr == b""


def perl_qb(program: str, stdin: bytes = b"") -> str:
    """What ``program`` prints, run after ``require qb`` in 256 MiB of address space."""
    limited = ["sh", "-c", 'ulimit -v 262144 && exec "$@"', "sh"]
    return subprocess.run(
        [*limited, "perl", f"-I{PERL_DIR}", "-e", f"require qb; {program}"],
        input=stdin,
        capture_output=True,
        check=True,
    ).stdout.decode()


def test_a_frame_length_beyond_the_executors_limit_is_a_qb_error_not_an_allocation() -> None:
    # A bridge out of step (once, two threads' frames mixed) reads a length that no
    # executor frame has: refused, where a buffer of that size died "Out of memory!"
    # under the callback's RLIMIT_AS (a false MEMORY_LIMIT).
    out = perl_qb(
        "open(my $in, '<&=', 0) or die; qb::_set_bridge($in);"
        " eval { qb::_read_frame() }; print ref($@), ' ', $@->kind, ': ', $@->message",
        b"\xff\xff\xff\xf0" + b"x" * 64,
    )
    assert out == (
        "qb::Error QbError: the executor's frame of 4294967280 bytes exceeds 67108864: "
        "the bridge is out of step"
    )


READ_ONE_FRAME = (
    "open(my $in, '<&=', 0) or die; qb::_set_bridge($in);"
    " my $got = eval { qb::_read_frame() };"
    " print ref($@) ? ref($@) . ' ' : '', $@ ? \"died $@\" : \"read $got->{type}\";"
)


def test_a_signal_handlers_die_while_a_frame_is_decoded_is_the_handlers() -> None:
    # The die of a timeout landing in the decode was taken for the executor's fault:
    # qb::Error "QbError: the executor sent a malformed frame: TIMEOUT".
    body = b'{"type": "reply", "id": 1, "ok": true, "value": 42}'
    interrupted = (
        '$SIG{USR1} = sub { die "TIMEOUT\\n" }; my $decode = \\&qb::JSON::decode;'
        " { no warnings 'redefine'; *qb::JSON::decode = sub { kill 'USR1', $$; $decode->(@_) } }"
    )
    frame = len(body).to_bytes(4, "big") + body

    assert perl_qb(interrupted + READ_ONE_FRAME, frame) == "died TIMEOUT\n"
    assert perl_qb(READ_ONE_FRAME, frame) == "read reply"


def test_a_frame_that_is_not_json_is_the_executors_malformed_frame() -> None:
    body = b'{"type": "reply", "id": 1'
    frame = len(body).to_bytes(4, "big") + body

    assert perl_qb(READ_ONE_FRAME, frame) == (
        "qb::Error died QbError: the executor sent a malformed frame: "
        "expected ',' or '}' at byte 25\n"
    )


@pytest.mark.parametrize(
    ("argument", "too_deep"),
    [
        ("1", 0),
        ("[1, [2, 3]]", 0),
        ("do { my $x = 1; $x = [$x] for 1 .. 32; $x }", 0),
        ("do { my $x = 1; $x = [$x] for 1 .. 33; $x }", 1),
        ("do { my $x = 1; $x = {k => $x} for 1 .. 33; $x }", 1),
        ("do { my $x = []; push @$x, $x; $x }", 1),
    ],
    ids=["scalar", "list", "32-deep", "33-deep", "33-deep-hashes", "self-containing"],
)
def test_qb_pm_finds_arguments_that_nest_too_deep(argument: str, too_deep: int) -> None:
    assert perl_qb(f"print qb::_nests_too_deep({argument})") == str(too_deep)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('do { my $s = "3:1"; my $n = $s + 0; $s }', "3:1"),
        ('do { my $s = "02"; my $n = $s + 0; $s }', "02"),
        ('do { my $s = "0x10"; my $n = $s + 0; $s }', "0x10"),
        ('do { my $s = " 2 "; my $n = $s + 0; $s }', " 2 "),
        ('do { my $s = "nan"; my $n = $s + 0; $s }', "nan"),
        ('Scalar::Util::dualvar(2, "two")', "two"),
        ("!1", ""),
        ('"-0"', "-0"),
        ('do { my $s = "-0"; my $n = $s + 0; $s }', "-0"),
        ("9**9**9", "Inf"),
        ("!0", 1),
        ('do { my $s = "2.5"; my $n = $s + 0; $s }', 2.5),
        ("2.5", 2.5),
        ("1e20", 1e20),
        ("-12", -12),
        ("12345678901234567", 12345678901234567),
        ('"12345678901234567"', "12345678901234567"),
    ],
)
def test_a_scalar_encodes_as_a_number_only_when_its_string_form_is_one(
    value: str, expected: Any
) -> None:
    # A string Perl once used as a number (or a dualvar) went out as its string form
    # unquoted: "3:1" made a frame that is not JSON.
    out = perl_qb(f"use Scalar::Util; no warnings; print qb::JSON::encode([{value}])")
    assert json.loads(out) == [expected]
    assert type(json.loads(out)[0]) is type(expected)
