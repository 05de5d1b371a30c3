"""``cbexec metrics``: the executor's counters, latencies and readings, for a person (or ``--json``).

Most of the numbers a Prometheus scrape of ``/metrics`` shows (not the per-language
latencies, the CPU time, the version or the process metrics: GetMetrics has no field for
them), read through GetMetrics, so it works without the HTTP port. Latency lines give the
bucket bound each quantile falls under (a histogram knows no more than that).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final, TextIO

from executor.cli.connection import EXIT_OK, connect, connection_options, rpc_command
from executor.plurals import counted
from executor.visible_text import escaped
from supervisor_client.client import as_plain, outcome_name
from supervisor_client.targets import resolve_target


def quantile_bound(histogram: Any, quantile: float) -> str:
    """'<= 0.025s': the upper bound of the bucket where ``quantile`` of the runs fall."""
    if not histogram.total:
        return "-"
    wanted = quantile * histogram.total
    seen = 0
    for bound, count in zip(histogram.bounds_seconds, histogram.counts, strict=False):
        seen += count
        if seen >= wanted:
            return f"<= {bound:g}s"
    return f"> {histogram.bounds_seconds[-1]:g}s" if histogram.bounds_seconds else "-"


def _latency(name: str, histogram: Any) -> str:
    mean = histogram.sum_seconds / histogram.total if histogram.total else 0.0
    return (
        f"{name:<16}{counted(histogram.total, 'run')}, mean {mean:.3f}s, "
        f"p50 {quantile_bound(histogram, 0.5)}, p90 {quantile_bound(histogram, 0.9)}, "
        f"p99 {quantile_bound(histogram, 0.99)}"
    )


def zygote_state(zygote: Any) -> str:
    """A zygote's pid, or why it has none: not started yet, or died (and what comes next)."""
    if zygote.pid:
        return f"pid {zygote.pid}"
    if not zygote.died:
        return "not started"
    # A language gone cold starts it again only when its retry is due (``warm`` says so).
    return (
        "not running (died; starts again at the next run)" if zygote.warm else "not running (died)"
    )


# What the children of a language that fell back to starting cold do meanwhile.
FAILING: Final = "failing: children start cold until a retry works"


def zygote_condition(zygote: Any) -> str:
    """'warm' while it runs and children are forked from it, FAILING once they start cold, else '-'.

    Not ``warm`` alone: it is True too before the language's first callback (no zygote
    yet), and after a death the next run restarts from, where ``zygote_state`` says so.
    """
    if not zygote.warm:
        return FAILING
    return "warm" if zygote.pid else "-"


def format_metrics(m: Any) -> str:
    """The ``cbexec metrics`` text."""
    total = sum(m.runs_by_outcome.values())
    outcomes = ", ".join(f"{name} {count}" for name, count in sorted(m.runs_by_outcome.items()))
    lines = [f"{'runs':<16}{total}" + (f" ({outcomes})" if outcomes else "")]
    lines.extend(
        f"{'':<16}{count.language:<8}{count.source:<11}"
        f"{outcome_name(count.outcome):<14}{count.runs}"
        for count in m.runs
    )
    lines += [
        _latency("run wall time", m.run_wall_seconds),
        _latency("queue wait", m.queue_seconds),
        (
            f"{'slots':<16}{m.active_children} of {m.slots} busy, "
            f"{counted(m.prepared_children, 'child', 'children')} prepared ahead"
            + (f"; STUCK: {escaped(m.slots_problem)}" if m.slots_problem else "")
        ),
        (
            f"{'queue':<16}{m.queue_depth} waiting of {m.queue_limit} allowed; "
            # Every RESOURCE_EXHAUSTED answer, whatever its cause (the queue is one).
            f"{counted(m.rejected_at_capacity, 'call')} refused for lack of room"
        ),
        f"{'outbox':<16}{m.outbox_pending} pending, {counted(m.outbox_dead_letters, 'dead letter')}"
        # The supervisor's words, escaped: they act on no terminal.
        + (
            f"; last delivery failed: {escaped(m.outbox_last_error)}" if m.outbox_last_error else ""
        ),
        f"{'storage':<16}" + (f"DEGRADED: {m.storage_problem}" if m.storage_problem else "ok"),
        (
            f"{'trigger engine':<16}{counted(m.events_published, 'event')}, "
            f"{counted(m.callbacks_fired, 'firing')}; {counted(m.trigger_jobs, 'job')}, "
            f"{counted(m.trigger_callbacks, 'callback')} registered; "
            f"{counted(m.firings_queued, 'firing')} queued"
            + (
                f"; {m.event_ids_forgotten_early} event ids forgotten early (event_id_max_count)"
                if m.event_ids_forgotten_early
                else ""
            )
            + (
                f"; {counted(m.repeat_ticks_skipped, 'repeat tick')} skipped (last run unfinished)"
                if m.repeat_ticks_skipped
                else ""
            )
        ),
        *([f"{'fired runs':<16}HELD: {escaped(m.firings_held)}"] if m.firings_held else []),
        f"{'universal':<16}{m.universal_callbacks} loaded"
        + (
            f"; the last reload found {counted(m.universal_reload_errors, 'problem')}"
            if m.universal_reload_errors
            else ""
        ),
    ]
    for zygote in m.zygotes:
        lines.append(
            f"{'zygote':<16}{zygote.language:<8}{zygote_state(zygote)}, "
            f"{counted(zygote.restarts, 'restart')}" + ("" if zygote.warm else f", {FAILING}")
        )
    active = [mech.name for mech in m.sandbox.mechanisms if mech.active]
    lines.append(f"{'sandbox':<16}{', '.join(active) or 'rlimits only'}")
    lines.append(f"{'':<16}{m.sandbox.description}")
    return "\n".join(lines)


async def _metrics(args: argparse.Namespace, out: TextIO) -> int:
    async with connect(args) as client:
        reply = await client.get_metrics(timeout=args.timeout)
    if resolve_target(args.address).is_fleet:
        # gRPC does not tell which replica answered; each counts only its own work.
        print(
            "cbexec: these are one replica's numbers, whichever round robin picked; "
            "name one replica's address (--address IP:PORT) for its own",
            file=sys.stderr,
        )
    print(json.dumps(as_plain(reply)) if args.json else format_metrics(reply), file=out)
    return EXIT_OK


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``cbexec metrics``."""
    parser = commands.add_parser(
        "metrics",
        parents=[connection_options()],
        help="the executor's counters, latencies, load and sandbox tier",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(handler=rpc_command(_metrics))
