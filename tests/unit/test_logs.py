"""Structured logs: every extra field its own JSON key; the text format stays one readable line."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc._cython.cygrpc import ExecuteBatchError  # type: ignore[import-not-found]  # no stubs

from executor import logs
from executor.config import Settings
from executor.dispatcher import run_log_fields
from executor.model import CallbackSpec, Failure, Invocation, Outcome, RunResult, Usage

pytestmark = pytest.mark.unit


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.InvocationFilter())
    logger = logging.getLogger("tests.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


def failed_run() -> tuple[Invocation, RunResult]:
    invocation = Invocation(
        "inv-1",
        CallbackSpec(language="python", code="raise", id=3),
        {"id": 42},
        Settings().default_limits,
        source="job",
    )
    result = RunResult(
        "inv-1",
        Outcome.FAILED,
        failure=Failure("ValueError: bad frame range\nTraceback (most recent call last): ..."),
        usage=Usage(
            wall_seconds=0.0123, cpu_seconds=0.01, peak_rss_bytes=8 << 20, queue_seconds=0.5
        ),
    )
    return invocation, result


def test_json_puts_each_extra_field_in_its_own_key(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())
    invocation, result = failed_run()

    logger.info("callback ran", extra=run_log_fields(invocation, "python", result))

    entry = json.loads(stream.getvalue())
    assert entry["message"] == "callback ran"
    assert entry["invocation_id"] == "inv-1", "the record's own id wins over the context's"
    assert {k: entry[k] for k in ("job_id", "callback_id", "language", "source", "outcome")} == {
        "job_id": 42,
        "callback_id": 3,
        "language": "python",
        "source": "job",
        "outcome": "FAILED",
    }
    assert (entry["wall_seconds"], entry["cpu_seconds"], entry["queue_seconds"]) == (
        0.0123,
        0.01,
        0.5,
    )
    assert entry["peak_rss_bytes"] == 8 << 20
    assert entry["failure"] == "ValueError: bad frame range", "the first line only"
    assert entry["actions"] == 0


def test_json_without_extras_names_the_context_invocation(
    captured: tuple[logging.Logger, io.StringIO, logging.Handler],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(logs.JsonFormatter())
    token = logs.invocation_id.set("ctx-7")
    try:
        logger.warning("plain %s", "message")
    finally:
        logs.invocation_id.reset(token)
    entry = json.loads(stream.getvalue())
    assert (entry["invocation_id"], entry["message"], entry["level"]) == (
        "ctx-7",
        "plain message",
        "WARNING",
    )
    assert set(entry) == {"time", "level", "logger", "invocation_id", "message"}


def test_a_long_failure_is_cut() -> None:
    invocation, _ = failed_run()
    long = RunResult("inv-1", Outcome.FAILED, failure=Failure("x" * 1000))
    assert len(run_log_fields(invocation, "python", long)["failure"]) == 200
    assert run_log_fields(invocation, "python", RunResult("i", Outcome.SUCCEEDED))["failure"] == ""


def test_an_answer_the_client_would_not_take_is_one_warning_line() -> None:
    # Before, gRPC's core logged it as an ERROR with a traceback of its own frames.
    try:
        raise ExecuteBatchError('Failed "execute_batch": (SendMessageOperation)')
    except ExecuteBatchError:
        record = logging.LogRecord(
            logs.GRPC_CORE_LOGGER,
            logging.ERROR,
            "server.pyx.pxi",
            710,
            "ExecuteBatchError raised in core by servicer method [%s]",
            ("/qbcallback.v1.CallbackExecutorService/Execute",),
            sys.exc_info(),
        )
    assert logs.UnsentAnswerFilter().filter(record)
    assert (record.levelname, record.exc_info) == ("WARNING", None)
    assert record.getMessage().startswith(
        "the answer to /qbcallback.v1.CallbackExecutorService/Execute could not be sent: "
        "its call was ended on the client's side first (a receive limit below the answer's"
        " size, its deadline or cancel at the last moment, or the dashboard's page giving up"
        " on the read after its 5 s; see the README's Limits and outcomes)"
    )
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "\n## Limits and outcomes\n" in readme, "the section the line names"
    other = logging.LogRecord("x", logging.ERROR, "f", 1, "something else", None, None)
    assert logs.UnsentAnswerFilter().filter(other) and other.levelname == "ERROR"
