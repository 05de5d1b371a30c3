"""A stop leaves unsent mail in the spool for the next start and exits promptly (probe 96 F3).

A real executor (``python -m executor serve``, embedded supervisor) mails through a
loopback relay that accepts connections and says nothing (``tests/helpers/held_smtp.py``).
Before, after SIGTERM the process lived on until every queued mail was sent (unbounded
with a relay that never answers), while its data dir lock was already free, so a
restarted executor sent the same mails beside it.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import pytest

from executor.runtimes.mail_queue import STOP_GRACE_SECONDS
from supervisor_client import FarmClient
from tests.helpers.executor_process import executor_process
from tests.helpers.held_smtp import MAILED_JOB, held_relay, relay_env
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.faults


async def test_a_stop_keeps_unsent_mail_for_the_next_start_and_exits_within_its_grace(
    tmp_path: Path,
) -> None:
    log = tmp_path / "executor.log"
    data = tmp_path / "data"
    async with held_relay() as relay:
        async with executor_process(data, "", log, env=relay_env(relay)) as executor:
            async with FarmClient(executor.address) as farm:
                jobs = (await farm.submit_jobs([MAILED_JOB] * 4)).jobs
                for job in jobs:
                    await farm.change_work(job_id=job.id, work=["1"], change="complete")
            # Two mails in an exchange (the mail threads), two waiting in the queue.
            await relay.wait_for(connections=2)
            ran = await eventually(lambda: log.read_text().count("callback ran:") >= 4, 30)
            assert ran, log.read_text()[-3000:]
            stopped_at = time.monotonic()
            executor.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(60):
                await executor.proc.wait()
            took = time.monotonic() - stopped_at
        text = log.read_text()
        assert executor.proc.returncode == 0, text[-3000:]
        # The grace for the exchanges under way, and a moment for the rest of the stop.
        assert took < STOP_GRACE_SECONDS + 10, (took, text[-3000:])
        assert relay.accepted == []
        assert re.search(
            r"mail queue: 2 mails not yet handed to smtp://\S+ at the stop: they stay in", text
        )
        assert re.search(r"mail queue: 2 mails still in an exchange with smtp://\S+ after", text)

        # The next start (the lock is free again) sends them all, once the relay answers.
        relay.release()
        async with executor_process(data, "", log, env=relay_env(relay)):
            await relay.wait_for(accepted=4)
    ids = {str(m["Message-ID"]) for m in relay.accepted}
    assert len(ids) == 4, ids
