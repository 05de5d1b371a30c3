"""Benchmark a fleet of executors on one PostgreSQL, beside the SQLite single executor.

Usage: python scripts/bench_fleet.py [--events 3000] [--fired 600] [--jobs 50]
                                     [--replicas 1,2,3] [--concurrency 64] [--executes 200]
                                     [--rounds 3] [--execute-rounds 9] [--pg-latency-ms 0]

Starts a real PostgreSQL (Debian's server binaries: initdb into a temp dir, pg_ctl on a
free loopback port), a reference Supervisor service counting every result, and the
executors as real processes (``python -m executor serve --store postgresql://...``).
For the SQLite single executor and for 1, 2 and 3 replicas on one PostgreSQL:

* events/s accepted: ``--events`` PublishEvent calls (``running-work`` of the jobs'
  frames), ``--concurrency`` in flight, round robin across the replicas; each latches
  one half of an ``&&`` durably (seen event id, latch, journal, known state commit in
  the event's transaction) and answers once committed; the calls in flight at once
  share transactions (group commit). Then the same number of events in PublishEvents
  calls of ``--batch`` (a transaction each, shared with the calls that come meanwhile).
* fired callbacks/s: ``--fired`` ``complete-work`` events, each firing a qube callback
  (``unblock-work-self``: one WorkAction at the supervisor), timed until every result
  has been applied at the supervisor (run, recorded, delivered through the outbox).

Then the cost of the PostgreSQL store on one executor's Execute p50 (``--executes``
sequential Python ``pass`` callbacks, SQLite store against PostgreSQL store, in turns,
``--execute-rounds`` times, which one goes first alternating): results go to the outbox
and the history either way. Twice: Executes that each name an invocation id (as the
Python client's do: a fleet claims it fleet-wide before the run) and Executes that name
none (the executor makes one). Each round's ratio is printed, and their median. With
``--pg-latency-ms``, that PostgreSQL is reached through scripts/latency_proxy.py, which
adds so much to each round trip, as a database server on another machine does.

Each figure is the median of ``--rounds`` rounds: the machine is shared, and its speed
drifts.

The client runs on the same machine (and cores) as the fleet and the database, so the
numbers are what one 2-core box does with all of it, not what a fleet of machines does.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from executor.migrations import migrate  # noqa: E402
from supervisor_client import ExecutorClient  # noqa: E402
from supervisor_client.client import build_execute_request  # noqa: E402
from tests.fleet.harness import ActionCounting, Fleet  # noqa: E402
from tests.helpers.executor_process import executor_process  # noqa: E402
from tests.helpers.postgres import PostgresServer, find_bin_dir  # noqa: E402
from tests.helpers.supervisors import SupervisorEndpoint  # noqa: E402

FRAMES = 20


def jobs_for(endpoint: SupervisorEndpoint, count: int) -> list[dict[str, Any]]:
    """``count`` jobs of blocked frames in the supervisor, with the benchmark's callbacks."""
    submitted = endpoint.store.submit(
        [
            {
                "name": f"bench{n}",
                "user": "bench",
                "agenda": [{"name": str(f), "status": "blocked"} for f in range(FRAMES)],
                "callbacks": [
                    # running-work latches the first half; never fires during the run.
                    {
                        "triggers": "running-work-self-{work} && killed-work-self-{work}",
                        "language": "qube",
                        "code": "unblock-work-self",
                    },
                    {
                        "triggers": "complete-work-self-{work}",
                        "language": "qube",
                        "code": "unblock-work-self",
                    },
                ],
            }
            for n in range(count)
        ]
    )
    return [endpoint.store.job(int(job["id"]), include_callbacks=True) for job in submitted]


async def in_flight(count: int, limit: int, call: Callable[[int], Awaitable[None]]) -> float:
    """Seconds to make ``count`` calls with at most ``limit`` in flight."""
    gate = asyncio.Semaphore(limit)

    async def one(n: int) -> None:
        async with gate:
            await call(n)

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    return time.perf_counter() - start


@asynccontextmanager
async def sqlite_single(root: Path, endpoint: SupervisorEndpoint) -> AsyncIterator[list[str]]:
    async with executor_process(root / "sqlite", endpoint.address, root / "sqlite.log") as one:
        yield [one.address]


@asynccontextmanager
async def pg_fleet(
    root: Path, url: str, endpoint: SupervisorEndpoint, replicas: int
) -> AsyncIterator[list[str]]:
    group = Fleet(root, url, endpoint)
    try:
        await asyncio.gather(*(group.start(i) for i in range(replicas)))
        yield [group.address(i) for i in range(replicas)]
    finally:
        await group.close()


async def measure(
    addresses: list[str], endpoint: SupervisorEndpoint, args: argparse.Namespace, tag: str
) -> tuple[float, float, float]:
    """(events/s one per call, events/s batched, fired callbacks/s) through ``addresses``."""
    counting = endpoint.servicer
    clients = [ExecutorClient(address) for address in addresses]
    turn = itertools.count()
    try:
        jobs = jobs_for(endpoint, args.jobs)
        for n, job in enumerate(jobs):
            await clients[n % len(clients)].register_job(job)
        items = [(int(j["id"]), str(f)) for j in jobs for f in range(FRAMES)]

        async def latch(n: int) -> None:
            job_id, frame = items[n % len(items)]
            await clients[next(turn) % len(clients)].publish_event(
                name="running", type="work", job_id=job_id, work_name=frame,
                event_id=f"{tag}-run-{n}",
            )  # fmt: skip

        seconds = await in_flight(args.events, args.concurrency, latch)
        single_per_s = args.events / seconds

        batches = args.events // args.batch

        async def latch_batch(b: int) -> None:
            await clients[next(turn) % len(clients)].publish_events(
                [
                    {
                        "name": "running", "type": "work", "job_id": items[n % len(items)][0],
                        "work_name": items[n % len(items)][1], "event_id": f"{tag}-batch-{n}",
                    }
                    for n in range(b * args.batch, (b + 1) * args.batch)
                ]
            )  # fmt: skip

        # A handful of batches in flight: each is a transaction of its own.
        seconds = await in_flight(batches, max(1, args.concurrency // args.batch), latch_batch)
        batched_per_s = batches * args.batch / seconds

        before = sum(counting.applied.values())

        async def fire(n: int) -> None:
            job_id, frame = items[n % len(items)]
            await clients[next(turn) % len(clients)].publish_event(
                name="complete", type="work", job_id=job_id, work_name=frame,
                event_id=f"{tag}-fire-{n}",
            )  # fmt: skip

        start = time.perf_counter()
        await in_flight(args.fired, args.concurrency, fire)
        while sum(counting.applied.values()) - before < args.fired:
            if time.perf_counter() - start > 300:
                raise SystemExit(f"{tag}: fired callbacks' results never all arrived")
            await asyncio.sleep(0.01)
        fired_per_s = args.fired / (time.perf_counter() - start)
        return single_per_s, batched_per_s, fired_per_s
    finally:
        for client in clients:
            await client.close()


async def execute_p50(address: str, count: int, *, named: bool = True) -> float:
    """Median ms of ``count`` sequential trivial Executes; ``named``: each names an invocation id.

    The Python client names a fresh one by default (its retry key), which a fleet claims
    fleet-wide before the run (one more round trip); an Execute that names none gets one
    the executor makes, which nothing else can hold.
    """
    async with ExecutorClient(address) as client:

        async def once() -> None:
            request = build_execute_request(language="python", code="pass", job={"id": 1})
            if not named:
                request.invocation_id = ""
            await client.execute(request)

        for _ in range(10):  # warm up
            await once()
        times = []
        for _ in range(count):
            start = time.perf_counter()
            await once()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


async def main(args: argparse.Namespace) -> None:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    root = Path(tempfile.mkdtemp(prefix="cbexec-bench-fleet-"))
    # Its own temp dir: the server runs as the postgres user, who cannot enter ``root``.
    postgres = PostgresServer(bin_dir, Path(tempfile.mkdtemp(prefix="cbexec-bench-pg-")))
    postgres.init()
    postgres.start()
    rows: list[tuple[str, list[tuple[float, float, float]]]] = []
    try:
        endpoint = SupervisorEndpoint(root / "supervisor.db", ActionCounting)
        await endpoint.start()
        try:
            async with sqlite_single(root, endpoint) as addresses:
                rows.append(("SQLite, 1 executor", await rounds(addresses, endpoint, args, "s")))
            for replicas in args.replicas:
                url = postgres.create_database(f"bench{replicas}")
                migrate(url)
                fleet_root = root / f"fleet{replicas}"
                fleet_root.mkdir()
                async with pg_fleet(fleet_root, url, endpoint, replicas) as addresses:
                    label = f"PostgreSQL, {replicas} replica{'s' if replicas > 1 else ''}"
                    rows.append((label, await rounds(addresses, endpoint, args, f"p{replicas}")))
            print(f"medians of {args.rounds} rounds")
            print(f"{'store':<26}{'events/s':>10}{'batched':>10}{'fired/s':>10}")
            for label, measured in rows:
                single, batched, fired = (
                    statistics.median(column) for column in zip(*measured, strict=True)
                )
                print(f"{label:<26}{single:>10.0f}{batched:>10.0f}{fired:>10.0f}")

            # Both executors up at once, measured in turns: the machine's drift hits both.
            (root / "p50").mkdir()
            url = postgres.create_database("bench_execute")
            migrate(url)
            p50s: dict[tuple[str, bool], list[float]] = {}
            async with (
                sqlite_single(root / "p50", endpoint) as (sqlite_address,),
                latency_proxy(url, postgres.port, args.pg_latency_ms) as url,
                pg_fleet(root / "p50", url, endpoint, 1) as (pg_address,),
            ):
                for turn in range(args.execute_rounds):
                    # Which goes first alternates: neither always follows the other's burst.
                    for named in (True, False):
                        order = (sqlite_address, pg_address)[:: 1 if turn % 2 == 0 else -1]
                        for address in order:
                            p50s.setdefault((address, named), []).append(
                                await execute_p50(address, args.executes, named=named)
                            )
            for named in (True, False):
                print_execute_cost(
                    p50s[sqlite_address, named],
                    p50s[pg_address, named],
                    "each naming an invocation id" if named else "naming no invocation id",
                )
        finally:
            await endpoint.stop()
    finally:
        postgres.cleanup()


@asynccontextmanager
async def latency_proxy(url: str, port: int, round_trip_ms: float) -> AsyncIterator[str]:
    """``url`` reached through scripts/latency_proxy.py, ``round_trip_ms`` more per round trip.

    0: ``url`` itself. A PostgreSQL on another machine, as a fleet's is.
    """
    if not round_trip_ms:
        yield url
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        listen = probe.getsockname()[1]
    proxy = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "scripts" / "latency_proxy.py"),
        str(listen),
        str(port),
        str(round_trip_ms / 2),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proxy.stdout is not None
        if (await proxy.stdout.readline()).strip() != b"ready":
            raise SystemExit("scripts/latency_proxy.py did not start")
        print(
            f"Execute p50: PostgreSQL reached through a proxy, +{round_trip_ms:g} ms a round trip"
        )
        yield url.replace(f"127.0.0.1:{port}/", f"127.0.0.1:{listen}/")
    finally:
        proxy.kill()
        await proxy.wait()


def print_execute_cost(sqlite_p50s: list[float], pg_p50s: list[float], what: str) -> None:
    """The PostgreSQL store's cost on Execute p50: each round's ratio, and their median."""
    ratios = [pg / sqlite - 1 for sqlite, pg in zip(sqlite_p50s, pg_p50s, strict=True)]
    print(
        f"Execute p50, one executor, {len(ratios)} rounds in turns, {what}: SQLite store "
        f"{statistics.median(sqlite_p50s):.2f} ms, PostgreSQL store "
        f"{statistics.median(pg_p50s):.2f} ms (medians); PostgreSQL against SQLite, "
        f"median of the rounds {statistics.median(ratios) * 100:+.1f}%"
    )
    print("  rounds: " + ", ".join(f"{ratio * 100:+.1f}%" for ratio in ratios))


async def rounds(
    addresses: list[str], endpoint: SupervisorEndpoint, args: argparse.Namespace, tag: str
) -> list[tuple[float, float, float]]:
    """``measure`` ``--rounds`` times (fresh jobs and event ids each time)."""
    return [await measure(addresses, endpoint, args, f"{tag}{n}") for n in range(args.rounds)]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--fired", type=int, default=600)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument(
        "--replicas", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 3]
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--batch", type=int, default=50, help="events per PublishEvents call")
    parser.add_argument("--executes", type=int, default=200)
    parser.add_argument(
        "--pg-latency-ms",
        type=float,
        default=0.0,
        help="Execute p50 only: PostgreSQL reached through a proxy adding this to each round"
        " trip (scripts/latency_proxy.py), as a database on another machine",
    )
    parser.add_argument("--rounds", type=int, default=3, help="the medians of this many")
    parser.add_argument(
        "--execute-rounds", type=int, default=9, help="rounds of the Execute p50 comparison"
    )
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
