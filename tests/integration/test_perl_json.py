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
