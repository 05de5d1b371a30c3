"""Convert between the wire ``Job`` message and the Qube-shaped job dict callbacks see.

Dedicated proto fields map one to one; every other key of the dict travels in
``Job.extra`` (a Struct) and comes back merged into the dict. Struct numbers are
doubles, so integral values are turned back into ints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from supervisor_client.arguments import check_json, expects, message_from
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
# Qube's tallies of a job's work items (todotally) and instances (cpustally) per status,
# and its number of work items (todo): made from the agenda and instances whenever a
# job dict is made, so never stale, and never sent on the wire.
_TALLIED: Final = (
    "badlogin",
    "blocked",
    "complete",
    "failed",
    "killed",
    "pending",
    "running",
    "suspended",
    "unknown",
    "waiting",
)
_DERIVED = frozenset({"todo", "todotally", "cpustally"})
# A key named "extra" is not among them: it is one more job field, carried in Job.extra
# under its own name like any other (the farm stores it so too), and read back as it was.
_DEDICATED = frozenset((*_SCALARS, "agenda", "subjobs", "callbacks", *_DERIVED))
_CALLBACK_FIELDS = ("id", "triggers", "language", "code", "user", "count", "maximum")
# The trigger engine's limit on one trigger's size and how it joins a list's items
# (executor/triggers/lexer.py and parser.py; a test keeps them equal): a list joined past
# the limit is refused here, naming the item, rather than as a column of the join.
MAX_TRIGGER_BYTES: Final = 64 << 10
LIST_JOIN: Final = " || "
# A callback dict's "mode" ("edge" or "level") <-> the wire's TriggerMode; unset is edge.
_MODES = {"edge": types_pb2.TRIGGER_MODE_EDGE, "level": types_pb2.TRIGGER_MODE_LEVEL}


class JobDictError(ValueError):
    """A job dict (or a field of it) the wire Job cannot hold; the message names the field.

    A ValueError, as ``job_from_dict`` has always raised: wrong types included, so that a
    caller catching ValueError (the CLI, the farm) reports every malformed dict alike.
    """


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
    if not struct.fields:
        return {}  # most work items' resultpackage: no json_format round for each of them
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


def _balanced(text: str) -> bool:
    """True when every ')' closes an earlier '(' and none is left open."""
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def triggers_text(value: Any, where: str = "triggers") -> str:
    """A callback's ``triggers`` as one expression: a string as it is, a list as the OR of its items.

    Qube's class docstring allows a list-valued ``triggers``; it is the OR of its items
    (as the trigger grammar's ``parse_trigger_list`` reads it), joined with ``' || '``
    and no parentheses: ``["a", "b && c"]`` becomes ``a || b && c``, the same trigger
    as ``a || (b && c)`` (``&&`` binds tighter, and an OR of ORs is one OR), so the
    expression is no deeper than its deepest item. A one-item list is its item. What the
    items say is the trigger grammar's to check; this refuses (JobDictError, naming
    ``where[i]``) only what cannot be one term of it: not a string, empty, with
    parentheses that do not pair up, or past the size a trigger may have once joined
    (``MAX_TRIGGER_BYTES``, the joins counted).
    """
    if isinstance(value, str):
        return value
    if not isinstance(value, list | tuple):
        raise JobDictError(f"{where} must be a string or a list of strings, got {value!r}")
    if not value:
        raise JobDictError(f"{where} is an empty list; give at least one trigger")
    terms: list[str] = []
    size = 0
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise JobDictError(f"{where}[{index}] must be a string, got {item!r}")
        text = item.strip()
        if not text:
            raise JobDictError(f"{where}[{index}] is empty")
        if len(value) == 1:
            return text
        if not _balanced(text):
            raise JobDictError(f"{where}[{index}]: its parentheses do not pair up: {text!r}")
        size += (len(LIST_JOIN) if terms else 0) + len(text.encode("utf-8", "replace"))
        if size > MAX_TRIGGER_BYTES:
            raise JobDictError(
                f"{where}[{index}]: the items up to this one come to {size} bytes joined into"
                f" the one expression stored ({LIST_JOIN!r} between each two); a trigger is"
                f" at most {MAX_TRIGGER_BYTES} bytes (64 KiB)"
            )
        terms.append(text)
    return LIST_JOIN.join(terms)


def _callback(index: int, cb: Any) -> types_pb2.Callback:
    """The wire Callback of a callback dict; JobDictError naming ``callbacks[index]`` and the field."""
    where = f"callbacks[{index}]"
    if not isinstance(cb, Mapping):
        raise JobDictError(f"{where} must be a dict, got {cb!r}")
    fields = {name: cb[name] for name in _CALLBACK_FIELDS if cb.get(name) is not None}
    if "triggers" in fields:
        fields["triggers"] = triggers_text(fields["triggers"], f"{where}.triggers")
    try:
        message = message_from(types_pb2.Callback, fields, where=f"{where}.")
    except (TypeError, ValueError) as err:
        raise JobDictError(str(err)) from err
    mode = cb.get("mode")
    if mode:
        if not isinstance(mode, str) or mode not in _MODES:
            raise JobDictError(f"{where}.mode: {mode!r}; expected {' or '.join(_MODES)}")
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
    result["todo"] = len(job.agenda)
    result["todotally"] = _tally(work.status for work in job.agenda)
    result["cpustally"] = _tally(sub.status for sub in job.subjobs)
    if include_callbacks:
        result["callbacks"] = [callback_to_dict(cb) for cb in job.callbacks]
    return result


def _tally(statuses: Iterable[str]) -> dict[str, int]:
    """How many have each status Qube tallies; any other counts as ``unknown``."""
    counts = dict.fromkeys(_TALLIED, 0)
    for status in statuses:
        counts[status if status in counts else "unknown"] += 1
    return counts


def _items(name: str, value: Any, what: str) -> Iterable[Any]:
    """A job's list field (agenda, subjobs); JobDictError naming it for a str, a dict, ..."""
    if not value:  # None, or an empty value of any kind, as it always was: none
        return ()
    if not isinstance(value, list | tuple):  # a str would be taken as its characters
        raise JobDictError(
            f"job field {name!r}: expected a list of {what}, got {type(value).__name__}"
        )
    return value


def _whole(value: Any) -> Any:
    """An int field's value: digits in a str or an integral float as the int; else as it is.

    Qube's dicts may hold digits, JSON's and a Struct's numbers may be floats. Not
    ``int(value)`` for the rest: it took 41.9 for job 41 and True for job 1.
    """
    if isinstance(value, str) or (isinstance(value, float) and value.is_integer()):
        try:
            return int(value)
        except ValueError:
            pass
    return value  # the wire's own check refuses a bool, a fraction, ..., named (``_added``)


def _added(repeated: Any, kind: type[Message], where: str, **fields: Any) -> Any:
    """``repeated.add(**fields)`` (of ``kind``); JobDictError naming a field it cannot hold."""
    try:
        return repeated.add(**fields)
    except (TypeError, ValueError) as err:
        try:
            message_from(kind, fields, where=f"{where}.")
        except (TypeError, ValueError) as named:
            raise JobDictError(str(named)) from err
        raise JobDictError(f"{where}: {err}") from err


def _add_work_item(agenda: Any, index: int, entry: Any) -> None:
    """Append a work item to ``agenda`` (in place: a big job's 20,000 are not copied)."""
    if not isinstance(entry, Mapping):
        agenda.add(name=str(entry), subid=-1)
        return
    where = f"agenda[{index}]"
    get = entry.get
    item = _added(
        agenda,
        types_pb2.WorkItem,
        where,
        name=str(get("name", "")),
        status=str(get("status", "")),
        subid=_whole(get("subid", -1)),
        host=str(get("host", "")),
        count=_whole(get("count", 0)),
    )
    package = get("resultpackage")
    if package:
        if not isinstance(package, Mapping):
            raise JobDictError(
                f"{where}.resultpackage: expected a dict, got {type(package).__name__}"
            )
        item.resultpackage.CopyFrom(_struct(f"{where}.resultpackage", package))


def _struct(where: str, values: Mapping[str, Any]) -> struct_pb2.Struct:
    """``dict_to_struct``; JobDictError naming the value under ``where`` a Struct cannot hold."""
    try:
        return dict_to_struct(dict(values))
    except (TypeError, ValueError, AttributeError) as err:
        try:
            check_json(where, values, finite=False)
        except (TypeError, ValueError) as named:
            raise JobDictError(str(named)) from err
        raise JobDictError(f"{where}: {err}") from err


def job_from_dict(job: Mapping[str, Any]) -> types_pb2.Job:
    """A wire Job for a Qube job dict; unknown keys go to ``extra``.

    Raises JobDictError (a ValueError) naming the field the wire Job cannot hold.
    """
    message = types_pb2.Job()
    for name in _SCALARS:
        value = job.get(name)
        if value is not None:
            field_type = type(getattr(message, name))
            try:
                setattr(message, name, _whole(value) if field_type is int else field_type(value))
            except (TypeError, ValueError, OverflowError) as err:
                raise JobDictError(
                    f"job field {name!r}: expected {expects(types_pb2.Job, name)}, got {value!r}"
                ) from err
    for index, entry in enumerate(_items("agenda", job.get("agenda"), "work items")):
        _add_work_item(message.agenda, index, entry)
    for index, sub in enumerate(_items("subjobs", job.get("subjobs"), "subjob dicts")):
        if not isinstance(sub, Mapping):
            raise JobDictError(f"subjobs[{index}]: expected a dict, got {type(sub).__name__}")
        _added(
            message.subjobs,
            types_pb2.Subjob,
            f"subjobs[{index}]",
            id=_whole(sub.get("id", 0)),
            status=str(sub.get("status", "")),
            host=str(sub.get("host", "")),
        )
    callbacks = job.get("callbacks") or []
    if not isinstance(callbacks, list | tuple):
        raise JobDictError(f"callbacks must be a list of dicts, got {callbacks!r}")
    message.callbacks.extend(_callback(index, cb) for index, cb in enumerate(callbacks))
    extra = {key: value for key, value in job.items() if key not in _DEDICATED}
    for key in extra:
        if not isinstance(key, str):  # the Struct's own error names nothing
            raise JobDictError(f"job: expected str keys, got {type(key).__name__} {key!r}")
    if extra:
        try:
            message.extra.CopyFrom(dict_to_struct(extra))
        except (TypeError, ValueError, AttributeError) as err:
            for key, value in extra.items():
                try:
                    check_json(f"job field {key!r}", value, finite=False)
                except (TypeError, ValueError) as named:
                    raise JobDictError(str(named)) from err
            raise JobDictError(f"job fields {sorted(extra)} are not JSON values: {err}") from err
    return message


def job_message(job: Any) -> types_pb2.Job:
    """The ``job`` argument of a client's call as a Job: a Job as it is, a job dict converted.

    TypeError naming ``job`` for anything else (a list, a str, None), which ``dict()``
    would refuse in words that name nothing, or take apart.
    """
    if isinstance(job, types_pb2.Job):
        return job
    if not isinstance(job, Mapping):
        raise TypeError(f"job: expected a job dict or a Job, got {type(job).__name__}")
    return job_from_dict(job)
