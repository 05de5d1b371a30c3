"""The ``cbexec`` command: one subcommand per module; errors are one line and an exit code.

``serve`` runs the service (serve.py); ``run``, ``runs`` (runs.py), ``triggers``
(triggers.py), ``outbox`` (outbox.py), ``metrics`` (metrics.py) and ``farm`` (farm.py)
are clients of a running executor, through ``supervisor_client`` only; ``store``
(store.py) prepares a fleet's PostgreSQL database.
Exit codes are in connection.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from executor import __version__
from executor.cli import farm, metrics, outbox, runs, serve, store, triggers
from executor.cli.connection import EXIT_USAGE
from executor.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
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
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as err:
        print(f"cbexec: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
