"""Benchmark trigger matching: the indexed engine vs a naive scan, with 100k registered callbacks.

Usage: python scripts/bench_triggers.py [--callbacks 100000] [--events 2000]

Registers N callbacks spread over N/10 jobs (per-frame work triggers, job triggers and
&& pairs), then publishes events that each match a handful of them. Measured side by
side in one run: events/s through ``TriggerEngine.match`` (SQLite index on name, type,
scope, extra; durable latching in a transaction per event) and through a naive
in-memory scan that tests every atom of every callback per event. Reports medians of
per-event latency and the ratio. Nothing runs callbacks (``match`` only decides).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from executor import triggers
from executor.model import Event, Invocation, Limits, RunResult
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore

FRAMES = 100


def build_jobs(callbacks: int) -> list[dict[str, object]]:
    jobs = []
    per_job = 10
    for index in range(callbacks // per_job):
        job_id = 1000 + index
        upstream = job_id - 1 if index else 1
        cbs = []
        for n in range(per_job - 2):
            frame = (index * 7 + n) % FRAMES
            cbs.append(
                {
                    "triggers": f"complete-work-{upstream}-{frame}",
                    "language": "qube",
                    "code": "unblock-work-self",
                }
            )
        cbs.append(
            {"triggers": f"complete-job-{upstream}", "language": "qube", "code": "unblock-self"}
        )
        cbs.append(
            {
                "triggers": f"complete-job-{upstream} && failed-work-self-*",
                "language": "qube",
                "code": "fail-self",
            }
        )
        jobs.append({"id": job_id, "pgrp": job_id, "user": "bench", "callbacks": cbs})
    return jobs


async def never_runs(invocation: Invocation) -> RunResult:
    raise AssertionError("the benchmark runs no callbacks")


def naive_match(parsed: list[tuple[int, list[object]]], event: Event) -> int:
    """What a trigger engine without an index does: test every atom of every callback."""
    hits = 0
    for owner, atoms in parsed:
        for atom in atoms:
            context = atom.context
            target = owner if context == "self" else int(context) if context.isdigit() else -1
            names = ("complete", "failed", "killed") if atom.name == "done" else (atom.name,)  # type: ignore[attr-defined]
            if event.name in names and atom.type == event.type and target == event.job_id:  # type: ignore[attr-defined]
                extra = atom.extra  # type: ignore[attr-defined]
                if event.type != "work" or extra in ("*", event.work_name):
                    hits += 1
    return hits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    jobs = build_jobs(args.callbacks)
    rng = random.Random(7)
    events = [
        Event("complete", "work", rng.choice(jobs)["id"], work_name=str(rng.randrange(FRAMES)))  # type: ignore[arg-type]
        for _ in range(args.events)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        engine = TriggerEngine(
            TriggerStore(str(Path(tmp) / "t.db")),
            never_runs,  # the engine is not started: match() decides and queues
            limits=Limits(1, 1, 1, 1, 1, 1),
        )
        started = time.perf_counter()
        for job in jobs:
            engine.register_job(job)
        registered_s = time.perf_counter() - started
        total = sum(len(j["callbacks"]) for j in jobs)  # type: ignore[arg-type]
        indexed = []
        for event in events:
            t = time.perf_counter()
            engine.match(event, dry=False)
            indexed.append(time.perf_counter() - t)

    parsed = [
        (int(j["id"]), triggers.atoms(triggers.parse(cb["triggers"])))  # type: ignore[index]
        for j in jobs
        for cb in j["callbacks"]
    ]  # type: ignore[attr-defined]
    naive = []
    for event in events[: max(20, args.events // 50)]:  # the naive scan is slow: sample it
        t = time.perf_counter()
        naive_match(parsed, event)
        naive.append(time.perf_counter() - t)

    idx_ms = statistics.median(indexed) * 1000
    naive_ms = statistics.median(naive) * 1000
    print(f"registered callbacks: {total} ({registered_s:.1f}s to register)")
    print(f"{'matcher':<28}{'median ms/event':>16}{'events/s':>12}")
    print(f"{'indexed engine (durable)':<28}{idx_ms:>16.3f}{1000 / idx_ms:>12.0f}")
    print(f"{'naive scan (in memory)':<28}{naive_ms:>16.3f}{1000 / naive_ms:>12.0f}")
    print(f"ratio: indexed is {naive_ms / idx_ms:.0f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
