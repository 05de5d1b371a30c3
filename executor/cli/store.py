"""``cbexec store migrate``: create or upgrade a fleet's PostgreSQL schema (idempotent)."""

from __future__ import annotations

import argparse
import os
import sys

from executor.cli.connection import EXIT_OK, EXIT_USAGE
from executor.errors import UnavailableError


def _migrate(args: argparse.Namespace) -> int:
    from executor.migrations import migrate
    from executor.sql import is_postgres

    url = args.store or os.environ.get("CBEXEC_STORE", "")
    if not is_postgres(url):
        print(
            "cbexec: store migrate needs --store postgresql://user@host/db (or CBEXEC_STORE); "
            "the SQLite store needs no migration",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        before, after = migrate(url)
    except UnavailableError as err:
        print(f"cbexec: {err}", file=sys.stderr)
        return EXIT_USAGE
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
    migrate.add_argument("--store", help="postgresql://user@host/db (default: CBEXEC_STORE)")
    migrate.set_defaults(handler=_migrate)
