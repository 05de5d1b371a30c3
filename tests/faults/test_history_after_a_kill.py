"""An answered run's history record and ``.cb`` entry survive a kill -9 before they are written.

A real executor whose bookkeeping thread holds every run (its gather pause patched to an
hour, in that process only) answers a few Executes, and the supervisor acknowledges their
results, so their outbox rows are delivered while the history has none of them. It is
killed with SIGKILL, and started again on the same data dir: ``ListRuns``/``GetRun`` show
every answered run, each has its ``.cb`` entry, and an Execute naming one of their
invocation ids for another callback is refused.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from pathlib import Path
from typing import Final

import pytest

from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.faults.helpers import locked, supervisor_endpoint
from tests.helpers.executor_process import executor_process
from tests.helpers.supervisors import SupervisorEndpoint
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.faults

# The executor, its bookkeeping thread writing nothing until a reader flushes or it stops.
HELD_BOOKKEEPING: Final = (
    "-c",
    "import sys, executor.runs.bookkeeping as b; b.GATHER_S = 3600.0; b.GATHER_RUNS = 10**9;"
    " from executor.cli import main; sys.exit(main())",
)
RUNS: Final = 5
JOB_ID: Final = 4242


async def _answer_then_kill(
    data: Path, endpoint: SupervisorEndpoint, log: Path, ids: list[str]
) -> None:
    """Answered runs whose results were delivered, then a kill -9 before their history."""
    async with executor_process(data, endpoint.address, log, launcher=HELD_BOOKKEEPING) as first:
        async with ExecutorClient(first.address) as client:
            for n, invocation_id in enumerate(ids):
                response = await client.execute_callback(
                    language="python",
                    code=f"print('run {n}')",
                    job={"id": JOB_ID},
                    invocation_id=invocation_id,
                )
                assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED
            # Delivered, so their rows are marked while the history has none of them.
            assert await eventually(lambda: set(endpoint.servicer.applied) >= set(ids))
        first.sigkill()
        assert await first.proc.wait() == -signal.SIGKILL, log.read_text()


async def test_answered_runs_are_in_the_history_after_a_kill_9(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "executor.log"
    ids = [f"kill-{n}" for n in range(RUNS)]
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        await _answer_then_kill(data, endpoint, log, ids)
        async with (
            executor_process(data, endpoint.address, log) as second,
            ExecutorClient(second.address) as client,
        ):
            runs = (await client.list_runs(job_id=JOB_ID)).runs
            assert sorted(run.invocation_id for run in runs) == ids, log.read_text()
            run = await client.get_run(ids[2])
            assert (run.job_id, run.result.stdout) == (JOB_ID, "run 2\n")
            with pytest.raises(ExecutorRpcError) as refused:
                await client.execute_callback(
                    language="python", code="print('intruder')", job={"id": 1}, invocation_id=ids[0]
                )
            assert refused.value.code.name == "ALREADY_EXISTS", refused.value.details
        cb = (data / "logs" / "job" / "4000" / str(JOB_ID) / f"{JOB_ID}.cb").read_text()
        assert [cb.count(f"invocation={i} ") for i in ids] == [1] * RUNS, cb


async def test_a_rebuild_a_lock_cut_short_at_the_start_is_finished_once_the_lock_is_gone(
    tmp_path: Path,
) -> None:
    # An admin's sqlite3 (or a backup) holding outbox.db at the restart: the executor
    # serves (NOT_SERVING while the lock holds), the history is rebuilt, and the notes the
    # rebuild read are let go once the lock is gone: a line in the log, no traceback.
    data, log = tmp_path / "data", tmp_path / "executor.log"
    ids = [f"locked-{n}" for n in range(RUNS)]
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        await _answer_then_kill(data, endpoint, log, ids)
        with contextlib.ExitStack() as lock:
            lock.enter_context(locked(data / "outbox.db"))
            async with (
                executor_process(data, endpoint.address, log) as second,
                ExecutorClient(second.address) as client,
            ):
                runs = (await client.list_runs(job_id=JOB_ID)).runs
                assert sorted(run.invocation_id for run in runs) == ids
                text = log.read_text()
                assert "did not finish: cannot write" in text and "outbox.db" in text, text
                assert "Traceback" not in text, text  # a lock is no bug
                assert f"rebuilt the history record and .cb entry of {RUNS} runs" in text, text
                lock.close()
                assert await eventually(lambda: _no_notes_kept(data), timeout_s=15), text
        cb = (data / "logs" / "job" / "4000" / str(JOB_ID) / f"{JOB_ID}.cb").read_text()
        assert [cb.count(f"invocation={i} ") for i in ids] == [1] * RUNS, cb


async def _no_notes_kept(data: Path) -> bool:
    with contextlib.closing(sqlite3.connect(data / "outbox.db")) as db:
        kept = db.execute("SELECT count(*) FROM outbox WHERE notes IS NOT NULL").fetchone()[0]
    return int(kept) == 0


async def test_a_run_whose_id_is_sent_again_at_once_keeps_its_cb_entry_after_a_kill_9(
    tmp_path: Path,
) -> None:
    # Found by probe 155: the resend's outbox row replaced the first run's, and its notes
    # with it, while the first run's bookkeeping still waited: the .cb entry of a run
    # that was answered (its effects happened) was gone after the restart.
    data, log = tmp_path / "data", tmp_path / "executor.log"
    async with supervisor_endpoint(tmp_path / "supervisor.db") as endpoint:
        async with executor_process(
            data, endpoint.address, log, launcher=HELD_BOOKKEEPING
        ) as first:
            async with ExecutorClient(first.address) as client:
                for attempt in ("first", "second"):
                    response = await client.execute_callback(
                        language="python",
                        code=f"print('{attempt}')",
                        job={"id": JOB_ID},
                        invocation_id="resent",
                    )
                    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED
            first.sigkill()
            assert await first.proc.wait() == -signal.SIGKILL, log.read_text()
        async with (
            executor_process(data, endpoint.address, log) as second,
            ExecutorClient(second.address) as client,
        ):
            run = await client.get_run("resent")
            assert run.result.stdout == "second\n", log.read_text()  # the id's record: the resend's
    cb = (data / "logs" / "job" / "4000" / str(JOB_ID) / f"{JOB_ID}.cb").read_text()
    assert cb.count("invocation=resent ") == 2, cb
    assert cb.index("\nfirst\n") < cb.index("\nsecond\n"), cb
