"""Domain value types: what a run is asked to do and what it produced (no protobuf here)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Language(enum.StrEnum):
    """Callback languages, named as in Qube's ``supervisor_language_flags``."""

    PYTHON = "python"
    PERL = "perl"
    QUBE = "qube"


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


@dataclass(frozen=True, slots=True)
class EventSpec:
    """A trigger event occurrence: name-type-context-extra."""

    name: str
    type: str
    context: str = ""
    extra: str = ""


@dataclass(frozen=True, slots=True)
class Invocation:
    """One request to run a callback in a job's context."""

    invocation_id: str
    callback: CallbackSpec
    job: dict[str, Any]
    limits: Limits
    event: EventSpec | None = None
    work_name: str = ""
    subjob_id: int = -1

    @property
    def job_id(self) -> int:
        return int(self.job["id"])

    @property
    def actor(self) -> str:
        """The Qube user the callback acts as: its owner, else the job's owner."""
        return self.callback.user or str(self.job.get("user", ""))

    def child_context(self) -> dict[str, Any]:
        """What the callback's ``qb`` module knows without asking (the start frame)."""
        event = None
        if self.event is not None:
            event = {
                "name": self.event.name,
                "type": self.event.type,
                "context": self.event.context,
                "extra": self.event.extra,
            }
        return {
            "job": self.job,
            "event": event,
            "work_name": self.work_name,
            "subjob_id": self.subjob_id,
            "callback": {
                "id": self.callback.id,
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
