"""Every cbexec command, and every subcommand, answers --help (and says what it is)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from executor.cli import build_parser, main

pytestmark = pytest.mark.unit


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    """The argv prefix of every command in the tree, the root included."""
    yield path
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


ALL = sorted(commands(build_parser()))


def test_the_tree_has_every_command() -> None:
    tops = {path[0] for path in ALL if path}
    assert tops == {"serve", "run", "runs", "triggers", "outbox", "metrics", "farm", "store"}
    farm = {path[1] for path in ALL if len(path) == 2 and path[0] == "farm"}
    assert farm == {
        "submit",
        "jobs",
        "show",
        "start",
        "complete",
        "fail",
        "retry",
        "kill",
        "block",
        "unblock",
        "requeue",
        "remove",
        "workers",
        "wait",
    }


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "cbexec")
def test_help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cbexec {' '.join(path)}".rstrip())
    assert "Traceback" not in out
