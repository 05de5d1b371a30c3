"""Mail callbacks through a real SMTP relay on loopback: refused recipients, recipient limits, failures (probe 96)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from executor.runtimes.mail import MailSettings
from supervisor_client import FarmClient
from supervisor_client.qbcallback.v1 import executor_pb2
from supervisor_client.qbcallback.v1.executor_pb2 import Outcome
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.smtp_relay import SmtpRelay, smtp_relay

pytestmark = pytest.mark.service


@pytest.fixture
async def relay() -> AsyncIterator[SmtpRelay]:
    async with smtp_relay() as served:
        yield served


@pytest.fixture
async def smtp_stack(tmp_path: Path, relay: SmtpRelay) -> AsyncIterator[Stack]:
    mail = MailSettings(
        directory=Path(""),
        delivery="smtp",
        smtp_host="127.0.0.1",
        smtp_port=relay.port,
        smtp_timeout_seconds=5,
        sender="qube@farm.example",
        default_domain="farm.example",
    )
    async with running_stack(stack_settings(tmp_path / "data", mail=mail)) as stack:
        yield stack


async def _mail_run(stack: Stack, job: dict[str, Any]) -> executor_pb2.ExecuteResponse:
    """Submit ``job``, complete its one frame, and the one run its callback fired."""
    async with FarmClient(stack.channel) as farm:
        (stored,) = (await farm.submit_jobs([job])).jobs
        await farm.change_work(job_id=stored.id, work=["1"], change="complete")
        await stack.settle()
    (run,) = (await stack.client.list_runs(job_id=stored.id)).runs
    return (await stack.client.get_run(run.invocation_id)).result


def _mail_job(mailaddress: str) -> dict[str, Any]:
    return {
        "name": "partial",
        "user": "alice",
        "agenda": ["1"],
        "mailaddress": mailaddress,
        "callbacks": [{"triggers": "done-job-self", "language": "mail"}],
    }


async def test_a_recipient_the_relay_refuses_fails_the_mail_naming_it(
    smtp_stack: Stack, relay: SmtpRelay
) -> None:
    # It was listed "ok mailed" to both, the run SUCCEEDED; only a log line told of bob.
    relay.refuse_rcpt["bob@farm.example"] = "550 5.1.1 no such user"

    result = await _mail_run(smtp_stack, _mail_job("lighting@example.com bob"))

    assert relay.delivered_to == ["lighting@example.com"]
    assert result.outcome == Outcome.OUTCOME_FAILED
    (mail,) = [a for a in result.actions if a.verb == "mail"]
    assert (mail.target, mail.ok) == ("lighting@example.com, bob@farm.example", False)
    for said in (mail.message, result.failure.message):
        assert "bob@farm.example (550 5.1.1 no such user)" in said, said
        assert "sent to the 1 other recipient" in said, said
    assert "mailed" not in result.stdout


async def test_a_relays_recipient_limit_sends_the_rest_in_further_messages(
    smtp_stack: Stack, relay: SmtpRelay
) -> None:
    # 452 "too many recipients" is the relay asking for another transaction (RFC 5321
    # 4.5.3.1.10); the recipients past its limit got nothing, the run said all had it.
    relay.max_rcpt = 2
    artists = [f"artist{n}@studio.example" for n in range(5)]

    result = await _mail_run(smtp_stack, _mail_job(" ".join(artists)))

    assert result.outcome == Outcome.OUTCOME_SUCCEEDED, result.failure.message
    assert [m.rcpt_to for m in relay.accepted] == [artists[:2], artists[2:4], artists[4:]]
    # One message in three transactions: the same Message-ID and text to each recipient.
    assert len({m.data for m in relay.accepted}) == 1
    (mail,) = [a for a in result.actions if a.verb == "mail"]
    assert mail.ok, mail.message
    assert mail.message.startswith("mailed '[qube] job ")


async def test_a_failed_mail_does_not_stop_the_code_strings_after_it(
    smtp_stack: Stack, relay: SmtpRelay
) -> None:
    # "notify, then release": a relay's 451 left the dependent job blocked for good.
    relay.refuse_at["MAIL"] = "451 4.3.0 try later"
    jobs: list[dict[str, Any]] = [
        {"name": "ribgen", "label": "ribgen", "user": "alice", "agenda": ["1"]},
        {
            "name": "render",
            "label": "render",
            "user": "alice",
            "agenda": ["1"],
            "status": "blocked",
            "callbacks": [
                {
                    "triggers": "complete-job-ribgen",
                    "language": "qube",
                    "code": "mail-status; unblock-self",
                }
            ],
        },
    ]
    async with FarmClient(smtp_stack.channel) as farm:
        ribgen, render = (await farm.submit_jobs(jobs)).jobs
        await farm.change_work(job_id=ribgen.id, work=["1"], change="complete")
        await smtp_stack.settle()
        status = (await farm.get_job(render.id)).job.status

    (run,) = (await smtp_stack.client.list_runs(job_id=render.id)).runs
    result = (await smtp_stack.client.get_run(run.invocation_id)).result
    assert status == "pending", result
    # The run still reports the mail's failure, and what ran after it.
    assert result.outcome == Outcome.OUTCOME_FAILED
    assert result.failure.message.startswith("mail-status: could not send the mail through")
    assert "451 4.3.0 try later" in result.failure.message
    assert [(a.verb, a.ok) for a in result.actions if a.verb != "jobinfo"] == [
        ("mail", False),
        ("unblock", True),
    ]
    lines = result.stdout.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["mail-status", "unblock-self"]
    assert "not sent" in lines[0]
    assert relay.accepted == []


@pytest.mark.parametrize(
    ("host", "starttls", "warned"),
    [
        ("smtp.farm.example", False, True),
        ("smtp.farm.example", True, False),
        ("127.0.0.1", False, False),
    ],
)
async def test_a_relay_login_in_clear_over_the_network_is_warned_of_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str, starttls: bool, warned: bool
) -> None:
    # Nothing said the password went in clear (AUTH PLAIN over plaintext TCP).
    mail = MailSettings(
        directory=Path(""),
        delivery="smtp",
        smtp_host=host,
        smtp_user="farm",
        smtp_password="s3cret",
        smtp_starttls=starttls,
    )
    caplog.set_level(logging.WARNING)
    async with running_stack(stack_settings(tmp_path / "data", mail=mail)):
        pass
    said = f"the relay login sends mail.smtp_password to {host}:25 in clear"
    assert (said in caplog.text) is warned, caplog.text
    assert "s3cret" not in caplog.text
