"""Bad input at every door: undecodable bytes, numbers out of range, damaged databases, bad ports.

Each gets a clear refusal (INVALID_ARGUMENT naming what is wrong; at start-up one line
and exit code 2) and nothing is lost or rewritten.
"""

from __future__ import annotations

import asyncio
import logging
import math
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

from supervisor_client import ExecutorClient, InvalidRequestError
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2
from tests.conftest import Stack, stack_settings
from tests.faults.helpers import executor, field, nested_struct, raw_call, small_tmpfs, varint

pytestmark = pytest.mark.faults

METHODS = [
    method
    for service in executor_pb2.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]


def _undecodable(method: MethodDescriptor) -> dict[str, bytes]:
    valid = executor_pb2.ExecuteRequest(invocation_id="x" * 40).SerializeToString()
    payloads = {
        "random bytes": bytes(range(256)) * 4,
        "truncated message": valid[: len(valid) // 2],
    }
    strings = [f for f in method.input_type.fields if f.type == FieldDescriptor.TYPE_STRING]
    if strings:
        payloads["invalid UTF-8 in a string field"] = field(strings[0].number, b"\xff\xfe\xfd")
    if method.input_type.fields:
        number = method.input_type.fields[0].number  # sent with a wire type it does not have
        wrong = 5 if method.input_type.fields[0].type != FieldDescriptor.TYPE_FLOAT else 1
        payloads["a field with the wrong wire type"] = varint(number << 3 | wrong) + b"\x00" * 8
    return payloads


@pytest.mark.parametrize("method", METHODS, ids=lambda method: method.full_name)
async def test_undecodable_requests_are_invalid_argument_on_every_rpc(
    stack_warm: Stack, method: MethodDescriptor, caplog: pytest.LogCaptureFixture
) -> None:
    path = f"/{method.containing_service.full_name}/{method.name}"
    for name, payload in _undecodable(method).items():
        with caplog.at_level(logging.INFO, logger="executor.api.interceptors"):
            code = await raw_call(stack_warm.channel, path, payload)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code)
    refusals = [r for r in caplog.records if "does not decode" in r.getMessage()]
    assert refusals and all(not r.exc_info for r in refusals), "one line each, no traceback"


async def test_deeply_nested_job_extra_is_invalid_argument(stack_warm: Stack) -> None:
    job = varint(1 << 3) + varint(7)  # Job.id = 7
    job += field(18, nested_struct(200))  # Job.extra, nested beyond protobuf's limit
    request = field(2, field(3, b"python") + field(4, b"print(1)")) + field(3, field(1, job))
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = stack_warm.channel.unary_unary(
        "/qbcallback.v1.CallbackExecutorService/Execute",
        request_serializer=None,
        response_deserializer=None,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(request, timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Named, not only "not a valid Execute message" as garbage is (probe 123).
    assert refused.value.details() == (
        "the request is not a valid Execute message: context.job.extra nests messages more"
        " than 100 deep, protobuf's limit (in a Struct, a list takes two levels, a dict three)"
    )


async def test_invalid_utf8_is_refused_naming_its_field(stack_warm: Stack) -> None:
    execute = "/qbcallback.v1.CallbackExecutorService/Execute"
    code_field = field(2, field(3, b"python") + field(4, b"print(1)\xff\xfe"))
    request = code_field + field(3, field(1, varint(1 << 3) + varint(1)))
    change_work = field(2, b"1") + field(2, b"2\xc3\x28")  # ChangeWorkRequest.work
    for method, payload, details in [
        (
            execute,
            request,
            "the request is not a valid Execute message: callback.code is not valid UTF-8",
        ),
        (
            "/qbcallback.v1.FarmService/ChangeWork",
            change_work,
            "the request is not a valid ChangeWork message: work[1] is not valid UTF-8",
        ),
    ]:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = stack_warm.channel.unary_unary(
            method, request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(payload, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith(details)


async def test_a_number_json_cannot_hold_in_a_struct_is_invalid_argument(
    stack_warm: Stack,
) -> None:
    # Execute and RegisterJob answered INTERNAL with an incident id for Job.extra {x: NaN}.
    job = types_pb2.Job(id=3)
    job.extra.update({"x": math.nan})
    request = executor_pb2.ExecuteRequest(
        callback=types_pb2.Callback(language="python", code="print(1)"),
        context=executor_pb2.JobContext(job=job),
    )
    for call, message, where in [
        (stack_warm.stub.Execute, request, "context.job.extra.x"),
        (
            stack_warm.triggers.RegisterJob,
            executor_pb2.RegisterJobRequest(job=job),
            "job.extra.x",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call(message, timeout=30)  # type: ignore[operator]
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == (
            f"{where}: NaN is not a JSON number; a Struct's numbers must be finite"
        )


async def _refused(call: object) -> str:
    with pytest.raises(InvalidRequestError) as refused:
        await call  # type: ignore[misc]
    return refused.value.details


async def test_numbers_out_of_range_are_refused_naming_the_field(stack_warm: Stack) -> None:
    client = stack_warm.client
    too_big = 1 << 63
    details = await _refused(
        client.execute_callback(language="python", code="1", job={"id": too_big})
    )
    assert "context.job.id" in details and "out of range" in details
    details = await _refused(
        client.execute_callback(language="python", code="1", job={"id": 3, "pgrp": too_big})
    )
    assert "context.job.pgrp" in details
    for bad in (math.nan, math.inf):
        details = await _refused(
            client.execute_callback(
                language="python", code="1", job={"id": 3}, limits={"cpu_seconds": bad}
            )
        )
        assert "limits.cpu_seconds" in details and "finite" in details
    details = await _refused(
        client.publish_event(name="complete", type="job", job_id=(1 << 64) - 1)
    )
    assert "job_id" in details
    details = await _refused(client.list_runs(job_id=too_big))
    assert "job_id" in details
    details = await _refused(client.list_runs(since=math.nan))
    assert "since" in details
    details = await _refused(client.register_job(types_pb2.Job(id=5, pid=too_big)))
    assert "job.pid" in details
    # Nothing was harmed: the executor still runs callbacks.
    ok = await client.execute_callback(language="python", code="print(1)", job={"id": 3})
    assert ok.outcome == executor_pb2.OUTCOME_SUCCEEDED


async def _serve(data_dir: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "executor",
        "serve",
        "--data-dir",
        str(data_dir),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


@pytest.mark.parametrize("name", ["runs.db", "outbox.db", "triggers.db", "supervisor.db"])
async def test_a_damaged_database_stops_start_up_naming_it_and_is_left_untouched(
    tmp_path: Path, name: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    damaged = data_dir / name
    garbage = b"this is not an SQLite database, whatever its name says\n" * 100
    damaged.write_bytes(garbage)

    code, err = await _serve(data_dir, "--bind", "127.0.0.1:0")

    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("cbexec:")]
    assert len(lines) == 1, err
    assert str(damaged) in lines[0] and "untouched" in lines[0]
    assert "Traceback" not in err
    assert damaged.read_bytes() == garbage


async def test_a_read_only_data_dir_stops_start_up_saying_so(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", 8 << 20) as disk:
        data_dir = disk / "data"
        data_dir.mkdir(mode=0o700)
        (data_dir / "outbox.db-wal").write_bytes(b"")  # as a crash leaves it
        remount = ["mount", "-o", "remount,ro", str(disk)]
        await asyncio.to_thread(subprocess.run, remount, check=True)

        code, err = await _serve(data_dir, "--bind", "127.0.0.1:0")

    assert code == 2, err
    assert f"cbexec: data_dir: {data_dir} is not writable by this user" in err
    assert "Traceback" not in err and "damaged" not in err


async def test_port_mistakes_are_refused_at_start(tmp_path: Path) -> None:
    async with executor(stack_settings(tmp_path / "first")) as first:
        taken = f"127.0.0.1:{first.port}"
        code, err = await _serve(tmp_path / "second", "--bind", taken)
        assert code == 2, err
        assert f"bind: cannot listen on {taken}" in err and "Traceback" not in err
        # The first executor still answers every call itself.
        async with ExecutorClient(taken) as client:
            ok = await client.execute_callback(language="qube", code="block-self", job={"id": 1})
            assert ok.invocation_id
    for bind, expected in (
        ("127.0.0.1:99999", "out of range"),
        ("203.0.113.7:50051", "cannot listen on 203.0.113.7:50051"),
    ):
        code, err = await _serve(tmp_path / "third", "--bind", bind)
        assert code == 2, err
        assert expected in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err
