"""A job dict held as it is given: jobinfo output the reference supervisor stores unchanged.

``cbexec run --embedded`` tries a callback in the job a file gives, often the jobinfo
output of a job that has ended (a ``done-work-self-*`` or ``failed-job-self`` callback is
tried on one). A submission would refuse its ended frames and give the job a new id and
a pending status; here the job keeps its id, its own, its frames' and its instances'
statuses, where each frame ran, its attempts and result package, and its callbacks' ids
and counts. What a submission refuses as malformed (a name too long, a user that is no
user name, a callback whose trigger or language the executor refuses, a bad
``dependency``) is refused the same way, naming the field, as is a status this
supervisor has no rules for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from supervisor_client.reference.dependency import parse_dependency
from supervisor_client.reference.errors import SubmitError
from supervisor_client.reference.qube_time import to_store
from supervisor_client.reference.states import Status
from supervisor_client.reference.submission import (
    MAX_ID,
    Checks,
    JobFields,
    LanguageCheck,
    NewCallback,
    TriggerCheck,
    agenda_entries,
    check_utf8_text,
    integer_field,
    name_field,
    parse_callbacks,
    parse_job_fields,
)

#: What jobinfo derives from the agenda and instances each time it answers (Qube's
#: tallies): never held, so they cannot disagree with the items they count.
_DERIVED: Final = frozenset({"todo", "todotally", "cpustally"})
#: The largest instance id: a work item's ``subid`` travels as an int32.
_MAX_SUBID: Final = 2**31 - 1
_STATUSES: Final = tuple(Status)


@dataclass(frozen=True, slots=True)
class GivenWork:
    name: str
    status: str
    subid: int
    host: str
    count: int
    resultpackage: str  # JSON


@dataclass(frozen=True, slots=True)
class GivenInstance:
    id: int
    status: str
    host: str


@dataclass(frozen=True, slots=True)
class GivenCallback:
    id: int
    count: int
    callback: NewCallback


@dataclass(frozen=True, slots=True)
class GivenJob:
    id: int
    status: str
    fields: JobFields
    pgrp: int
    label: str
    timesubmit: int
    timestart: int
    timecomplete: int
    agenda: tuple[GivenWork, ...]
    instances: tuple[GivenInstance, ...]
    callbacks: tuple[GivenCallback, ...]


def _any_status(where: str, value: Any, default: str) -> str:
    if value is None:
        return default
    if value not in _STATUSES:
        expected = ", ".join(_STATUSES)
        raise SubmitError(f"{where}: status must be one of {expected}; got {value!r}")
    return str(value)


def _text(where: str, fields: Mapping[str, Any], key: str) -> str:
    return name_field(where, fields, key, "")


def _agenda(where: str, entries: Any) -> tuple[GivenWork, ...]:
    items = []
    for name, fields in agenda_entries(where, entries):
        at = f"{where}, work {name}"
        package = fields.get("resultpackage") or {}
        if not isinstance(package, Mapping):
            raise SubmitError(f"{at}: resultpackage must be a dict, got {package!r}")
        try:
            package_json = json.dumps(dict(package), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise SubmitError(f"{at}: resultpackage is not a JSON value: {err}") from err
        items.append(
            GivenWork(
                name=name,
                status=_any_status(at, fields.get("status"), Status.PENDING),
                subid=integer_field(at, fields, "subid", -1, -1, _MAX_SUBID),
                host=_text(at, fields, "host"),
                count=integer_field(at, fields, "count", 0, 0),
                resultpackage=package_json,
            )
        )
    return tuple(items)


def _instances(
    where: str, job: Mapping[str, Any], status: str, cpus: int
) -> tuple[GivenInstance, ...]:
    """The job's ``subjobs`` as given; without them, ``cpus`` instances in the job's status."""
    entries = job.get("subjobs")
    if entries is None:
        return tuple(GivenInstance(subid, status, "") for subid in range(cpus))
    if not isinstance(entries, list | tuple):
        raise SubmitError(f"{where}: subjobs must be a list, got {type(entries).__name__}")
    instances: dict[int, GivenInstance] = {}
    for n, entry in enumerate(entries):
        at = f"{where}, subjobs[{n}]"
        if not isinstance(entry, Mapping):
            raise SubmitError(f"{at}: must be a dict, got {entry!r}")
        subid = integer_field(at, entry, "id", n, 0, _MAX_SUBID)
        if subid in instances:
            raise SubmitError(f"{at}: instance id {subid} appears twice in subjobs")
        instances[subid] = GivenInstance(
            subid, _any_status(at, entry.get("status"), status), _text(at, entry, "host")
        )
    return tuple(instances.values())


def _callbacks(where: str, entries: Any, checks: Checks, owner: str) -> tuple[GivenCallback, ...]:
    """The job's callbacks as given: checked as a submission's, keeping their ids and counts."""
    parsed = parse_callbacks(where, entries, checks, owner)
    given: dict[int, GivenCallback] = {}
    for n, (entry, callback) in enumerate(zip(entries or (), parsed, strict=True), start=1):
        at = f"{where}, callback {n}"
        callback_id = integer_field(at, entry, "id", n, 1, MAX_ID)
        if callback_id in given:
            raise SubmitError(f"{at}: id {callback_id} is another callback's")
        given[callback_id] = GivenCallback(
            callback_id, integer_field(at, entry, "count", 0, 0), callback
        )
    return tuple(given.values())


def parse_given_job(
    job: Any,
    *,
    now: int,
    check_trigger: TriggerCheck | None = None,
    check_language: LanguageCheck | None = None,
) -> GivenJob:
    """The job dict, validated, with everything it says kept (SubmitError naming a field).

    Without an ``id`` it is job 1; without a ``pgrp``, the leader of its own; without a
    ``status``, pending. ``now`` stands for a ``timesubmit`` it does not give.
    """
    if not isinstance(job, Mapping):
        raise SubmitError(f"the job must be a dict, got {job!r}")
    job = {key: value for key, value in job.items() if key not in _DERIVED}
    job_id = integer_field("the job", job, "id", 1, 1, MAX_ID)
    where = f"job {job_id}"
    check_utf8_text(where, job)
    status = _any_status(where, job.get("status"), Status.PENDING)
    fields = parse_job_fields(where, job)
    parse_dependency(where, {**job, "user": fields.user})  # kept as given, not acted on
    agenda = _agenda(where, job.get("agenda"))
    instances = _instances(where, job, status, fields.cpus)
    if "cpus" not in job and instances:  # as many instances as it lists
        fields = replace(fields, cpus=len(instances))
    return GivenJob(
        id=job_id,
        status=status,
        fields=fields,
        pgrp=fields.pgrp or job_id,
        label=fields.label or "qube0",  # what a submission names the first job of its pgrp
        timesubmit=to_store(integer_field(where, job, "timesubmit", now, 0)),
        timestart=to_store(integer_field(where, job, "timestart", 0, 0)),
        timecomplete=to_store(integer_field(where, job, "timecomplete", 0, 0)),
        agenda=agenda,
        instances=instances,
        callbacks=_callbacks(
            where, job.get("callbacks"), Checks(check_trigger, check_language), fields.user
        ),
    )
