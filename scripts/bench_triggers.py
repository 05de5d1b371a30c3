"""Benchmark trigger matching: the index vs a naive scan, and {work} vs a callback per frame.

Usage: python scripts/bench_triggers.py [--callbacks 100000] [--events 2000]
                                        [--frames 10000] [--only index|frames]

index: registers N callbacks spread over N/10 jobs (per-frame work triggers, job
triggers and && pairs), then publishes events that each match a handful of them.
Measured side by side in one run: events/s through ``TriggerEngine.match`` (SQLite
index on name, type, scope, extra; durable latching and journal in a transaction per
event) and through a naive in-memory scan that tests every atom of every callback per
event. Reports medians of per-event latency and the ratio.

frames: Qube's frame-by-frame dependency for a job of F frames (F = 10,000), written
the seed's way (F callbacks, ``complete-work-ribgen-<n> && complete-work-render-<n>``)
and as one callback with ``{work}``: the time to register the waiting job, the median
latency of the events that half-latch a frame and of those that fire it, and the rows
the engine keeps. Then the {work} callback again with F/10 frames: its per-event cost
must not grow with the frames an event cannot match.

Nothing runs callbacks (``match`` decides and queues; the engine is not started).
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


async def never_runs(invocation: Invocation, *, recheck: object = None) -> RunResult:
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


def frame_jobs(frames: int, *, per_work: bool) -> list[dict[str, object]]:
    """Ribgen and render with ``frames`` frames, and comp waiting frame by frame on both."""
    agenda = [{"name": str(n), "status": "pending"} for n in range(1, frames + 1)]
    blocked = [dict(item, status="blocked") for item in agenda]
    trigger = "complete-work-ribgen-{n} && complete-work-render-{n}"
    if per_work:
        callbacks = [
            {
                "triggers": trigger.format(n="{work}"),
                "language": "qube",
                "code": "unblock-work-self",
            }
        ]
    else:
        callbacks = [
            {"triggers": trigger.format(n=n), "language": "qube", "code": "unblock-work-self"}
            for n in range(1, frames + 1)
        ]
    return [
        {"id": 1, "pgrp": 1, "label": "ribgen", "agenda": agenda},
        {"id": 2, "pgrp": 1, "label": "render", "agenda": agenda},
        {"id": 3, "pgrp": 1, "label": "comp", "agenda": blocked, "callbacks": callbacks},
    ]


def bench_frames(frames: int, events: int, *, per_work: bool) -> dict[str, float]:
    """Register the frame-by-frame jobs, then complete ribgen's and render's frames."""
    rng = random.Random(11)
    chosen = rng.sample(range(1, frames + 1), min(events, frames))
    with tempfile.TemporaryDirectory() as tmp:
        store = TriggerStore(str(Path(tmp) / "t.db"))
        engine = TriggerEngine(store, never_runs, limits=Limits(1, 1, 1, 1, 1, 1))
        upstream, waiting = (
            frame_jobs(frames, per_work=per_work)[:2],
            frame_jobs(frames, per_work=per_work)[2],
        )
        for job in upstream:
            engine.register_job(job)
        started = time.perf_counter()
        engine.register_job(waiting)
        register_s = time.perf_counter() - started
        half, fire = [], []
        fired = 0
        for n in chosen:
            for job_id, into in ((1, half), (2, fire)):
                t = time.perf_counter()
                decision = engine.match(
                    Event("complete", "work", job_id, work_name=str(n)), dry=False
                )
                into.append(time.perf_counter() - t)
                fired += len(decision.fired)
        with store.snapshot() as db:
            rows = {
                table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
                for table in ("callbacks", "atoms", "work_latches", "journal")
            }
        store.close()
    assert fired == len(chosen), (fired, len(chosen))
    return {
        "register_s": register_s,
        "half_ms": statistics.median(half) * 1000,
        "fire_ms": statistics.median(fire) * 1000,
        **{f"rows_{table}": float(count) for table, count in rows.items()},
    }


def report_frames(frames: int, events: int) -> None:
    separate = bench_frames(frames, events, per_work=False)
    placeholder = bench_frames(frames, events, per_work=True)
    small = bench_frames(max(1, frames // 10), events, per_work=True)
    print(f"frame by frame, {frames} frames, {min(events, frames)} frames completed on both jobs")
    print(
        f"{'written as':<34}{'register s':>11}{'half-latch ms':>15}{'fire ms':>9}"
        f"{'callbacks':>11}{'atoms':>8}{'item rows':>11}{'journal':>9}"
    )
    for name, result in (
        (f"{frames} callbacks (seed)", separate),
        ("1 callback with {work}", placeholder),
        (f"1 callback with {{work}}, {max(1, frames // 10)} fr.", small),
    ):
        print(
            f"{name:<34}{result['register_s']:>11.3f}{result['half_ms']:>15.3f}"
            f"{result['fire_ms']:>9.3f}{result['rows_callbacks']:>11.0f}"
            f"{result['rows_atoms']:>8.0f}{result['rows_work_latches']:>11.0f}"
            f"{result['rows_journal']:>9.0f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callbacks", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--only", choices=("index", "frames"))
    args = parser.parse_args()
    if args.only != "index":
        report_frames(args.frames, args.events)
        if args.only == "frames":
            return 0
        print()
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
