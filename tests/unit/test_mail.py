"""Mail rendering (templates, variables, recipients) and delivery to a maildir and to a real SMTP server."""

from __future__ import annotations

import asyncio
import email
import email.policy
import math
import re
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from executor.runtimes import mail as mail_module
from executor.runtimes.mail import (
    KINDS,
    Mailer,
    MailError,
    MailSettings,
    recipients,
    render,
    template_variables,
)
from supervisor_client.mailaddress import first_non_address
from tests.helpers.smtp_relay import SmtpRelay, smtp_relay

pytestmark = pytest.mark.unit

JOB: dict[str, Any] = {
    "id": 42,
    "name": "comp",
    "label": "render",
    "status": "complete",
    "user": "alice",
    "pgrp": 40,
    "priority": 9999,
    "prototype": "cmdline",
    "mailaddress": "",
    "timesubmit": 1_700_000_000,
    "timestart": 1_700_000_060,
    "timecomplete": 1_700_003_725,
    "agenda": [
        {
            "name": "1",
            "status": "complete",
            "host": "node1",
            "subid": 0,
            "count": 1,
            "resultpackage": {"outputPaths": "/out/1.exr"},
        },
        {
            "name": "2",
            "status": "failed",
            "host": "node2",
            "subid": 1,
            "count": 2,
            "resultpackage": {},
        },
    ],
    "subjobs": [
        {"id": 0, "status": "complete", "host": "node1"},
        {"id": 1, "status": "failed", "host": "node2"},
    ],
}


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


# -- rendering ----------------------------------------------------------------------------


def test_variables_cover_job_work_and_instance() -> None:
    variables = template_variables(JOB, JOB["agenda"][1], JOB["subjobs"][1], "done-job-self")

    assert variables["JOB_ID"] == "42"
    assert variables["JOB_NAME"] == "comp"
    assert variables["JOB_STATUS"] == "complete"
    assert variables["JOB_USER"] == variables["USER"] == "alice"
    assert variables["JOB_LABEL"] == "render"
    assert variables["JOB_PGRP"] == "40"
    assert variables["JOB_TYPE"] == "cmdline"
    assert variables["JOB_TIMEELAPSED"] == "1:01:05"
    assert variables["JOB_TIMESUBMIT"].startswith("2023-11-1")
    assert variables["JOB_WORK_SUMMARY"] == "1 complete, 1 failed"
    assert variables["WORK_NAME"] == "2"
    assert variables["WORK_STATUS"] == "failed"
    assert variables["WORK_HOST"] == "node2"
    assert variables["WORK_PID"] == "42"
    assert variables["SUBJOB_ID"] == "1"
    assert variables["SUBJOB_STATUS"] == "failed"
    assert variables["TRIGGERS"] == "done-job-self"
    assert variables["HOST"]


def test_unset_times_are_empty() -> None:
    variables = template_variables({"id": 1, "timestart": 946702800}, None, None, "")

    assert variables["JOB_TIMESTART"] == ""
    assert variables["JOB_TIMEELAPSED"] == ""
    assert variables["WORK_NAME"] == variables["SUBJOB_ID"] == ""


@pytest.mark.parametrize("when", [1_796_660_974_000_000_000, 2**63 - 1, math.inf, math.nan])
def test_a_time_past_what_a_date_holds_is_shown_as_sent(when: float) -> None:
    # Probe 179: a supervisor's time of 1.8e18 (nanoseconds sent for seconds) failed every
    # mail callback of the job in time.localtime, and the code strings after it never ran.
    job = {"id": 1, "timesubmit": when, "timestart": 1_700_000_000, "timecomplete": when}
    variables = template_variables(job, None, None, "")

    assert variables["JOB_TIMESUBMIT"] == variables["JOB_TIMECOMPLETE"] == str(when)
    assert variables["JOB_TIMESTART"].startswith("2023-11-")  # its neighbour as a date
    elapsed = variables["JOB_TIMEELAPSED"]
    assert re.fullmatch(r"[0-9]+:[0-9]{2}:[0-9]{2}" if math.isfinite(when) else "", elapsed)


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ({"user": "alice", "mailaddress": ""}, ["alice@studio.example"]),
        ({"user": "alice", "mailaddress": "lead@x.org"}, ["lead@x.org"]),
        (
            {"user": "alice", "mailaddress": "lead@x.org, bob;carol dave@y.org"},
            ["lead@x.org", "bob@studio.example", "carol@studio.example", "dave@y.org"],
        ),
    ],
)
def test_recipients(job: dict[str, Any], expected: list[str]) -> None:
    assert recipients(job, "studio.example") == expected


@pytest.mark.parametrize(
    ("job", "refusal"),
    [
        (
            {"id": 3, "mailaddress": "ok@example.com\r\nBcc: evil@example.com"},
            r"job 3's mailaddress holds a control character \('\\r' at 14\)",
        ),
        ({"id": 3, "mailaddress": "ok@example.com Bcc: evil@x.org"}, "'Bcc:' is not a mail"),
        ({"id": 3, "mailaddress": "Ann <ann@x.org>"}, "'<ann@x.org>' is not a mail address"),
        ({"id": 3, "user": "eve\x00"}, "job 3's user holds a control character"),
        ({"id": 3, "mailaddress": "a@@b"}, "'a@@b' is not a mail address"),
        # An encoded word would be decoded into another address (here 'ab@x.org').
        ({"id": 3, "mailaddress": "=?utf-8?q?ab?=@x.org"}, r"'=\?utf-8\?q\?ab\?=@x.org' is not a"),
    ],
)
def test_a_recipient_that_is_no_address_is_an_error(job: dict[str, Any], refusal: str) -> None:
    # Before, CR/LF split the list and 'Bcc:' became a group in To: ("Bcc:@localhost").
    with pytest.raises(MailError, match=refusal):
        recipients(job, "localhost")


def test_control_characters_in_header_values_become_spaces() -> None:
    message = render("job", dict(JOB, name="a\x00b\x1bc"), None, None, "")

    assert message["Subject"] == "[qube] job 42 (a b c) is complete"


def test_no_recipient_is_an_error() -> None:
    with pytest.raises(MailError, match="neither a mailaddress nor a user"):
        recipients({"id": 3}, "localhost")


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders(kind: Any) -> None:
    message = render(
        kind,
        JOB,
        JOB["agenda"][0],
        JOB["subjobs"][0],
        "done-job-self",
        MailSettings(sender="farm@studio.example"),
    )

    assert message["From"] == "farm@studio.example"
    assert message["To"] == "alice@localhost"
    assert "42" in message["Subject"]
    assert message["X-Qube-Mail"] == kind
    assert "$JOB" not in message.get_content()
    assert message["Message-ID"]


def test_work_template_names_the_item() -> None:
    message = render("work", JOB, JOB["agenda"][1], None, "done-work-self-*")

    assert message["Subject"] == "[qube] job 42 (comp) work 2 is failed"
    assert "node2" in message.get_content()


def test_report_lists_every_work_item() -> None:
    body = render("report", JOB, None, None, "").get_content()

    assert "  1            complete   node1" in body
    assert "  2            failed     node2" in body


def test_site_template_overrides_with_safe_substitution(tmp_path: Path) -> None:
    (tmp_path / "job.mail").write_text(
        "Subject: ${JOB_NAME}: $JOB_STATUS\nX-Ignored: yes\n\n"
        "Cost: $$12 for $JOB_ID, $UNKNOWN stays, a lone $ too.\n"
    )
    settings = MailSettings(templates_dir=tmp_path)

    message = render("job", JOB, None, None, "", settings)

    assert message["Subject"] == "comp: complete"
    assert message["X-Ignored"] is None
    assert message.get_content() == "Cost: $12 for 42, $UNKNOWN stays, a lone $ too.\n"
    # A kind without a site file keeps the default.
    assert render("work", JOB, JOB["agenda"][0], None, "", settings)["Subject"].startswith("[qube]")


def test_template_without_headers_is_all_body(tmp_path: Path) -> None:
    (tmp_path / "job.mail").write_text("Job $JOB_ID is $JOB_STATUS.\nBye.\n")

    message = render("job", JOB, None, None, "", MailSettings(templates_dir=tmp_path))

    assert message["Subject"] == "[qube] job 42 (comp) is complete"
    assert message.get_content() == "Job 42 is complete.\nBye.\n"


def test_newlines_in_values_cannot_add_headers() -> None:
    job = dict(JOB, name="evil\nBcc: victim@x.org")

    message = render("job", job, None, None, "")

    assert message["Bcc"] is None
    assert message["Subject"] == "[qube] job 42 (evil Bcc: victim@x.org) is complete"


# Encoded words (RFC 2047) a mail reader would decode into CR LF: a header, or the body early.
ENCODED_CRLF_NAMES = [
    "=?utf-8?q?shot=0D=0ABcc=3A_attacker=40evil.example?=",
    "shot =?utf-8?b?DQpCY2M6IGF0dGFja2VyQGV2aWwuZXhhbXBsZQ==?= end",
    "(=?utf-8?q?x=0D=0A=0D=0Aforged_body?=)",
]


def assert_sent_as_rendered(data: bytes, message: EmailMessage) -> None:
    """The mail as a reader parses it: no header or body the job's fields did not ask for."""
    head = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    names = [line.split(b":", 1)[0] for line in head.split(b"\n") if line[:1] not in b" \t"]
    assert names == [name.encode() for name in message]
    received = parse(data)
    assert received["Bcc"] is None
    assert received["Subject"] == message["Subject"]
    assert received["X-Qube-Job"] == message["X-Qube-Job"]
    # SMTP sends CR LF line ends, which the parsed body keeps.
    assert received.get_content().replace("\r\n", "\n") == message.get_content()


@pytest.mark.parametrize("name", ENCODED_CRLF_NAMES)
def test_an_encoded_word_in_a_job_field_is_shown_as_written(name: str) -> None:
    # Before, the Subject header decoded it after the control characters were cleaned, and
    # the mail read 'Subject: [qube] job 42 (shot' CR LF 'Bcc: attacker@evil.example) ...'.
    message = render("job", dict(JOB, name=name, id=name), None, None, "")

    assert message["Subject"] == f"[qube] job {name} ({name}) is complete"
    assert message["X-Qube-Job"] == name
    assert_sent_as_rendered(message.as_bytes(), message)


def test_a_subject_without_encoded_words_is_written_plainly() -> None:
    message = render("job", dict(JOB, name="café\r\nBcc: x"), None, None, "")

    assert message["Subject"] == "[qube] job 42 (café Bcc: x) is complete"
    assert b"Subject: [qube] job 42 " in message.as_bytes()
    assert_sent_as_rendered(message.as_bytes(), message)


def test_settings_validate_delivery_and_port() -> None:
    with pytest.raises(ValueError, match="delivery"):
        MailSettings(delivery="pigeon")
    with pytest.raises(ValueError, match="smtp_port"):
        MailSettings(smtp_port=0)


# -- file delivery --------------------------------------------------------------------------


def test_file_delivery_writes_a_maildir_message(tmp_path: Path) -> None:
    mailer = Mailer(MailSettings(directory=tmp_path / "mail"))
    message = render("job", JOB, None, None, "done-job-self")

    where = Path(mailer.deliver(message))
    second = Path(mailer.deliver(render("job", JOB, None, None, "done-job-self")))

    assert where.parent == tmp_path / "mail" / "new"
    assert where.suffix == ".eml"
    assert where != second
    assert sorted(p.name for p in (tmp_path / "mail").iterdir()) == ["cur", "new", "tmp"]
    assert list((tmp_path / "mail" / "tmp").iterdir()) == []
    assert stat.S_IMODE(where.stat().st_mode) == 0o600
    stored = parse(where.read_bytes())
    assert stored["Subject"] == message["Subject"]
    assert stored["To"] == "alice@localhost"
    assert stored.get_content() == message.get_content()


def test_file_delivery_keeps_an_encoded_word_in_the_subject_as_text(tmp_path: Path) -> None:
    message = render("job", dict(JOB, name=ENCODED_CRLF_NAMES[0]), None, None, "")

    where = Path(Mailer(MailSettings(directory=tmp_path / "mail")).deliver(message))

    assert_sent_as_rendered(where.read_bytes(), message)


def test_file_delivery_failure_is_a_mail_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    with pytest.raises(MailError, match="could not store"):
        Mailer(MailSettings(directory=tmp_path / "file")).deliver(
            render("job", JOB, None, None, "")
        )


# -- SMTP delivery against a small real server ------------------------------------------------


@dataclass
class SmtpSession:
    commands: list[str] = field(default_factory=list)
    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)
    data: bytes = b""


@dataclass
class SmtpServer:
    port: int
    sessions: list[SmtpSession]


async def _serve_smtp(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    sessions: list[SmtpSession],
    refuse: set[str],
) -> None:
    """Just enough SMTP (RFC 5321) for smtplib: EHLO/HELO, MAIL, RCPT, DATA, QUIT."""
    session = SmtpSession()
    sessions.append(session)

    async def reply(line: str) -> None:
        writer.write(line.encode() + b"\r\n")
        await writer.drain()

    await reply("220 test.local ESMTP ready")
    try:
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            session.commands.append(verb)
            if verb in ("EHLO", "HELO"):
                await reply("250 test.local")
            elif verb == "MAIL":
                session.mail_from = line.split(":", 1)[1].strip().strip("<>")
                await reply("250 OK")
            elif verb == "RCPT":
                address = line.split(":", 1)[1].strip().strip("<>")
                if address in refuse:
                    await reply("550 no such user")
                else:
                    session.rcpt_to.append(address)
                    await reply("250 OK")
            elif verb == "DATA":
                await reply("354 end with <CRLF>.<CRLF>")
                chunks = []
                while (chunk := await reader.readline()) != b".\r\n":
                    chunks.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                session.data = b"".join(chunks)
                await reply("250 queued")
            elif verb == "QUIT":
                await reply("221 bye")
                break
            else:
                await reply("502 not implemented")
    finally:
        writer.close()


@pytest.fixture
async def smtp_server() -> AsyncIterator[SmtpServer]:
    sessions: list[SmtpSession] = []
    server = await asyncio.start_server(
        lambda r, w: _serve_smtp(r, w, sessions, {"nobody@localhost"}), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield SmtpServer(port, sessions)


async def test_smtp_delivery_reaches_the_server(smtp_server: SmtpServer) -> None:
    settings = MailSettings(
        delivery="smtp",
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        sender="qube@farm.example",
        smtp_timeout_seconds=5,
    )
    job = dict(JOB, mailaddress="lead@studio.example, bob")
    message = render("job", job, None, None, "done-job-self", settings)

    where = await asyncio.to_thread(Mailer(settings).deliver, message)

    assert where == f"smtp://127.0.0.1:{smtp_server.port}"
    (session,) = smtp_server.sessions
    assert session.commands == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    assert session.mail_from == "qube@farm.example"
    assert session.rcpt_to == ["lead@studio.example", "bob@localhost"]
    received = parse(session.data)
    assert received["Subject"] == "[qube] job 42 (comp) is complete"
    assert 'Job 42 "comp" of alice is complete.' in received.get_content()


async def test_smtp_keeps_an_encoded_word_in_the_subject_as_text(smtp_server: SmtpServer) -> None:
    settings = MailSettings(
        delivery="smtp", smtp_host="127.0.0.1", smtp_port=smtp_server.port, smtp_timeout_seconds=5
    )
    message = render("job", dict(JOB, name=ENCODED_CRLF_NAMES[2]), None, None, "", settings)

    await asyncio.to_thread(Mailer(settings).deliver, message)

    (session,) = smtp_server.sessions
    assert session.rcpt_to == ["alice@localhost"]
    assert_sent_as_rendered(session.data, message)


async def test_smtp_refusing_every_recipient_is_a_mail_error(smtp_server: SmtpServer) -> None:
    settings = MailSettings(
        delivery="smtp", smtp_host="127.0.0.1", smtp_port=smtp_server.port, smtp_timeout_seconds=5
    )
    message = render("job", dict(JOB, user="nobody"), None, None, "", settings)

    with pytest.raises(MailError, match="could not send the mail"):
        await asyncio.to_thread(Mailer(settings).deliver, message)


async def test_smtp_connection_refused_is_a_mail_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = MailSettings(
        delivery="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_timeout_seconds=5
    )

    with pytest.raises(MailError, match=f"smtp://127.0.0.1:{port}"):
        await asyncio.to_thread(Mailer(settings).deliver, render("job", JOB, None, None, ""))


@pytest.mark.parametrize("name", ["a@b..c", "a@b.", "a@.b", "a..b@c", ".a@b", "a.@b", "bob."])
def test_an_empty_part_between_dots_is_no_address(name: str) -> None:
    # Before, these passed and the To: header's parser read them as '<>' (the null address).
    with pytest.raises(MailError, match="is not a mail address"):
        recipients({"id": 3, "mailaddress": f"good@x.org {name}"}, "localhost")
    assert first_non_address(f"good@x.org {name}") == name


def test_a_bare_name_with_a_bad_default_domain_is_an_error() -> None:
    with pytest.raises(MailError, match=r"'bob' with mail.default_domain 'x..org' gives"):
        recipients({"id": 3, "mailaddress": "bob"}, "x..org")


def test_a_recipient_the_header_cannot_carry_is_never_sent_as_null(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whatever the submission check lets through, the mail never goes to '<>' or drops a
    # recipient: the To: header is read back and must name every recipient as written.
    monkeypatch.setattr(mail_module, "recipients", lambda job, domain: ["ok@x.org", "a@b..c"])
    with pytest.raises(MailError, match=r"'a@b..c' is not a mail address the To: header"):
        render("job", JOB, None, None, "")


async def test_smtp_names_each_refused_recipient_across_recipient_limited_transactions() -> None:
    relay = SmtpRelay(max_rcpt=1, refuse_rcpt={"c@x.org": "550 5.1.1 no such user"})
    async with smtp_relay(relay):
        settings = MailSettings(
            delivery="smtp", smtp_host="127.0.0.1", smtp_port=relay.port, smtp_timeout_seconds=5
        )
        message = render(
            "job",
            dict(JOB, mailaddress="a@x.org b@x.org c@x.org d@x.org"),
            None,
            None,
            "",
            settings,
        )
        with pytest.raises(MailError) as caught:
            await asyncio.to_thread(Mailer(settings).deliver, message)

    assert [m.rcpt_to for m in relay.accepted] == [["a@x.org"], ["b@x.org"], ["d@x.org"]]
    assert str(caught.value) == (
        f"smtp://127.0.0.1:{relay.port} refused c@x.org (550 5.1.1 no such user); "
        "sent to the 3 other recipients"
    )
