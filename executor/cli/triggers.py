"""``cbexec triggers``: check and explain trigger expressions, dry-run events, reload universal callbacks."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from executor import triggers
from executor.cli.connection import (
    EXIT_NOT_SUCCEEDED,
    EXIT_OK,
    connect,
    connection_options,
    rpc_command,
)
from executor.errors import ConfigError


def _check(args: argparse.Namespace) -> int:
    try:
        expr = triggers.parse(args.expression)
    except triggers.TriggerSyntaxError as err:
        print(err.pretty())
        return EXIT_NOT_SUCCEEDED
    print(f"ok: {triggers.render(expr)}")
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    try:
        expr = triggers.parse(args.expression)
    except triggers.TriggerSyntaxError as err:
        print(err.pretty())
        return EXIT_NOT_SUCCEEDED
    print(triggers.explain(expr))
    return EXIT_OK


PUBLISHED_TYPES = ("job", "work", "subjob", "host")


def parse_published_event(text: str) -> dict[str, Any]:
    """'complete-work-12-5' -> name, type, job id, item: an event as it happened.

    ConfigError (usage) naming what is wrong, for a malformed text.
    """
    parts = text.split("-", 3)
    if len(parts) < 3 or not parts[2].isdigit():
        raise ConfigError(f"--event expects NAME-TYPE-JOBID[-ITEM], got {text!r}")
    name, type_, job_id = parts[0], parts[1], int(parts[2])
    if type_ not in PUBLISHED_TYPES:
        raise ConfigError(
            f"--event {text!r}: unknown type {type_!r}; expected one of {', '.join(PUBLISHED_TYPES)}"
        )
    fields: dict[str, Any] = {"name": name, "type": type_, "job_id": job_id}
    item = parts[3] if len(parts) == 4 else ""
    if type_ == "work":
        fields["work_name"] = item
    elif type_ == "subjob" and item:
        if not item.lstrip("-").isdigit():
            raise ConfigError(f"--event {text!r}: a subjob event's item is an instance number")
        fields["subjob_id"] = int(item)
    elif type_ == "host":
        fields["host"] = item
    return fields


async def _dry_run(args: argparse.Namespace, out: TextIO) -> int:
    event = parse_published_event(args.event)
    async with connect(args) as client:
        reply = await client.dry_run(timeout=args.timeout, **event)
    for firing in reply.would_fire:
        print(
            f"would fire: job {firing.job_id} callback {firing.callback_id} "
            f"({firing.language}) {firing.triggers}",
            file=out,
        )
    for cb in reply.would_latch:
        print(
            f"would latch: job {cb.job_id} callback {cb.id} {cb.triggers} "
            f"latches={list(cb.latches)}",
            file=out,
        )
    if not reply.would_fire and not reply.would_latch:
        print("nothing would fire or latch", file=out)
    return EXIT_OK


async def _reload(args: argparse.Namespace, out: TextIO) -> int:
    async with connect(args) as client:
        reply = await client.reload_universal_callbacks(timeout=args.timeout)
    for error in reply.errors:
        print(error, file=out)
    print(
        f"{'reloaded' if reply.reloaded else 'kept the previous set'}: {reply.active} active",
        file=out,
    )
    return EXIT_OK if reply.reloaded else EXIT_NOT_SUCCEEDED


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cbexec triggers ...``."""
    parser = commands.add_parser("triggers", help="trigger expressions and the trigger engine")
    sub = parser.add_subparsers(dest="triggers_command", required=True)
    check = sub.add_parser("check", help="validate an expression; print its canonical form")
    check.add_argument("expression")
    check.set_defaults(handler=_check)
    explain = sub.add_parser("explain", help="say in words what an expression waits for")
    explain.add_argument("expression")
    explain.set_defaults(handler=_explain)
    dry = sub.add_parser(
        "dry-run",
        parents=[connection_options()],
        help="what an event would fire on a running executor",
    )
    dry.add_argument(
        "--event", required=True, help="NAME-TYPE-JOBID[-ITEM], e.g. complete-work-12-5"
    )
    dry.set_defaults(handler=rpc_command(_dry_run))
    reload = sub.add_parser(
        "reload",
        parents=[connection_options()],
        help="re-read callbacks.conf on a running executor",
    )
    reload.set_defaults(handler=rpc_command(_reload))
