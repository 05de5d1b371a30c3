"""A data dir on a small disk: the databases' logs never fill it, and a full one is met at start.

Against a real executor whose data dir is a small tmpfs: big results are checkpointed
by their logs' size (not only every hundred commits), so the logs stay within a few MiB
each; a start on a disk left full finds it so at once (NOT_SERVING, nothing runs), and
gives back what its own logs hold needlessly before it does. (A disk so full that
SQLite cannot make a database's ``-shm``, as after a clean stop, is beyond a start.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

import grpc
import pytest

from supervisor_client import ExecutorClient, RetryableError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import stack_settings
from tests.faults.helpers import executor, fill, small_tmpfs, supervisor_endpoint
from tests.helpers.executor_process import executor_process
from tests.helpers.health import NOT_SERVING, SERVING, health_status
from tests.helpers.waiting import eventually, outbox_drained

pytestmark = pytest.mark.faults

DATABASES: Final = ("outbox.db", "runs.db")
# A log is checkpointed once it passes 4 MiB, and cut back to that when it restarts; the
# commits made while the checkpoint copies it come on top (measured: up to 1.5 MB here).
LOG_BOUND: Final = 8 << 20

# What a kill -9 leaves beside a database: its -shm, and a log of ``sys.argv[2]`` commits
# (of the header page), copied into the database already when ``sys.argv[3]`` says so (a
# kill right after a checkpoint). A clean stop removes both; without a -shm, and no room
# to make one, SQLite cannot open a database at all.
LEAVE_A_LOG: Final = (
    "import os, sqlite3, sys\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('PRAGMA wal_autocheckpoint = 0')\n"
    "version = db.execute('PRAGMA user_version').fetchone()[0]\n"
    "for n in range(int(sys.argv[2])):\n"
    "    db.execute(f'PRAGMA user_version = {n + 1}')\n"
    "db.execute(f'PRAGMA user_version = {version}')\n"
    "if sys.argv[3] == 'copied':\n"
    "    db.execute('PRAGMA wal_checkpoint(PASSIVE)')\n"
    "os._exit(0)\n"
)
LOGGED: Final = ("outbox.db", "runs.db", "triggers.db")


def _leave_logs(data: Path, commits: int, *, copied: bool) -> None:
    for name in LOGGED:
        subprocess.run(
            [
                sys.executable,
                "-c",
                LEAVE_A_LOG,
                str(data / name),
                str(commits),
                str(copied and "copied"),
            ],
            check=True,
            timeout=60,
        )


def _log_bytes(database: Path) -> int:
    log = Path(f"{database}-wal")
    return log.stat().st_size if log.exists() else 0


async def test_big_results_on_a_small_disk_do_not_fill_it_with_the_logs(tmp_path: Path) -> None:
    # 40 KB of output a run: the outbox's log alone grew to 15 MB (no checkpoint in 77
    # runs) and the 20 MiB disk was full.
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        with small_tmpfs(tmp_path / "disk", 20 << 20) as disk:
            data = disk / "data"
            settings = stack_settings(data, supervisor=endpoint.address)
            async with (
                executor(settings) as running,
                ExecutorClient(f"127.0.0.1:{running.port}") as client,
            ):
                ids = [f"big-{n}" for n in range(100)]
                biggest = dict.fromkeys(DATABASES, 0)
                for invocation_id in ids:
                    response = await client.execute_callback(
                        language="python",
                        code="print('x' * 40000)",
                        job={"id": 5},
                        invocation_id=invocation_id,
                    )
                    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED
                    for name in DATABASES:
                        biggest[name] = max(biggest[name], _log_bytes(data / name))
                assert await outbox_drained(client)
                assert all(size <= LOG_BOUND for size in biggest.values()), biggest
                endpoint.assert_exactly_once(set(ids))


async def test_a_start_on_a_disk_full_but_for_copied_logs_gives_them_back_and_serves(
    tmp_path: Path,
) -> None:
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        with small_tmpfs(tmp_path / "disk", 16 << 20) as disk:
            settings = stack_settings(disk / "data", supervisor=endpoint.address)
            async with executor(settings):
                pass  # the databases are made
            _leave_logs(settings.data_dir, 500, copied=True)  # 2 MB each
            assert all(_log_bytes(settings.data_dir / name) > 2_000_000 for name in LOGGED)
            fill(disk)

            async with executor(settings) as running:
                address = f"127.0.0.1:{running.port}"
                async with ExecutorClient(address) as client:
                    channel = grpc.aio.insecure_channel(address)
                    emptied = {name: _log_bytes(settings.data_dir / name) for name in LOGGED}
                    assert set(emptied.values()) == {0}, emptied
                    assert await health_status(channel) == SERVING
                    assert (await client.get_metrics()).storage_problem == ""
                    response = await client.execute_callback(
                        language="python", code="print('hi')", job={"id": 5}, invocation_id="s-1"
                    )
                    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED
                    assert await outbox_drained(client)
                    endpoint.assert_exactly_once({"s-1"})
                    await channel.close()


async def test_a_start_on_a_full_disk_is_not_serving_and_runs_nothing_from_the_start(
    tmp_path: Path,
) -> None:
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        with small_tmpfs(tmp_path / "disk", 16 << 20) as disk:
            settings = stack_settings(disk / "data", supervisor=endpoint.address)
            # A kill -9 after a few runs with big results: their logs are not copied yet
            # (copying them takes room the disk will not have), and their -shm are left
            # (so a start needs no room to make them).
            log = tmp_path / "executor.log"
            async with executor_process(settings.data_dir, endpoint.address, log) as first:
                async with ExecutorClient(first.address) as client:
                    for _ in range(3):
                        await client.execute_callback(
                            language="python", code="print('x' * 200000)", job={"id": 5}
                        )
                    assert await outbox_drained(client)
                first.sigkill()
                await first.proc.wait()
            filler = fill(disk)

            async with executor(settings) as running:
                address = f"127.0.0.1:{running.port}"
                async with ExecutorClient(address) as client:
                    channel = grpc.aio.insecure_channel(address)
                    assert await health_status(channel) == NOT_SERVING
                    with pytest.raises(RetryableError) as not_run:
                        await client.execute_callback(
                            language="python", code="qb.block(5)", job={"id": 5}
                        )
                    assert "cannot record results now, so it runs nothing" in not_run.value.details
                    assert not endpoint.servicer.action_requests

                    filler.unlink()
                    assert await eventually(lambda: _serving(channel), timeout_s=10), (
                        "health never recovered"
                    )
                    response = await client.execute_callback(
                        language="python", code="print('hi')", job={"id": 5}, invocation_id="f-1"
                    )
                    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED
                    assert await outbox_drained(client)
                    await channel.close()


async def _serving(channel: grpc.aio.Channel) -> bool:
    return await health_status(channel) == SERVING
