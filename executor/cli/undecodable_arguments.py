"""Command-line arguments that are not UTF-8: refused in one line naming the argument.

Python hands such bytes over as lone surrogates (``surrogateescape``); sent on, they met
a check that raised with a traceback (``cbexec runs show`` with the byte 0xff, probe 107), or
an encoder's error later. No argument but a file system path can be other than text,
so every command refuses them here, before anything is read or sent, as exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Final

# Options kept as str that are file system paths (any bytes but NUL, as Linux allows).
PATH_DESTS: Final = frozenset({"data_dir"})


def refusal(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The line that refuses the first argument that is not UTF-8; None if all are text."""
    names = dict(_names(parser))
    for dest, value in vars(args).items():
        if dest in PATH_DESTS or isinstance(value, Path):
            continue
        for one in value if isinstance(value, list) else [value]:
            if isinstance(one, str) and not _is_text(one):
                shown = one.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                return f"{names.get(dest, dest)}: '{shown}' is not UTF-8 text"
    return None


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _names(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """Each argument's dest and the name its usage shows (``--work``, ``ID``), in every subcommand."""
    # argparse has no public walk of a parser's actions.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _names(sub)
        elif action.option_strings:
            yield action.dest, max(action.option_strings, key=len)
        else:
            yield action.dest, str(action.metavar or action.dest)
