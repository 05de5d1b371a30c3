"""``cbexec triggers``: check and explain trigger expressions, dry-run events, reload universal callbacks."""

from __future__ import annotations

import argparse
import asyncio

import grpc

from executor import triggers
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc

EXIT_OK = 0
EXIT_INVALID = 1


def _check(args: argparse.Namespace) -> int:
    try:
        expr = triggers.parse(args.expression)
    except triggers.TriggerSyntaxError as err:
        print(err.pretty())
        return EXIT_INVALID
    print(f"ok: {triggers.render(expr)}")
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    try:
        expr = triggers.parse(args.expression)
    except triggers.TriggerSyntaxError as err:
        print(err.pretty())
        return EXIT_INVALID
    print(triggers.explain(expr))
    return EXIT_OK


def _parse_event(text: str) -> executor_pb2.PublishEventRequest:
    """'complete-work-12-5' -> name, type, job id, item (the event as it happened)."""
    parts = text.split("-", 3)
    if len(parts) < 3 or not parts[2].isdigit():
        raise SystemExit(f"cbexec: --event expects NAME-TYPE-JOBID[-ITEM], got {text!r}")
    request = executor_pb2.PublishEventRequest(name=parts[0], type=parts[1], job_id=int(parts[2]))
    item = parts[3] if len(parts) == 4 else ""
    if request.type == "work":
        request.work_name = item
    elif request.type == "subjob" and item:
        request.subjob_id = int(item)
    elif request.type == "host":
        request.host = item
    return request


async def _dry_run(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = executor_pb2_grpc.CallbackExecutorStub(channel)
        reply = await stub.DryRun(_parse_event(args.event))
    for firing in reply.would_fire:
        print(
            f"would fire: job {firing.job_id} callback {firing.callback_id} "
            f"({firing.language}) {firing.triggers}"
        )
    for cb in reply.would_latch:
        print(
            f"would latch: job {cb.job_id} callback {cb.id} {cb.triggers} latches={list(cb.latches)}"
        )
    if not reply.would_fire and not reply.would_latch:
        print("nothing would fire or latch")
    return EXIT_OK


async def _reload(args: argparse.Namespace) -> int:
    async with grpc.aio.insecure_channel(args.address) as channel:
        stub = executor_pb2_grpc.CallbackExecutorStub(channel)
        reply = await stub.ReloadUniversalCallbacks(executor_pb2.ReloadUniversalCallbacksRequest())
    for error in reply.errors:
        print(error)
    print(f"{'reloaded' if reply.reloaded else 'kept the previous set'}: {reply.active} active")
    return EXIT_OK if reply.reloaded else EXIT_INVALID


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
    dry = sub.add_parser("dry-run", help="what an event would fire on a running executor")
    dry.add_argument(
        "--event", required=True, help="NAME-TYPE-JOBID[-ITEM], e.g. complete-work-12-5"
    )
    dry.add_argument("--address", default="127.0.0.1:50051")
    dry.set_defaults(handler=lambda a: asyncio.run(_dry_run(a)))
    reload = sub.add_parser("reload", help="re-read callbacks.conf on a running executor")
    reload.add_argument("--address", default="127.0.0.1:50051")
    reload.set_defaults(handler=lambda a: asyncio.run(_reload(a)))
