"""``cbexec store migrate``: create or upgrade a fleet's PostgreSQL schema (idempotent)."""

from __future__ import annotations

import argparse
import os
import sys

from executor.cli.connection import EXIT_OK, EXIT_RPC
from executor.cli.serve import config_path, layered_settings
from executor.errors import UnavailableError


def store_url(args: argparse.Namespace, environ: dict[str, str]) -> str:
    """The ``store`` setting as ``serve`` would read it: defaults < TOML < environment < flag."""
    return layered_settings(args.config, environ, {"store": args.store}).store


def _migrate(args: argparse.Namespace) -> int:
    from executor.migrations import migrate

    url = store_url(args, dict(os.environ))
    if not url:
        # The systemd unit runs this before every start, fleet or not.
        print("store is SQLite (in the data dir): nothing to migrate")
        return EXIT_OK
    try:
        before, after = migrate(url)
    except UnavailableError as err:  # the database could not be reached
        print(f"cbexec: {err}", file=sys.stderr)
        return EXIT_RPC
    if before == after:
        print(f"store schema already at version {after}")
    else:
        print(f"store schema migrated from version {before} to {after}")
    return EXIT_OK


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cbexec store ...``."""
    parser = commands.add_parser("store", help="the PostgreSQL store of a fleet of executors")
    sub = parser.add_subparsers(dest="store_command", required=True)
    migrate = sub.add_parser(
        "migrate",
        help="create or upgrade the store's schema to this version (idempotent; run before "
        "the executors start)",
    )
    migrate.add_argument(
        "--config", type=config_path, help="TOML settings file (also CBEXEC_CONFIG)"
    )
    migrate.add_argument(
        "--store", help="postgresql://user@host/db (default: the store setting, CBEXEC_STORE)"
    )
    migrate.set_defaults(handler=_migrate)
