"""Benchmark the executor end to end, side by side with a naive baseline and the floors.

Usage: python scripts/bench.py [--rounds 5] [--runs 300] [--seconds 5] [--floor PATH]
       [--compare-loops] [--extras]

The main part runs, in interleaved rounds (the machine's speed drifts; medians of the
rounds are printed): the project (a fresh ``python -m executor serve``, default
settings: the warm path, the full hardened tier when run as root), the naive
``python3 -c`` baseline, and, where the floor prototype is found
(``../shared/bench/floor_service.py`` in the repository's directory or one above it, or
``--floor``), its ``full/prep+done+uvloop`` variant (``full/prep+done`` without uvloop).
Per round it measures p50/p99 of trivial Python and Perl callbacks with one client,
calls/s with 32 clients (every answer must be SUCCEEDED or RESOURCE_EXHAUSTED), the
CPU per call of each party, minor page faults per child and per fork (from the
zygotes' /proc counters), and the executor's idle RSS; then the ratios project/floor.
The executor runs as users have it installed: bytecode writing on
(``PYTHONDONTWRITEBYTECODE`` unset) and ``executor/child`` compiled to ``.pyc`` first.

``--compare-loops`` also runs the project on asyncio's event loop in each round (the
default, ``event_loop = "auto"``, is uvloop where installed). ``--extras`` adds the
older side-by-side below (one executor of each kind, once).
Starts real executors (``python -m executor serve`` on 127.0.0.1, embedded supervisor)
with the warm (zygote) and the cold (fork+exec) launcher, and measures in one run:

- Execute latency p50/p99 of a trivial Python, Perl and qube callback, one client;
- the naive baseline: ``python3 -c`` per callback through ``subprocess`` (what a
  supervisor that shells out would do), and the floors: an empty gRPC call (health
  Check) and a fork+wait of a warm, gRPC-free process;
- the same warm path without the hardened tier's private mounts and dedicated uid
  (``dedicated_uid = off``: what a deployment that is not root gets, plus PID namespace
  and cgroups);
- CPU per call of each party (the executor, its zygotes and their children, and this
  process: the client and the supervisor receiving the reports), which bounds what two
  cores can sustain;
- throughput with 1, 8 and 32 concurrent clients (errors other than RESOURCE_EXHAUSTED
  are counted and reported);
- the executor's RSS idle and after the load (the zygotes' RSS is listed apart);
- the issue's targets next to what was measured;
- the HTTP side port's cost: the callback path's p50/p99 and calls/s with ``http_bind``
  off, and on with a scraper polling ``/metrics`` every second and a dashboard page
  open (its first load, then what its script fetches: the runs table every 2 s),
  alternating off and on ``--http-rounds`` times; medians side by side
  (``--only http`` runs just this part).
- as root, what each sandbox mechanism of the hardening round costs a child, measured
  apart (``--mechanisms-only`` runs just that): the IPC and cgroup namespaces, the
  syscall filter, the tmpfs over the cgroup tree, each child's own devpts instance (and,
  for comparison, a bind of its ptmx over /dev/ptmx, which the child does not need),
  /dev/null bound over one of the executor's secret files (one per file), the
  zygote's setns into a cell's network namespace, the bridge made in an empty one;
  fork+exit+wait of a warm process with and without each, wall time and the CPU of the
  whole machine (namespace teardown runs in kernel workers, not in the child).

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
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from executor.sandbox.tier import devpts_options  # noqa: E402
from supervisor_client import ExecutorClient, ReferenceSupervisor, add_reference_supervisor  # noqa: E402
from supervisor_client.qbcallback.v1 import executor_pb2  # noqa: E402

# Filled with the job submitted to the benchmark's own reference supervisor.
JOB: dict[str, object] = {}
# The benchmark's executors run one at a time, in their own sandbox uid range.
BENCH_UID_BASE = 49000
TRIVIAL = {"python": "x = qb.jobid()", "perl": "my $x = $qb::jobid;", "qube": "unblock-self"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def executor(
    launcher: str, data_dir: Path, supervisor: str, **settings: str
) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    env = dict(os.environ, CBEXEC_LAUNCHER=launcher, CBEXEC_MAX_QUEUE="64")
    # Clear of a service started with the defaults (64000) and of the test suites' ranges.
    env.setdefault("CBEXEC_SANDBOX_UID_BASE", str(BENCH_UID_BASE))
    # As users have it: `pip install .` writes .pyc files, and so does an import.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update({f"CBEXEC_{name.upper()}": value for name, value in settings.items()})
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
            "--supervisor",
            supervisor,
            "--log-level",
            "WARNING",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
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


class HttpLoad:
    """A Prometheus scraper (every 1 s) and an open dashboard page (its script's 2 s refresh)."""

    def __init__(self, port: int) -> None:
        self._base = f"http://127.0.0.1:{port}"
        self._stop = threading.Event()
        self.scrapes = self.refreshes = self.errors = 0
        self._threads = [
            threading.Thread(target=self._every, args=(1.0, ["/metrics"], "scrapes")),
            threading.Thread(
                target=self._every, args=(2.0, ["/runs", "/runs?part=rows"], "refreshes")
            ),
        ]

    def _every(self, period_s: float, paths: list[str], counter: str) -> None:
        first = True
        while not self._stop.is_set():
            path = paths[0] if first else paths[-1]  # the page loads once, then refreshes
            first = False
            try:
                with urllib.request.urlopen(self._base + path, timeout=10) as response:  # noqa: S310 - loopback
                    response.read()
                setattr(self, counter, getattr(self, counter) + 1)
            except OSError:
                self.errors += 1
            self._stop.wait(period_s)

    def __enter__(self) -> HttpLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


async def http_side_by_side(
    supervisor: str, tmp: Path, runs: int, seconds: float, rounds: int
) -> dict[str, list[tuple[float, float, float]]]:
    """(p50 ms, p99 ms, calls/s with 8 clients) per round, HTTP port off and on, alternating."""
    results: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
    for round_ in range(rounds):
        for mode in ("off", "on"):
            settings = {}
            http_port = free_port()
            if mode == "on":
                settings["http_bind"] = f"127.0.0.1:{http_port}"
            data_dir = tmp / f"http-{mode}-{round_}"
            with executor("zygote", data_dir, supervisor, **settings) as (address, proc):
                await wait_serving(address, proc)
                await asyncio.sleep(0.5)
                load = HttpLoad(http_port) if mode == "on" else contextlib.nullcontext()
                with load:
                    p50, p99 = summary(await latency(address, "python", runs))
                    rate, _, _ = await throughput(address, 8, seconds)
                if isinstance(load, HttpLoad):
                    print(
                        f"  round {round_ + 1}, on: {load.scrapes} scrapes, "
                        f"{load.refreshes} page refreshes, {load.errors} errors"
                    )
            results[mode].append((p50, p99, rate))
    return results


def print_http(results: dict[str, list[tuple[float, float, float]]]) -> None:
    print(
        f"\n{'HTTP side port (python, warm; medians of rounds)':<50}"
        f"{'p50 ms':>10}{'p99 ms':>10}{'calls/s':>10}"
    )
    for mode, label in (("off", "off"), ("on", "on: /metrics every 1 s + page open")):
        rounds = results[mode]
        p50 = statistics.median(r[0] for r in rounds)
        p99 = statistics.median(r[1] for r in rounds)
        rate = statistics.median(r[2] for r in rounds)
        print(f"{label:<50}{p50:>10.2f}{p99:>10.2f}{rate:>10.0f}")
    for mode in ("off", "on"):
        print(
            f"  {mode} by round: "
            + ", ".join(f"{p50:.2f} ms / {rate:.0f}/s" for p50, _, rate in results[mode])
        )


async def wait_serving(address: str, proc: psutil.Process, timeout_s: float = 30.0) -> None:
    """Until the executor serves; an executor that exits first (a bad setting) ends the run."""
    deadline = time.monotonic() + timeout_s
    async with ExecutorClient(address) as client:
        while True:
            try:
                await client.wait_until_serving(timeout=1.0)
            except TimeoutError:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    raise SystemExit(
                        "the executor exited before serving; its error is above"
                    ) from None
                if time.monotonic() > deadline:
                    raise
            else:
                return


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
            response = await client.execute_callback(
                language=language, code=TRIVIAL[language], job=JOB
            )
            if response.outcome != executor_pb2.Outcome.OUTCOME_SUCCEEDED:
                raise SystemExit(f"{language}: {response.failure.message} {response.stderr[-300:]}")

        await once()  # warm-up
        return await timed(once, runs)


async def throughput(address: str, clients: int, seconds: float) -> tuple[float, int, int]:
    """(calls/s answered SUCCEEDED, RESOURCE_EXHAUSTED refusals, anything else)."""
    done = errors = exhausted = 0
    deadline = time.perf_counter() + seconds
    async with ExecutorClient(address) as client:

        async def worker() -> None:
            nonlocal done, errors, exhausted
            while time.perf_counter() < deadline:
                try:
                    response = await client.execute_callback(
                        language="python", code=TRIVIAL["python"], job=JOB
                    )
                    if response.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED:
                        done += 1
                    else:
                        errors += 1
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
    """Fork + exit + wait of a small gRPC-free process (a fresh interpreter measures it)."""
    code = (
        "import os, time, json\nsamples = []\n"
        f"for _ in range({runs}):\n"
        "    t = time.perf_counter(); pid = os.fork()\n"
        "    if pid == 0: os._exit(0)\n"
        "    os.waitpid(pid, 0); samples.append(time.perf_counter() - t)\n"
        "print(json.dumps(samples))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    import json

    return list(json.loads(out.stdout))


# Each variant: fork a warm process, do it in the child (or, for "setns", in the parent
# before the fork, as the zygote does), exit, wait. Printed as JSON: variant -> [wall
# us, machine CPU us] per child.
_MECHANISMS = r"""
import ctypes, json, os, socket, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import seccomp
runs = int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
prepared = seccomp.Prepared(seccomp.build(seccomp.native_arch()))
DEVPTS = sys.argv[3].encode()  # tier.devpts_options(): as a hardened child mounts it
zygote_filter = seccomp.Prepared(seccomp.build(seccomp.native_arch(), allowing=seccomp.CONFINING))
closing = seccomp.Prepared(seccomp.build_closing(seccomp.native_arch()))
own = os.open('/proc/self/ns/net', os.O_RDONLY)
assert libc.unshare(0x40000000) == 0
cell = os.open('/proc/self/ns/net', os.O_RDONLY)
assert libc.setns(own, 0x40000000) == 0

def busy():
    with open('/proc/stat') as stat:
        fields = [int(x) for x in stat.readline().split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf('SC_CLK_TCK')

def private_mounts():
    assert libc.unshare(0x00020000) == 0
    assert libc.mount(None, b'/', None, ctypes.c_ulong(16384 | (1 << 18)), None) == 0

def mask():
    private_mounts()
    assert libc.mount(b'tmpfs', b'/sys/fs/cgroup', b'tmpfs', ctypes.c_ulong(6), b'size=4k') == 0

def own_devpts():
    private_mounts()
    assert libc.mount(b'devpts', b'/dev/pts', b'devpts', ctypes.c_ulong(10), DEVPTS) == 0

SECRET = tempfile.mkstemp(prefix='cbexec-bench-secret-')[1].encode()

def hidden_file():
    private_mounts()
    assert libc.mount(b'/dev/null', SECRET, None, ctypes.c_ulong(4096), None) == 0

def own_devpts_ptmx_bound():
    own_devpts()
    assert libc.mount(b'/dev/pts/ptmx', b'/dev/ptmx', None, ctypes.c_ulong(4096), None) == 0

def seccomp_filter():
    libc.prctl(38, 1, 0, 0, 0)
    seccomp.install(prepared)

def closing_filter():
    libc.prctl(38, 1, 0, 0, 0)
    seccomp.install(closing)

in_child = {
    'plain fork': lambda: None,
    'IPC namespace': lambda: libc.unshare(0x08000000) == 0 or os._exit(1),
    'cgroup namespace': lambda: libc.unshare(0x02000000) == 0 or os._exit(1),
    'syscall filter, whole (cold path)': seccomp_filter,
    'mount namespace (reference)': private_mounts,
    'mount namespace + /sys/fs/cgroup mask': mask,
    'mount namespace + own devpts': own_devpts,
    'mount namespace + own devpts, /dev/ptmx bound': own_devpts_ptmx_bound,
    'mount namespace + /dev/null over a secret file': hidden_file,
    'new network namespace (reference)': lambda: libc.unshare(0x40000000) == 0 or os._exit(1),
}
before_fork = {'setns into the cell network namespace': lambda: libc.setns(cell, 0x40000000)}

def process_cpu():
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

def measure(child, parent=lambda: None):
    for _ in range(20):  # warm up
        pid = os.fork()
        if pid == 0:
            child(); os._exit(0)
        os.waitpid(pid, 0)
    time.sleep(0.2)  # let the warm-up's deferred teardown finish
    wall, cpu, mine = time.perf_counter(), busy(), process_cpu()
    for _ in range(runs):
        parent()
        pid = os.fork()
        if pid == 0:
            child(); os._exit(0)
        if os.waitpid(pid, 0)[1]:
            raise SystemExit('a child failed')
    time.sleep(0.2)  # deferred teardown (namespaces are freed by kernel workers)
    wall = time.perf_counter() - wall - 0.2
    return [wall / runs * 1e6, (process_cpu() - mine) / runs * 1e6, (busy() - cpu) / runs * 1e6]

def under_zygote_filter(child):
    # measure(child) in a fork of this process put under a zygote's own filter (for good)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        libc.prctl(38, 1, 0, 0, 0)
        seccomp.install(zygote_filter)
        os.write(write, json.dumps(measure(child)).encode())
        os._exit(0)
    os.close(write)
    data = b''
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(data)

# Rounds interleave the variants (the machine's speed drifts); the median round is kept.
zygote_child = "syscall filter, a zygote's child (closing part)"
rounds = {name: [] for name in [*in_child, zygote_child, *before_fork]}
for _ in range(5):
    for name, child in in_child.items():
        rounds[name].append(measure(child))
    rounds[zygote_child].append(under_zygote_filter(closing_filter))
    for name, parent in before_fork.items():
        rounds[name].append(measure(lambda: None, parent))
        libc.setns(own, 0x40000000)
found = {
    name: [sorted(column)[len(column) // 2] for column in zip(*samples)]
    for name, samples in rounds.items()
}

def pairs(make):
    started = time.perf_counter()
    for _ in range(runs * 10):
        a, b = make(); a.close(); b.close()
    return (time.perf_counter() - started) / (runs * 10) * 1e6

def in_empty():
    libc.setns(cell, 0x40000000)
    try:
        return socket.socketpair()
    finally:
        libc.setns(own, 0x40000000)

found['bridge socketpair in an empty network namespace'] = [pairs(in_empty), None, None]
found['bridge socketpair (reference)'] = [pairs(socket.socketpair), None, None]
os.unlink(SECRET)
print(json.dumps(found))
"""


def mechanism_costs(runs: int) -> dict[str, list[float | None]]:
    """Per child, what each mechanism costs (root only; see _MECHANISMS)."""
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            _MECHANISMS,
            str(ROOT / "executor" / "child"),
            str(runs),
            devpts_options(),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    return dict(json.loads(out.stdout))


def print_mechanism_costs(runs: int) -> None:
    if os.geteuid() != 0:
        print("\nsandbox mechanisms: not measured (needs root)")
        return
    costs = mechanism_costs(runs)
    plain = costs["plain fork"]
    print(
        f"\n{'sandbox mechanisms, per child (us)':<50}"
        f"{'wall':>8}{'+wall':>8}{'cpu':>8}{'+cpu':>8}{'+machine':>10}"
    )
    for name, (wall, cpu, machine) in costs.items():
        if cpu is None or machine is None:  # in the executor, no fork
            print(f"{name:<50}{wall:>8.1f}")
            continue
        print(
            f"{name:<50}{wall:>8.1f}{wall - plain[0]:>8.1f}{cpu:>8.1f}{cpu - plain[1]:>8.1f}"
            f"{machine - plain[2]:>10.1f}"
        )
    print(
        "  (+: over a plain fork+exit+wait of a warm process, median of 5 interleaved rounds;\n"
        "   cpu: the parent's and the child's; +machine: every core's busy time, so kernel\n"
        "   workers' teardown of namespaces too, and anything else running; the mask's, the\n"
        "   devpts' and a secret file's cost is over the mount namespace, which every hardened\n"
        "   child has anyway)"
    )


def naive_baseline(runs: int) -> list[float]:
    """One fresh ``python3 -c`` per callback through subprocess, as a shell-out supervisor does."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "x = 1"], check=True)
        samples.append(time.perf_counter() - started)
    return samples


def cpu_seconds(proc: psutil.Process) -> float:
    """CPU used by ``proc`` and by the children it has reaped."""
    times = proc.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


class CpuMeter:
    """CPU per call of the executor, its zygotes (with their reaped children) and this process."""

    def __init__(self, executor_proc: psutil.Process) -> None:
        self._executor = executor_proc
        self._me = psutil.Process()

    def _zygotes(self) -> list[psutil.Process]:
        return [c for c in self._executor.children() if "zygote" in " ".join(c.cmdline())]

    def sample(self) -> tuple[float, float, float]:
        times = self._executor.cpu_times()
        own = times.user + times.system
        me = self._me.cpu_times()
        return own, sum(cpu_seconds(z) for z in self._zygotes()), me.user + me.system

    def ms_per_call(self, before: tuple[float, float, float], calls: float) -> tuple[float, ...]:
        """Milliseconds of CPU per call of each party since ``before`` (a ``sample()``)."""
        return tuple(
            (now - then) / calls * 1000 for now, then in zip(self.sample(), before, strict=True)
        )

    async def per_call(self, work: Awaitable[list[float]]) -> tuple[list[float], tuple[float, ...]]:
        before = self.sample()
        samples = await work
        return samples, self.ms_per_call(before, len(samples))


def rss_mb(proc: psutil.Process) -> tuple[float, float]:
    """(executor, its children summed) resident MiB."""
    own = proc.memory_info().rss / 2**20
    children = sum(c.memory_info().rss for c in proc.children(recursive=True)) / 2**20
    return own, children


def minor_faults(pid: int) -> tuple[int, int]:
    """(own, reaped children's) minor page faults of ``pid``, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[8])  # minflt, cminflt


class FaultMeter:
    """Minor faults per call of the zygotes (per fork) and of the children they reaped."""

    def __init__(self, executor_proc: psutil.Process) -> None:
        self._executor = executor_proc

    def sample(self) -> tuple[int, int]:
        own = children = 0
        for child in self._executor.children():
            if "zygote" in " ".join(child.cmdline()):
                zygote, reaped = minor_faults(child.pid)
                own, children = own + zygote, children + reaped
        return own, children

    def per_call(self, before: tuple[int, int], calls: int) -> tuple[float, float]:
        now = self.sample()
        return (now[0] - before[0]) / calls, (now[1] - before[1]) / calls


def floor_path(given: str) -> Path | None:
    """The floor prototype: ``given``, or ../shared/bench/floor_service.py from the repository up."""
    if given:
        return Path(given)
    for parent in ROOT.parents:
        candidate = parent / "shared" / "bench" / "floor_service.py"
        if candidate.exists():
            return candidate
    return None


def floor_variant() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "full/prep+done"
    return "full/prep+done+uvloop"


def floor_round(path: Path, runs: int, seconds: float) -> dict[str, float]:
    """One round of the floor prototype's variant (its own server, fork server and client)."""
    import json

    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [
                sys.executable,
                str(path),
                "--variants",
                floor_variant(),
                "--rounds",
                "1",
                "--runs",
                str(runs),
                "--seconds",
                str(seconds),
                "--json",
                out.name,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        (result,) = json.loads(Path(out.name).read_text())[floor_variant()]
    return {key: float(value) for key, value in result.items()}


async def project_round(
    supervisor: str, data_dir: Path, runs: int, seconds: float, **settings: str
) -> dict[str, float]:
    """One round of the project: a fresh executor with default settings (or ``settings``)."""
    found: dict[str, float] = {}
    with executor("zygote", data_dir, supervisor, **settings) as (address, proc):
        await wait_serving(address, proc)
        await asyncio.sleep(0.5)
        found["idle_rss"] = rss_mb(proc)[0]
        meter, faults = CpuMeter(proc), FaultMeter(proc)
        for language in ("python", "perl"):
            await latency(address, language, 20)  # the zygote started, children prepared
            cpu_before, faults_before = meter.sample(), faults.sample()
            samples = await latency(address, language, runs)
            # The last child's end is still under way: wait for it to be counted.
            await asyncio.sleep(0.2)
            cpu = meter.ms_per_call(cpu_before, runs + 1)
            per_fork, per_child = faults.per_call(faults_before, runs + 1)
            p50, p99 = summary(samples)
            found.update(
                {
                    f"{language}_p50": p50,
                    f"{language}_p99": p99,
                    f"{language}_executor_cpu": cpu[0],
                    f"{language}_zygote_cpu": cpu[1],
                    f"{language}_client_cpu": cpu[2],
                    f"{language}_faults_child": per_child,
                    f"{language}_faults_fork": per_fork,
                }
            )
        before = meter.sample()
        rate, exhausted, errors = await throughput(address, 32, seconds)
        cpu = meter.ms_per_call(before, max(1.0, rate * seconds))
        found.update(
            {
                "rate": rate,
                "exhausted": exhausted,
                "errors": errors,
                "executor_cpu_32": cpu[0],
                "zygote_cpu_32": cpu[1],
                "client_cpu_32": cpu[2],
            }
        )
    return found


async def refused_cpu(supervisor: str, data_dir: Path, runs: int, **settings: str) -> float:
    """The executor's CPU per call it refuses (Perl disabled): everything a run costs but a child.

    The call goes through the edge, the dispatcher, the run's log line, the outbox (with
    ``report_results`` on) and the bookkeeping thread, like any run, and is answered
    REJECTED without a child.
    """
    with executor("zygote", data_dir, supervisor, languages="python,qube", **settings) as (
        address,
        proc,
    ):
        await wait_serving(address, proc)
        async with ExecutorClient(address) as client:

            async def once() -> None:
                response = await client.execute_callback(language="perl", code="1;", job=JOB)
                if response.outcome != executor_pb2.Outcome.OUTCOME_REJECTED:
                    raise SystemExit(f"a refused call answered {response.outcome}")

            for _ in range(20):
                await once()
            meter = CpuMeter(proc)
            before = meter.sample()
            await timed(once, runs)
            await asyncio.sleep(0.2)  # the last report's delivery and bookkeeping
            return meter.ms_per_call(before, runs)[0]


def baseline_round(calls: int = 30) -> float:
    return summary(naive_baseline(calls))[0]


async def interleaved(args: argparse.Namespace, supervisor: str) -> None:
    """The main part: project, baseline and floor, round by round; medians printed."""
    floor = floor_path(args.floor)
    compiled = subprocess.run(  # noqa: ASYNC221 - before anything runs
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "executor")], check=False
    )
    print(
        "bytecode: as users have it (PYTHONDONTWRITEBYTECODE unset for the executor; "
        f"executor/ compiled to .pyc first: {'ok' if compiled.returncode == 0 else 'FAILED'})"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"floor prototype: {floor} ({floor_variant()})" if floor else "floor prototype: not found"
    )
    project: list[dict[str, float]] = []
    on_asyncio: list[dict[str, float]] = []
    floors: list[dict[str, float]] = []
    baselines: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            baselines.append(baseline_round())
            project.append(
                await project_round(supervisor, Path(tmp) / f"r{round_}", args.runs, args.seconds)
            )
            for reported in ("true", "false"):
                project[-1][f"refused_cpu_{reported}"] = await refused_cpu(
                    supervisor,
                    Path(tmp) / f"q{reported}{round_}",
                    args.runs,
                    report_results=reported,
                )
            if args.compare_loops:
                on_asyncio.append(
                    await project_round(
                        supervisor,
                        Path(tmp) / f"a{round_}",
                        args.runs,
                        args.seconds,
                        event_loop="asyncio",
                    )
                )
            if floor is not None:
                floors.append(floor_round(floor, args.runs, args.seconds))
            line = (
                f"round {round_ + 1}: baseline {baselines[-1]:.2f} ms; project python "
                f"{project[-1]['python_p50']:.2f} ms, perl {project[-1]['perl_p50']:.2f} ms, "
                f"{project[-1]['rate']:.0f}/s"
            )
            if floors:
                line += f"; floor {floors[-1]['p50']:.2f} ms, {floors[-1]['rate']:.0f}/s"
            print(line, flush=True)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_interleaved(project, floors, baselines)
    if on_asyncio:
        print_loops(project, on_asyncio)


def print_loops(default: list[dict[str, float]], on_asyncio: list[dict[str, float]]) -> None:
    """The default event loop (uvloop where installed) beside asyncio's, same rounds."""
    print(
        f"\n{'event loop (medians of the same rounds)':<40}{'py p50':>8}{'pl p50':>8}"
        f"{'py p99':>8}{'calls/s':>8}{'exec CPU':>9}"
    )
    for label, rounds in (("default (event_loop = auto)", default), ("asyncio", on_asyncio)):

        def median(key: str, rounds: list[dict[str, float]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        print(
            f"{label:<40}{median('python_p50'):>8.2f}{median('perl_p50'):>8.2f}"
            f"{median('python_p99'):>8.2f}{median('rate'):>8.0f}"
            f"{median('python_executor_cpu'):>9.2f}"
        )


def print_interleaved(
    project: list[dict[str, float]], floors: list[dict[str, float]], baselines: list[float]
) -> None:
    def mine(key: str) -> float:
        return statistics.median(r[key] for r in project)

    def floor(key: str) -> float:
        return statistics.median(r[key] for r in floors)

    baseline = statistics.median(baselines)
    print(f"\nmedians of {len(project)} interleaved rounds")
    print(f"{'one client, trivial callback':<46}{'p50 ms':>8}{'p99 ms':>8}{'x base':>8}")
    for language in ("python", "perl"):
        p50, p99 = mine(f"{language}_p50"), mine(f"{language}_p99")
        print(f"{'project: ' + language:<46}{p50:>8.2f}{p99:>8.2f}{baseline / p50:>8.1f}")
    if floors:
        p50 = floor("p50")
        print(
            f"{'floor prototype: python':<46}{p50:>8.2f}{floor('p99'):>8.2f}{baseline / p50:>8.1f}"
        )
    print(f"{'baseline: python3 -c per callback':<46}{baseline:>8.2f}")
    print(f"\n{'32 clients, trivial python':<46}{'calls/s':>8}{'exh.':>8}{'other':>8}")
    print(
        f"{'project':<46}{mine('rate'):>8.0f}{sum(r['exhausted'] for r in project):>8.0f}"
        f"{sum(r['errors'] for r in project):>8.0f}"
    )
    if floors:
        print(f"{'floor prototype':<46}{floor('rate'):>8.0f}")
    print(f"\n{'CPU per call (ms)':<46}{'executor':>9}{'zyg+chld':>9}{'client':>9}")
    for language in ("python", "perl"):
        print(
            f"{'project: ' + language + ', 1 client':<46}{mine(language + '_executor_cpu'):>9.2f}"
            f"{mine(language + '_zygote_cpu'):>9.2f}{mine(language + '_client_cpu'):>9.2f}"
        )
    print(
        f"{'project: python, 32 clients':<46}{mine('executor_cpu_32'):>9.2f}"
        f"{mine('zygote_cpu_32'):>9.2f}{mine('client_cpu_32'):>9.2f}"
    )
    if floors:
        print(
            f"{'floor prototype: python, 1 client':<46}{floor('server_cpu_1'):>9.2f}"
            f"{floor('fs_cpu_1'):>9.2f}{floor('client_cpu_1'):>9.2f}"
        )
        print(
            f"{'floor prototype: python, 32 clients':<46}{floor('server_cpu_32'):>9.2f}"
            f"{floor('fs_cpu_32'):>9.2f}{floor('client_cpu_32'):>9.2f}"
        )
    print(
        "  (client: the benchmark's client, and for the project also the supervisor that "
        "receives its reports)"
    )
    refused, unreported = mine("refused_cpu_true"), mine("refused_cpu_false")
    print(f"\n{'where the executor CPU per python call goes':<56}{'ms':>8}")
    for label, value in (
        ("a refused call, not reported: the edge, the run's log", unreported),
        ("  line, history, .cb log and metrics, no child", None),
        ("+ its result reported: outbox commit, delivery", refused - unreported),
        (
            "+ a child: prepare, start, serve, answer, end, reap",
            mine("python_executor_cpu") - refused,
        ),
        ("= a trivial python call", mine("python_executor_cpu")),
    ):
        print(f"{label:<56}" + (f"{value:>8.2f}" if value is not None else ""))
    if floors:
        print(f"{'floor prototype: a whole python call':<56}{floor('server_cpu_1'):>8.2f}")
    print(f"\n{'minor page faults per call':<46}{'child':>9}{'zygote':>9}")
    for language in ("python", "perl"):
        print(
            f"{'project: ' + language:<46}{mine(language + '_faults_child'):>9.0f}"
            f"{mine(language + '_faults_fork'):>9.0f}"
        )
    print("  (child: the zygote's reaped children's faults; zygote: its own, per fork)")
    print(f"\nexecutor RSS idle: {mine('idle_rss'):.1f} MiB")
    python, perl = mine("python_p50"), mine("perl_p50")
    checks = [
        ("python p99 <= 12 ms", mine("python_p99") <= 12),
        ("perl p99 <= 12 ms", mine("perl_p99") <= 12),
        (">= 5x the python3 -c baseline (python)", baseline / python >= 5),
        ("executor CPU per python call <= 2.5 ms", mine("python_executor_cpu") <= 2.5),
        ("zygote + child CPU per python call <= 5 ms", mine("python_zygote_cpu") <= 5),
        ("idle RSS <= 80 MB", mine("idle_rss") * 2**20 / 1e6 <= 80),
        ("32 clients: only SUCCEEDED or RESOURCE_EXHAUSTED", not any(r["errors"] for r in project)),
    ]
    if floors:
        print(
            f"\nproject / floor: python p50 {python / floor('p50'):.2f}x, perl p50 "
            f"{perl / floor('p50'):.2f}x, calls/s at 32 clients {mine('rate') / floor('rate'):.2f}x"
        )
        checks += [
            ("python p50 <= 1.25x the floor", python <= 1.25 * floor("p50")),
            ("perl p50 <= 1.25x the floor", perl <= 1.25 * floor("p50")),
            ("32 clients >= 0.8x the floor's calls/s", mine("rate") >= 0.8 * floor("rate")),
        ]
    print(
        "\ntargets:\n" + "\n".join(f"  {name}: {'met' if ok else 'NOT met'}" for name, ok in checks)
    )


TARGETS = {"p50": 5.0, "p99": 20.0, "throughput": 400.0, "baseline_ratio": 5.0, "idle_rss": 80.0}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--runs", type=int, default=300, help="calls per latency sample")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--floor", default="", help="floor_service.py (default: found nearby)")
    parser.add_argument(
        "--extras", action="store_true", help="also the older one-off side-by-side and HTTP part"
    )
    parser.add_argument(
        "--compare-loops",
        action="store_true",
        help="each round also runs the project on asyncio's event loop",
    )
    parser.add_argument("--http-rounds", type=int, default=3)
    parser.add_argument("--only", choices=("http",), help="run only this part")
    parser.add_argument(
        "--mechanisms-only", action="store_true", help="only the per-mechanism costs (root)"
    )
    args = parser.parse_args()
    if args.mechanisms_only:
        print_mechanism_costs(args.runs)
        return 0
    rows: list[tuple[str, float, float]] = []
    cpu_rows: list[tuple[str, tuple[float, ...]]] = []
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )
    # The supervisor lives in this process, so the executor's RSS is its own.
    reference = ReferenceSupervisor(":memory:")
    (job,) = reference.submit([{"name": "bench", "user": "bench"}])
    JOB.update(job)
    supervisor_server = grpc.aio.server()
    add_reference_supervisor(supervisor_server, reference)
    supervisor_address = f"127.0.0.1:{supervisor_server.add_insecure_port('127.0.0.1:0')}"
    await supervisor_server.start()
    try:
        if args.only == "http":
            with tempfile.TemporaryDirectory() as tmp:
                results = await http_side_by_side(
                    supervisor_address, Path(tmp), args.runs, args.seconds, args.http_rounds
                )
            await supervisor_server.stop(2.0)
            reference.close()
            print_http(results)
            return 0
        await interleaved(args, supervisor_address)
        if not args.extras:
            await supervisor_server.stop(2.0)
            reference.close()
            print_mechanism_costs(args.runs)
            return 0
        setups = (
            ("zygote", "zygote", {}),
            ("zygote, no private mounts/uid", "zygote", {"dedicated_uid": "off"}),
            ("cold", "cold", {}),
        )
        with tempfile.TemporaryDirectory() as tmp:
            for index, (label, launcher, settings) in enumerate(setups):
                data_dir = Path(tmp) / str(index)
                with executor(launcher, data_dir, supervisor_address, **settings) as (
                    address,
                    proc,
                ):
                    await wait_serving(address, proc)
                    await asyncio.sleep(0.5)
                    main_setup = index == 0
                    if main_setup:
                        idle = rss_mb(proc)
                        rows.append(
                            (
                                "floor: empty gRPC call",
                                *summary(await grpc_floor(address, args.runs)),
                            )
                        )
                    meter = CpuMeter(proc)
                    for language in ("python", "perl", "qube"):
                        runs = args.runs if launcher == "zygote" else args.runs // 4
                        samples, cpu = await meter.per_call(latency(address, language, runs))
                        rows.append((f"{label}: {language} callback", *summary(samples)))
                        if main_setup:
                            cpu_rows.append((f"{language} callback, 1 client", cpu))
                    if main_setup:
                        loads = []
                        for clients in (1, 8, 32):
                            before = meter.sample()
                            rate, exhausted, errors = await throughput(
                                address, clients, args.seconds
                            )
                            cpu = meter.ms_per_call(before, rate * args.seconds)
                            loads.append((clients, (rate, exhausted, errors)))
                            if clients == 32:
                                cpu_rows.append(("python callback, 32 clients", cpu))
                        loaded = rss_mb(proc)
            http_results = await http_side_by_side(
                supervisor_address, Path(tmp), args.runs, args.seconds, args.http_rounds
            )
        await supervisor_server.stop(2.0)  # let reports still in flight finish
        reference.close()
        rows.append(("floor: fork+wait, warm process", *summary(fork_floor(args.runs))))
        rows.append(
            ("baseline: python3 -c per callback", *summary(naive_baseline(max(20, args.runs // 4))))
        )

        print(f"\n{'end-to-end latency':<50}{'p50 ms':>10}{'p99 ms':>10}")
        for name, p50, p99 in rows:
            print(f"{name:<50}{p50:>10.2f}{p99:>10.2f}")
        by_name = {name: (p50, p99) for name, p50, p99 in rows}
        baseline = by_name["baseline: python3 -c per callback"][0]
        print("\nratios (p50):")
        for language in ("python", "perl", "qube"):
            warm = by_name[f"zygote: {language} callback"][0]
            print(
                f"  warm {language}: {baseline / warm:.1f}x faster than the python3 -c baseline, "
                f"{warm / by_name['floor: fork+wait, warm process'][0]:.1f}x the fork floor, "
                f"{warm / by_name['floor: empty gRPC call'][0]:.1f}x the gRPC floor"
            )
        print(
            f"  cold python vs warm python: "
            f"{by_name['cold: python callback'][0] / by_name['zygote: python callback'][0]:.1f}x"
        )

        print(
            f"\n{'CPU per call (ms)':<50}{'executor':>10}{'zygotes':>10}{'client+sup':>12}{'total':>8}"
        )
        for name, (own, zygotes, client) in cpu_rows:
            total = own + zygotes + client
            print(f"{name:<50}{own:>10.2f}{zygotes:>10.2f}{client:>12.2f}{total:>8.2f}")
        print(
            "  (zygotes: the zygotes and every child they forked, prepared ones included; "
            f"{os.cpu_count()} cores bound the rate at cores / total)"
        )

        print(
            f"\n{'throughput (trivial python, warm)':<50}{'calls/s':>10}{'exhausted':>11}{'errors':>8}"
        )
        for clients, (rate, exhausted, errors) in loads:
            print(f"{f'{clients} concurrent clients':<50}{rate:>10.0f}{exhausted:>11}{errors:>8}")
        print(
            f"\nexecutor RSS idle {idle[0]:.1f} MiB (zygotes {idle[1]:.1f} MiB); "
            f"after load {loaded[0]:.1f} MiB (zygotes and children {loaded[1]:.1f} MiB)"
        )

        python, perl = by_name["zygote: python callback"], by_name["zygote: perl callback"]
        checks = [
            (f"python p50 <= {TARGETS['p50']:g} ms", python[0] <= TARGETS["p50"]),
            (f"perl p50 <= {TARGETS['p50']:g} ms", perl[0] <= TARGETS["p50"]),
            (f"python p99 <= {TARGETS['p99']:g} ms", python[1] <= TARGETS["p99"]),
            (f"perl p99 <= {TARGETS['p99']:g} ms", perl[1] <= TARGETS["p99"]),
            (
                f">= {TARGETS['throughput']:g} calls/s",
                max(rate for _, (rate, _, _) in loads) >= TARGETS["throughput"],
            ),
            (
                f">= {TARGETS['baseline_ratio']:g}x the baseline (python)",
                baseline / python[0] >= TARGETS["baseline_ratio"],
            ),
            (
                f"idle RSS <= {TARGETS['idle_rss']:g} MB",
                idle[0] * 2**20 / 1e6 <= TARGETS["idle_rss"],
            ),
        ]
        print(
            "\ntargets: "
            + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks)
        )
        print_http(http_results)
        print_mechanism_costs(args.runs)
    except SystemExit:
        # An executor that could not start ends the run: no server left to the GC
        # once the event loop is closed.
        await supervisor_server.stop(None)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
