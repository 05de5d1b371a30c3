"""The mail queue: the mails runs hand over, sent on threads of its own and kept on disk until tried.

Why a queue: a run that waited for the relay held one of the executor's slots (and its
event one of the trigger engine's parallel events) for as long as the relay took, up to
its whole wall limit, so a slow relay held up every other callback (probe 96). A run now
hands its mail over here (``submit``) and waits for the outcome only briefly
(``qube.MAIL_WAIT_SECONDS``); the mail goes on without it.

* ``MAIL_THREADS`` daemon threads send the mails one at a time each, in the order they
  were handed over. An SMTP exchange cannot be interrupted from outside (smtplib blocks
  in its socket for up to ``smtp_timeout_seconds`` a step), and a daemon thread does not
  keep the process alive at exit the way a ``ThreadPoolExecutor``'s workers do.
* At most ``MAX_QUEUED`` mails wait for a thread; past that ``submit`` is a MailError
  (the run lists the mail not ok), never an unbounded backlog. A restart that finds more
  in the spool reads the rest back as room frees (they stay on disk meanwhile).
* One mail per Message-ID: a re-run's mail handed over while the first is waiting, in
  its exchange, or sent since the start (the last ``RECENT_SENT``) is that mail (probe
  103: the spool's copy is usually in its exchange by the time the re-run comes).
* The spool (``<data_dir>/mail-queue``, 0700, each mail 0600): every mail handed over is
  written there before ``submit`` returns (under a temporary name, renamed once whole:
  a failed write leaves no mail behind) and removed once its one attempt has ended,
  sent or refused, so a mail a run listed as queued outlives a stop or a crash: the next
  start (``load_spool``) queues what is left, oldest first. Each file starts with a line
  giving the mail's length, so a file the queue did not write whole is moved aside
  (``*.bad``), never sent.
* Each outcome is logged with the Message-ID and the run (INFO sent, WARNING not sent);
  the run's future, if it still waits, gets it as a value (never an exception nobody
  retrieves). ``not_sent`` counts the failures no run was told of: those whose run had
  listed them queued (``listed_queued``) or that a restart found.
* ``close``: no mail is taken any more; the mails still waiting for a thread are left
  in the spool (handed to no relay: sent after the next start), and the exchanges under
  way get ``STOP_GRACE_SECONDS`` to end. It says whether a thread is still sending: the
  caller then keeps the data dir locked until the process has exited, so a restarted
  executor never sends beside it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.parser
import email.policy
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Final

from executor.data_dir import MAIL_QUEUE
from executor.owned_dirs import OwnedDir, open_file, open_tree
from executor.runtimes.mail import MAIL_MODE, MAILDIR_MODE, Mailer, MailError, write_whole

logger = logging.getLogger(__name__)

MAIL_THREADS: Final = 2
MAX_QUEUED: Final = 200
STOP_GRACE_SECONDS: Final = 5.0
SPOOL_NAME: Final = MAIL_QUEUE
# How many Message-IDs of mails sent since the start a re-run's mail is matched against.
RECENT_SENT: Final = 1000
# A spool file's first line: this, the mail's length in bytes, a newline; then the mail.
_MAGIC: Final = b"cbexec-mail-queue 1 "
# A mail being written has this name until it is whole (then renamed to its .eml name).
_WRITING: Final = ".writing-"
_BAD: Final = ".bad"
# The headers every mail the queue takes has (render() sets them).
_NEEDED: Final = ("Message-ID", "From", "To")
# A spooled mail read back is written out as it was read (no header refolded).
_SPOOL_POLICY: Final = email.policy.default.clone(refold_source="none")
_spool_counter = itertools.count(1)

# What a run's wait ends with: where the mail went, or why it was not sent.
Outcome = str | MailError


class _NotAMail(Exception):
    """A spool file that is not a whole mail of the queue's (empty, cut off, another's)."""


@dataclass(eq=False, slots=True)
class MailTicket:
    """One mail handed over: its place in the queue and, for a run still waiting, its outcome."""

    # None while a restart's mail waits on disk for room (read back when there is).
    message: EmailMessage | None
    message_id: str
    run: str  # "run <invocation id>", as the log names it
    spooled: str | None
    queued_at: float = field(default_factory=time.monotonic)
    outcome: asyncio.Future[Outcome] | None = None
    # When a thread took it (its exchange began), None while it waits.
    sending_since: float | None = None
    # A run waiting for it gave up and listed it queued; it was tried and not sent;
    # that failure is counted in not_sent.
    listed_queued: bool = False
    failed: bool = False
    counted: bool = False

    def future(self) -> asyncio.Future[Outcome]:
        """What a run waits on (``submit``'s tickets have one)."""
        if self.outcome is None:
            raise RuntimeError(f"nobody waits for mail {self.message_id}")
        return self.outcome

    async def wait(self) -> Outcome:
        """Its outcome, once tried (the ticket stays queued if the waiter is cancelled)."""
        return await asyncio.shield(self.future())


class MailQueue:
    """Mails waiting for a thread, the threads sending them, and their spool."""

    def __init__(self, mailer: Mailer, spool: Path | None = None) -> None:
        """``spool``: the directory mails wait in on disk (None: in memory only, tests)."""
        self._mailer = mailer
        self._spool = spool
        self._lock = threading.Condition()
        self._waiting: collections.deque[MailTicket] = collections.deque()
        # A restart's mails past max_queued: on disk until there is room.
        self._backlog: collections.deque[MailTicket] = collections.deque()
        self._in_flight: set[MailTicket] = set()
        # Every mail waiting, on disk or in its exchange, by Message-ID.
        self._queued: dict[str, MailTicket] = {}
        # Mails sent since the start, by Message-ID: where they went.
        self._sent: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.max_queued = MAX_QUEUED
        self.not_sent = 0  # listed queued, tried and failed (cbexec_mails_not_sent_total)

    @property
    def where(self) -> str:
        """Where the mails go, as the outcomes name it."""
        s = self._mailer.settings
        return f"smtp://{s.smtp_host}:{s.smtp_port}" if s.delivery == "smtp" else "the maildir"

    @property
    def waiting(self) -> int:
        """Mails waiting for a thread (those a restart left on disk for want of room not counted)."""
        return len(self._waiting)

    @property
    def sending(self) -> int:
        """Mails in an exchange (or being stored) now."""
        return len(self._in_flight)

    def backed_up(self, seconds: float) -> bool:
        """Whether a mail has waited, or been in its exchange, longer than ``seconds``.

        The relay is slow or away then: a mail handed over now will not go out within
        ``seconds`` either, so a run need not wait for it.
        """
        since = time.monotonic() - seconds
        with self._lock:
            oldest = self._waiting[0].queued_at if self._waiting else None
            started = [t.sending_since for t in self._in_flight if t.sending_since is not None]
        return any(t < since for t in ([oldest] if oldest is not None else []) + started)

    async def submit(self, message: EmailMessage, *, run: str) -> MailTicket:
        """Queue ``message`` (spooled first); its ticket's outcome resolves once it is tried.

        A mail of the same Message-ID waiting (its run's first attempt, or the spool's
        copy after a restart), in its exchange, or sent since the start is that mail: its
        ticket is returned, and it is sent once. MailError when the queue is full or
        closed, or the spool takes no file: then nothing was queued.
        """
        message_id = str(message["Message-ID"])
        loop = asyncio.get_running_loop()
        with self._lock:
            if (same := self._same(message_id, loop)) is not None:
                return same
            self._refuse_if_full()
        spooled = None
        if self._spool is not None:
            spooled = await asyncio.to_thread(_write_spool, self._spool, message)
        ticket = MailTicket(
            message, message_id, f"run {run}", spooled, outcome=loop.create_future()
        )
        with self._lock:
            same = self._same(message_id, loop)  # handed over meanwhile: that one mail
            if same is not None or self._closed or len(self._waiting) >= self.max_queued:
                self._remove_spooled(ticket)
                if same is not None:
                    return same
                self._refuse_if_full()
            self._waiting.append(ticket)
            self._queued[message_id] = ticket
            self._start_threads()
            self._lock.notify()
        return ticket

    def _same(self, message_id: str, loop: asyncio.AbstractEventLoop) -> MailTicket | None:
        """The ticket of the mail with this Message-ID, queued or sent already (lock held)."""
        same = self._queued.get(message_id)
        if same is not None:
            if same.outcome is None:  # read back from the spool: nobody waited yet
                same.outcome = loop.create_future()
            return same
        if (sent := self._sent.get(message_id)) is not None:
            went: asyncio.Future[Outcome] = loop.create_future()
            went.set_result(sent)
            return MailTicket(None, message_id, "", None, outcome=went)
        return None

    def listed_queued(self, ticket: MailTicket) -> None:
        """A run gave up waiting for ``ticket`` and listed it queued: a failure now goes unseen."""
        with self._lock:
            ticket.listed_queued = True
            self._count_unseen(ticket)

    def _count_unseen(self, ticket: MailTicket) -> None:
        if (
            ticket.failed
            and not ticket.counted
            and (ticket.listed_queued or ticket.outcome is None)
        ):
            ticket.counted = True
            self.not_sent += 1

    def _refuse_if_full(self) -> None:
        if self._closed:
            raise MailError("not sent: the executor is stopping and takes no more mail")
        if len(self._waiting) >= self.max_queued:
            on_disk = f", {len(self._backlog)} more in the spool" if self._backlog else ""
            raise MailError(
                f"not sent: the mail queue is full ({len(self._waiting)} mails wait for {self.where}, "
                f"{len(self._in_flight)} being sent{on_disk}); the relay is slow or away"
            )

    def load_spool(self) -> int:
        """Queue the mails a stop or crash left in the spool, oldest first; how many.

        Past ``max_queued`` they wait on disk (read back as room frees). Unfinished
        writes are removed, files that are not whole mails of the queue's moved aside.
        """
        if self._spool is None or not self._spool.is_dir():
            return 0
        self._remove_unfinished(self._spool)
        loaded = 0
        names = [p for p in self._spool.glob("*.eml") if not p.name.startswith(_WRITING)]
        for path in sorted(names, key=lambda p: _spool_order(p.name)):
            try:
                message = _read_spooled(self._spool, path.name)
            except OSError as err:
                logger.warning("mail queue: cannot read %s, left there: %s", path, err)
                continue
            except _NotAMail as err:
                self._move_aside(path, str(err))
                continue
            message_id = str(message["Message-ID"])
            with self._lock:
                if message_id in self._queued:  # a copy of the same mail: sent once
                    logger.info(
                        "mail queue: %s is another copy of mail %s: removed", path, message_id
                    )
                    self._remove_spooled(MailTicket(None, message_id, "", path.name))
                    continue
                room = len(self._waiting) < self.max_queued
                ticket = MailTicket(
                    message if room else None, message_id, "a run before the restart", path.name
                )
                (self._waiting if room else self._backlog).append(ticket)
                self._queued[message_id] = ticket
            loaded += 1
        if loaded:
            logger.info(
                "mail queue: %d mails handed over before the last stop, to %s, are sent now",
                loaded,
                self.where,
            )
            with self._lock:
                self._start_threads()
                self._lock.notify_all()
        return loaded

    @staticmethod
    def _remove_unfinished(spool: Path) -> None:
        """Remove the writes a crash or a failure cut off: their runs were told not sent."""
        removed: list[str] = []
        for path in sorted(spool.glob(f"{_WRITING}*")):
            with contextlib.suppress(FileNotFoundError):
                try:
                    path.unlink()
                except OSError as err:
                    logger.warning("mail queue: cannot remove %s, left there: %s", path, err)
                    continue
            removed.append(path.name)
        if removed:
            logger.warning(
                "mail queue: removed %d unfinished writes from %s (never handed over: no run "
                "listed them queued): %s",
                len(removed),
                spool,
                ", ".join(removed),
            )

    def _move_aside(self, path: Path, why: str) -> None:
        bad = path.with_name(path.name + _BAD)
        try:
            path.rename(bad)
        except OSError as err:
            logger.warning(
                "mail queue: %s is not a whole mail of the mail queue (%s): not sent, left "
                "there (cannot move it aside: %s)",
                path,
                why,
                err,
            )
            return
        logger.warning(
            "mail queue: %s is not a whole mail of the mail queue (%s): not sent, moved aside "
            "to %s",
            path,
            why,
            bad.name,
        )

    def _start_threads(self) -> None:
        while len(self._threads) < MAIL_THREADS:
            thread = threading.Thread(
                target=self._work, name=f"cbexec-mail-{len(self._threads)}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._waiting or self._closed)
                if self._closed:
                    return
                ticket = self._waiting.popleft()
                ticket.sending_since = time.monotonic()
                self._in_flight.add(ticket)
                self._refill()
            try:
                self._send(ticket)
            finally:
                with self._lock:
                    self._in_flight.discard(ticket)
                    self._lock.notify_all()

    def _refill(self) -> None:
        """Read back a restart's mails left on disk while there is room (lock held: they go first)."""
        while self._backlog and len(self._waiting) < self.max_queued:
            ticket = self._backlog.popleft()
            spool, name = self._spool, ticket.spooled or ""
            try:
                if spool is None:
                    raise FileNotFoundError(f"no spool to read {name} from")
                ticket.message = _read_spooled(spool, name)
            except (OSError, _NotAMail) as err:
                logger.warning("mail queue: cannot read %s in %s, left there: %s", name, spool, err)
                del self._queued[ticket.message_id]
                self._tell(ticket, MailError(f"not sent: cannot read its spool file: {err}"))
                continue
            ticket.queued_at = time.monotonic()
            self._waiting.append(ticket)

    def _send(self, ticket: MailTicket) -> None:
        waited = time.monotonic() - ticket.queued_at
        message = ticket.message
        to = message["To"] if message is not None else "(unread)"
        outcome: Outcome
        try:
            if message is None:  # _refill reads a restart's mail back before it waits
                raise RuntimeError(f"mail {ticket.message_id} was queued unread")
            outcome = self._mailer.deliver(message)
        except Exception as err:  # a bug must not end the thread: logged, the mail not sent
            if not isinstance(err, MailError):
                logger.error("mail %s: error inside the executor", ticket.message_id, exc_info=err)
                err = MailError("not sent: internal error in the executor; its log has the details")
            outcome = err
            logger.warning(
                "mail %s of %s to %s not sent (after waiting %.1f s in the queue): %s",
                ticket.message_id,
                ticket.run,
                to,
                waited,
                err,
            )
        else:
            logger.info(
                "mail %s of %s to %s sent through %s after waiting %.1f s in the queue",
                ticket.message_id,
                ticket.run,
                to,
                outcome,
                waited,
            )
        self._remove_spooled(ticket)  # tried once, as a run's mail always was
        with self._lock:
            self._queued.pop(ticket.message_id, None)
            if isinstance(outcome, MailError):
                ticket.failed = True
                self._count_unseen(ticket)
            else:
                self._sent[ticket.message_id] = outcome
                while len(self._sent) > RECENT_SENT:
                    self._sent.popitem(last=False)
            self._tell(ticket, outcome)

    @staticmethod
    def _tell(ticket: MailTicket, outcome: Outcome) -> None:
        future = ticket.outcome
        if future is not None:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                future.get_loop().call_soon_threadsafe(_resolve, future, outcome)

    def _remove_spooled(self, ticket: MailTicket) -> None:
        if self._spool is not None and ticket.spooled is not None:
            try:
                (self._spool / ticket.spooled).unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.warning(
                    "mail queue: could not remove %s (sent again after the next start): %s",
                    self._spool / ticket.spooled,
                    err,
                )

    def _quiet_within(self, seconds: float) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: not self._in_flight, seconds)

    async def close(self, grace_s: float = STOP_GRACE_SECONDS) -> bool:
        """Take no more mail, leave the waiting ones, give the exchanges ``grace_s``; True if none is left."""
        with self._lock:
            self._closed = True
            left = list(self._waiting) + list(self._backlog)
            self._waiting.clear()
            self._backlog.clear()
            self._lock.notify_all()
        for ticket in left:
            if ticket.outcome is not None and not ticket.outcome.done():
                ticket.outcome.set_result(MailError("not sent yet: the executor stopped first"))
        if left:
            kept = (
                f"they stay in {self._spool} and are sent after the next start"
                if self._spool is not None
                else "they are lost (no spool)"
            )
            logger.warning(
                "mail queue: %d mails not yet handed to %s at the stop: %s",
                len(left),
                self.where,
                kept,
            )
        if not await asyncio.to_thread(self._quiet_within, grace_s):
            logger.warning(
                "mail queue: %d mails still in an exchange with %s after %g s: cut off as the "
                "process exits; they stay in %s and are sent again after the next start (under "
                "the same Message-ID: the relay may have taken them already)",
                len(self._in_flight),
                self.where,
                grace_s,
                self._spool,
            )
            return False
        return True


def _write_spool(spool: Path, message: EmailMessage) -> str:
    """Write ``message`` into the spool (made 0700 if missing); its file's name.

    Written under a temporary name and renamed once whole and on disk: a write that
    fails (a full disk) or a crash in it leaves no mail for the next start to send.
    """
    name = f"{time.time_ns()}.{next(_spool_counter)}.eml"
    writing = _WRITING + name
    data = message.as_bytes()
    try:
        with open_tree(spool.parent, (spool.name,), MAILDIR_MODE) as directory:
            write_whole(directory, writing, directory, name, b"%s%d\n" % (_MAGIC, len(data)), data)
            _sync_directory(directory)
    except OSError as err:
        raise MailError(f"not sent: could not queue the mail in {spool}: {err}") from err
    return name


def _sync_directory(directory: OwnedDir) -> None:
    """The rename on disk too; the mail is queued either way (a crash now may only lose it)."""
    with contextlib.suppress(OSError):
        os.fsync(directory.fd)


def _read_spooled(spool: Path, name: str) -> EmailMessage:
    """The mail in spool file ``name``; _NotAMail unless the queue wrote it whole."""
    with open_tree(spool.parent, (spool.name,), MAILDIR_MODE, make=False) as directory:
        fd = open_file(directory, name, os.O_RDONLY, MAIL_MODE)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read()
    first, newline, mail = data.partition(b"\n")
    length = first.removeprefix(_MAGIC)
    if not newline or not first.startswith(_MAGIC) or not length.isdigit():
        raise _NotAMail("not written by the mail queue" if data else "empty")
    if int(length) != len(mail):
        raise _NotAMail(f"cut off: {len(mail)} of its {int(length)} bytes")
    try:
        message = email.parser.BytesParser(EmailMessage, policy=_SPOOL_POLICY).parsebytes(mail)
        missing = [header for header in _NEEDED if not message[header]]
    except Exception as err:  # whatever the parser makes of it, it is no mail of ours
        raise _NotAMail(f"does not parse: {err}") from err
    if missing:
        raise _NotAMail(f"no {', '.join(missing)}")
    return message


def _spool_order(name: str) -> tuple[int, int]:
    """A spooled mail's place: the time it was handed over, then its number."""
    stamp, _, rest = name.partition(".")
    number = rest.partition(".")[0]
    return (int(stamp) if stamp.isdigit() else 0, int(number) if number.isdigit() else 0)


def _resolve(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)
