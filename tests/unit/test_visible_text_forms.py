"""How the CLI prints a submitter's strings: one line each, control characters escaped."""

from __future__ import annotations

import io

import pytest

from executor.cli.farm_workers import WorkerPlan, Workers
from executor.visible_text import escaped, printable

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "field", "line"),
    [
        ("render", "render", "render"),
        ("plate é 1", "plate é 1", "plate é 1"),
        ("real\n999 fake", "'real\\n999 fake'", "real\\n999 fake"),
        ("a\r\nBcc:", "'a\\r\\nBcc:'", "a\\r\\nBcc:"),
        ("\x1b[2J\u202etab\there", "'\\x1b[2J\\u202etab\\there'", "\\x1b[2J\\u202etab\\there"),
    ],
)
def test_a_control_character_is_written_as_repr_writes_it(text: str, field: str, line: str) -> None:
    assert printable(text) == field
    assert escaped(text) == line
    assert printable(field) == field and escaped(line) == line  # again: nothing changes


def test_a_workers_line_is_one_line() -> None:
    out = io.StringIO()
    Workers(None, WorkerPlan(1, 0.0, 0.0, 1), out)._say("w-1: took 1:a\nb (x)")  # type: ignore[arg-type]  # no farm needed to speak

    assert out.getvalue() == "w-1: took 1:a\\nb (x)\n"
