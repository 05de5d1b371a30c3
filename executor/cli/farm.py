"""``cbexec farm``: drive the embedded farm: submit jobs, list and show them, move work, run workers.

A client of the executor's FarmService through ``supervisor_client.FarmClient``:

- ``submit FILE`` (a Qube submission script, or a .json/.toml job file: farm_submit.py);
- ``jobs`` and ``show ID`` (agenda, callbacks with their latches, history), ``--json``;
- a worker's changes ``start|complete|fail ID:FRAMES`` and the operator's
  ``retry|kill|block|unblock|requeue ID[:FRAMES]`` (a job, or its frames) and
  ``remove ID``; FRAMES as the qb work verbs take them: ``5``, ``1-10``, ``3,7-9``;
- ``workers N`` (simulated workers, farm_workers.py) and ``wait [ID...]``.

Exit codes as every cbexec command (connection.py); a change that left some of what was
asked alone exits 1, naming it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

import grpc

from executor import triggers
from executor.bounds import MAX_WAIT_S
from executor.cli.connection import (
    EXIT_NOT_SUCCEEDED,
    EXIT_OK,
    EXIT_RPC,
    MAX_ID,
    Command,
    connect_farm,
    connection_options,
    number_in,
    rpc_command,
    say_error,
    whole_number,
)
from executor.cli.farm_submit import describe_submitted, registration_warnings, submit_file
from executor.cli.farm_workers import (
    REPORT_BACKOFF_S,
    WorkerPlan,
    Workers,
    run_until_signalled,
)
from executor.errors import ConfigError
from executor.plurals import counted
from executor.triggers.explain import compact_names
from executor.visible_text import escaped, printable, quoted
from supervisor_client import ExecutorClient, ExecutorRpcError, FarmClient, RetryableError
from supervisor_client.client import as_plain
from supervisor_client.jobdict import job_to_dict
from supervisor_client.reference.qube_time import with_times_shown

_TARGET: Final = re.compile(r"^([0-9]+)(?::(.+))?$")
WORKER_VERBS: Final = ("start", "complete", "fail")
OPERATOR_VERBS: Final = ("retry", "kill", "block", "unblock", "requeue")
STATUSES: Final = ("pending", "blocked", "running", "complete", "failed", "killed", "suspended")
MAX_WORKERS: Final = 64


def parse_target(text: str) -> tuple[int, str]:
    """``12`` -> (12, ""), ``12:1-3,7`` -> (12, "1-3,7"); ConfigError saying what is valid."""
    match = _TARGET.match(text.strip())
    if not match:
        raise ConfigError(
            f"{text!r} is not a job or its frames: expected ID or ID:FRAMES "
            "(12, 12:5, 12:1-10, 12:3,7-9)"
        )
    return number_in(match.group(1), 0, MAX_ID, "ID"), match.group(2) or ""


def _local_time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def tally(agenda: Sequence[Any]) -> str:
    """An agenda's statuses in a few words: "2 complete, 1 running" ("-" when empty)."""
    if not agenda:
        return "-"
    counts = Counter(work.status for work in agenda)
    order = ("complete", "running", "pending", "blocked", "failed", "killed")
    ranked = sorted(counts, key=lambda s: order.index(s) if s in order else len(order))
    return ", ".join(f"{counts[status]} {status}" for status in ranked)


def _table(rows: list[tuple[str, ...]], indent: str = "") -> str:
    """Aligned columns; a cell a submitter chose is printed as ``printable`` gives it."""
    rows = [tuple(printable(cell) for cell in row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        indent
        + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_jobs(jobs: Sequence[Any]) -> str:
    """The ``cbexec farm jobs`` table."""
    rows: list[tuple[str, ...]] = [("ID", "NAME", "LABEL", "PGRP", "STATUS", "USER", "FRAMES")]
    rows += [
        (str(j.id), j.name or "-", j.label, str(j.pgrp), j.status, j.user, tally(j.agenda))
        for j in jobs
    ]
    return _table(rows)


def _latches(triggers_text: str, latches: Sequence[bool]) -> str:
    """Each atom of a trigger with its latch: "[x] complete-work-a-1, [ ] complete-work-b-1"."""
    atoms = _atoms(triggers_text, len(latches))
    return ", ".join(
        f"[{'x' if latched else ' '}] {atom}" for atom, latched in zip(atoms, latches, strict=False)
    )


def _atoms(triggers_text: str, size: int) -> list[str]:
    try:
        return [triggers.render(a) for a in triggers.atoms(triggers.parse(triggers_text))]
    except triggers.TriggerSyntaxError:
        return [f"atom {n + 1}" for n in range(size)]


def _work_latches(triggers_text: str, work_items: Sequence[Any] | None) -> str:
    """A {work} callback's atoms, each latched in how many of its frames, and the frames half latched.

    "[2/6] complete-work-a-{work}, [0/6] complete-work-b-{work}; half latched: 2-3". Its
    own latches are only what a frame no event has named starts from: shown as its
    latches, "[ ]" everywhere read as nothing latched while frames were half latched.
    ``work_items`` is ExplainCallbacks' (None when the executor did not answer).
    """
    if work_items is None:
        atoms = _atoms(triggers_text, 0)
        return ", ".join(f"[?] {atom}" for atom in atoms) + " (latched per frame)"
    size = max((len(items.latches) for items in work_items), default=0)
    atoms = _atoms(triggers_text, size)
    total = sum(len(items.work_names) for items in work_items)
    held = [0] * len(atoms)
    half: list[str] = []
    for items in work_items:
        for slot, latched in enumerate(items.latches[: len(held)]):
            held[slot] += len(items.work_names) if latched else 0
        if any(items.latches):
            half += items.work_names
    shown = ", ".join(f"[{count}/{total}] {atom}" for atom, count in zip(atoms, held, strict=True))
    return shown + (f"; half latched: {compact_names(half)}" if half else "")


def format_job(reply: Any, work_items: Mapping[int, Sequence[Any] | None] | None = None) -> str:
    """``cbexec farm show``: the job, its agenda, its callbacks with latches, its history.

    ``work_items``: for each {work} callback (by id), ExplainCallbacks' work items.
    """
    work_items = work_items or {}
    job = reply.job
    head = f"job {job.id} {quoted(job.name)}: {job.status}  (label {printable(job.label)}, pgrp {job.pgrp}, "
    lines = [head + f"user {printable(job.user)}, priority {job.priority})"]
    if job.agenda:
        lines.append(f"agenda: {tally(job.agenda)}")
        rows: list[tuple[str, ...]] = [("FRAME", "STATUS", "HOST", "ATTEMPTS")]
        rows += [(w.name, w.status, w.host or "-", str(w.count)) for w in job.agenda]
        lines.append(_table(rows, indent="  "))
    else:
        lines.append("agenda: none (the job runs as a whole)")
    if reply.callbacks:
        lines.append("callbacks:")
        rows = [("ID", "LANGUAGE", "TRIGGER", "RAN", "LATCHES")]
        for cb in reply.callbacks:
            source = cb.source.rsplit("/", 1)[-1]
            language = f"{cb.language} ({source})" if cb.universal else cb.language
            ran = str(cb.count)
            if cb.maximum:
                # A {work} callback's maximum is per frame: "2/1" would read as an overrun.
                ran += f" (max {cb.maximum} per frame)" if cb.per_work_item else f"/{cb.maximum}"
            latches = (
                _work_latches(cb.triggers, work_items.get(cb.id))
                if cb.per_work_item
                else _latches(cb.triggers, cb.latches)
            )
            rows.append((str(cb.id), language, cb.triggers, ran, latches))
        lines.append(_table(rows, indent="  "))
        lines.append(f"  (what each waits for and why: cbexec triggers why {job.id})")
    else:
        lines.append("callbacks: none")
    lines.append("history:")
    lines += [f"  {_local_time(h.time)}  {escaped(h.text)}" for h in reply.history]
    return "\n".join(lines)


def farm_command(work: Command) -> Callable[[argparse.Namespace], int]:
    """``rpc_command``, saying what an executor without a farm means."""

    async def guarded(args: argparse.Namespace, out: TextIO) -> int:
        try:
            return await work(args, out)
        except ExecutorRpcError as err:
            if err.code != grpc.StatusCode.UNIMPLEMENTED:
                raise
            print(
                f"cbexec: {args.address} has no farm: it runs with a remote supervisor "
                "(the farm is the embedded reference supervisor's; start cbexec serve "
                "without --supervisor)",
                file=sys.stderr,
            )
            return EXIT_RPC

    return rpc_command(guarded)


# -- commands ---------------------------------------------------------------------------


async def _submit(args: argparse.Namespace, out: TextIO) -> int:
    async with connect_farm(args) as farm:
        jobs, problem = await submit_file(farm, args.file, args.args, args.user or "")
        checks = await registration_warnings(ExecutorClient(farm.channel), [j["id"] for j in jobs])
    for job in jobs:
        print(describe_submitted(job), file=out)
    for line in checks:  # a typo in a trigger shows now, not when nothing fires
        print(line, file=sys.stderr)
    if problem is not None:
        say_error(str(problem))  # a script's error or the executor's: may quote a job's names
        return EXIT_NOT_SUCCEEDED
    if not jobs:
        print(f"{args.file} submitted no jobs", file=out)
    return EXIT_OK


async def _jobs(args: argparse.Namespace, out: TextIO) -> int:
    async with connect_farm(args) as farm:
        reply = await farm.list_jobs(status=args.status or "", pgrp=args.pgrp or 0)
    if args.json:
        for job in reply.jobs:
            print(json.dumps(with_times_shown(job_to_dict(job))), file=out)
    elif reply.jobs:
        print(format_jobs(reply.jobs), file=out)
    else:
        print("no jobs" + (" match" if args.status or args.pgrp else " on the farm yet"), file=out)
    return EXIT_OK


async def _show(args: argparse.Namespace, out: TextIO) -> int:
    async with connect_farm(args) as farm:
        reply = await farm.get_job(args.job_id)
        work_items = await _work_items(farm, reply)
    if args.json:
        shown = {
            "job": with_times_shown(job_to_dict(reply.job, include_callbacks=True)),
            "callbacks": [_plain_callback(cb, work_items) for cb in reply.callbacks],
            "history": [as_plain(line) for line in reply.history],
        }
        print(json.dumps(shown), file=out)
    else:
        print(format_job(reply, work_items), file=out)
    return EXIT_OK


def _plain_callback(cb: Any, work_items: Mapping[int, Sequence[Any] | None]) -> dict[str, Any]:
    """A callback as JSON; a {work} callback's latches per frame under ``work_items``.

    Each item: its frames (``work_names``), their ``latches``, ``count`` and what they
    wait for, as ``triggers why --json`` gives them; null when the engine could not say.
    """
    plain = as_plain(cb)
    if cb.per_work_item:
        items = work_items.get(cb.id)
        plain["work_items"] = None if items is None else [as_plain(item) for item in items]
    return plain


async def _work_items(farm: Any, reply: Any) -> dict[int, Sequence[Any] | None]:
    """Each {work} callback's work items (ExplainCallbacks): its latches are per frame.

    None for one the executor did not explain (the job removed or registered again since).
    """
    engine = ExecutorClient(farm.channel)
    found: dict[int, Sequence[Any] | None] = {}
    for cb in reply.callbacks:
        if not cb.per_work_item:
            continue
        try:
            explained = await engine.explain_callbacks(reply.job.id, cb.id, journal_limit=1)
        except ExecutorRpcError:
            found[cb.id] = None
            continue
        found[cb.id] = explained.callbacks[0].work_items if explained.callbacks else None
    return found


async def _change(args: argparse.Namespace, out: TextIO) -> int:
    verb: str = args.verb
    targets = [parse_target(text) for text in args.targets]
    all_applied = True
    async with connect_farm(args) as farm:
        for job_id, frames in targets:
            if verb == "remove" and frames:
                raise ConfigError(f"remove takes job ids, not frames: give {job_id}")
            if frames or verb in WORKER_VERBS:
                work = await farm.change_work(
                    job_id=job_id,
                    work=[frames] if frames else [],
                    change=verb,
                    host=getattr(args, "host", "") or "",
                    actor=getattr(args, "actor", "") or "",
                )
                message, applied = work.message, work.changed >= (len(work.selected) or 1)
            else:
                job = await farm.change_job(job_id=job_id, verb=verb, actor=args.actor or "")
                message, applied = job.message, job.changed == 1
            print(escaped(message), file=out)
            all_applied = all_applied and applied
    return EXIT_OK if all_applied else EXIT_NOT_SUCCEEDED


async def _workers(args: argparse.Namespace, out: TextIO) -> int:
    if not 1 <= args.count <= MAX_WORKERS:
        raise ConfigError(f"N: {args.count} workers; expected 1 to {MAX_WORKERS}")
    if not math.isfinite(args.frame_seconds) or args.frame_seconds < 0:
        raise ConfigError(f"--frame-seconds {args.frame_seconds}: expected 0 or more seconds")
    if not 0.0 <= args.fail_rate <= 1.0:
        raise ConfigError(f"--fail-rate {args.fail_rate}: expected a fraction from 0 to 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    plan = WorkerPlan(args.count, args.frame_seconds, args.fail_rate, seed)
    print(
        f"{plan.count} worker{'s' if plan.count > 1 else ''} on {args.address}: "
        f"{plan.frame_seconds:g}s a frame, fail rate {plan.fail_rate:g}, seed {seed} "
        "(Ctrl-C to stop)",
        file=out,
        flush=True,
    )
    async with connect_farm(args) as farm:
        workers = Workers(farm, plan, out)
        await run_until_signalled(workers, lambda line: print(line, file=out, flush=True))
    print(f"stopped after {counted(workers.finished, 'item')}", file=out)
    return EXIT_OK


async def _wait(args: argparse.Namespace, out: TextIO) -> int:
    async with connect_farm(args) as farm:
        try:
            reply = await _waited(farm, args)
        except RetryableError as err:
            say_error(
                f"gave up waiting after {args.wait_timeout:g}s: {args.address} could not be "
                f"reached ({err})"
            )
            return EXIT_RPC
    for job in reply.jobs:
        print(f"job {job.job_id}: {job.status}", file=out)
    if not reply.done:
        print(f"cbexec: still waiting after {args.wait_timeout:g}s", file=sys.stderr)
        return EXIT_NOT_SUCCEEDED
    return EXIT_OK


async def _waited(farm: FarmClient, args: argparse.Namespace) -> Any:
    """WaitJobs' answer within ``--wait-timeout``, asked again while the executor cannot answer.

    A restart cancels the call in flight (UNAVAILABLE) and refuses the next ones until it
    serves again: the wait rides it out as the workers do, with their pauses, within its
    own deadline. RetryableError once that deadline has passed.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.wait_timeout
    pause, longest = REPORT_BACKOFF_S
    away = False
    while True:
        # Never 0, which WaitJobs takes for its default 60 s: an executor back at the
        # deadline answers where the jobs stand then.
        left = max(deadline - loop.time(), 0.001)
        try:
            reply = await farm.wait_jobs(args.job_ids, wait_seconds=min(left, MAX_WAIT_S))
            if reply.done or left <= MAX_WAIT_S:
                return reply
            continue  # a longer --wait-timeout: asked again, an hour at a time
        except RetryableError as err:
            left = deadline - loop.time()
            if left <= 0:
                raise
            if not away:
                say_error(f"{args.address} cannot answer now ({err}); asking again for {left:.0f}s")
                away = True
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, longest)


# -- the parser -------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cbexec farm ...``."""
    parser = commands.add_parser(
        "farm",
        help="drive the embedded farm: submit jobs, move frames, run simulated workers",
        description="The embedded reference supervisor's farm, over the executor's port.",
    )
    sub = parser.add_subparsers(dest="farm_command", required=True, metavar="COMMAND")
    conn = connection_options()

    submit = sub.add_parser(
        "submit",
        parents=[conn],
        help="submit a Qube submission script (.py) or job file (.json, .toml)",
        description="A .py script runs here, in this process, with `import qb` giving "
        "qb.Job, qb.genframes, qb.submit, qb.jobinfo; .json/.toml files hold job dicts.",
    )
    submit.add_argument("file", type=Path, metavar="FILE")
    submit.add_argument("args", nargs="*", metavar="ARGS", help="sys.argv[1:] of a .py script")
    submit.add_argument("--user", help="the Qube user of jobs without one (default: you)")
    submit.set_defaults(handler=farm_command(_submit))

    jobs = sub.add_parser("jobs", parents=[conn], help="list the farm's jobs")
    jobs.add_argument("--status", choices=STATUSES, help="only jobs in this status")
    jobs.add_argument(
        "--pgrp", type=whole_number(0, MAX_ID), help="only the jobs of this process group"
    )
    jobs.add_argument("--json", action="store_true", help="one Qube job dict (JSON) per line")
    jobs.set_defaults(handler=farm_command(_jobs))

    show = sub.add_parser(
        "show", parents=[conn], help="one job: agenda, callbacks with their latches, history"
    )
    show.add_argument("job_id", type=whole_number(0, MAX_ID), metavar="ID")
    show.add_argument("--json", action="store_true", help="the job, callbacks and history")
    show.set_defaults(handler=farm_command(_show))

    for verb in WORKER_VERBS:
        change = sub.add_parser(
            verb,
            parents=[conn],
            help=f"as a worker: {verb} frames (ID:FRAMES), or a job without agenda (ID)",
        )
        change.add_argument("targets", nargs="+", metavar="ID[:FRAMES]", help="12:5, 12:1-10")
        change.add_argument("--host", help="the worker's host name (default localhost)")
        change.set_defaults(handler=farm_command(_change), verb=verb, actor="")
    for verb in (*OPERATOR_VERBS, "remove"):
        what = "a job (ID)" if verb == "remove" else "a job (ID) or its frames (ID:FRAMES)"
        change = sub.add_parser(verb, parents=[conn], help=f"as an operator: {verb} {what}")
        change.add_argument(
            "targets", nargs="+", metavar="ID" if verb == "remove" else "ID[:FRAMES]"
        )
        change.add_argument(
            "--actor", help="the Qube user acting (their permissions apply; default: the owner)"
        )
        change.set_defaults(handler=farm_command(_change), verb=verb)

    workers = sub.add_parser(
        "workers",
        parents=[conn],
        help="run N simulated workers until Ctrl-C",
        description="Each worker takes the next pending frame of an unblocked job, renders "
        "it for --frame-seconds, and completes or fails it. Whether an attempt fails depends "
        "only on --seed, the job, the frame and the attempt.",
    )
    workers.add_argument("count", type=int, metavar="N", help="how many workers")
    workers.add_argument("--frame-seconds", type=float, default=1.0, help="per frame (default 1)")
    workers.add_argument(
        "--fail-rate", type=float, default=0.0, help="fraction of attempts that fail"
    )
    workers.add_argument("--seed", type=int, help="makes the failures reproducible")
    workers.set_defaults(handler=farm_command(_workers))

    wait = sub.add_parser(
        "wait",
        parents=[conn],
        help="wait until jobs have ended and the callbacks they fired have run",
    )
    wait.add_argument(
        "job_ids", nargs="*", type=whole_number(0, MAX_ID), metavar="ID", help="default: every job"
    )
    wait.add_argument(
        "--wait-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="give up after this long (default 60; exit 1)",
    )
    wait.set_defaults(handler=farm_command(_wait))
