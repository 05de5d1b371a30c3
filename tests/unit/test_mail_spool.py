"""The mail queue's spool and its one-mail-per-Message-ID promise, against a loopback relay (probe 103).

A real ``MailQueue`` with a real ``Mailer`` sends to ``tests/helpers/held_smtp.py``'s
relay on 127.0.0.1; the spool is a directory under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from executor import data_dir
from executor.errors import ConfigError
from executor.runtimes import mail_queue
from executor.runtimes.mail import Mailer, MailError, MailSettings
from executor.runtimes.mail_queue import MailQueue
from tests.helpers.cli import ROOT
from tests.helpers.held_smtp import HeldRelay, held_relay
from tests.helpers.waiting import eventually


def _mail(n: int, body: str = "rendered") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "qube@farm.example"
    message["To"] = "lead@farm.example"
    message["Subject"] = f"job {n}"
    message["Message-ID"] = f"<cbexec.{n}.1@farm.example>"
    message.set_content(body)
    return message


def _queue(relay: HeldRelay | int, spool: Path) -> MailQueue:
    port = relay if isinstance(relay, int) else relay.port
    settings = MailSettings(
        delivery="smtp", smtp_host="127.0.0.1", smtp_port=port, smtp_timeout_seconds=10
    )
    return MailQueue(Mailer(settings), spool)


def _ids(relay: HeldRelay) -> list[str]:
    return sorted(str(m["Message-ID"]) for m in relay.accepted)


# In a process of its own: files past 2 KiB cannot be written there (EFBIG), as a full
# disk stops a write part-way. (Set in the test's own process, the limit also cut off
# pytest's output to a log file, and the run with it.)
_FAILED_WRITE = """
import asyncio, resource, sys
from pathlib import Path
from executor.runtimes.mail import MailError
from tests.unit.test_mail_spool import _mail, _queue

async def main() -> None:
    queue = _queue(1, Path(sys.argv[1]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))
    try:
        await queue.submit(_mail(1, "x" * 8000), run="r1")
    except MailError as err:
        print("refused:", err)
    await queue.close()

asyncio.run(main())
"""


async def test_a_failed_spool_write_leaves_nothing_to_send(tmp_path: Path) -> None:
    spool = tmp_path / "mail-queue"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FAILED_WRITE,
        str(spool),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, err.decode()
    assert out.decode().startswith("refused: "), (out, err)
    assert "could not queue the mail" in out.decode()
    assert [p.name for p in spool.iterdir()] == []


async def test_load_removes_unfinished_writes_and_moves_junk_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = tmp_path / "mail-queue"
    spool.mkdir(mode=0o700)
    whole = _mail(1)
    # Written by the queue itself (the format it reads back).
    mail_queue._write_spool(spool, whole)
    (spool / ".writing-1.2.eml").write_bytes(b"From: qube@farm")
    for name, data in {
        "1.3.eml": b"",
        "1.4.eml": b"just some text\n",
        "1.5.eml": b"From: qube@farm.example\nTo: a@exam",  # cut off mid-header
        "1.6.eml": b"From: qube@farm.example\nTo: a@farm.example\n\nno Message-ID\n",
    }.items():
        (spool / name).write_bytes(data)
        (spool / name).chmod(0o600)
    caplog.set_level(logging.INFO)
    async with held_relay(held=False) as relay:
        queue = _queue(relay, spool)
        assert queue.load_spool() == 1
        await relay.wait_for(accepted=1)
        assert await eventually(lambda: not list(spool.glob("*.eml")), 10)
        await queue.close()
    assert _ids(relay) == [str(whole["Message-ID"])]
    assert sorted(p.name for p in spool.iterdir()) == [
        "1.3.eml.bad",
        "1.4.eml.bad",
        "1.5.eml.bad",
        "1.6.eml.bad",
    ]
    text = caplog.text
    assert "Traceback" not in text and "internal error" not in text
    assert text.count(".writing-1.2.eml") == 1
    assert "1.5.eml is not a whole mail of the mail queue" in text
    assert queue.not_sent == 0


async def test_a_rerun_joins_the_mail_in_its_exchange(tmp_path: Path) -> None:
    async with held_relay() as relay:
        queue = _queue(relay, tmp_path / "mail-queue")
        first = await queue.submit(_mail(1), run="r1")
        await relay.wait_for(connections=1)  # in its exchange now
        again = await queue.submit(_mail(1), run="r1")
        relay.release()
        outcomes = await asyncio.gather(first.wait(), again.wait())
        assert outcomes[0] == outcomes[1] == f"smtp://127.0.0.1:{relay.port}"
        # Sent by this process already: a later re-run's is that mail too.
        third = await queue.submit(_mail(1), run="r1")
        assert await third.wait() == outcomes[0]
        await queue.close()
        assert _ids(relay) == [str(_mail(1)["Message-ID"])]


async def test_a_rerun_joins_the_spooled_copy_a_restart_is_sending(tmp_path: Path) -> None:
    spool = tmp_path / "mail-queue"
    spool.mkdir(mode=0o700)
    for n in (1, 2, 3):
        mail_queue._write_spool(spool, _mail(n))
    async with held_relay() as relay:
        queue = _queue(relay, spool)
        assert queue.load_spool() == 3
        await relay.wait_for(connections=2)  # two in their exchange, one waiting
        reruns = [await queue.submit(_mail(n), run=f"r{n}") for n in (1, 2, 3)]
        assert len(list(spool.glob("*.eml"))) == 3
        relay.release()
        for ticket in reruns:
            assert isinstance(await ticket.wait(), str)
        await queue.close()
    assert _ids(relay) == [str(_mail(n)["Message-ID"]) for n in (1, 2, 3)]


async def test_not_sent_counts_only_mails_listed_queued(tmp_path: Path) -> None:
    async with held_relay() as relay:
        port = relay.port
    # Nobody listens there now: each mail fails at once.
    queue = _queue(port, tmp_path / "mail-queue")
    waited = await queue.submit(_mail(1), run="r1")
    assert isinstance(await waited.wait(), MailError)
    assert queue.not_sent == 0  # its run listed it not sent
    gave_up = await queue.submit(_mail(2), run="r2")
    queue.listed_queued(gave_up)
    assert isinstance(await gave_up.wait(), MailError)
    assert await eventually(lambda: queue.not_sent == 1, 5)
    await queue.close()


async def test_a_restart_keeps_at_most_max_queued_in_memory(tmp_path: Path) -> None:
    spool = tmp_path / "mail-queue"
    spool.mkdir(mode=0o700)
    for n in range(12):
        mail_queue._write_spool(spool, _mail(n))
    async with held_relay() as relay:
        queue = _queue(relay, spool)
        queue.max_queued = 4
        assert queue.load_spool() == 12
        await relay.wait_for(connections=2)
        assert queue.waiting <= 4
        relay.release()
        await relay.wait_for(accepted=12)
        assert await eventually(lambda: not list(spool.glob("*.eml")), 10)
        await queue.close()
    assert _ids(relay) == sorted(str(_mail(n)["Message-ID"]) for n in range(12))


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_something_but_a_directory_at_the_mail_queue_is_refused(tmp_path: Path, kind: str) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    if kind == "file":
        (data / "mail-queue").write_bytes(b"")
    else:
        (tmp_path / "elsewhere").mkdir()
        (data / "mail-queue").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match=r"mail-queue is .*the mail queue's directory goes there"):
        data_dir.make(data)
    with pytest.raises(ConfigError, match="mail-queue is "):
        data_dir.inspect(data)
