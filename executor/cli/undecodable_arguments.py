r"""Command-line arguments that are not UTF-8: refused in one line naming the argument.

Python hands such bytes over as lone surrogates (``surrogateescape``); sent on, they met
a check that raised with a traceback (``cbexec runs show`` with the byte 0xff, probe 107), or
an encoder's error later. No argument but a file system path can be other than text,
so every command refuses them, before anything is read or sent, as exit 2: ``Parser``
before an option's converter or choices see the value (they answered with the usage
block and Python's ``'\udcff'``, probe 119), ``refusal`` for anything parsed otherwise.
A value a variable gave (``$CBEXEC_ADDRESS``) is named by its variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

# Options kept as str that are file system paths (any bytes but NUL, as Linux allows).
PATH_DESTS: Final = frozenset({"data_dir", "config"})


class FromEnvironment(str):
    """An option's default taken from an environment variable, which errors name instead."""

    variable: str

    def __new__(cls, value: str, variable: str) -> FromEnvironment:
        made = super().__new__(cls, value)
        made.variable = variable
        return made


class NotTextError(Exception):
    """An argument is not UTF-8 text; the message is the one line that says so."""


class Parser(argparse.ArgumentParser):
    """argparse's parser, but a value that is not UTF-8 text is refused before it is converted.

    Subcommands' parsers are of the class of the parser that adds them, so the whole
    command line is covered by making its root one of these.
    """

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:
        # A subcommand's action is given the subcommand's arguments too: they are its
        # parser's to name, and the subcommand's own name is checked below.
        subcommand = isinstance(action, argparse._SubParsersAction)
        path = action.dest in PATH_DESTS or action.type is Path
        if not (_is_text(arg_string) or subcommand or path):
            raise NotTextError(said(_name(action), arg_string))
        return super()._get_value(action, arg_string)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        # Before a subcommand's name is looked up in the choices.
        if isinstance(action, argparse._SubParsersAction) and not _is_text(value):
            raise NotTextError(said(_name(action), value))
        super()._check_value(action, value)


def refusal(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The line that refuses the first argument that is not UTF-8; None if all are text."""
    names = dict(_names(parser))
    for dest, value in vars(args).items():
        if dest in PATH_DESTS or isinstance(value, Path):
            continue
        for one in value if isinstance(value, list) else [value]:
            if isinstance(one, str) and not _is_text(one):
                return said(names.get(dest, dest), one)
    return None


def said(name: str, value: str) -> str:
    r"""``NAME: '\xff' is not UTF-8 text``, the bytes shown as escapes; a variable's by its name."""
    if isinstance(value, FromEnvironment):
        name = f"${value.variable}"
    shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return f"{name}: '{shown}' is not UTF-8 text"


def _is_text(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(action: argparse.Action) -> str:
    """The name an argument's usage shows: its longest flag (``--work``), or ``ID``."""
    if isinstance(action, argparse._SubParsersAction):
        return "COMMAND"  # its usage lists the choices
    if action.option_strings:
        return max(action.option_strings, key=len)
    return str(action.metavar or action.dest)


def _names(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """Each argument's dest and the name its usage shows, in every subcommand."""
    # argparse has no public walk of a parser's actions.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _names(sub)
        else:
            yield action.dest, _name(action)
