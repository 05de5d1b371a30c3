"""Structs from the wire as plain values, naming the numbers JSON cannot hold.

A ``google.protobuf.Struct`` may carry NaN or ±Infinity (a double is a double), but a job
dict is JSON: it is stored, reported and shown to callbacks as such, and protobuf's own
conversion refuses them with a ValueError that names no field (an Execute answered
INTERNAL, a SubmitJobs "Fail to serialize NaN for Value.number_value", a supervisor's
JobInfo answer an executor bug). A request's is refused by name here; a supervisor's
answer is its malformed answer (``supervisor.py``), named by ``job_problem``. The
conversion is tried as it is; only when it fails is the Struct walked to name the value,
so a message without one pays nothing.
"""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

from executor.errors import InvalidRequestError
from supervisor_client.jobdict import job_to_dict, struct_to_dict
from supervisor_client.qbcallback.v1 import types_pb2

_SPELLED: dict[str, str] = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def struct_dict(field: str, struct: struct_pb2.Struct) -> dict[str, Any]:
    """``struct`` as a dict; InvalidRequestError naming ``field``'s key of a NaN or ±Infinity."""
    try:
        return struct_to_dict(struct)
    except ValueError:
        problem = _in_struct(field, struct)
        if problem is None:
            raise
        raise InvalidRequestError(problem) from None


def job_dict(job: types_pb2.Job, where: str) -> dict[str, Any]:
    """The job dict (with callbacks) of a request's Job; InvalidRequestError as ``struct_dict``.

    ``where`` names the job field ("context.job", "job"): a number is named inside its
    ``extra`` or a work item's ``resultpackage``.
    """
    try:
        return job_to_dict(job, include_callbacks=True)
    except ValueError:
        problem = job_problem(job, where)
        if problem is None:
            raise
        raise InvalidRequestError(problem) from None


def job_problem(job: types_pb2.Job, where: str) -> str | None:
    """The first number JSON cannot hold in ``job``'s Structs, named under ``where``; or None.

    Its ``extra``, then each work item's ``resultpackage``: ``where.extra.x: NaN is ...``.
    """
    problem = _in_struct(f"{where}.extra", job.extra)
    for index, item in enumerate(job.agenda):
        if problem is not None:
            break
        problem = _in_struct(f"{where}.agenda[{index}].resultpackage", item.resultpackage)
    return problem


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{key!r}]"


def _in_struct(path: str, struct: struct_pb2.Struct) -> str | None:
    for key in sorted(struct.fields):
        problem = _in_value(_key(path, key), struct.fields[key])
        if problem is not None:
            return problem
    return None


def _in_value(path: str, value: struct_pb2.Value) -> str | None:
    """What is wrong with the first number JSON cannot hold at or under ``path``, or None."""
    kind = value.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(value.number_value):
        spelled = _SPELLED[str(value.number_value)]
        return f"{path}: {spelled} is not a JSON number; a Struct's numbers must be finite"
    if kind == "struct_value":
        return _in_struct(path, value.struct_value)
    if kind == "list_value":
        for index, item in enumerate(value.list_value.values):
            problem = _in_value(f"{path}[{index}]", item)
            if problem is not None:
                return problem
    return None
