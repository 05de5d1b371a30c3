"""Soak the executor: 20,000 mixed callbacks, good and hostile, then check nothing leaked.

Usage: python scripts/soak.py [--count 20000] [--concurrency 8] [--max-concurrent 4]
                              [--launcher zygote|cold] [--seed 1] [--rss-tolerance-mib 20]
                              [--thread-tolerance 2] [--keep]

Starts one executor (``python -m executor serve`` on 127.0.0.1, embedded supervisor,
a fresh data dir seeded with jobs), warms it up, records the executor process's open
fds, threads, RSS and child processes, runs ``--count`` callbacks at ``--concurrency``,
waits for it to go idle, and records them again. Prints a table of before/after and
the counts by kind and outcome.

The mix (weights in ``KINDS``): mostly good Python and Perl callbacks making qb calls
(jobinfo, jobstatus, work block/unblock), qube code strings, callbacks that raise or
exit non-zero; and a share of hostile ones: fork bombs under a low max_processes
(capped and spinning), memory bombs, wall timeouts with short walls, SIGTERM ignored,
output floods, setsid daemons, os._exit, CPU spins.

Exit status: 1 when something leaked (fds or child processes above their starting
level; threads or RSS above it by more than their tolerances, which allow for pools and
allocator arenas that grow once to a cap; a sandboxed process alive afterwards; or the
executor no longer answering); else 2 when callbacks ended with an outcome their kind
cannot produce or RPCs failed; else 0. A leak on a path that one callback in a hundred
takes would still show as hundreds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from executor.sandbox.process import started_by  # noqa: E402
from supervisor_client import ExecutorClient  # noqa: E402
from supervisor_client.qbcallback.v1 import executor_pb2  # noqa: E402
from supervisor_client.reference import ReferenceSupervisor  # noqa: E402

Outcome = executor_pb2.Outcome
MIB = 1 << 20
JOBS = 40
FRAMES = 10


@dataclass(frozen=True)
class Kind:
    """One sort of callback in the mix: its code, limits and the outcomes it may end with."""

    name: str
    weight: float
    language: str
    code: str
    outcomes: tuple[str, ...]
    limits: dict[str, Any] = field(default_factory=dict)


GOOD_PYTHON = """
import json
me = qb.jobid()
frame = '%d:%d' % (me, FRAME)
(info,) = qb.jobinfo('-id', me)
before = qb.workstatus(frame)
qb.workblock(frame)
qb.workunblock(frame)
print(json.dumps({'job': me, 'status': qb.jobstatus(me), 'frames': len(info['agenda']), 'was': before}))
"""

GOOD_PERL = """
my $me = qb::jobid();
my $frame = "$me:FRAME";
my $status = qb::jobstatus($me);
qb::workblock($frame);
qb::workunblock($frame);
print "job $me $status ", qb::workstatus($frame), "\\n";
"""

KINDS = [
    Kind("python-qb", 55, "python", GOOD_PYTHON, ("SUCCEEDED",)),
    Kind("perl-qb", 12, "perl", GOOD_PERL, ("SUCCEEDED",)),
    Kind("qube", 5, "qube", "unblock-self", ("SUCCEEDED",)),
    Kind("python-raises", 3, "python", "raise ValueError('soak')", ("FAILED",)),
    Kind("perl-dies", 2, "perl", 'die "soak\\n";', ("FAILED",)),
    Kind("os._exit", 3, "python", "import os\nos._exit(3)", ("FAILED",)),
    Kind(
        "fork-bomb-capped",
        4,
        "python",
        "import os, time\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "except OSError:\n"
        "    pass\n",
        ("SUCCEEDED",),
        {"max_processes": 8, "wall_seconds": 10},
    ),
    Kind(
        "fork-bomb-spinning",
        0.5,
        "python",
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        ("WALL_TIMEOUT",),
        {"max_processes": 6, "wall_seconds": 0.5},
    ),
    Kind(
        "memory-bomb",
        3,
        "python",
        "chunks = []\nwhile True:\n    chunks.append(b'x' * (8 << 20))\n",
        ("MEMORY_LIMIT",),
        {"memory_bytes": 128 * MIB},
    ),
    Kind(
        "perl-memory-bomb",
        1,
        "perl",
        "my @chunks;\nwhile (1) { push @chunks, 'x' x (8 << 20); }\n",
        ("MEMORY_LIMIT",),
        {"memory_bytes": 128 * MIB},
    ),
    Kind(
        "wall-timeout",
        3,
        "python",
        "import time\ntime.sleep(1000)",
        ("WALL_TIMEOUT",),
        {"wall_seconds": 0.3},
    ),
    Kind(
        "ignores-sigterm",
        1,
        "python",
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(1000)",
        ("WALL_TIMEOUT",),
        {"wall_seconds": 0.3},
    ),
    Kind(
        "output-flood",
        3,
        "python",
        "import sys\nblock = 'x' * 65536\nfor _ in range(64):\n"
        "    sys.stdout.write(block)\n    sys.stderr.write(block)\n",
        ("SUCCEEDED",),
        {"output_bytes": 16 << 10},
    ),
    Kind(
        "setsid-daemon",
        2,
        "python",
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(1000)\n"
        "    os._exit(0)\n"
        "os.wait()\n",
        ("SUCCEEDED",),
        {"wall_seconds": 10},
    ),
    Kind(
        "cpu-spin",
        0.3,
        "python",
        "while True:\n    pass\n",
        ("CPU_LIMIT",),
        {"cpu_seconds": 1, "wall_seconds": 10},
    ),
    Kind(
        "bridge-garbage",
        1,
        "python",
        "import os, struct\n"
        "for name in os.listdir('/proc/self/fd'):\n"
        "    try:\n"
        "        if os.readlink('/proc/self/fd/' + name).startswith('socket:'):\n"
        "            os.write(int(name), struct.pack('>I', 2 << 30) + b'x' * 4096)\n"
        "    except OSError:\n"
        "        pass\n",
        ("SUCCEEDED", "FAILED"),
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed_jobs(data_dir: Path) -> list[dict[str, Any]]:
    """Jobs for the good callbacks, written before the executor opens the database."""
    supervisor = ReferenceSupervisor(str(data_dir / "supervisor.db"))
    try:
        return supervisor.submit(
            [
                {
                    "name": f"soak-{n}",
                    "user": "soak",
                    "status": "pending",
                    "agenda": [{"name": str(f)} for f in range(1, FRAMES + 1)],
                }
                for n in range(JOBS)
            ]
        )
    finally:
        supervisor.close()


@contextlib.contextmanager
def executor(
    data_dir: Path, launcher: str, max_concurrent: int, log: Path
) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    env = dict(
        os.environ,
        CBEXEC_LAUNCHER=launcher,
        CBEXEC_MAX_QUEUE="1024",
        CBEXEC_MAX_CONCURRENT=str(max_concurrent),
        CBEXEC_GRACE_SECONDS="0.3",
    )
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "executor",
                "serve",
                "--bind",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(data_dir),
                "--log-level",
                "WARNING",
            ],
            env=env,
            cwd=ROOT,
            start_new_session=True,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        yield f"127.0.0.1:{port}", psutil.Process(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def wait_serving(address: str) -> None:
    async with ExecutorClient(address) as client:
        await client.wait_until_serving(timeout=30)


def sandboxed_processes(executor_pid: int) -> list[int]:
    """Live processes of that executor's sandbox: callbacks, and children prepared for the next ones."""
    found = []
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        with contextlib.suppress(OSError):  # gone, or not ours to read
            if started_by(proc.pid, executor_pid):
                found.append(proc.pid)
    return found


def live_children(proc: psutil.Process) -> list[psutil.Process]:
    return [c for c in proc.children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]


@dataclass
class Sample:
    fds: int
    threads: int
    rss: int
    children: int
    # The zygote's children waiting for a run (each cell keeps one) are among these.
    sandboxed: int
    zygote_rss: int
    thread_names: collections.Counter[str]


def thread_names(pid: int) -> collections.Counter[str]:
    """How many threads of each name (pools show up as their prefix)."""
    names: collections.Counter[str] = collections.Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            names[(task / "comm").read_text().strip().rstrip("0123456789_")] += 1
    return names


def sample(proc: psutil.Process) -> Sample:
    children = live_children(proc)
    zygote_rss = sum(c.memory_info().rss for c in children)
    return Sample(
        proc.num_fds(),
        proc.num_threads(),
        proc.memory_info().rss,
        len(children),
        len(sandboxed_processes(proc.pid)),
        zygote_rss,
        thread_names(proc.pid),
    )


async def settled_sample(
    proc: psutil.Process, baseline: Sample | None, timeout_s: float = 60
) -> Sample:
    """Wait until the executor is idle again, then sample.

    Idle: back to the baseline's child and sandboxed processes, or, for the baseline
    itself, the same count for a second (the prepared children are up). Takes the lowest
    of a few samples a second apart: the moment after a burst still holds buffers the
    allocator is about to give back.
    """
    deadline = time.monotonic() + timeout_s
    counts: list[tuple[int, int]] = []
    while time.monotonic() < deadline:
        counts.append((len(live_children(proc)), len(sandboxed_processes(proc.pid))))
        if baseline is not None and counts[-1] <= (baseline.children, baseline.sandboxed):
            break
        if baseline is None and len(counts) >= 5 and len(set(counts[-5:])) == 1:
            break
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # outbox and history writes behind the last runs
    samples = []
    for _ in range(3):
        samples.append(sample(proc))
        await asyncio.sleep(1)
    return min(samples, key=lambda s: (s.fds, s.threads, s.rss))


@dataclass
class Tally:
    by_kind: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)
    rpc_errors: collections.Counter[str] = field(default_factory=collections.Counter)


async def run_mix(
    address: str,
    jobs: list[dict[str, Any]],
    count: int,
    concurrency: int,
    seed: int,
    tally: Tally,
    progress: bool,
) -> None:
    rng = random.Random(seed)
    weights = [k.weight for k in KINDS]
    plan = rng.choices(KINDS, weights=weights, k=count)
    queue: asyncio.Queue[tuple[int, Kind]] = asyncio.Queue()
    for item in enumerate(plan):
        queue.put_nowait(item)
    started = time.monotonic()

    async with ExecutorClient(address) as client:

        async def worker() -> None:
            while True:
                try:
                    index, kind = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                job = jobs[index % len(jobs)]
                code = kind.code.replace("FRAME", str(1 + index % FRAMES))
                try:
                    response = await client.execute_callback(
                        language=kind.language,
                        code=code,
                        job=job,
                        limits={"wall_seconds": 20, **kind.limits},
                        timeout=120,
                    )
                except Exception as err:  # noqa: BLE001 - counted and reported
                    tally.rpc_errors[f"{kind.name}: {type(err).__name__}: {str(err)[:120]}"] += 1
                    continue
                outcome = Outcome.Name(response.outcome).removeprefix("OUTCOME_")
                tally.by_kind[(kind.name, outcome)] += 1
                if outcome not in kind.outcomes and len(tally.unexpected) < 20:
                    tally.unexpected.append(
                        f"{kind.name}: {outcome}: {response.failure.message[:160]} {response.stderr[-160:]!r}"
                    )
                finished = sum(tally.by_kind.values())
                if progress and finished % 1000 == 0:
                    rate = finished / (time.monotonic() - started)
                    print(f"  ... {finished} done, {rate:.0f}/s", flush=True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


async def soak(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="cbexec-soak-"))
    log = data_dir / "executor.log"
    jobs = seed_jobs(data_dir)
    leaked = False
    with executor(data_dir, args.launcher, args.max_concurrent, log) as (address, proc):
        await wait_serving(address)
        # Warm-up at twice the concurrency, so lazily grown pools (the asyncio default
        # executor, gRPC's) reach their size before the baseline is taken.
        warmup = Tally()
        await run_mix(
            address, jobs, min(600, args.count), 2 * args.concurrency, args.seed + 1, warmup, False
        )
        before = await settled_sample(proc, baseline=None)
        print(
            f"executor pid {proc.pid} on {address}, launcher {args.launcher}, "
            f"{args.concurrency} clients, {args.max_concurrent} slots; data dir {data_dir}"
        )
        print(
            f"warm-up: {sum(warmup.by_kind.values())} callbacks; running {args.count} ...",
            flush=True,
        )

        tally = Tally()
        began = time.monotonic()
        await run_mix(address, jobs, args.count, args.concurrency, args.seed, tally, True)
        elapsed = time.monotonic() - began
        after = await settled_sample(proc, baseline=before)

        async with ExecutorClient(address) as client:
            final = await client.execute_callback(
                language="python", code="print(qb.jobid())", job=jobs[0]
            )
        answers = final.outcome == Outcome.OUTCOME_SUCCEEDED and final.stdout.strip() == str(
            jobs[0]["id"]
        )

    total = sum(tally.by_kind.values())
    print(f"\n{total} callbacks in {elapsed:.0f} s ({total / elapsed:.0f}/s)\n")
    tolerance = args.rss_tolerance_mib * MIB

    def mib(value: float) -> str:
        return f"{value / MIB:.1f}"

    checks: list[tuple[str, float, float, float, Callable[[float], str]]] = [
        ("open fds", before.fds, after.fds, 0, lambda v: str(int(v))),
        ("threads", before.threads, after.threads, args.thread_tolerance, lambda v: str(int(v))),
        ("rss (MiB)", before.rss, after.rss, tolerance, mib),
        ("child processes", before.children, after.children, 0, lambda v: str(int(v))),
        ("sandboxed processes", before.sandboxed, after.sandboxed, 0, lambda v: str(int(v))),
    ]
    rows = [("metric", "before", "after", "delta", "verdict")]
    for name, old, new, allowed, fmt in checks:
        ok = new - old <= allowed
        leaked |= not ok
        rows.append(
            (name, fmt(old), fmt(new), fmt(new - old), "ok" if ok else f"LEAK (> {fmt(allowed)})")
        )
    rows.append(
        (
            "zygote rss (MiB)",
            f"{before.zygote_rss / MIB:.1f}",
            f"{after.zygote_rss / MIB:.1f}",
            f"{(after.zygote_rss - before.zygote_rss) / MIB:.1f}",
            "info",
        )
    )
    rows.append(
        ("answers afterwards", "-", "yes" if answers else "no", "-", "ok" if answers else "FAIL")
    )
    leaked |= not answers
    print(table(rows))
    grown = after.thread_names - before.thread_names
    if grown:
        print(
            "threads added (by name): "
            + ", ".join(f"{name or '?'} +{n}" for name, n in grown.items())
        )

    print("\nby kind and outcome:")
    kinds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for (name, outcome), n in tally.by_kind.items():
        kinds[name][outcome] += n
    for kind in KINDS:
        outcomes = ", ".join(f"{o} {n}" for o, n in sorted(kinds[kind.name].items()))
        print(f"  {kind.name:<20} {sum(kinds[kind.name].values()):>6}  {outcomes}")
    by_outcome: collections.Counter[str] = collections.Counter()
    for (_, outcome), n in tally.by_kind.items():
        by_outcome[outcome] += n
    print("  " + ", ".join(f"{o} {n}" for o, n in by_outcome.most_common()))

    expected = {kind.name: kind.outcomes for kind in KINDS}
    unexpected = sum(
        n for (name, outcome), n in tally.by_kind.items() if outcome not in expected[name]
    )
    if unexpected:
        print(f"\n{unexpected} callbacks ended with an outcome their kind cannot produce, e.g.:")
        for line in tally.unexpected:
            print("  " + line)
    if tally.rpc_errors:
        print(f"\n{sum(tally.rpc_errors.values())} RPCs failed:")
        for line, n in tally.rpc_errors.most_common(10):
            print(f"  {n} x {line}")
    status = 1 if leaked else 2 if unexpected or tally.rpc_errors else 0
    if leaked:
        print("\nLEAK: the executor did not return to its starting levels")
    else:
        print("\nOK: fds, threads, RSS and child processes returned to their starting levels")
    if status:
        print(f"executor log: {log}")
        tail = log.read_text(errors="replace").splitlines()[-10:]
        print("\n".join("  " + line[:200] for line in tail))
    elif not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--count", type=int, default=20_000, help="callbacks to run (default 20000)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="clients at once (default 8)")
    parser.add_argument("--max-concurrent", type=int, default=4, help="executor slots (default 4)")
    parser.add_argument("--launcher", choices=("zygote", "cold"), default="zygote")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rss-tolerance-mib", type=float, default=20.0)
    parser.add_argument(
        "--thread-tolerance",
        type=int,
        default=2,
        help="threads the executor may add (pools that grow lazily up to their cap; default 2)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data dir even when it passes")
    return asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
