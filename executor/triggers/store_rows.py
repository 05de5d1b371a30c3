"""The trigger store's rows as the engine holds them: callbacks, queued firings, job heads.

Frozen values read from the tables (store_schema.py) and written to them: a callback's
row, a firing decided and not yet run, what is shown of a job, an event's first read,
an index row to write; and a callback's two modes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from executor.model import Event
from executor.sql import Row
from executor.triggers.evaluate import AtomKey, JobPlace
from executor.triggers.journal import SeenEvent, marks_from_json

EDGE: Final = "edge"
LEVEL: Final = "level"
MODES: Final = (EDGE, LEVEL)


@dataclass(frozen=True, slots=True)
class StoredCallback:
    """A callback row."""

    rowid: int
    job_id: int
    callback_id: int
    triggers: str
    language: str
    code: str
    user: str
    count: int
    maximum: int
    latches: tuple[bool, ...]
    universal: bool
    source: str
    # "edge" (Qube's) or "level" (latches already-happened events at registration).
    mode: str = EDGE
    # Per latch slot, the event that set it (None: not set, or set before provenance).
    latched_by: tuple[SeenEvent | None, ...] = ()

    @property
    def marks(self) -> tuple[SeenEvent | None, ...]:
        """``latched_by`` with one entry per latch."""
        if len(self.latched_by) == len(self.latches):
            return self.latched_by
        return (None,) * len(self.latches)

    def as_dict(self) -> dict[str, Any]:
        """The plain form a firing keeps of the callback it runs (``from_dict`` reads it)."""
        return {
            "rowid": self.rowid,
            "job_id": self.job_id,
            "callback_id": self.callback_id,
            "triggers": self.triggers,
            "language": self.language,
            "code": self.code,
            "user": self.user,
            "count": self.count,
            "maximum": self.maximum,
            "latches": list(self.latches),
            "universal": self.universal,
            "source": self.source,
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredCallback:
        return cls(
            int(data["rowid"]),
            int(data["job_id"]),
            int(data["callback_id"]),
            str(data["triggers"]),
            str(data["language"]),
            str(data["code"]),
            str(data["user"]),
            int(data["count"]),
            int(data["maximum"]),
            tuple(bool(x) for x in data["latches"]),
            bool(data["universal"]),
            str(data["source"]),
            str(data.get("mode", EDGE)),
        )

    @classmethod
    def from_row(cls, row: Row) -> StoredCallback:
        latches = tuple(bool(x) for x in json.loads(row["latches"]))
        return cls(
            row["rowid"],
            row["job_id"],
            row["callback_id"],
            row["triggers"],
            row["language"],
            row["code"],
            row["user"],
            row["count"],
            row["maximum"],
            latches,
            bool(row["universal"]),
            row["source"],
            row["mode"],
            marks_from_json(row["latched_by"], len(latches)),
        )


@dataclass(frozen=True, slots=True)
class PendingFiring:
    """A firing decided and committed but not yet run.

    It carries everything its run needs, as decided: the callback as it was, the count
    the run reports (the callback's count with this firing) and the work item it runs
    for. Stored with the firing, so neither a re-registration nor a ``removed`` job
    between the decision and the run (or a restart) changes what runs.
    """

    invocation_id: str
    callback: StoredCallback
    event: Event
    # The firings one event decided share a batch (they run one after another).
    batch: str = ""
    # The count the run reports: how many times the callback has fired, this one included.
    count: int = 0
    # The work item whose context it runs in (qb.workid()).
    work_name: str = ""
    # In a fleet: the claim this replica holds on it (fencing: done only if it still holds).
    epoch: int = 0

    def snapshot(self) -> str:
        """The JSON stored in the firing's row: what ``restored`` reads."""
        return json.dumps(
            {"callback": self.callback.as_dict(), "count": self.count, "work_name": self.work_name}
        )

    @classmethod
    def restored(cls, row: Row, epoch: int = 0) -> PendingFiring:
        """The firing a queue row holds as it was decided (its ``snapshot_json``).

        ``row``: the firing's ``invocation_id``, ``event_json``, ``batch``, ``snapshot_json``.
        """
        snapshot = json.loads(row["snapshot_json"])
        return cls(
            row["invocation_id"],
            StoredCallback.from_dict(snapshot["callback"]),
            Event.from_dict(json.loads(row["event_json"])),
            row["batch"],
            int(snapshot["count"]),
            str(snapshot["work_name"]),
            epoch,
        )


@dataclass(frozen=True, slots=True)
class JobHead:
    """What is shown of a registered job besides its callbacks: never its agenda."""

    job_id: int
    pgrp: int
    label: str
    pid: int = 0
    name: str = ""
    user: str = ""

    @property
    def place(self) -> JobPlace:
        return JobPlace(self.job_id, pid=self.pid, pgrp=self.pgrp, label=self.label)


@dataclass(frozen=True, slots=True)
class Sighting:
    """An event's first read: whether it is new (not a repeat), its job, and what else was read.

    ``earlier``, for a repeat: the fingerprint kept with its id (event_id_reuse.py; b""
    when unknown), or None when not read.
    """

    first: bool
    place: JobPlace | None
    also: Any = None
    earlier: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewAtom:
    """An index row to write: the atom in latch slot ``slot`` is found under ``key``."""

    slot: int
    key: AtomKey
