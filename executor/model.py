"""Domain value types: what a run is asked to do and what it produced (no protobuf here)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from executor.child.protocol import EventContext, StartContext


class Language(enum.StrEnum):
    """Callback languages, named as in Qube's ``supervisor_language_flags``."""

    PYTHON = "python"
    PERL = "perl"
    QUBE = "qube"
    # Qube's mail "language": no code, it mails the status of what fired it.
    MAIL = "mail"


class Outcome(enum.StrEnum):
    """How a run ended; mirrors ``qbcallback.v1.Outcome``."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    WALL_TIMEOUT = "WALL_TIMEOUT"
    CPU_LIMIT = "CPU_LIMIT"
    MEMORY_LIMIT = "MEMORY_LIMIT"
    KILLED = "KILLED"
    REJECTED = "REJECTED"


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits of one run; see proto ``Limits`` for who enforces each."""

    cpu_seconds: float
    wall_seconds: float
    memory_bytes: int
    output_bytes: int
    max_processes: int
    disk_bytes: int


@dataclass(frozen=True, slots=True)
class CallbackSpec:
    """The callback as Qube stores it."""

    language: str
    code: str
    triggers: str = ""
    id: int = 0
    user: str = ""
    count: int = 0
    maximum: int = 0
    # A universal callback's file (``<dir>/mail-status.qcb``); "" for a job's own callback.
    source: str = ""

    @property
    def name(self) -> str:
        """How logs and listings name it: a universal callback's file name, else its id."""
        return self.source.rsplit("/", 1)[-1] if self.source else str(self.id)


# Event types whose occurrences name an item of the job (work name, instance, host).
ITEM_EVENT_TYPES = frozenset({"work", "subjob", "host"})


@dataclass(frozen=True, slots=True)
class Event:
    """One occurrence of a state transition (or a clock tick), from the edge to the firing.

    The one shape an event has inside the executor: a published event, the event a
    firing runs with (stored with it), the triggering event of an Execute request, the
    run history's record and what ``qb.event()`` shows are all this.

    Attributes:
        name: complete, failed, killed, running, ... (``done`` is derived, never an
            occurrence); ``dummy`` for clock events.
        type: job, work, subjob, host; time, repeat, globaltime, globalrepeat for clocks.
        job_id: The job it happened to; 0 for a global clock event, and for an event
            whose context names a job the executor cannot tell (``unresolved``).
        work_name: The agenda item, for work events.
        subjob_id: The instance, for subjob events; -1 when none.
        host: The host, for host events.
        extra: A clock event's time (``T`` or ``T-interval``, Qube time).
        event_id: The publisher's idempotency key; "" when none.
        unresolved: An Execute's context as given when it names a job the executor
            cannot tell (a label no job registered in the pgrp holds, ``parent`` of a
            job without one): shown so, rather than as some job's id.
    """

    name: str
    type: str
    job_id: int = 0
    work_name: str = ""
    subjob_id: int = -1
    host: str = ""
    extra: str = ""
    event_id: str = ""
    unresolved: str = ""

    @property
    def item(self) -> str:
        """What a trigger atom's extra names: work name, instance id, host or clock time."""
        if self.type == "work":
            return self.work_name
        if self.type == "subjob":  # none given: the extra as written ('*', or none)
            return str(self.subjob_id) if self.subjob_id >= 0 else self.extra
        if self.type == "host":
            return self.host
        return self.extra

    @property
    def context(self) -> str:
        """The job it happened to, as an atom's context names it ("" for global events)."""
        return str(self.job_id) if self.job_id else self.unresolved

    def as_dict(self) -> dict[str, Any]:
        """The plain form stored with a firing or a run (``from_dict`` reads it back)."""
        plain = {
            "name": self.name,
            "type": self.type,
            "job_id": self.job_id,
            "work_name": self.work_name,
            "subjob_id": self.subjob_id,
            "host": self.host,
            "extra": self.extra,
            "event_id": self.event_id,
        }
        if self.unresolved:  # only an Execute's may have one: the others' stay as they were
            plain["unresolved"] = self.unresolved
        return plain

    def resolved(self, job_id: int) -> Event:
        """This event with its unresolved context found to name ``job_id``."""
        return replace(self, job_id=job_id, unresolved="")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        """Read ``as_dict``'s form; also the ``{name, type, context, extra}`` form of older runs."""
        if "job_id" not in data:
            return cls.from_atom_form(
                str(data.get("name", "")),
                str(data.get("type", "")),
                str(data.get("context", "")),
                str(data.get("extra", "")),
            )
        return cls(
            name=str(data["name"]),
            type=str(data["type"]),
            job_id=int(data["job_id"]),
            work_name=str(data.get("work_name", "")),
            subjob_id=int(data.get("subjob_id", -1)),
            host=str(data.get("host", "")),
            extra=str(data.get("extra", "")),
            event_id=str(data.get("event_id", "")),
            unresolved=str(data.get("unresolved", "")),
        )

    @classmethod
    def from_atom_form(
        cls,
        name: str,
        type_: str,
        context: str,
        extra: str,
        *,
        jobs: Mapping[str, int] | None = None,
    ) -> Event:
        """The event a ``name-type-context-extra`` description names.

        ``context`` is a job id, or a name ``jobs`` gives the id of (``self``, ``parent``,
        a label); any other (``0`` too: no job has it) is kept as ``unresolved``, with
        job_id 0: the event claims no job it may not be about. ``extra`` is the item (work name, instance, host)
        or a clock time, by type.
        """
        job_id, unresolved = 0, ""
        if context.isascii() and context.isdigit() and int(context):
            job_id = int(context)
        elif jobs and context in jobs:
            job_id = jobs[context]
        else:
            unresolved = context
        subjob = extra.strip()
        subjob_id = int(subjob) if type_ == "subjob" and subjob.lstrip("-").isdigit() else -1
        # An item event's extra is its item, but a subjob event's that names no instance
        # ('*'): kept, as a work event's '*' is its work name, so `item` says it as written.
        kept = type_ not in ITEM_EVENT_TYPES or (type_ == "subjob" and subjob_id < 0)
        return cls(
            name=name,
            type=type_,
            job_id=job_id,
            work_name=extra if type_ == "work" else "",
            subjob_id=subjob_id,
            host=extra if type_ == "host" else "",
            extra=extra if kept else "",
            unresolved=unresolved,
        )


# Where a run came from (``Invocation.source``): the Execute RPC, or the trigger engine
# firing a job's own callback or a callbacks.conf one. A closed set: the metrics' label.
RUN_SOURCES: Final = ("execute", "job", "universal")


@dataclass(frozen=True, slots=True)
class Invocation:
    """One request to run a callback in a job's context."""

    invocation_id: str
    callback: CallbackSpec
    job: dict[str, Any]
    limits: Limits
    event: Event | None = None
    work_name: str = ""
    subjob_id: int = -1
    # Where the run came from: "execute" (the Execute RPC), or "job" / "universal" (fired
    # by the trigger engine for a job's own callback or a callbacks.conf one). One of
    # RUN_SOURCES: the metrics' and the log line's label.
    source: str = "execute"
    # The sandbox policy it runs under (executor/policies.py), and whether it is a shadow
    # run (a callbacks.conf line marked shadow: qb actions recorded, not applied).
    policy: str = "job"
    shadow: bool = False
    # Why it may not run at all, decided before it reached the dispatcher (a universal
    # callback whose line a reload removed): recorded REJECTED with this failure, not run.
    refusal: str = ""
    # In a fleet, a fired run's claim on its firing (the epoch this replica holds it at):
    # its result is recorded only while the claim holds (fencing, Recorder). None: no claim
    # to check (an Execute, or a single executor's firing).
    claim_epoch: int | None = None

    @property
    def job_id(self) -> int:
        return int(self.job["id"])

    @property
    def fired(self) -> bool:
        """Whether the trigger engine made this run (its id too), not an Execute."""
        return self.source != "execute"

    @property
    def actor(self) -> str:
        """The Qube user the callback acts as: its owner, else the job's owner."""
        return self.callback.user or str(self.job.get("user", ""))

    def child_context(self) -> StartContext:
        """What the callback's ``qb`` module knows without asking (the start frame)."""
        event: EventContext | None = None
        if self.event is not None:
            event = {
                "name": self.event.name,
                "type": self.event.type,
                "context": self.event.context,
                "extra": self.event.item,
            }
        return {
            "job": {"id": self.job_id},  # not the job: its agenda may be a million items
            "event": event,
            "work_name": self.work_name,
            "subjob_id": self.subjob_id,
            "callback": {
                "id": self.callback.id,
                "pid": self.job_id,
                "triggers": self.callback.triggers,
                "language": self.callback.language,
                "user": self.actor,
                "count": self.callback.count,
                "maximum": self.callback.maximum,
            },
        }


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One qb call the callback made."""

    verb: str
    target: str
    ok: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class Usage:
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    queue_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Failure:
    message: str
    exception_type: str = ""
    traceback: str = ""


@dataclass(frozen=True, slots=True)
class RunResult:
    """Everything a run produced; mirrors ``ExecuteResponse``."""

    invocation_id: str
    outcome: Outcome
    exit_code: int = 0
    signal: int = 0
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    failure: Failure | None = None
    usage: Usage = field(default_factory=Usage)
    actions: tuple[ActionRecord, ...] = ()
