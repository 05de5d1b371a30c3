"""Naming the field that makes request bytes undecodable: invalid UTF-8, nesting too deep (protobuf names none)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import DecodeError

from executor.api.undecodable import undecodable_field
from supervisor_client.qbcallback.v1 import executor_pb2, farm_pb2, types_pb2

pytestmark = pytest.mark.unit

BAD = b"\xff\xfe"


def _spoiled(message: object, marker: bytes) -> bytes:
    raw: bytes = message.SerializeToString()  # type: ignore[attr-defined]
    assert raw.count(marker) == 1
    return raw.replace(marker, BAD)


@pytest.mark.parametrize(
    ("message", "path"),
    [
        (
            executor_pb2.ExecuteRequest(
                callback=types_pb2.Callback(language="python", code="print('QQ')"),
                context=executor_pb2.JobContext(job=types_pb2.Job(id=1)),
            ),
            "callback.code",
        ),
        (farm_pb2.ChangeWorkRequest(job_id=1, work=["a", "b", "QQ"]), "work[2]"),
        (
            executor_pb2.PublishEventsRequest(
                events=[
                    executor_pb2.PublishEventRequest(name="a"),
                    executor_pb2.PublishEventRequest(name="b", host="QQ"),
                ]
            ),
            "events[1].host",
        ),
        (
            executor_pb2.ExecuteRequest(
                context=executor_pb2.JobContext(
                    job=types_pb2.Job(id=1, agenda=[types_pb2.WorkItem(name="1", host="QQ")])
                )
            ),
            "context.job.agenda[0].host",
        ),
        (executor_pb2.ListRunsRequest(language="QQ"), "language"),
    ],
)
def test_the_field_holding_invalid_utf8_is_named(message: object, path: str) -> None:
    raw = _spoiled(message, b"QQ")
    with pytest.raises(DecodeError):  # what the guard sees first: protobuf names no field
        type(message).FromString(raw)  # type: ignore[attr-defined]
    assert undecodable_field(message.DESCRIPTOR, raw) == (  # type: ignore[attr-defined]
        f"{path} is not valid UTF-8 (no string field may hold other bytes)"
    )


def test_a_string_inside_a_struct_is_named_by_its_struct_field() -> None:
    message = executor_pb2.ExecuteRequest()
    message.context.job.extra.update({"k": {"x": ["QQ"]}})
    raw = _spoiled(message, b"QQ")
    assert undecodable_field(message.DESCRIPTOR, raw) == (
        "context.job.extra is not valid UTF-8 (no string field may hold other bytes)"
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"\x12\x10\x1a\x06python",  # truncated: a length beyond the bytes
        bytes(range(256)),
        executor_pb2.ExecuteRequest(invocation_id="fine").SerializeToString(),
    ],
)
def test_bytes_without_such_a_field_name_nothing(raw: bytes) -> None:
    assert undecodable_field(executor_pb2.ExecuteRequest.DESCRIPTOR, raw) is None


def _nested(levels: int, inner: object) -> executor_pb2.ExecuteRequest:
    value: Any = inner
    for _ in range(levels):
        value = [value] if isinstance(inner, list) else {"a": value}
    message = executor_pb2.ExecuteRequest(invocation_id="deep")
    message.context.job.extra.update({"k": value})
    return message


@pytest.mark.parametrize(("kind", "deepest"), [([], 47), ({}, 31)])
def test_nesting_past_protobufs_limit_is_named_by_its_struct_field(
    kind: object, deepest: int
) -> None:
    # protobuf says only "Wire format was corrupt", as for garbage (probe 123).
    fits = _nested(deepest, kind).SerializeToString()
    executor_pb2.ExecuteRequest.FromString(fits)
    assert undecodable_field(executor_pb2.ExecuteRequest.DESCRIPTOR, fits) is None
    deeper = _nested(deepest + 1, kind).SerializeToString()
    with pytest.raises(DecodeError):
        executor_pb2.ExecuteRequest.FromString(deeper)
    assert undecodable_field(executor_pb2.ExecuteRequest.DESCRIPTOR, deeper) == (
        "context.job.extra nests messages more than 100 deep, protobuf's limit"
        " (in a Struct, a list takes two levels, a dict three)"
    )
