"""``cbexec outbox``: the results the outbox set aside instead of delivering, and retrying them."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any, TextIO

from executor.api.runs import MAX_RETRY_IDS
from executor.cli.connection import (
    EXIT_NOT_SUCCEEDED,
    EXIT_OK,
    EXIT_USAGE,
    MAX_LIST,
    connect,
    connection_options,
    rpc_command,
    whole_number,
)
from executor.visible_text import escaped
from supervisor_client.client import as_plain


def _local_time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s).astimezone().isoformat(timespec="seconds")


async def _list(args: argparse.Namespace, out: TextIO) -> int:
    async with connect(args) as client:
        reply = await client.list_dead_letters(limit=args.limit, timeout=args.timeout)
    if args.json:
        for letter in reply.dead_letters:
            print(json.dumps(as_plain(letter)), file=out)
        return EXIT_OK
    if not reply.dead_letters:
        print("no dead letters: every result was delivered or is on its way", file=out)
        return EXIT_OK
    for letter in reply.dead_letters:
        print(describe_dead_letter(letter), file=out)
    return EXIT_OK


def describe_dead_letter(letter: Any) -> str:
    """Two lines: the letter (id, when, size, refusals), then the supervisor's last refusal.

    The refusal is the supervisor's words, escaped in place: it stays on its own line and
    acts on no terminal (a supervisor may echo a job's text into it).
    """
    refusals = "1 refusal" if letter.attempts == 1 else f"{letter.attempts} refusals"
    return (
        f"{letter.invocation_id}  set aside {_local_time(letter.dead_at)}  "
        f"{letter.size_bytes} bytes  {refusals}\n  {escaped(letter.last_error)}"
    )


async def _retry(args: argparse.Namespace, out: TextIO) -> int:
    if args.invocation_ids and args.all:
        print("cbexec: give invocation ids or --all, not both", file=sys.stderr)
        return EXIT_USAGE
    if not args.invocation_ids and not args.all:
        print("cbexec: name the invocation ids to retry, or give --all", file=sys.stderr)
        return EXIT_USAGE
    if (named := len(set(args.invocation_ids))) > MAX_RETRY_IDS:
        # Refused here in the command's words: the RPC's own refusal names its field.
        print(
            f"cbexec: at most {MAX_RETRY_IDS} invocation ids a call, got {named};"
            " --all retries every dead letter",
            file=sys.stderr,
        )
        return EXIT_USAGE
    async with connect(args) as client:
        reply = await client.retry_dead_letters(args.invocation_ids, timeout=args.timeout)
    print(f"queued {reply.queued} for delivery again", file=out)
    missing = len(set(args.invocation_ids)) - reply.queued
    if missing > 0:  # a typo'd id is not "done": say it, and fail
        print(
            f"cbexec: {missing} of the ids named "
            f"{'is not a dead letter' if missing == 1 else 'are not dead letters'} "
            "(see cbexec outbox dead)",
            file=sys.stderr,
        )
        return EXIT_NOT_SUCCEEDED
    return EXIT_OK


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cbexec outbox ...``."""
    parser = commands.add_parser(
        "outbox", help="results the outbox set aside (dead letters), and retrying them"
    )
    sub = parser.add_subparsers(dest="outbox_command", required=True)
    listing = sub.add_parser(
        "dead", parents=[connection_options()], help="list the dead letters, newest first"
    )
    listing.add_argument(
        "--limit", type=whole_number(1, MAX_LIST), default=100, help="at most this many (max 1000)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    listing.set_defaults(handler=rpc_command(_list))
    retry = sub.add_parser(
        "retry", parents=[connection_options()], help="queue dead letters for delivery again"
    )
    retry.add_argument("invocation_ids", nargs="*", metavar="INVOCATION_ID")
    retry.add_argument("--all", action="store_true", help="every dead letter")
    retry.set_defaults(handler=rpc_command(_retry))
