"""Convert between the wire ``Job`` message and the Qube-shaped job dict callbacks see.

Dedicated proto fields map one to one; every other key of the dict travels in
``Job.extra`` (a Struct) and comes back merged into the dict. Struct numbers are
doubles, so integral values are turned back into ints.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from supervisor_client.qbcallback.v1 import types_pb2

_SCALARS = (
    "id",
    "name",
    "label",
    "pgrp",
    "pid",
    "status",
    "user",
    "priority",
    "prototype",
    "mailaddress",
    "timesubmit",
    "timestart",
    "timecomplete",
    "cpus",
)
_DEDICATED = frozenset((*_SCALARS, "agenda", "subjobs", "callbacks", "extra"))
_CALLBACK_FIELDS = ("id", "triggers", "language", "code", "user", "count", "maximum")
# A callback dict's "mode" ("edge" or "level") <-> the wire's TriggerMode; unset is edge.
_MODES = {"edge": types_pb2.TRIGGER_MODE_EDGE, "level": types_pb2.TRIGGER_MODE_LEVEL}


def _plain(value: Any) -> Any:
    """Struct values back to Python: integral floats become ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return _plain(json_format.MessageToDict(struct))  # type: ignore[no-any-return]


def dict_to_struct(values: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def callback_to_dict(callback: types_pb2.Callback) -> dict[str, Any]:
    plain = {name: getattr(callback, name) for name in _CALLBACK_FIELDS}
    if callback.mode == types_pb2.TRIGGER_MODE_LEVEL:
        plain["mode"] = "level"
    elif callback.mode not in (types_pb2.TRIGGER_MODE_UNSPECIFIED, types_pb2.TRIGGER_MODE_EDGE):
        plain["mode"] = str(callback.mode)  # a mode this contract does not know: refused later
    return plain


def _callback(cb: Any) -> types_pb2.Callback:
    message = types_pb2.Callback(**{k: cb[k] for k in _CALLBACK_FIELDS if cb.get(k) is not None})
    mode = cb.get("mode")
    if mode:
        if mode not in _MODES:
            raise ValueError(f"callback mode {mode!r}: expected {' or '.join(_MODES)}")
        message.mode = _MODES[mode]
    return message


def job_to_dict(job: types_pb2.Job, *, include_callbacks: bool = False) -> dict[str, Any]:
    """The Qube job dict for a wire Job."""
    result: dict[str, Any] = struct_to_dict(job.extra) if job.HasField("extra") else {}
    result.update({name: getattr(job, name) for name in _SCALARS})
    result["agenda"] = [
        {
            "name": work.name,
            "status": work.status,
            "subid": work.subid,
            "host": work.host,
            "count": work.count,
            "resultpackage": struct_to_dict(work.resultpackage),
        }
        for work in job.agenda
    ]
    result["subjobs"] = [
        {"id": sub.id, "status": sub.status, "host": sub.host} for sub in job.subjobs
    ]
    if include_callbacks:
        result["callbacks"] = [callback_to_dict(cb) for cb in job.callbacks]
    return result


def _work_item(entry: Any) -> types_pb2.WorkItem:
    if not isinstance(entry, dict):
        return types_pb2.WorkItem(name=str(entry), subid=-1)
    item = types_pb2.WorkItem(
        name=str(entry.get("name", "")),
        status=str(entry.get("status", "")),
        subid=int(entry.get("subid", -1)),
        host=str(entry.get("host", "")),
        count=int(entry.get("count", 0)),
    )
    if entry.get("resultpackage"):
        item.resultpackage.CopyFrom(dict_to_struct(dict(entry["resultpackage"])))
    return item


def job_from_dict(job: dict[str, Any]) -> types_pb2.Job:
    """A wire Job for a Qube job dict; unknown keys go to ``extra``. Raises ValueError."""
    message = types_pb2.Job()
    for name in _SCALARS:
        if job.get(name) is not None:
            field_type = type(getattr(message, name))
            try:
                setattr(message, name, field_type(job[name]))
            except (TypeError, ValueError) as err:
                raise ValueError(f"job field {name!r}: {err}") from err
    message.agenda.extend(_work_item(entry) for entry in job.get("agenda") or [])
    for sub in job.get("subjobs") or []:
        message.subjobs.add(
            id=int(sub.get("id", 0)),
            status=str(sub.get("status", "")),
            host=str(sub.get("host", "")),
        )
    message.callbacks.extend(_callback(cb) for cb in job.get("callbacks") or [])
    extra = {key: value for key, value in job.items() if key not in _DEDICATED}
    if extra:
        try:
            message.extra.CopyFrom(dict_to_struct(extra))
        except (TypeError, ValueError) as err:
            raise ValueError(f"job fields {sorted(extra)} are not JSON values: {err}") from err
    return message
