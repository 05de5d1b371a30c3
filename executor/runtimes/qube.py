"""The qube callback language: Qube's built-in code strings, run in the executor through the host API.

A qube callback's code is a code string naming a supervisor action on the callback's
own job, or on the work item or instance whose event fired it (qube-callbacks.md §2).
It needs no child process: every action is one host API call (``HostApi.call``), so
permissions, the supervisor round trip and the recorded actions are exactly those of
a Python or Perl callback calling the same ``qb`` function.

Syntax (qube_codes.split_codes): several code strings separated by newlines or ``;``
run in order (``unblock-self; mail-status``), each stripped of ASCII spaces and tabs
and matched with ASCII letters in any case (a non-ASCII look-alike such as the Kelvin
sign is an unknown code string); a ``#`` starts a comment to the end of its line, ``;``
and all; blank parts are skipped, so a callback that is only a comment (one commented
out) runs nothing and SUCCEEDS. Every part is checked before any runs
(qube_codes.validate): an unknown code string, none at all in a blank callback, or more
than MAX_CODE_STRINGS reject the whole callback (REJECTED, listing the valid ones). A
failing step stops the run there (FAILED); what ran before stays done. A work or
instance code string when no work item or instance fired the callback is such a step,
failing at its turn (``_missing_context``), not before the run: it is the event, not
the code, that lacks it. A mail that cannot be rendered or sent does not stop it
(``unblock-self`` after ``mail-status`` must not wait on a relay), ``mail-subjob-status``
without an instance included: the code strings after it run, and the run is FAILED
with the first failure.

Targets:
- ``<verb>-self`` acts on the job (``qb.<verb>(jobid)``);
- ``<verb>-work-self`` on the triggering work item, by its exact name (an
  ``ExactWork``, never read as a work spec: an item named ``5,6`` is not a list);
- ``<verb>-subjob-self`` on the triggering instance (``'<jobid>.<subid>'``);
  ``unblock-subjob-self`` without a triggering instance unblocks all the job's
  instances, ``unblock-subjob-self-single`` only ever the triggering one;
- ``mail-status`` (job template), ``mail-subjob-status`` (instance),
  ``mail-license-status``, ``mail-report-status``: read the job (``qb.jobinfo()``) so
  its fields are current, render the template (``executor/runtimes/mail.py``) and hand it
  to the mail queue (``mail_queue.py``), waiting for it at most ``MAIL_WAIT_SECONDS``,
  named by a Message-ID made of the invocation id and the mail's ``action_seq`` (the
  run's effects are numbered by ``HostApi.next_action_seq``), so a re-run's mail is
  recognisably the same mail. The status of the job, work item or instance whose event
  fired the callback is the event's (``_as_fired``): by the time the mail is sent, an
  earlier callback of the same event may have moved it on (a ``failed-job-self`` that
  requeues the job), and the mail must still say what happened. After an earlier code
  string of the same callback acted (``unblock-self; mail-status``) the mail tells what
  that left instead: the status as read then. A job the supervisor no longer has
  (jobinfo reads none) fails the step with NoSuchJob, as the verbs do.

A callback in Qube's ``mail`` language (``{'triggers': 'done-job-self', 'language':
'mail'}``) has no code: it mails the status of what fired it, with the work template for
a work event, the instance template for an instance event, else the job template.

The run keeps to its ``wall_seconds`` (WALL_TIMEOUT; the code strings that ran stay
done) and ``output_bytes``, and a callback has at most ``MAX_CODE_STRINGS`` parts.

Each code string that ran adds one stdout line, e.g. ``unblock-self: job 12 blocked
-> pending``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Final

from executor.errors import HostCallError
from executor.host_api import HostApi
from executor.host_args import ExactWork
from executor.model import Event, Failure, Invocation, Language, Outcome, RunResult, Usage
from executor.runtimes.mail import (
    Mailer,
    MailError,
    MailKind,
    MailSettings,
    message_id,
    render,
)
from executor.runtimes.mail_queue import MailQueue
from executor.runtimes.qube_codes import (
    JOB_CODES,
    SUBJOB_CODES,
    UNBLOCK_SUBJOB_SINGLE,
    WORK_CODES,
    split_codes,
    validate,
)
from executor.sandbox.capture import CapturedStream
from executor.wall_deadline import WallDeadline

logger = logging.getLogger(__name__)

# The template each mail code string (qube_codes.MAIL_CODES) renders.
MAIL_CODES: Final[dict[str, MailKind]] = {
    "mail-status": "job",
    "mail-subjob-status": "subjob",
    "mail-license-status": "license",
    "mail-report-status": "report",
}
# How long a run waits for its mail's outcome before it goes on without it: long enough
# for a relay that answers (the run then says what it did), short enough that a slow one
# holds the run's slot no longer than this (the mail itself waits in the mail queue).
MAIL_WAIT_SECONDS: Final = 2.0
# A callback in the ``mail`` language: no code string, it runs as this one step.
MAIL_LANGUAGE: Final = "mail"
# Event names that are also the status they leave their object in (qube-callbacks.md
# §1.3, §5.1); submit, assigned, removed, modified, timeout and dummy are not statuses.
STATUS_EVENTS: Final = frozenset({"complete", "failed", "killed", "blocked", "running", "waiting"})


def _mail_kind(invocation: Invocation) -> MailKind:
    """The ``mail`` language's template: that of the work item or instance that fired it."""
    if invocation.work_name:
        return "work"
    return "subjob" if invocation.subjob_id >= 0 else "job"


def _as_fired(
    event: Event | None,
    job: dict[str, Any],
    work: dict[str, Any] | None,
    subjob: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
    """The records a mail renders, the one the event is about in the status it fired with.

    Only the status is the event's; every other field stays as read now. An event of
    another job, or one that is no status (``submit``, ``timeout``), changes nothing.
    """
    if event is None or event.name not in STATUS_EVENTS or event.job_id != job.get("id"):
        return job, work, subjob
    if event.type == "job":
        return {**job, "status": event.name}, work, subjob
    if event.type == "work" and work is not None and work.get("name") == event.work_name:
        return job, {**work, "status": event.name}, subjob
    if event.type == "subjob" and subjob is not None and subjob.get("id") == event.subjob_id:
        return job, work, {**subjob, "status": event.name}
    return job, work, subjob


def _missing_context(code: str, invocation: Invocation) -> Failure | None:
    """Why ``code`` cannot act for this invocation (no triggering item), or None.

    Told at the code string's turn, as any failing step is: what ran before it stays
    done, and a mail fails as one that cannot be rendered (the run goes on).
    """
    if code in WORK_CODES and not invocation.work_name:
        return Failure(
            f"{code} acts on the work item that fired the callback, and no work event did",
            exception_type="QubeCodeError",
        )
    # An instance's event names one, and a work event may (the instance that took it).
    if invocation.subjob_id >= 0:
        return None
    if code == "mail-subjob-status":
        return Failure(
            f"{code}: no instance to mail the status of: the event named none",
            exception_type="MailError",
        )
    if code == UNBLOCK_SUBJOB_SINGLE or (code in SUBJOB_CODES and code != "unblock-subjob-self"):
        return Failure(
            f"{code} acts on the instance that fired the callback, and the event named none",
            exception_type="QubeCodeError",
        )
    return None


@dataclass(frozen=True, slots=True)
class _Step:
    code: str
    summary: str


class _StepFailed(Exception):
    """A code string failed; ``stops`` unless it was a mail the code strings after need not wait on."""

    def __init__(self, failure: Failure, *, stops: bool = True) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.stops = stops


class QubeInterpreter:
    """Runs qube code strings through a run's HostApi (dispatcher.QubeRunner)."""

    def __init__(
        self,
        mail: MailSettings | None = None,
        *,
        mailer: Mailer | None = None,
        spool: Path | None = None,
    ) -> None:
        """``spool``: where the mail queue keeps its mails until tried (``mail_queue``)."""
        self._mailer = mailer or Mailer(mail or MailSettings())
        self.mail_queue = MailQueue(self._mailer, spool)

    @property
    def mail_settings(self) -> MailSettings:
        return self._mailer.settings

    async def run(self, invocation: Invocation, host: HostApi) -> RunResult:
        """Run the invocation's code strings in order; one RunResult, never raises for them."""
        began = time.monotonic()
        lines: list[str] = []
        failure: Failure | None = None
        outcome = Outcome.SUCCEEDED
        code = invocation.callback.code
        if invocation.callback.language == Language.MAIL:
            problem, parts = None, [MAIL_LANGUAGE]
        elif (problem := validate(code)) is None:
            parts = split_codes(code)  # none for a callback that is only a comment
        else:
            outcome = Outcome.REJECTED
        if problem is not None:
            failure = Failure(problem, exception_type="QubeCodeError")
        else:
            wall_s = invocation.limits.wall_seconds
            deadline = WallDeadline(wall_s)  # the executor's own stalls are not the run's
            try:
                async with deadline.scope():
                    acted = False  # has a code string of this run changed the job?
                    for part in parts:
                        try:
                            step = await self._run_one(part, invocation, host, acted=acted)
                        except _StepFailed as err:
                            outcome, failure = Outcome.FAILED, failure or err.failure
                            if err.stops:
                                break
                            said = err.failure.message.removeprefix(part + ": ")
                            # The queue's and the relay's MailErrors mostly say it already.
                            if not said.startswith("not sent"):
                                said = f"not sent: {said}"
                            lines.append(f"{part}: {said}")
                            continue
                        lines.append(f"{step.code}: {step.summary}")
                        acted = acted or (part not in MAIL_CODES and not invocation.shadow)
            except TimeoutError:
                outcome = Outcome.WALL_TIMEOUT
                failure = Failure(f"wall time limit of {wall_s:g} s reached")
        stdout = CapturedStream(invocation.limits.output_bytes)
        stdout.feed("".join(f"{line}\n" for line in lines).encode())
        return RunResult(
            invocation_id=invocation.invocation_id,
            outcome=outcome,
            stdout=stdout.text(),
            stdout_truncated=stdout.truncated,
            failure=failure,
            usage=Usage(wall_seconds=time.monotonic() - began),
            actions=tuple(host.actions),
        )

    async def _deliver(self, message: EmailMessage, host: HostApi, run: str) -> tuple[bool, str]:
        """Hand ``message`` to the mail queue and wait for it up to MAIL_WAIT_SECONDS.

        A mail is an effect like a qb action (it takes an action_seq), so the run lists
        it: sent, failed, or queued when it was not tried within the wait (or the run
        ended first, or an earlier mail has taken longer than the wait already: then
        the run does not wait at all): the queue then sends it later and logs the
        outcome under its Message-ID, which the action names. Whether it was sent, and
        where it went (or how it is queued).
        """
        recipients = str(message["To"])
        message_id = str(message["Message-ID"])
        try:
            ticket = await self.mail_queue.submit(message, run=run)
        except MailError as err:
            host.note("mail", recipients, f"MailError: {err}", ok=False)
            raise

        def list_queued(why: str) -> str:
            """List the mail as queued, its outcome left to the queue's log; where it is."""
            where = (
                f"queued for {self.mail_queue.where}: {why}; its outcome is logged under "
                f"{message_id}"
            )
            self.mail_queue.listed_queued(ticket)
            host.note("mail", recipients, where)
            return where

        sending = ticket.future()
        if not sending.done() and self.mail_queue.backed_up(MAIL_WAIT_SECONDS):
            # An earlier mail has taken longer than the wait already: this one would too,
            # and runs that waited for theirs one after another would hold up the rest.
            return False, list_queued("not sent yet, the relay is slow over earlier mails")
        try:
            outcome = await asyncio.wait_for(asyncio.shield(sending), MAIL_WAIT_SECONDS)
        except TimeoutError:
            return False, list_queued(f"not sent within {MAIL_WAIT_SECONDS:g} s")
        except asyncio.CancelledError:
            list_queued("not sent when the run ended")
            raise
        if isinstance(outcome, MailError):
            host.note("mail", recipients, f"MailError: {outcome}", ok=False)
            raise outcome
        host.note("mail", recipients, f"mailed {message['Subject']!r}: {outcome}")
        return True, outcome

    async def _call(self, code: str, host: HostApi, fn: str, target: Any) -> Any:
        try:
            return await host.call(fn, [target], {})
        except HostCallError as err:
            raise _StepFailed(
                Failure(f"{code}: {err.kind}: {err.message}", exception_type=err.kind)
            ) from err

    async def _run_one(
        self, code: str, invocation: Invocation, host: HostApi, *, acted: bool
    ) -> _Step:
        job_id = invocation.job_id
        target: int | str | ExactWork
        if (missing := _missing_context(code, invocation)) is not None:
            raise _StepFailed(missing, stops=code not in MAIL_CODES)
        if code in MAIL_CODES:
            return await self._mail(code, MAIL_CODES[code], invocation, host, acted=acted)
        if code == MAIL_LANGUAGE:
            return await self._mail(code, _mail_kind(invocation), invocation, host, acted=acted)
        if code in JOB_CODES:
            fn, target = JOB_CODES[code], job_id
        elif code in WORK_CODES:
            # The item that fired, by its exact name: never read as a work spec, whose
            # commas make lists and whose spaces are dropped.
            fn, target = "work" + WORK_CODES[code], ExactWork(job_id, invocation.work_name)
        elif code == UNBLOCK_SUBJOB_SINGLE:
            fn, target = "subjobunblock", f"{job_id}.{invocation.subjob_id}"
        else:
            verb = SUBJOB_CODES[code]
            all_instances = verb == "unblock" and invocation.subjob_id < 0
            fn = "subjob" + verb
            target = str(job_id) if all_instances else f"{job_id}.{invocation.subjob_id}"
        await self._call(code, host, fn, target)
        # HostApi records every call; its summary is the supervisor's own sentence.
        return _Step(code, host.actions[-1].message)

    async def _mail(
        self, code: str, kind: MailKind, invocation: Invocation, host: HostApi, *, acted: bool
    ) -> _Step:
        """Mail the status of what fired the callback, or as the run's own verbs left it."""
        # The mail's place among the run's effects, taken first: the same on a re-run.
        action_seq = host.next_action_seq()
        try:
            jobs = await host.call("jobinfo", [], {})
        except HostCallError as err:
            raise _StepFailed(
                Failure(f"{code}: {err.kind}: {err.message}", exception_type=err.kind)
            ) from err
        if not jobs:
            # jobinfo reads an unknown job as none (Qube's client does): an earlier
            # callback of the same event may have removed it. Nothing is left to mail.
            missing = f"the supervisor has no job {invocation.job_id}"
            raise _StepFailed(Failure(f"{code}: NoSuchJob: {missing}", exception_type="NoSuchJob"))
        (job,) = jobs
        work = (
            next(
                (w for w in job.get("agenda") or [] if w.get("name") == invocation.work_name), None
            )
            if invocation.work_name
            else None
        )
        subjob = None
        if invocation.subjob_id >= 0:
            subjob = next(
                (s for s in job.get("subjobs") or [] if s.get("id") == invocation.subjob_id),
                {"id": invocation.subjob_id},
            )
        if not acted:  # else the mail tells what this callback did (unblock-self; mail-status)
            job, work, subjob = _as_fired(invocation.event, job, work, subjob)
        try:
            settings = self._mailer.settings
            message = render(
                kind,
                job,
                work,
                subjob,
                invocation.callback.triggers,
                settings,
                message_id=message_id(
                    invocation.invocation_id, action_seq, settings.default_domain
                ),
            )
            if invocation.shadow:
                # A shadow run renders the mail (its errors show) and sends nothing.
                sent, where = False, "shadow: rendered, not sent"
                host.note("mail", str(message["To"]), f"shadow: would mail {message['Subject']!r}")
            else:
                sent, where = await self._deliver(message, host, invocation.invocation_id)
        except (MailError, ValueError) as err:  # ValueError: a header the job's fields broke
            # The mail is lost, visibly; what the callback does next (unblock-self) is not
            # held up by a relay's hiccup.
            failure = Failure(f"{code}: {err}", exception_type="MailError")
            raise _StepFailed(failure, stops=False) from err
        of_item = {"subjob": subjob, "work": work}.get(kind)
        status = (of_item or job).get("status")
        # "mailed" only for a mail that went: a queued or shadow one says what it is.
        what = f"the {kind} status ({status}) of job {job['id']} to {message['To']}: {where}"
        return _Step(code, f"mailed {what}" if sent else what)
