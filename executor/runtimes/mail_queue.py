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
  (the run lists the mail not ok), never an unbounded backlog.
* The spool (``<data_dir>/mail-queue``, 0700, each mail 0600): every mail handed over is
  written there before ``submit`` returns and removed once its one attempt has ended,
  sent or refused, so a mail a run listed as queued outlives a stop or a crash: the next
  start (``load_spool``) queues what is left, oldest first.
* Each outcome is logged with the Message-ID and the run (INFO sent, WARNING not sent);
  the run's future, if it still waits, gets it as a value (never an exception nobody
  retrieves).
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

from executor.owned_dirs import open_file, open_tree
from executor.runtimes.mail import MAIL_MODE, MAILDIR_MODE, Mailer, MailError

logger = logging.getLogger(__name__)

MAIL_THREADS: Final = 2
MAX_QUEUED: Final = 200
STOP_GRACE_SECONDS: Final = 5.0
SPOOL_NAME: Final = "mail-queue"
# A spooled mail read back is written out as it was read (no header refolded).
_SPOOL_POLICY: Final = email.policy.default.clone(refold_source="none")
_spool_counter = itertools.count(1)

# What a run's wait ends with: where the mail went, or why it was not sent.
Outcome = str | MailError


@dataclass(eq=False, slots=True)
class MailTicket:
    """One mail handed over: its place in the queue and, for a run still waiting, its outcome."""

    message: EmailMessage
    message_id: str
    run: str  # "run <invocation id>", as the log names it
    spooled: str | None
    queued_at: float = field(default_factory=time.monotonic)
    outcome: asyncio.Future[Outcome] | None = None
    # When a thread took it (its exchange began), None while it waits.
    sending_since: float | None = None


class MailQueue:
    """Mails waiting for a thread, the threads sending them, and their spool."""

    def __init__(self, mailer: Mailer, spool: Path | None = None) -> None:
        """``spool``: the directory mails wait in on disk (None: in memory only, tests)."""
        self._mailer = mailer
        self._spool = spool
        self._lock = threading.Condition()
        self._waiting: collections.deque[MailTicket] = collections.deque()
        self._in_flight: set[MailTicket] = set()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.max_queued = MAX_QUEUED
        self.not_sent = 0  # tried and failed since the start (cbexec_mails_not_sent_total)

    @property
    def where(self) -> str:
        """Where the mails go, as the outcomes name it."""
        s = self._mailer.settings
        return f"smtp://{s.smtp_host}:{s.smtp_port}" if s.delivery == "smtp" else "the maildir"

    @property
    def waiting(self) -> int:
        """Mails waiting for a thread."""
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

    async def submit(self, message: EmailMessage, *, run: str) -> asyncio.Future[Outcome]:
        """Queue ``message`` (spooled first); the future resolves once it is tried.

        A mail of the same Message-ID still waiting for a thread (its run's first attempt,
        or the spool's copy after a restart) is that mail's ticket: it is sent once.
        MailError when the queue is full or closed, or the spool takes no file: then
        nothing was queued.
        """
        message_id = str(message["Message-ID"])
        loop = asyncio.get_running_loop()
        with self._lock:
            self._refuse_if_full()
            # A re-run's mail (same Message-ID) while the first still waits: one mail.
            same = next((t for t in self._waiting if t.message_id == message_id), None)
            if same is not None:
                if same.outcome is None:  # read back from the spool: nobody waited yet
                    same.outcome = loop.create_future()
                return same.outcome
        spooled = None
        if self._spool is not None:
            spooled = await asyncio.to_thread(_write_spool, self._spool, message)
        outcome: asyncio.Future[Outcome] = loop.create_future()
        ticket = MailTicket(message, message_id, f"run {run}", spooled, outcome=outcome)
        with self._lock:
            if self._closed or len(self._waiting) >= self.max_queued:  # filled meanwhile
                self._remove_spooled(ticket)
                self._refuse_if_full()
            self._waiting.append(ticket)
            self._start_threads()
            self._lock.notify()
        return outcome

    def _refuse_if_full(self) -> None:
        if self._closed:
            raise MailError("not sent: the executor is stopping and takes no more mail")
        if len(self._waiting) >= self.max_queued:
            raise MailError(
                f"not sent: the mail queue is full ({len(self._waiting)} mails wait for {self.where}, "
                f"{len(self._in_flight)} being sent); the relay is slow or away"
            )

    def load_spool(self) -> int:
        """Queue the mails a stop or crash left in the spool, oldest first; how many."""
        if self._spool is None or not self._spool.is_dir():
            return 0
        loaded = 0
        for path in sorted(self._spool.glob("*.eml"), key=lambda p: _spool_order(p.name)):
            try:
                message = _read_spooled(self._spool, path.name)
            except OSError as err:
                logger.warning("mail queue: cannot read %s, left there: %s", path, err)
                continue
            ticket = MailTicket(
                message, str(message["Message-ID"]), "a run before the restart", path.name
            )
            with self._lock:
                self._waiting.append(ticket)
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
            try:
                self._send(ticket)
            finally:
                with self._lock:
                    self._in_flight.discard(ticket)
                    self._lock.notify_all()

    def _send(self, ticket: MailTicket) -> None:
        waited = time.monotonic() - ticket.queued_at
        outcome: Outcome
        try:
            outcome = self._mailer.deliver(ticket.message)
        except Exception as err:  # a bug must not end the thread: logged, the mail not sent
            if not isinstance(err, MailError):
                logger.error("mail %s: error inside the executor", ticket.message_id, exc_info=err)
                err = MailError("not sent: internal error in the executor; its log has the details")
            outcome = err
            self.not_sent += 1
            logger.warning(
                "mail %s of %s to %s not sent (after waiting %.1f s in the queue): %s",
                ticket.message_id,
                ticket.run,
                ticket.message["To"],
                waited,
                err,
            )
        else:
            logger.info(
                "mail %s of %s to %s sent through %s after waiting %.1f s in the queue",
                ticket.message_id,
                ticket.run,
                ticket.message["To"],
                outcome,
                waited,
            )
        self._remove_spooled(ticket)  # tried once, as a run's mail always was
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
            left = list(self._waiting)
            self._waiting.clear()
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
    """Write ``message`` into the spool (made 0700 if missing); its file's name."""
    name = f"{time.time_ns()}.{next(_spool_counter)}.eml"
    data = message.as_bytes()
    try:
        with open_tree(spool.parent, (spool.name,), MAILDIR_MODE) as directory:
            fd = open_file(directory, name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MAIL_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as err:
        raise MailError(f"not sent: could not queue the mail in {spool}: {err}") from err
    return name


def _read_spooled(spool: Path, name: str) -> EmailMessage:
    with open_tree(spool.parent, (spool.name,), MAILDIR_MODE, make=False) as directory:
        fd = open_file(directory, name, os.O_RDONLY, MAIL_MODE)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read()
    parser = email.parser.BytesParser(EmailMessage, policy=_SPOOL_POLICY)
    return parser.parsebytes(data)


def _spool_order(name: str) -> tuple[int, int]:
    """A spooled mail's place: the time it was handed over, then its number."""
    stamp, _, rest = name.partition(".")
    number = rest.partition(".")[0]
    return (int(stamp) if stamp.isdigit() else 0, int(number) if number.isdigit() else 0)


def _resolve(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)
