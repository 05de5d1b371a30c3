"""A re-run's mail is the one mail the spool kept, even while that copy is in its exchange (probe 103 F1).

A real executor (``python -m executor serve``, embedded supervisor) mails through a
loopback relay that accepts connections and holds them (``tests/helpers/held_smtp.py``).
It is killed (SIGKILL) while a mail run waits for its mail; the restart hands the
spool's copy to a mail thread at once, then re-runs the callback, whose mail has the
same Message-ID. Before, that second mail was spooled and sent beside the first.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supervisor_client import FarmClient
from tests.helpers.executor_process import executor_process
from tests.helpers.held_smtp import MAILED_JOB, held_relay, relay_env
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.faults


async def test_a_rerun_after_a_crash_sends_the_spooled_mail_once(tmp_path: Path) -> None:
    log = tmp_path / "executor.log"
    data = tmp_path / "data"
    spool = data / "mail-queue"
    async with held_relay() as relay:
        async with executor_process(data, "", log, env=relay_env(relay)) as executor:
            async with FarmClient(executor.address) as farm:
                (job,) = (await farm.submit_jobs([MAILED_JOB])).jobs
                await farm.change_work(job_id=job.id, work=["1"], change="complete")
            await relay.wait_for(connections=1)  # the run waits its 2 s for it
            executor.proc.kill()
            await executor.proc.wait()
        assert len(list(spool.glob("*.eml"))) == 1
        ran_before = log.read_text().count("callback ran:")

        async with executor_process(data, "", log, env=relay_env(relay)):
            await relay.wait_for(connections=2)  # the spool's copy, in its exchange
            rerun = await eventually(
                lambda: log.read_text().count("callback ran:") > ran_before, 60
            )
            assert rerun, log.read_text()[-3000:]
            assert len(list(spool.glob("*.eml"))) == 1, log.read_text()[-3000:]
            relay.release()
            await relay.wait_for(accepted=1)
            assert await eventually(lambda: not list(spool.glob("*.eml")), 30)
            await asyncio.sleep(1)  # a second copy would have gone by now
        ids = [str(m["Message-ID"]) for m in relay.accepted]
        assert len(ids) == 1, (ids, log.read_text()[-3000:])
