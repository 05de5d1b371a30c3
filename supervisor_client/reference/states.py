"""Qube's job, work and instance states, the verb transition tables and the permission bits.

Pure data and functions, no I/O: the store applies these tables, the tests read them.
Sources are qube-callbacks.md §5 (states, transitions) and §6 (supervisor_default_security).
Where the notes are silent, the choice made here is written next to the table entry.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final


class Status(enum.StrEnum):
    """The states the reference supervisor uses for jobs, work items and instances."""

    PENDING = "pending"
    BLOCKED = "blocked"
    RUNNING = "running"
    WAITING = "waiting"
    SUSPENDED = "suspended"
    COMPLETE = "complete"
    FAILED = "failed"
    KILLED = "killed"


#: Qube's numeric status codes (§5.1); terminal codes are below 0x100.
STATUS_CODES: Final[Mapping[str, int]] = MappingProxyType(
    {
        "complete": 16,
        "failed": 32,
        "killed": 48,
        "dying": 261,
        "exiting": 262,
        "registering": 265,
        "blocked": 272,
        "waiting": 288,
        "suspended": 304,
        "pending": 320,
        "badlogin": 325,
        "running": 336,
    }
)

TERMINAL: Final = frozenset({Status.COMPLETE, Status.FAILED, Status.KILLED})
NON_TERMINAL: Final = frozenset(Status) - TERMINAL

#: The event a state change fires, by the new state. Qube has no "pending" event and
#: suspending fires nothing; "done" is derived by the executor, never emitted here.
_EVENT_BY_STATUS: Final[Mapping[str, str]] = MappingProxyType(
    {
        Status.COMPLETE: "complete",
        Status.FAILED: "failed",
        Status.KILLED: "killed",
        Status.BLOCKED: "blocked",
        Status.RUNNING: "running",
        Status.WAITING: "waiting",
    }
)


#: What this supervisor publishes, as RegisterJob's ``published_events`` takes them
#: (NAME-TYPE), declared with each job it registers so that the trigger engine warns
#: about a trigger on anything else ("never happens"): the events of the states its
#: rules, workers and submissions move jobs, work items and instances into, and a
#: job's submit and removed. Never waiting (nothing moves anything there), assigned,
#: modified, timeout or a host event.
PUBLISHED_EVENTS: Final = frozenset(
    {
        f"{name}-{kind}"
        for name in ("complete", "failed", "killed", "blocked", "running")
        for kind in ("job", "work", "subjob")
    }
    | {"submit-job", "removed-job"}
)


#: Not a Qube event: the name of the outbox row that has the forwarder register a job
#: again, as it is then, after a change Qube publishes no event for (see
#: ``needs_registering_again``). RegisterJob carries the job's, its items' and its
#: instances' states, which replace what the trigger engine knew.
REGISTER_AGAIN: Final = "register-again"


def needs_registering_again(old: str, new: str) -> bool:
    """Whether moving an object from ``old`` to ``new`` leaves the trigger engine's view stale.

    The engine knows a state from the last event (or registration): a move that fires
    none (into pending or suspended, or a resume) leaves it showing the state before,
    and a retried job would still read as complete, releasing at once a job that
    depends on it. Unblocking (blocked -> pending) is left out: a stale "blocked"
    makes no dependency hold or release, and a frame link unblocks frame by frame,
    where registering the whole agenda again each time would cost O(frames) per frame.
    """
    return old != new and move_event(old, new) is None and old != Status.BLOCKED


def is_terminal(status: str) -> bool:
    """True for complete, failed and killed: the states only retry/requeue leave."""
    return status in TERMINAL


def event_name(status: str) -> str | None:
    """The event name entering ``status`` fires, or None when Qube fires none."""
    return _EVENT_BY_STATUS.get(status)


def move_event(old: str, new: str) -> str | None:
    """The event name moving an object from ``old`` to ``new`` fires, or None.

    Entering ``new``'s event, except a resume (suspended -> running): Qube's running is
    "object has started running" (qube-callbacks.md §1.3), and a resumed object goes
    on with a run already started. Raised again, a ``running-job-self -> suspend-self``
    hold could never be resumed, and a callback suspending and resuming on running
    fired itself for ever. A new start (a dispatch after a retry, requeue, interrupt or
    preempt) comes from pending, and fires running.
    """
    if old == Status.SUSPENDED and new == Status.RUNNING:
        return None
    return event_name(new)


@dataclass(frozen=True, slots=True)
class Transition:
    """One event: a job, work item or instance entered a state (or was submitted/removed).

    ``name`` is the Qube event name of the new state (complete, failed, killed, blocked,
    running, waiting, submit, removed); ``type`` is "job", "work" or "subjob".
    """

    name: str
    type: str
    job_id: int
    work_name: str = ""
    subjob_id: int = -1
    host: str = ""


# -- permissions (§6) -----------------------------------------------------------------

#: supervisor_default_security bits by name.
PERMISSION_BITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "submit_job": 1,
        "submit_callback": 2,
        "submit_global_callback": 4,
        "bump": 8,
        "kill": 16,
        "remove": 32,
        "modify": 64,
        "preempt": 128,
        "block": 256,
        "interrupt": 512,
        "complete": 1024,
        "unblock": 2048,
        "suspend": 4096,
        "resume": 8192,
        "retry": 16384,
        "requeue": 32768,
        "migrate": 65536,
        "shove": 131072,
        "fail": 262144,
        "retire": 524288,
        "reset": 1048576,
        "lock_host": 0x8000000,
        "sudo_admin": 0x10000000,
        "impersonate": 0x20000000,
        "admin": 0x40000000,
    }
)

#: Qube's default: every non-admin right except bump and submit_global_callback, plus lock_host.
DEFAULT_SECURITY: Final = 136314867


def permits(actor: str, owner: str, verb: str, *, mask: int, admins: Collection[str]) -> bool:
    """Whether ``actor`` may apply ``verb`` to a job owned by ``owner``.

    Admins may act on any job. Everyone else only on their own jobs, and only when the
    verb's bit is in ``mask`` (there are no per-user grants in the reference). An empty
    actor is anonymous and may do nothing but read.
    """
    if not actor:
        return False
    if actor in admins:
        return True
    return actor == owner and bool(mask & PERMISSION_BITS[verb])


# -- verb tables (§5.2) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VerbRule:
    """What one verb does: from which states, to which state, and how work follows.

    ``target`` None means the object is deleted (remove). ``work_moves`` only exists on
    job verbs: the work items in a key state move to the value state along with the job.
    ``applies_to`` names the source states for the "does not apply" message.
    ``passive``: a job (an instance) with running work reaches ``target`` only once that
    work has ended, taking no new work meanwhile (preempt); without running work, at once.
    """

    verb: str
    sources: frozenset[str]
    target: str | None
    applies_to: str
    work_moves: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    passive: bool = False

    def applies(self, status: str) -> bool:
        """Whether the verb changes an object in ``status``."""
        return status in self.sources and status != self.target

    def refusal(self, subject: str, status: str) -> str | None:
        """None when the verb applies in ``status``, else a sentence saying why not."""
        if self.applies(status):
            return None
        if status == self.target and status in self.sources:
            return f"{subject} is already {status}"
        return f"{subject} is {status}; {self.verb} applies to {self.applies_to}"


def _rule(
    verb: str,
    sources: Iterable[str],
    target: str | None,
    applies_to: str,
    work_moves: Mapping[str, str] | None = None,
    *,
    passive: bool = False,
) -> VerbRule:
    return VerbRule(
        verb,
        frozenset(sources),
        target,
        applies_to,
        MappingProxyType(dict(work_moves or {})),
        passive,
    )


_ANY: Final = frozenset(Status)
_RUNNING: Final = (Status.RUNNING,)


def _in_flight_to(status: Status) -> Mapping[str, str]:
    """Work moves of a verb that stops a job's frames: running (or paused) ones go to ``status``.

    No work item may stay running under a job that is not running: its worker's report
    is refused there (work runs only in pending or running jobs), so it would run for ever.
    """
    return {Status.RUNNING.value: status.value, Status.SUSPENDED.value: status.value}


_RUNNING_WORK_BACK: Final = _in_flight_to(Status.PENDING)
#: Retrying a job puts it back on the queue as submitted (Qube's "Job States" page), so
#: every ended item runs again, complete ones too: a complete job whose items stayed
#: complete could never run nor end again. Re-running only the failed frames is a work
#: verb (``workretry``).
_ENDED_WORK_AGAIN: Final[Mapping[str, str]] = {
    Status.COMPLETE: Status.PENDING,
    Status.FAILED: Status.PENDING,
    Status.KILLED: Status.PENDING,
}

JOB_RULES: Final[Mapping[str, VerbRule]] = MappingProxyType(
    {
        "unblock": _rule("unblock", [Status.BLOCKED], Status.PENDING, "blocked jobs"),
        # Qube interrupts a job's running instances when it is blocked: their frames go
        # back to pending (as interrupt's), so unblocking the job runs them again.
        "block": _rule(
            "block", NON_TERMINAL, Status.BLOCKED, "jobs that have not ended", _RUNNING_WORK_BACK
        ),
        "kill": _rule(
            "kill",
            NON_TERMINAL,
            Status.KILLED,
            "jobs that have not ended",
            _in_flight_to(Status.KILLED),
        ),
        "remove": _rule("remove", _ANY, None, "any job"),
        "retry": _rule("retry", TERMINAL, Status.PENDING, "ended jobs", _ENDED_WORK_AGAIN),
        # Choice: requeue is "retry, but held" — ended work is made pending again so that
        # unblocking the job runs it; only the job itself goes to blocked.
        "requeue": _rule("requeue", TERMINAL, Status.BLOCKED, "ended jobs", _ENDED_WORK_AGAIN),
        # §5.2: preempt is passive, "pending after the current agenda item completes":
        # running frames finish (their instances are then released, not given the next
        # frame) and the job goes pending once none runs. interrupt/migrate kill the
        # frame: running work goes back to pending with the job at once.
        "preempt": _rule("preempt", _RUNNING, Status.PENDING, "running jobs", passive=True),
        "interrupt": _rule(
            "interrupt", _RUNNING, Status.PENDING, "running jobs", _RUNNING_WORK_BACK
        ),
        "migrate": _rule("migrate", _RUNNING, Status.PENDING, "running jobs", _RUNNING_WORK_BACK),
        # suspend/resume pause processes: the running frames pause with the job (Qube has
        # no suspended event) and go on when it resumes, firing nothing either: a resume
        # is not a start (move_event).
        "suspend": _rule(
            "suspend",
            _RUNNING,
            Status.SUSPENDED,
            "running jobs",
            {Status.RUNNING.value: Status.SUSPENDED.value},
        ),
        "resume": _rule(
            "resume",
            [Status.SUSPENDED],
            Status.RUNNING,
            "suspended jobs",
            {Status.SUSPENDED.value: Status.RUNNING.value},
        ),
        # complete (retire) and fail force the job's status; the agenda keeps its history,
        # but a frame still running ends with the job (its worker's report would be refused
        # once the job has ended, leaving the frame running for ever): complete marks it
        # complete (retired), fail marks it failed, so its complete/failed/done work event
        # fires and a retry of the job runs it again. Pending frames stay pending.
        "complete": _rule(
            "complete",
            NON_TERMINAL,
            Status.COMPLETE,
            "jobs that have not ended",
            _in_flight_to(Status.COMPLETE),
        ),
        # Qube's fail is "force failed", and a complete job can be forced: its last
        # frame's completion completes it before that frame's callbacks run, so a frame
        # check (complete-work-self-* -> fail-self) could otherwise not fail it there.
        # Its frames and instances stay complete. A failed or killed job stays as it is.
        "fail": _rule(
            "fail",
            NON_TERMINAL | {Status.COMPLETE},
            Status.FAILED,
            "jobs that have not ended and complete jobs",
            _in_flight_to(Status.FAILED),
        ),
    }
)

WORK_RULES: Final[Mapping[str, VerbRule]] = MappingProxyType(
    {
        "unblock": _rule("unblock", [Status.BLOCKED], Status.PENDING, "blocked work"),
        "block": _rule("block", [Status.PENDING], Status.BLOCKED, "pending work"),
        "kill": _rule(
            "kill",
            [Status.PENDING, Status.RUNNING, Status.SUSPENDED],
            Status.KILLED,
            "pending, running or suspended work",
        ),
        "retry": _rule("retry", TERMINAL, Status.PENDING, "ended work"),
        "requeue": _rule("requeue", TERMINAL, Status.BLOCKED, "ended work"),
        "complete": _rule("complete", NON_TERMINAL, Status.COMPLETE, "work that has not ended"),
        "fail": _rule("fail", NON_TERMINAL, Status.FAILED, "work that has not ended"),
    }
)


def instances_moved_from(rule: VerbRule) -> frozenset[str]:
    """The states a job verb moves the job's instances from.

    Its sources, but an ended instance is not ended again: fail of a complete job
    leaves its instances complete.
    """
    if rule.target is not None and is_terminal(rule.target):
        return rule.sources - TERMINAL
    return rule.sources


#: Instances take the job verbs with the job's state rules, except remove (an instance
#: cannot be deleted from its job) and that an ended instance is not ended again (a
#: complete one is not failed: instances_moved_from). The frame an instance is running
#: follows it as the job verb's running frames do (killed by kill, failed by fail, back
#: to pending by block/interrupt/migrate, ...); no other work moves: retrying an
#: instance does not re-run the frames it completed.
SUBJOB_RULES: Final[Mapping[str, VerbRule]] = MappingProxyType(
    {
        verb: _rule(
            verb,
            instances_moved_from(rule),
            rule.target,
            (
                rule.applies_to
                if instances_moved_from(rule) == rule.sources
                else "jobs that have not ended"
            ).replace("jobs", "instances"),
            {
                old: new
                for old, new in rule.work_moves.items()
                if old in (Status.RUNNING, Status.SUSPENDED)
            },
            passive=rule.passive,
        )
        for verb, rule in JOB_RULES.items()
        if verb != "remove"
    }
)


def _lookup(table: Mapping[str, VerbRule], verb: str, kind: str) -> VerbRule:
    try:
        return table[verb]
    except KeyError:
        known = ", ".join(table)
        raise ValueError(f"unknown {kind} verb {verb!r}; expected one of {known}") from None


def job_rule(verb: str) -> VerbRule:
    """The rule of a job verb. Raises ValueError for an unknown verb."""
    return _lookup(JOB_RULES, verb, "job")


def work_rule(verb: str) -> VerbRule:
    """The rule of a work verb. Raises ValueError for an unknown verb."""
    return _lookup(WORK_RULES, verb, "work")


def subjob_rule(verb: str) -> VerbRule:
    """The rule of an instance verb. Raises ValueError for an unknown verb."""
    return _lookup(SUBJOB_RULES, verb, "subjob")


def derive_job_status(current: str, work_statuses: Iterable[str], *, revived: bool = False) -> str:
    """The job status its agenda implies after a work item changed.

    All items complete → complete; all ended with any failed → failed; all ended with
    any killed (none failed) → killed. An ended job becomes pending only when the change
    ``revived`` one of its items (brought it back from an ended status: a retry, as
    Qube's ``qbretry job:frame``): a killed job keeps its pending and blocked frames, and
    a block or unblock of one (a dependency's release) must not run it again. Otherwise,
    and for an empty agenda, the job keeps ``current``.
    """
    statuses = list(work_statuses)
    if not statuses:
        return current
    if all(is_terminal(status) for status in statuses):
        if Status.FAILED in statuses:
            return Status.FAILED
        if Status.KILLED in statuses:
            return Status.KILLED
        return Status.COMPLETE
    if is_terminal(current) and revived:
        return Status.PENDING
    return current
