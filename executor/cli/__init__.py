"""The ``cbexec`` command: one subcommand per module; errors are one line and an exit code.

``serve`` runs the service (serve.py); ``run``, ``runs`` (runs.py), ``triggers``
(triggers.py), ``outbox`` (outbox.py), ``metrics`` (metrics.py) and ``farm`` (farm.py)
are clients of a running executor, through ``supervisor_client`` only; ``store``
(store.py) prepares a fleet's PostgreSQL database.
Exit codes are in connection.py, but for an interrupt's (here: it may come before that
module is imported).
"""

from __future__ import annotations

import argparse
import os
import select
import sys
from collections.abc import Callable, Sequence
from typing import Final

from executor import __version__, reload_signal

# 128 + SIGINT, as a shell reports a command a Ctrl-C ended (``serve`` stops instead: 0).
EXIT_INTERRUPTED: Final = 130


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    # Here, not at the top: they take ~0.2 s (gRPC, the stubs), which ``main`` lets a
    # SIGHUP to ``cbexec serve`` find handled (reload_signal).
    from executor.cli import farm, metrics, outbox, runs, serve, store, triggers
    from executor.cli.undecodable_arguments import Parser

    # Parser: an argument that is not UTF-8 is refused before any converter sees it.
    # (Typed as argparse's: its subcommands' parsers are Parsers too, of its class.)
    parser: argparse.ArgumentParser = Parser(
        prog="cbexec", description="Sandboxed executor for render-farm job callbacks."
    )
    parser.add_argument("--version", action="version", version=f"cbexec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(commands)
    triggers.add_parser(commands)
    runs.add_parsers(commands)
    outbox.add_parser(commands)
    metrics.add_parser(commands)
    farm.add_parser(commands)
    store.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cbexec`` console script."""
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["serve"]:  # called in a process of its own (a test's): as executor/__init__
        reload_signal.defer()
    try:
        # In the try: a Ctrl-C during these imports (~0.2 s) is an interrupt, not a traceback.
        from executor.cli import undecodable_arguments
        from executor.cli.connection import EXIT_BROKEN_PIPE, EXIT_USAGE, say_error
        from executor.errors import ConfigError

        parser = build_parser()
        args = parser.parse_args(given)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except undecodable_arguments.NotTextError as err:
        say_error(str(err))
        return EXIT_USAGE
    if refusal := undecodable_arguments.refusal(parser, args):
        say_error(refusal)
        return EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is seen below
    except ConfigError as err:
        for line in str(err).splitlines() or [""]:  # a problem a line (every bad setting)
            say_error(line)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if not _reader_gone():
            raise  # another pipe's (a bug's): not ours to hide
        # The reader of our output went away (cbexec runs --json | head -2): stop quietly,
        # as a Unix filter does. What is still buffered goes nowhere, not into an error
        # at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return code


def _reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end was closed (poll says POLLERR)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's, a closed one)
        return False
