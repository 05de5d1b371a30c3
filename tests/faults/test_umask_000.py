"""An executor started under umask 000: what it makes has its own mode, and its cells stay its own.

Under umask 000 (python-daemon's ``DaemonContext`` and classic ``daemon()`` wrappers set
it) ``<data_dir>/supervisor.sock`` was srwxrwxrwx: any local user, and any other
executor's callback, drove the embedded farm as any actor (its Supervisor service trusts
the actor it is told). The cells' cgroups were 0777: a local user made a cgroup in a
cell, parked processes there against the cell's pids limit, and the executor left them
running after the run (probe 108). The umask is set in the child process only: pytest's
own would reach every file its other tests make.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from supervisor_client import ExecutorClient, FarmClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.helpers.executor_process import executor_process
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
# ``cbexec serve`` with the umask a daemon wrapper leaves.
SERVE_UNDER_UMASK_000: Final = """
import os, sys
os.umask(0)
from executor.cli import main
sys.exit(main())
"""
# Cell cgroups over a directory standing in for /sys/fs/cgroup (v1), made under umask 000.
CELLS_UNDER_UMASK_000: Final = """
import os, sys
from pathlib import Path
os.umask(0)
from executor.sandbox import cgroup
cgroup.CGROUP_ROOT = Path(sys.argv[1])
cgroup.CellCgroups.create(2)
for pool in sorted(Path(sys.argv[1]).glob("*/cbexec-*")):
    for made in (pool, *sorted(pool.iterdir())):
        if made.is_dir():
            print(made, oct(os.stat(made).st_mode & 0o7777))
"""
# A gRPC server's private socket at a path too long for a Unix socket, made under umask 000.
LONG_PATH_SOCKET: Final = """
import asyncio, os, sys
from pathlib import Path
os.umask(0)
import grpc
from executor.api import private_socket
async def main():
    server = grpc.aio.server()
    bound = private_socket.listen(server, Path(sys.argv[1]) / "internal.sock", "internal socket")
    await server.start()
    print(bound.path, oct(os.stat(bound.path).st_mode & 0o7777), oct(os.stat(bound.path.parent).st_mode & 0o7777))
    await server.stop(0)
    bound.remove()
    print(os.path.exists(bound.path), os.path.exists(bound.path.parent))
asyncio.run(main())
"""


def run_python(code: str, *args: str) -> str:
    """``python -c code args`` with this tree first on the path; its output, or the test fails."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.lstat().st_mode))


def open_to_others(root: Path) -> dict[str, str]:
    """Everything under ``root`` (itself included) with a permission bit for others."""
    found = {}
    for directory, names, files in os.walk(root):
        for path in (Path(directory), *(Path(directory, n) for n in [*names, *files])):
            if path.lstat().st_mode & 0o007:
                found[str(path)] = mode(path)
    return found


def pools_of(pid: int) -> list[Path]:
    """The executor's cgroup pools (one per v1 hierarchy, or the v2 one)."""
    return sorted({*CGROUP_ROOT.glob(f"cbexec-{pid}"), *CGROUP_ROOT.glob(f"*/cbexec-{pid}")})


async def test_the_supervisor_socket_the_data_dir_and_the_cells_are_the_executor_s_own(
    tmp_path: Path,
) -> None:
    made, log = tmp_path / "made", tmp_path / "executor.log"
    data = made / "data"  # neither there yet: start-up makes both
    async with executor_process(data, "", log, launcher=("-c", SERVE_UNDER_UMASK_000)) as running:
        socket = data / "supervisor.sock"
        assert stat.S_ISSOCK(socket.lstat().st_mode)
        assert mode(socket) == "0o600"
        assert (mode(made), mode(data)) == ("0o755", "0o700")
        async with ExecutorClient(running.address) as client, FarmClient(running.address) as farm:
            (job,) = (await farm.submit_jobs([{"name": "j", "user": "alice"}])).jobs
            reply = await client.execute_callback(
                language="python", code="print(qb.jobinfo()[0]['name'])", job={"id": job.id}
            )
        assert reply.outcome == executor_pb2.OUTCOME_SUCCEEDED, reply.failure
        assert reply.stdout == "j\n"  # through the socket
        assert open_to_others(data) == {}
        cells = {
            str(cell): mode(cell)
            for pool in pools_of(running.proc.pid)
            for cell in (pool, *pool.glob("cell-*"))
        }
        assert cells == dict.fromkeys(cells, "0o755")
        running.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.proc.wait(), 60) == 0, log.read_text()
        assert not socket.exists()  # removed at the stop, as before


def test_cells_made_under_umask_000_are_0755(tmp_path: Path) -> None:
    for controller in ("pids", "memory"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    lines = run_python(CELLS_UNDER_UMASK_000, str(tmp_path)).splitlines()
    # Each pool and its cells, in both hierarchies.
    assert len(lines) == 2 * 3, lines
    assert all(line.endswith(" 0o755") for line in lines), lines


def test_a_private_socket_too_long_for_its_path_is_0600_in_a_0700_directory(
    tmp_path: Path,
) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    bound, socket_mode, directory_mode, *rest = run_python(LONG_PATH_SOCKET, str(deep)).split()
    assert not bound.startswith(str(deep))
    assert (socket_mode, directory_mode) == ("0o600", "0o700")
    assert rest == ["False", "False"]  # its directory too (probe 164: left at each stop)


@contextlib.contextmanager
def parked_in(cells: list[Path]) -> Iterator[dict[Path, subprocess.Popen[str]]]:
    """A sleeper in a cgroup made inside each cell, as a local user did; all gone after.

    Each is the child of a shell outside the cell that waits for it (and so reaps it,
    as the user's shell did): the shell ends once its sleeper is killed.
    """
    shells: dict[Path, subprocess.Popen[str]] = {}
    sleepers: list[int] = []
    try:
        for cell in cells:
            foreign = cell / "foreign"
            foreign.mkdir()
            shell = shells[foreign] = subprocess.Popen(
                ["sh", "-c", "sleep 120 & echo $!; wait $!"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # its word on the kill
                text=True,
            )
            assert shell.stdout is not None
            sleepers.append(int(shell.stdout.readline()))
            (foreign / "cgroup.procs").write_text(str(sleepers[-1]))
        yield shells
    finally:
        for pid in sleepers:  # each waited for by its shell: not yet another's pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        for foreign, shell in shells.items():
            shell.kill()
            shell.wait()
            assert shell.stdout is not None
            shell.stdout.close()
            with contextlib.suppress(OSError):
                foreign.rmdir()


async def test_processes_in_a_cgroup_someone_made_in_a_cell_are_killed_after_the_run(
    tmp_path: Path,
) -> None:
    data, log = tmp_path / "data", tmp_path / "executor.log"
    async with executor_process(data, "", log, launcher=("-c", SERVE_UNDER_UMASK_000)) as running:
        pools = pools_of(running.proc.pid)
        if not pools:
            pytest.skip("the executor made no cgroups here (not root, or none writable)")
        # The processes controller's, or v2's one tree: a pids counter the cell is checked by.
        pids_pool = next((p for p in pools if p.parent.name == "pids"), pools[0])
        with parked_in(sorted(pids_pool.glob("cell-*"))) as shells:
            async with ExecutorClient(running.address) as client:
                reply = await client.execute_callback(
                    language="python", code="print('ran')", job={"id": 1}
                )
            assert reply.outcome == executor_pb2.OUTCOME_SUCCEEDED, reply.failure

            def ended() -> list[Path]:
                return [f for f, shell in shells.items() if shell.poll() is not None]

            # The run's cell: its stranger killed, its cgroup removed; the others untouched.
            assert await eventually(lambda: len(ended()) == 1), log.read_text()
            (foreign,) = ended()
            assert shells[foreign].returncode == 128 + 9  # what its sleeper ended with
            assert await eventually(lambda: not foreign.exists())
            assert all(shell.poll() is None for f, shell in shells.items() if f != foreign)
            said = f"holds cgroups the executor did not make ({foreign})"
            assert said in log.read_text()
