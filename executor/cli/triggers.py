"""``cbexec triggers``: expressions, registrations, why callbacks did or did not fire, dry runs.

Check and explain expressions, register jobs, say why callbacks did or did not fire,
dry-run events, reload universal callbacks.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path
from typing import Any, Final, TextIO

import grpc

from executor import triggers
from executor.cli.connection import (
    EXIT_NOT_SUCCEEDED,
    EXIT_OK,
    EXIT_RPC,
    MAX_CALLBACK_ID,
    MAX_COUNT,
    MAX_ID,
    SUBJOB_IDS,
    connect,
    connection_options,
    number_in,
    rpc_command,
    say_error,
    whole_number,
)
from executor.cli.explain import format_check, format_dry_run, format_explanation
from executor.errors import ConfigError
from executor.triggers.checks import static_checks
from supervisor_client import ExecutorClient, ExecutorRpcError, InvalidRequestError
from supervisor_client.client import as_plain


def _check(args: argparse.Namespace) -> int:
    """The canonical form, then what a trigger alone can be warned about (exit 0 still).

    The warnings are those a trigger alone can get: what the parser accepted with a
    warning (an extra on a job atom, dropped; ``SELF`` read as a label), and atoms
    nothing fires (``global``).
    """
    try:
        expr = triggers.parse(args.expression)
    except triggers.TriggerSyntaxError as err:
        print(err.pretty())
        return EXIT_NOT_SUCCEEDED
    print(f"ok: {triggers.render(expr)}")
    for check in static_checks(expr):
        print(f"warning: {check.atom}: {check.message}")
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
    if len(parts) < 3 or not (parts[2].isascii() and parts[2].isdigit()):
        raise ConfigError(f"--event expects NAME-TYPE-JOBID[-ITEM], got {text!r}")
    name, type_ = parts[0], parts[1]
    job_id = number_in(parts[2], 1, MAX_ID, f"--event {text!r}: JOBID")
    if type_ not in PUBLISHED_TYPES:
        raise ConfigError(
            f"--event {text!r}: unknown type {type_!r}; expected one of {', '.join(PUBLISHED_TYPES)}"
        )
    fields: dict[str, Any] = {"name": name, "type": type_, "job_id": job_id}
    item = parts[3] if len(parts) == 4 else ""
    if type_ == "work":
        fields["work_name"] = item
    elif type_ == "subjob" and item:
        if not (item.isascii() and item.lstrip("-").isdigit()):
            raise ConfigError(f"--event {text!r}: a subjob event's item is an instance number")
        fields["subjob_id"] = number_in(item, *SUBJOB_IDS, f"--event {text!r}: ITEM")
    elif type_ == "host":
        fields["host"] = item
    return fields


async def _dry_run(args: argparse.Namespace, out: TextIO) -> int:
    event = parse_published_event(args.event)
    async with connect(args) as client:
        reply = await client.dry_run(timeout=args.timeout, **event)
    if args.json:
        print(json.dumps(as_plain(reply)), file=out)
    else:
        print(format_dry_run(reply), file=out)
    return EXIT_OK


def parse_target(text: str) -> tuple[int, int]:
    """``JOB`` or ``JOB:CALLBACK`` -> (job id, callback id or 0); ConfigError otherwise."""
    job, sep, callback = text.partition(":")
    if not _digits(job) or (sep and not _digits(callback)):
        raise ConfigError(f"expected JOB or JOB:CALLBACK (numbers, e.g. 12 or 12:1), got {text!r}")
    return (
        number_in(job, 1, MAX_ID, "JOB"),
        number_in(callback, 0, MAX_CALLBACK_ID, "CALLBACK") if sep else 0,
    )


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


# How many times ``why JOB`` reads a job's pages from the first again when the job is
# registered again while they are read (ABORTED) before it says so: a farm registers a
# job again at each retry, not several times a second.
WHY_READS: Final = 3


async def _every_page(
    client: ExecutorClient, job_id: int, callback_id: int, args: argparse.Namespace
) -> Any:
    """The job's ExplainCallbacksResponse with every page's callbacks, of one registration.

    Raises:
        ExecutorRpcError: ABORTED when the job was registered again between two pages.
    """
    reply = await client.explain_callbacks(
        job_id,
        callback_id,
        work_name=args.work or "",
        journal_limit=args.journal,
        timeout=args.timeout,
    )
    while reply.next_after_callback_id:
        page = await client.explain_callbacks(
            job_id,
            work_name=args.work or "",
            journal_limit=args.journal,
            after_callback_id=reply.next_after_callback_id,
            registration=reply.registration,
            timeout=args.timeout,
        )
        reply.callbacks.extend(page.callbacks)
        reply.total_callbacks = page.total_callbacks
        reply.next_after_callback_id = page.next_after_callback_id
    return reply


async def _one_registration(
    client: ExecutorClient, job_id: int, callback_id: int, args: argparse.Namespace
) -> Any | None:
    """Every page of the job as one registration has it; None after ``WHY_READS`` tries."""
    for _ in range(WHY_READS):
        try:
            return await _every_page(client, job_id, callback_id, args)
        except ExecutorRpcError as err:
            if err.code != grpc.StatusCode.ABORTED:
                raise
    return None


async def _why(args: argparse.Namespace, out: TextIO) -> int:
    job_id, callback_id = parse_target(args.target)
    async with connect(args) as client:
        reply = await _one_registration(client, job_id, callback_id, args)
    if reply is None:
        say_error(
            f"job {job_id} was registered again while its pages were read, {WHY_READS} "
            "times in a row, so no answer describes one registration of it: ask again "
            "later, or for one callback (JOB:CALLBACK)"
        )
        return EXIT_RPC
    if args.json:
        print(json.dumps(as_plain(reply)), file=out)
    else:
        print(format_explanation(reply), file=out)
    return EXIT_OK


def load_job_file(path: Path) -> dict[str, Any]:
    """A job dict from a JSON or (``.toml``) TOML file; ConfigError naming what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")  # JSON and TOML are UTF-8 by their specs
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text: {err}") from err
    try:
        job = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ConfigError(f"{path}: not {kind}: {err}") from err
    if not isinstance(job, dict):
        raise ConfigError(f"{path}: must hold one job (an object with id, callbacks, ...)")
    return job


async def _register(args: argparse.Namespace, out: TextIO) -> int:
    job = load_job_file(args.job)
    published = [name.strip() for name in (args.publishes or "").split(",") if name.strip()]
    try:
        async with connect(args) as client:
            reply = await client.register_job(
                job, strict=args.strict, published_events=published, timeout=args.timeout
            )
    except ValueError as err:  # a job dict the wire Job cannot hold
        raise ConfigError(f"{args.job}: {err}") from err
    except InvalidRequestError as err:
        say_error(f"refused: {err.details}")
        return EXIT_NOT_SUCCEEDED
    if args.json:
        print(json.dumps(as_plain(reply)), file=out)
        return EXIT_OK
    for cb in reply.callbacks:
        origin = f"universal {cb.source}" if cb.universal else cb.language
        print(f"registered: job {cb.job_id} callback {cb.id} ({origin}) {cb.triggers}", file=out)
    for firing in reply.fired:
        work = f" for work {firing.work_name}" if firing.work_name else ""
        print(f"fired at registration (level): callback {firing.callback_id}{work}", file=out)
    for check in reply.warnings:
        print(f"warning: {format_check(as_plain(check))}", file=out)
    return EXIT_OK


async def _reload(args: argparse.Namespace, out: TextIO) -> int:
    async with connect(args) as client:
        reply = await client.reload_universal_callbacks(timeout=args.timeout)
    for error in reply.errors:
        print(error, file=out)
    for warning in reply.warnings:
        print(f"warning: {warning}", file=out)
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
    dry.add_argument("--json", action="store_true", help="the answer as JSON")
    dry.set_defaults(handler=rpc_command(_dry_run))
    why = sub.add_parser(
        "why",
        parents=[connection_options()],
        help="why a job's callbacks did or did not fire, and what they wait for",
        description=(
            "Explain a registered job's callbacks: each atom with the job its context names,"
            " its latch and the event that set it, what the trigger still waits for, the"
            " checks found at registration, and the recent journal of events. A job of more"
            " callbacks than one answer holds (1000) is asked for a page at a time."
        ),
    )
    why.add_argument("target", metavar="JOB[:CALLBACK]", help="e.g. 12, or 12:1 for callback 1")
    why.add_argument("--work", metavar="NAME", help="one work item of a {work} callback, in full")
    why.add_argument(
        "--journal",
        type=whole_number(0, MAX_COUNT),
        default=0,
        metavar="N",
        help="journal entries per callback",
    )
    why.add_argument("--json", action="store_true", help="the answer as JSON")
    why.set_defaults(handler=rpc_command(_why))
    register = sub.add_parser(
        "register",
        parents=[connection_options()],
        help="register a job (JSON or TOML job dict) and show what the checks found",
    )
    register.add_argument("job", type=Path, metavar="JOB_FILE", help="a job dict: .json or .toml")
    register.add_argument(
        "--strict", action="store_true", help="refuse the job when a check fails (exit 1)"
    )
    register.add_argument(
        "--publishes",
        metavar="EVENTS",
        help="comma-separated events the scheduler publishes (complete,failed,running-job,...)",
    )
    register.add_argument("--json", action="store_true", help="the answer as JSON")
    register.set_defaults(handler=rpc_command(_register))
    reload = sub.add_parser(
        "reload",
        parents=[connection_options()],
        help="re-read callbacks.conf on a running executor",
    )
    reload.set_defaults(handler=rpc_command(_reload))
