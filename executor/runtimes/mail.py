"""Mail of the qube ``mail-*`` code strings: render Qube-style templates, deliver to a maildir or SMTP.

Templates (Qube's ``mail_job_status_format`` and friends, qube-callbacks.md §2 and §6)
are text with ``$NAME`` or ``${NAME}`` placeholders, expanded with
``string.Template.safe_substitute``: an unknown name, or a ``$`` not followed by a
name, stays as written; ``$$`` is a literal ``$``. Leading ``Header: value`` lines up
to the first blank line are headers (only ``Subject`` is used; From, To, Date and
Message-ID are always ours); the rest is the body. A template without header lines is
all body. The Subject is shown as written (``mail_header.LiteralHeader``): control
characters in it become spaces, and an encoded word in a job field stays text. The
defaults below can be replaced per kind by ``job.mail``, ``work.mail``, ``subjob.mail``,
``license.mail`` and ``report.mail`` in ``MailSettings.templates_dir``.

Variables (all strings; unset ones are empty): the job's ``JOB_ACCOUNT`` ...
``JOB_USER`` (see ``template_variables``), ``JOB_TIMESUBMIT``/``JOB_TIMESTART``/
``JOB_TIMECOMPLETE`` as local ``YYYY-MM-DD HH:MM:SS``, ``JOB_TIMEELAPSED`` as H:MM:SS,
``JOB_WORK_SUMMARY`` (``3 complete, 1 failed``), ``JOB_WORK_REPORT`` (one line per
item), the triggering work item's ``WORK_*`` and instance's ``SUBJOB_*``, ``TRIGGERS``,
``USER`` (the job's owner), ``HOST`` (this machine), ``MAIL_TO``.

Recipients: the job's ``mailaddress`` (a comma, semicolon or space separated list),
else its ``user``; a bare name gets ``@`` + ``default_domain``.

Message-ID: a mail a callback sends is named by its run and position,
``<cbexec.<invocation id>.<action seq>@<default_domain>>`` (``message_id``), the same on
every executor and every re-run of the run, so a mail re-sent by a re-run (a fleet
re-running a firing whose replica died) carries the Message-ID of the first and an MTA
or mail client that drops duplicates recognises it. An invocation id with characters a
Message-ID may not hold is replaced by its SHA-256.

Delivery: ``file`` (default) writes one RFC 5322 message per file into a maildir
(``directory``/tmp, then an atomic rename into ``directory``/new, named ``*.eml``);
``smtp`` sends through ``smtp_host``:``smtp_port`` with smtplib (optional STARTTLS and
login), and a recipient the relay refuses is a MailError naming it (``_send_smtp``).
``Mailer.deliver`` blocks; runs hand their mail to ``mail_queue.MailQueue``, whose
threads call it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import smtplib
import socket
import ssl
import string
import time
import unicodedata
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Final, Literal

from executor.owned_dirs import OwnedDir, open_file, open_tree
from executor.runtimes.mail_header import LiteralHeader
from supervisor_client.mailaddress import EXPECTED, is_address, recipient_names

logger = logging.getLogger(__name__)

MailKind = Literal["job", "work", "subjob", "license", "report"]
KINDS: Final[tuple[str, ...]] = ("job", "work", "subjob", "license", "report")
DELIVERIES: Final = ("file", "smtp")
# Qube time 0 as Unix time: the Python client shows unset times as this value.
QB_TIME_EPOCH_OFFSET: Final = 946702800

_HEADER_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):[ \t]*(.*)$")
# What an invocation id may hold to appear in a Message-ID as is (a uuid does).
_MESSAGE_ID_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_delivery_counter = itertools.count(1)
# The maildir's directories and its mail, whatever the umask (``owned_dirs``).
MAILDIR_MODE: Final = 0o700
MAIL_MODE: Final = 0o600


def _default_directory() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cbexec" / "mail"


class MailError(Exception):
    """A mail could not be rendered or delivered; the message says why."""


@dataclass(frozen=True, slots=True)
class MailSettings:
    """Where and how mail goes (Qube's mail_* qb.conf parameters)."""

    # "file": a maildir under ``directory``; "smtp": an SMTP server.
    delivery: str = "file"
    # The maildir for file delivery (the executor passes <data_dir>/mail).
    directory: Path = field(default_factory=_default_directory)
    # Optional directory of job.mail, work.mail, subjob.mail, license.mail, report.mail.
    templates_dir: Path | None = None
    smtp_host: str = "localhost"
    smtp_port: int = 25
    # Login when set (after STARTTLS when smtp_starttls).
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = 30.0
    # The From address (Qube's mail_from).
    sender: str = "qube@localhost"
    # Appended to bare user names (Qube's mail_domain).
    default_domain: str = "localhost"

    def __post_init__(self) -> None:
        for key in ("delivery", "smtp_port", "smtp_host", "sender", "default_domain"):
            if problem := self.value_problem(key, getattr(self, key)):
                raise ValueError(f"mail.{key}: {problem}")

    @staticmethod
    def value_problem(key: str, value: object) -> str | None:
        """What is wrong with one ``[mail]`` value, None if nothing.

        One key at a time, so the settings' check names every bad one, a line each.
        Without these checks a bad sender or domain failed every mail, naming no setting.
        """
        if key == "delivery" and value not in DELIVERIES:
            return f"expected file or smtp, got {value!r}"
        if key == "smtp_port" and isinstance(value, int) and not 0 < value < 65536:
            return f"expected 1-65535, got {value}"
        if key == "smtp_host" and isinstance(value, str) and not _HOST.match(value):
            return f"expected the relay's host name or IP address, got {value!r}"
        if key == "sender" and isinstance(value, str):
            return _sender_problem(value)
        if (
            key == "default_domain"
            and isinstance(value, str)
            and value
            and not is_address(f"x@{value}")
        ):
            return f"expected a mail domain such as farm.example, got {value!r}"
        return None


# A host name, an IPv4 address, or an IPv6 one (no brackets: smtplib takes it as is).
_HOST: Final = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _sender_problem(sender: str) -> str | None:
    """Why ``sender`` cannot be the From: header and envelope sender, or None.

    One address (``qube@farm.example``, or with a name: ``Render Farm <qube@farm.example>``),
    on one line: the From: header would refuse a CR or LF, and a list would send as several.
    """
    expected = f"expected one address such as qube@farm.example, got {sender!r}"
    if any(unicodedata.category(char) == "Cc" for char in sender):
        return f"holds a control character; {expected}"
    probe = EmailMessage()
    try:
        probe["From"] = sender
        addresses = probe["From"].addresses
    except (ValueError, IndexError, TypeError):
        return expected
    if len(addresses) != 1 or probe["From"].defects or not is_address(addresses[0].addr_spec):
        return expected
    if "@" not in addresses[0].addr_spec:
        return f"has no domain; {expected}"
    return None


def describe(settings: MailSettings) -> str:
    """Where mail goes, in a few words (``--check-config``'s ``mail:`` line)."""
    if settings.delivery != "smtp":
        return f"maildir {settings.directory}"
    how = "STARTTLS" if settings.smtp_starttls else "plaintext"
    login = f", login as {settings.smtp_user}" if settings.smtp_user else ""
    return f"smtp://{settings.smtp_host}:{settings.smtp_port}, {how}{login}"


def login_warnings(settings: MailSettings) -> list[str]:
    """A warning when the relay login's password would cross the network in clear.

    Said at start-up and by ``--check-config``, never refused (as for the executor's own
    port): a site may trust its network, or reach a relay through a tunnel. A relay on
    loopback is this host's own: nothing crosses a network.
    """
    if settings.delivery != "smtp" or not settings.smtp_user or settings.smtp_starttls:
        return []
    if _on_loopback(settings.smtp_host):
        return []
    return [
        f"mail.smtp_user is set and mail.smtp_starttls is off: the relay login sends "
        f"mail.smtp_password to {settings.smtp_host}:{settings.smtp_port} in clear, where "
        "anyone on the path can read it; set smtp_starttls = true (or use a relay on "
        "this host, 127.0.0.1)"
    ]


def _on_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: as far away as it resolves


DEFAULT_TEMPLATES: Final[dict[str, str]] = {
    "job": """\
Subject: [qube] job $JOB_ID ($JOB_NAME) is $JOB_STATUS

Job $JOB_ID "$JOB_NAME" of $JOB_USER is $JOB_STATUS.

  label        $JOB_LABEL
  pgrp         $JOB_PGRP
  priority     $JOB_PRIORITY
  type         $JOB_PROTOTYPE
  submitted    $JOB_TIMESUBMIT
  started      $JOB_TIMESTART
  completed    $JOB_TIMECOMPLETE
  elapsed      $JOB_TIMEELAPSED
  work         $JOB_WORK_SUMMARY

Sent by the callback triggered by: $TRIGGERS
""",
    "work": """\
Subject: [qube] job $JOB_ID ($JOB_NAME) work $WORK_NAME is $WORK_STATUS

Work item $WORK_NAME of job $JOB_ID "$JOB_NAME" is $WORK_STATUS.

  host         $WORK_HOST
  instance     $WORK_SUBID
  attempts     $WORK_COUNT
  result       $WORK_RESULTPACKAGE
  job status   $JOB_STATUS ($JOB_WORK_SUMMARY)

Sent by the callback triggered by: $TRIGGERS
""",
    "subjob": """\
Subject: [qube] job $JOB_ID ($JOB_NAME) instance $SUBJOB_ID is $SUBJOB_STATUS

Instance $JOB_ID.$SUBJOB_ID of job "$JOB_NAME" is $SUBJOB_STATUS.

  host         $SUBJOB_HOST
  job status   $JOB_STATUS ($JOB_WORK_SUMMARY)

Sent by the callback triggered by: $TRIGGERS
""",
    "license": """\
Subject: [qube] license status (job $JOB_ID)

License status: $LICENSE_STATUS

This executor keeps no license data of its own; a site template (license.mail) can
say more. Job $JOB_ID "$JOB_NAME" of $JOB_USER is $JOB_STATUS.

Sent by the callback triggered by: $TRIGGERS
""",
    "report": """\
Subject: [qube] report: job $JOB_ID ($JOB_NAME) is $JOB_STATUS

Job $JOB_ID "$JOB_NAME" of $JOB_USER is $JOB_STATUS ($JOB_WORK_SUMMARY).
Submitted $JOB_TIMESUBMIT, started $JOB_TIMESTART, completed $JOB_TIMECOMPLETE.

Work items:
$JOB_WORK_REPORT

Sent by the callback triggered by: $TRIGGERS
""",
}

# Job fields with a JOB_<FIELD> variable of the same name (qube-callbacks.md §2).
_JOB_FIELDS: Final = (
    "account",
    "cluster",
    "cpus",
    "domain",
    "globalorder",
    "groups",
    "hostorder",
    "hosts",
    "id",
    "kind",
    "label",
    "localorder",
    "mailaddress",
    "name",
    "omitgroups",
    "omithosts",
    "pgrp",
    "pid",
    "priority",
    "prototype",
    "requirements",
    "restrictions",
    "status",
    "timeout",
    "user",
)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (dict, list, tuple)):
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int)) for v in value):
            return ",".join(str(v) for v in value)
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _time(value: Any) -> str:
    """A Unix time as local 'YYYY-MM-DD HH:MM:SS'; '' when unset (0 or Qube time 0)."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return _text(value)
    if seconds <= 0 or seconds == QB_TIME_EPOCH_OFFSET:
        return ""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))
    except (OverflowError, OSError, ValueError):  # past the C library's years, or NaN
        return _text(value)  # a supervisor's time as it sent it: the mail still goes


def _elapsed(job: dict[str, Any], now: float) -> str:
    try:
        start = float(job.get("timestart") or 0)
        end = float(job.get("timecomplete") or 0)
    except (TypeError, ValueError):
        return ""
    if start <= 0 or start == QB_TIME_EPOCH_OFFSET or not math.isfinite(start + end):
        return ""
    seconds = int(max(0.0, (end if end > 0 else now) - start))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _work_summary(agenda: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for work in agenda:
        status = str(work.get("status", "unknown"))
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no work items"


def _work_report(agenda: list[dict[str, Any]]) -> str:
    lines = [
        f"  {_text(w.get('name')):<12} {_text(w.get('status')):<10} {_text(w.get('host'))}".rstrip()
        for w in agenda
    ]
    return "\n".join(lines) or "  (no work items)"


def template_variables(
    job: dict[str, Any],
    work: dict[str, Any] | None,
    subjob: dict[str, Any] | None,
    triggers: str,
) -> dict[str, str]:
    """Every ``$NAME`` a template may use, for this job and triggering item/instance."""
    now = time.time()
    agenda = [w for w in job.get("agenda") or [] if isinstance(w, dict)]
    variables = {f"JOB_{name.upper()}": _text(job.get(name)) for name in _JOB_FIELDS}
    variables.update(
        JOB_TYPE=_text(job.get("prototype")),
        JOB_FLAGS=_text(job.get("flagsstring") or job.get("flags")),
        JOB_DATA=_text(job.get("data")),
        JOB_PACKAGE=_text(job.get("package")),
        JOB_TIMESUBMIT=_time(job.get("timesubmit")),
        JOB_TIMESTART=_time(job.get("timestart")),
        JOB_TIMECOMPLETE=_time(job.get("timecomplete")),
        JOB_TIMEELAPSED=_elapsed(job, now),
        JOB_WORK_SUMMARY=_work_summary(agenda),
        JOB_WORK_REPORT=_work_report(agenda),
        TRIGGERS=triggers,
        USER=_text(job.get("user")),
        HOST=socket.gethostname(),
        LICENSE_STATUS=_text(job.get("license_status")) or "unknown",
    )
    work = work or {}
    variables.update(
        WORK_NAME=_text(work.get("name")),
        WORK_STATUS=_text(work.get("status")),
        WORK_HOST=_text(work.get("host")),
        WORK_ADDRESS=_text(work.get("address") or work.get("host")),
        WORK_PID=_text(work.get("pid", job.get("id") if work else None)),
        WORK_SUBID=_text(work.get("subid")),
        WORK_COUNT=_text(work.get("count")),
        WORK_RESULTPACKAGE=_text(work.get("resultpackage")),
    )
    subjob = subjob or {}
    variables.update(
        SUBJOB_ID=_text(subjob.get("id")),
        SUBJOB_STATUS=_text(subjob.get("status")),
        SUBJOB_HOST=_text(subjob.get("host")),
        SUBJOB_ADDRESS=_text(subjob.get("address") or subjob.get("host")),
        SUBJOB_PID=_text(subjob.get("pid", job.get("id") if subjob else None)),
    )
    return variables


def recipients(job: dict[str, Any], default_domain: str) -> list[str]:
    """The job's mailaddress list, else its user; bare names get ``@default_domain``.

    A control character (CR/LF included: a list is one line) or a name that is no
    address (``Bcc:``, ``<a@b>``; supervisor_client.mailaddress, the rule the farm's
    submission applies too) is a MailError naming the field, so nothing is sent: the
    header would otherwise read it as a group or as more recipients.
    """
    field, given = "mailaddress", str(job.get("mailaddress") or "")
    if not recipient_names(given) and job.get("user"):
        field, given = "user", str(job["user"])
    for index, char in enumerate(given):
        if char not in " \t" and unicodedata.category(char) == "Cc":
            raise MailError(
                f"job {job.get('id')}'s {field} holds a control character "
                f"({char!r} at {index}); expected addresses separated by ',', ';' or spaces"
            )
    names = recipient_names(given)
    if not names:
        raise MailError(f"job {job.get('id')} has neither a mailaddress nor a user to mail")
    for name in names:
        if not is_address(name):
            raise MailError(
                f"job {job.get('id')}'s {field}: {name!r} is not a mail address ({EXPECTED})"
            )
    addresses = [name if "@" in name else f"{name}@{default_domain}" for name in names]
    for name, address in zip(names, addresses, strict=True):
        if not is_address(address):  # the bare name was fine: the site's domain is not
            raise MailError(
                f"job {job.get('id')}'s {field}: {name!r} with mail.default_domain "
                f"{default_domain!r} gives {address!r}, which is not a mail address ({EXPECTED})"
            )
    return addresses


def load_template(kind: str, templates_dir: Path | None) -> str:
    """The site's ``<kind>.mail`` from ``templates_dir`` if present, else the default."""
    if kind not in KINDS:
        raise MailError(f"unknown mail kind {kind!r}; expected one of {', '.join(KINDS)}")
    if templates_dir is not None:
        path = Path(templates_dir) / f"{kind}.mail"
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as err:
            raise MailError(f"mail template {path}: {err}") from err
    return DEFAULT_TEMPLATES[kind]


def _split_template(text: str) -> tuple[list[tuple[str, str]], str]:
    """Leading 'Name: value' lines up to a blank line are headers; the rest is the body."""
    lines = text.splitlines(keepends=True)
    headers: list[tuple[str, str]] = []
    for index, line in enumerate(lines):
        if not line.strip():
            return (headers, "".join(lines[index + 1 :])) if headers else ([], text)
        match = _HEADER_LINE.match(line.rstrip("\r\n"))
        if match is None:
            return [], text
        headers.append((match.group(1), match.group(2)))
    return [], text  # header-like lines without a blank line after them: all body


def message_id(invocation_id: str, action_seq: int, domain: str) -> str:
    """The Message-ID of the mail a run sends at ``action_seq``: stable across re-runs."""
    local = invocation_id
    if not _MESSAGE_ID_SAFE.match(local):
        local = hashlib.sha256(invocation_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"<cbexec.{local}.{action_seq}@{domain or 'localhost'}>"


def render(
    kind: MailKind,
    job: dict[str, Any],
    work: dict[str, Any] | None,
    subjob: dict[str, Any] | None,
    triggers: str,
    settings: MailSettings | None = None,
    *,
    message_id: str | None = None,
) -> EmailMessage:
    """The message for one mail: template of ``kind`` expanded for this job, addressed.

    ``message_id`` (see ``message_id()``) names it; without one it gets a unique one.
    """
    settings = settings or MailSettings()
    variables = template_variables(job, work, subjob, triggers)
    to = recipients(job, settings.default_domain)
    variables["MAIL_TO"] = ", ".join(to)
    headers, body = _split_template(load_template(kind, settings.templates_dir))
    subject = (
        f"[qube] job {variables['JOB_ID']} ({variables['JOB_NAME']}) is {variables['JOB_STATUS']}"
    )
    for name, value in headers:
        if name.lower() == "subject":
            subject = string.Template(value).safe_substitute(variables)
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = ", ".join(to)
    _check_header_recipients(job, to, message)
    # Job fields are the submitter's text: shown as written, never decoded into headers.
    message["Subject"] = LiteralHeader("Subject", subject)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = message_id or make_msgid(domain=settings.default_domain or None)
    message["X-Qube-Job"] = LiteralHeader("X-Qube-Job", variables["JOB_ID"])
    message["X-Qube-Mail"] = kind
    message.set_content(string.Template(body).safe_substitute(variables))
    return message


def _check_header_recipients(job: dict[str, Any], to: list[str], message: EmailMessage) -> None:
    """A MailError naming the first recipient the To: header does not read back as written.

    SMTP takes its envelope from this header: a name its parser cannot read (``a@b..c``,
    or a bare name with an odd ``mail.default_domain``) would become the null address
    ``<>`` or drop out of the list while the run reported the mail sent.
    """
    header = message["To"]
    read = [address.addr_spec for address in getattr(header, "addresses", ())]
    for position, name in enumerate(to):
        if position >= len(read) or read[position] != name:
            raise MailError(
                f"job {job.get('id')}'s recipient {name!r} is not a mail address the To: "
                f"header can carry ({EXPECTED}); nothing was sent"
            )
    if len(read) != len(to):
        raise MailError(f"job {job.get('id')}'s To: header reads {read!r}, not {to!r}")


def write_whole(
    directory: OwnedDir, writing: str, target: OwnedDir, name: str, *parts: bytes
) -> None:
    """Write ``parts`` to a new 0600 file ``writing``, on disk, then rename it to ``name``.

    Readers of ``target`` see the file whole or not at all; one that fails part-way (a
    full disk) is removed, so nothing half-written is left to be taken for a mail.
    """
    fd = open_file(directory, writing, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MAIL_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(writing, name, src_dir_fd=directory.fd, dst_dir_fd=target.fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(writing, dir_fd=directory.fd)
        raise


class Mailer:
    """Delivers rendered messages as ``settings`` say."""

    def __init__(self, settings: MailSettings) -> None:
        self.settings = settings

    def deliver(self, message: EmailMessage) -> str:
        """Send or store one message; returns where it went. Raises MailError. Blocks."""
        if self.settings.delivery == "smtp":
            return self._send_smtp(message)
        return self._store_maildir(message)

    def _store_maildir(self, message: EmailMessage) -> str:
        root = Path(self.settings.directory)
        try:
            # Each directory 0700 whatever the umask, and none that someone planted
            # (a link at new/ would take the mail, written as root, elsewhere).
            with open_tree(root, ("cur",), MAILDIR_MODE):
                pass
            with (
                open_tree(root, ("tmp",), MAILDIR_MODE) as tmp,
                open_tree(root, ("new",), MAILDIR_MODE) as new,
            ):
                host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
                name = f"{time.time_ns()}.P{os.getpid()}Q{next(_delivery_counter)}.{host}.eml"
                final = new.path / name
                # maildir: a message appears in new/ whole
                write_whole(tmp, name, new, name, message.as_bytes())
        except OSError as err:
            raise MailError(f"could not store the mail in {root}: {err}") from err
        logger.info("mail to %s stored in %s", message["To"], final)
        return str(final)

    def _send_smtp(self, message: EmailMessage) -> str:
        """Send ``message`` to each of its recipients; MailError naming any the relay refused.

        A relay that caps the recipients of a message answers those past its limit 452
        (RFC 5321 4.5.3.1.10) and expects them in another transaction: they get the same
        message (the same Message-ID: one mail, each recipient a copy) in the next one.
        """
        s = self.settings
        where = f"smtp://{s.smtp_host}:{s.smtp_port}"
        pending = [address.addr_spec for address in message["To"].addresses]
        sent: list[str] = []
        refused: dict[str, tuple[int, bytes]] = {}
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds) as smtp:
                if s.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if s.smtp_user:
                    smtp.login(s.smtp_user, s.smtp_password)
                while pending:
                    try:
                        answer = smtp.send_message(message, to_addrs=pending)
                    except smtplib.SMTPRecipientsRefused as err:  # none of this transaction's
                        refused.update(err.recipients)
                        break
                    # Each transaction takes at least one (else it raised): this ends.
                    sent += [address for address in pending if address not in answer]
                    later = [a for a in pending if answer.get(a, (0, b""))[0] == TOO_MANY_RCPT]
                    refused.update((a, reply) for a, reply in answer.items() if a not in later)
                    pending = later
        except (smtplib.SMTPException, OSError) as err:
            if pending and len(pending) < len(message["To"].addresses):
                into = ", ".join(pending)
                raise MailError(
                    f"could not send the mail through {where} to {into}: {_said(err)}"
                    f"{_refused(refused)}{_sent_to(sent)}"
                ) from err
            raise MailError(f"could not send the mail through {where}: {_said(err)}") from err
        if refused:
            if not sent:
                raise MailError(
                    f"could not send the mail through {where}: it refused every recipient"
                    f"{_refused(refused)}"
                )
            raise MailError(f"{where} refused{_refused(refused)[1:]}{_sent_to(sent)}")
        logger.info("mail to %s sent through %s", message["To"], where)
        return where


# A relay's "too many recipients" (RFC 5321 4.5.3.1.10): the rest go in another transaction.
TOO_MANY_RCPT: Final = 452


def _said(err: Exception) -> str:
    """The relay's reply as it gave it (``451 4.3.0 try later``), else the error."""
    if isinstance(err, smtplib.SMTPResponseException):
        return f"{err.smtp_code} {_text_of(err.smtp_error)}"
    return str(err)


def _text_of(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _refused(refused: dict[str, tuple[int, bytes]]) -> str:
    """``: a@b (550 5.1.1 no such user), ...``, each recipient with the relay's reply."""
    if not refused:
        return ""
    said = (f"{address} ({code} {_text_of(reply)})" for address, (code, reply) in refused.items())
    return ": " + ", ".join(said)


def _sent_to(sent: list[str]) -> str:
    if not sent:
        return ""
    return f"; sent to the {len(sent)} other recipient{'s' if len(sent) > 1 else ''}"
