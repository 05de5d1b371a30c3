"""Benchmark the executor end to end, side by side with a naive baseline and the floors.

Usage: python scripts/bench.py [--runs 200] [--seconds 5]

Starts real executors (``python -m executor serve`` on 127.0.0.1, embedded supervisor)
with the warm (zygote) and the cold (fork+exec) launcher, and measures in one run:

- Execute latency p50/p99 of a trivial Python, Perl and qube callback, one client;
- the naive baseline: ``python3 -c`` per callback through ``subprocess`` (what a
  supervisor that shells out would do), and the floors: an empty gRPC call (health
  Check) and a fork+wait of a warm, gRPC-free process;
- throughput with 1, 8 and 32 concurrent clients (errors other than RESOURCE_EXHAUSTED
  are counted and reported);
- the executor's RSS idle and after the load (the zygote's RSS is listed apart).

Not a test: the machines are shared and noisy; read medians and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from supervisor_client import ExecutorClient, ReferenceSupervisor, add_reference_supervisor  # noqa: E402
from supervisor_client.qbcallback.v1 import executor_pb2  # noqa: E402

# Filled with the job submitted to the benchmark's own reference supervisor.
JOB: dict[str, object] = {}
TRIVIAL = {"python": "x = qb.jobid()", "perl": "my $x = $qb::jobid;", "qube": "unblock-self"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def executor(launcher: str, data_dir: Path, supervisor: str) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    env = dict(os.environ, CBEXEC_LAUNCHER=launcher, CBEXEC_MAX_QUEUE="64")
    proc = subprocess.Popen(
        [sys.executable, "-m", "executor", "serve", "--bind", f"127.0.0.1:{port}",
         "--data-dir", str(data_dir), "--supervisor", supervisor, "--log-level", "WARNING"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL,
    )
    try:
        yield f"127.0.0.1:{port}", psutil.Process(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def wait_serving(address: str) -> None:
    async with ExecutorClient(address) as client:
        await client.wait_until_serving()


async def timed(call: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


async def latency(address: str, language: str, runs: int) -> list[float]:
    async with ExecutorClient(address) as client:
        async def once() -> None:
            response = await client.execute_callback(language=language, code=TRIVIAL[language], job=JOB)
            if response.outcome != executor_pb2.Outcome.OUTCOME_SUCCEEDED:
                raise SystemExit(f"{language}: {response.failure.message} {response.stderr[-300:]}")
        await once()  # warm-up
        return await timed(once, runs)


async def throughput(address: str, clients: int, seconds: float) -> tuple[float, int, int]:
    done = errors = exhausted = 0
    deadline = time.perf_counter() + seconds
    async with ExecutorClient(address) as client:
        async def worker() -> None:
            nonlocal done, errors, exhausted
            while time.perf_counter() < deadline:
                try:
                    await client.execute_callback(language="python", code=TRIVIAL["python"], job=JOB)
                    done += 1
                except Exception as err:  # noqa: BLE001 - counted and reported
                    if "RESOURCE_EXHAUSTED" in repr(err):
                        exhausted += 1
                        await asyncio.sleep(0.01)
                    else:
                        errors += 1
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return done / elapsed, exhausted, errors


async def grpc_floor(address: str, runs: int) -> list[float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return await timed(lambda: stub.Check(health_pb2.HealthCheckRequest()), runs)


def fork_floor(runs: int) -> list[float]:
    """fork + exit + wait of a small gRPC-free process (a fresh interpreter measures it)."""
    code = (
        "import os, time, json\nsamples = []\n"
        f"for _ in range({runs}):\n"
        "    t = time.perf_counter(); pid = os.fork()\n"
        "    if pid == 0: os._exit(0)\n"
        "    os.waitpid(pid, 0); samples.append(time.perf_counter() - t)\n"
        "print(json.dumps(samples))"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    import json

    return list(json.loads(out.stdout))


def naive_baseline(runs: int) -> list[float]:
    """One fresh ``python3 -c`` per callback through subprocess, as a shell-out supervisor does."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "x = 1"], check=True)
        samples.append(time.perf_counter() - started)
    return samples


def rss_mb(proc: psutil.Process) -> tuple[float, float]:
    """(executor, its children summed) resident MiB."""
    own = proc.memory_info().rss / 2**20
    children = sum(c.memory_info().rss for c in proc.children(recursive=True)) / 2**20
    return own, children


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rows: list[tuple[str, float, float]] = []
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Linux {platform.release()}, "
          f"Python {platform.python_version()}")
    # The supervisor lives in this process, so the executor's RSS is its own.
    reference = ReferenceSupervisor(":memory:")
    (job,) = reference.submit([{"name": "bench", "user": "bench"}])
    JOB.update(job)
    supervisor_server = grpc.aio.server()
    add_reference_supervisor(supervisor_server, reference)
    supervisor_address = f"127.0.0.1:{supervisor_server.add_insecure_port('127.0.0.1:0')}"
    await supervisor_server.start()
    with tempfile.TemporaryDirectory() as tmp:
        for launcher in ("zygote", "cold"):
            with executor(launcher, Path(tmp) / launcher, supervisor_address) as (address, proc):
                await wait_serving(address)
                await asyncio.sleep(0.5)
                if launcher == "zygote":
                    idle = rss_mb(proc)
                    rows.append(("floor: empty gRPC call", *summary(await grpc_floor(address, args.runs))))
                for language in ("python", "perl", "qube"):
                    samples = await latency(address, language, args.runs if launcher == "zygote" else args.runs // 4)
                    rows.append((f"{launcher}: {language} callback", *summary(samples)))
                if launcher == "zygote":
                    loads = [(clients, await throughput(address, clients, args.seconds)) for clients in (1, 8, 32)]
                    loaded = rss_mb(proc)
    await supervisor_server.stop(None)
    reference.close()
    rows.append(("floor: fork+wait, warm process", *summary(fork_floor(args.runs))))
    rows.append(("baseline: python3 -c per callback", *summary(naive_baseline(max(20, args.runs // 4)))))

    print(f"\n{'end-to-end latency':<40}{'p50 ms':>10}{'p99 ms':>10}")
    for name, p50, p99 in rows:
        print(f"{name:<40}{p50:>10.2f}{p99:>10.2f}")
    by_name = {name: p50 for name, p50, _ in rows}
    baseline = by_name["baseline: python3 -c per callback"]
    print("\nratios (p50):")
    for language in ("python", "perl", "qube"):
        warm = by_name[f"zygote: {language} callback"]
        print(f"  warm {language}: {baseline / warm:.1f}x faster than the python3 -c baseline, "
              f"{warm / by_name['floor: fork+wait, warm process']:.1f}x the fork floor, "
              f"{warm / by_name['floor: empty gRPC call']:.1f}x the gRPC floor")
    print(f"  cold python vs warm python: {by_name['cold: python callback'] / by_name['zygote: python callback']:.1f}x")
    print(f"\n{'throughput (trivial python, warm)':<40}{'calls/s':>10}{'exhausted':>11}{'errors':>8}")
    for clients, (rate, exhausted, errors) in loads:
        print(f"{f'{clients} concurrent clients':<40}{rate:>10.0f}{exhausted:>11}{errors:>8}")
    print(f"\nexecutor RSS idle {idle[0]:.1f} MiB (zygote {idle[1]:.1f} MiB); "
          f"after load {loaded[0]:.1f} MiB (children {loaded[1]:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
