"""A slow mail relay holds up no other callback: a mail run hands its mail to the queue (probe 96 F1).

The relay (``tests/helpers/held_smtp.py``) accepts each connection and says nothing until
released. Before, each mail run held one of the executor's slots, and its event one of the
trigger engine's parallel events, for up to its whole wall limit: with every slot taken
by mails, an Execute of ``print('hi')`` and a fired Python callback waited ~30 s.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from executor.runtimes.mail import MailSettings
from executor.runtimes.qube import MAIL_WAIT_SECONDS
from supervisor_client import FarmClient
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2
from supervisor_client.qbcallback.v1.executor_pb2 import Outcome
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.held_smtp import HeldRelay, held_relay
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service


def smtp_settings(relay: HeldRelay) -> MailSettings:
    return MailSettings(
        delivery="smtp",
        smtp_host="127.0.0.1",
        smtp_port=relay.port,
        smtp_timeout_seconds=60,
        sender="qube@farm.example",
        default_domain="farm.example",
    )


def _job(name: str, callback: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "user": "alice",
        "mailaddress": "lead@studio.example",
        "agenda": ["1"],
        "callbacks": [callback],
    }


MAIL = {"triggers": "done-job-self", "language": "mail"}
PYTHON = {"triggers": "done-job-self", "language": "python", "code": "print('fired')"}


async def test_a_held_relay_holds_up_no_other_callback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="executor.runtimes")
    # Two slots, and so two events' firings at once: both taken by the mails before.
    async with (
        held_relay() as relay,
        running_stack(
            stack_settings(tmp_path / "data", max_concurrent=2, mail=smtp_settings(relay))
        ) as stack,
        FarmClient(stack.channel) as farm,
    ):
        jobs = (
            await farm.submit_jobs(
                [_job("m1", MAIL), _job("m2", MAIL), _job("m3", MAIL), _job("py", PYTHON)]
            )
        ).jobs
        *mailing, python = jobs
        for job in mailing:
            await farm.change_work(job_id=job.id, work=["1"], change="complete")
        await relay.wait_for(connections=2)  # both mail threads wait on the relay

        began = time.monotonic()
        await farm.change_work(job_id=python.id, work=["1"], change="complete")
        response = await stack.stub.Execute(
            executor_pb2.ExecuteRequest(
                invocation_id="hi-1",
                callback=types_pb2.Callback(language="python", code="print('hi')", user="alice"),
                context=executor_pb2.JobContext(job=job_from_dict(stack.supervisor.job(python.id))),
            ),
            timeout=60,
        )
        took = time.monotonic() - began
        assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
        assert response.stdout == "hi\n"
        # At most the mail runs' short wait for their mail, never the relay's time.
        assert took < MAIL_WAIT_SECONDS + 5, took
        assert response.usage.queue_seconds < MAIL_WAIT_SECONDS + 1

        async def fired_run() -> list[Any]:
            runs = (await stack.client.list_runs(job_id=python.id)).runs
            return [r for r in runs if r.invocation_id != "hi-1"]

        (fired,) = await eventually(fired_run, timeout_s=MAIL_WAIT_SECONDS + 5)
        assert fired.outcome == Outcome.OUTCOME_SUCCEEDED
        assert relay.accepted == []  # still held: the relay has taken no mail yet

        # Each mail run ended once its mail was queued, and says so.
        for job in mailing:
            (run,) = await eventually(
                functools.partial(_listed, stack, job.id), timeout_s=MAIL_WAIT_SECONDS + 5
            )
            assert run.outcome == Outcome.OUTCOME_SUCCEEDED
            actions = (await stack.client.get_run(run.invocation_id)).result.actions
            mail = actions[-1]
            assert (mail.verb, mail.target, mail.ok) == ("mail", "lead@studio.example", True)
            # Within the wait, or at once once the first mails had taken longer than it.
            assert mail.message.startswith(f"queued for smtp://127.0.0.1:{relay.port}: "), (
                mail.message
            )
            assert mail.message.endswith(
                (
                    f"not sent within {MAIL_WAIT_SECONDS:g} s",
                    "not sent yet, the relay is slow over earlier mails",
                ),
                0,
                mail.message.index("; its outcome is logged under <cbexec."),
            ), mail.message

        relay.release()
        await relay.wait_for(accepted=3)
        await stack.settle()

    ids = sorted(str(m["Message-ID"]) for m in relay.accepted)
    assert len(set(ids)) == 3
    assert all(i.startswith("<cbexec.") and i.endswith("@farm.example>") for i in ids)
    sent = [r.getMessage() for r in caplog.records if " sent through smtp://" in r.getMessage()]
    for message_id in ids:
        assert any(message_id in line and "after waiting" in line for line in sent), sent


async def _listed(stack: Stack, job_id: int) -> list[Any]:
    return list((await stack.client.list_runs(job_id=job_id)).runs)
