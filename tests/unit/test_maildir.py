"""File delivery: the maildir's directories 0700 whatever the umask, nothing planted followed.

``mkdir(parents=True, mode=0o700)`` gave the mode to ``tmp``/``new``/``cur`` only: under
umask 000 ``<data_dir>/mail`` itself was 0777, and a local user's link at ``mail/new``
would have had the executor store every mail, as root, where it pointed (probe 82).
"""

from __future__ import annotations

import stat
from email.message import EmailMessage
from pathlib import Path

import pytest

from executor.runtimes.mail import Mailer, MailError, MailSettings

pytestmark = pytest.mark.unit


def message() -> EmailMessage:
    mail = EmailMessage()
    mail["To"] = "alice@example.com"
    mail["Subject"] = "job 1 done"
    mail.set_content("done\n")
    return mail


@pytest.mark.usefixtures("umask_000")
def test_every_directory_made_for_the_mail_is_0700_and_the_mail_0600(tmp_path: Path) -> None:
    root = tmp_path / "data" / "mail"
    stored = Path(Mailer(MailSettings(directory=root)).deliver(message()))
    assert stored.parent == root / "new"
    made = [tmp_path / "data", root, root / "tmp", root / "new", root / "cur"]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in made} == {
        str(p): "0o700" for p in made
    }
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert "Subject: job 1 done" in stored.read_text()


@pytest.mark.parametrize("planted", ["tmp", "new"])
def test_a_link_planted_in_the_maildir_is_refused_and_nothing_stored_where_it_points(
    tmp_path: Path, planted: str
) -> None:
    root = tmp_path / "mail"
    mailer = Mailer(MailSettings(directory=root))
    mailer.deliver(message())
    victim = tmp_path / "victim"
    victim.mkdir()
    link = root / planted
    link.rename(tmp_path / "moved-away")
    link.symlink_to(victim)
    with pytest.raises(MailError, match=rf"{link} is a symbolic link \(not followed"):
        mailer.deliver(message())
    assert list(victim.iterdir()) == []
