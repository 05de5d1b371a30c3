"""Logging set-up, the filter that stamps each record with the invocation id, and the JSON format.

``log_format = "json"`` writes one object per line. Every field a call passes with
``extra=`` becomes a key of its own (the per-run line's job, callback, language,
outcome, wall, CPU, peak memory, queue time, source and failure are separate keys), so a
shipper (Loki, Elastic, Vector) indexes them without a regex. The text format keeps the
same facts in the message, for a person.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from typing import Any, Final

invocation_id: contextvars.ContextVar[str] = contextvars.ContextVar("invocation_id", default="-")

# What every LogRecord carries; any other attribute on a record came from ``extra=``.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",  # 3.12 adds it to every record
}


def outside_any_run() -> contextvars.Context:
    """A context of no run, for a reader, timer or task that outlives the run it was made in.

    asyncio copies the current context into every callback and task: one made while a
    run is served would stamp that run's invocation id on each line it logs, hours after
    the run ended (a zygote's death, say). Executor-wide lines carry ``-``.
    """
    return contextvars.Context()


class InvocationFilter(logging.Filter):
    """Adds ``record.invocation_id`` from the context of the request being served.

    A record that names its invocation itself (``extra={"invocation_id": ...}``, as the
    per-run line does for runs the trigger engine fired) keeps it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "invocation_id"):
            record.invocation_id = invocation_id.get()
        return True


# gRPC's core logs a failed send of a handler's answer with a traceback at ERROR.
GRPC_CORE_LOGGER: Final = "grpc._cython.cygrpc"
_UNSENT_ANSWER: Final = "ExecuteBatchError raised in core by servicer method"


class UnsentAnswerFilter(logging.Filter):
    """Turns gRPC's traceback for an answer it could not send into one WARNING line.

    The client closed the call while the answer was being sent: its receive limit is
    below the answer's size (gRPC's default 4 MiB; an Execute answer may reach
    2 x output_bytes plus about 1.1 MiB), or its deadline passed or it cancelled at the
    last moment. The dashboard's own reads end so when a page gives up waiting (after
    its 5 s): the client is then the executor's, not anyone's who made a call. The run is
    recorded either way. gRPC says nothing when the whole answer had left before the
    client refused it, so a refused answer does not always show here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and message.startswith(_UNSENT_ANSWER):
            method = message.removeprefix(_UNSENT_ANSWER).strip(" []")
            record.msg = (
                "the answer to %s could not be sent: its call was ended on the client's side"
                " first (a receive limit below the answer's size, its deadline or cancel at the"
                " last moment, or the dashboard's page giving up on the read after its 5 s;"
                " see the README's Limits and outcomes)"
            )
            record.args = (method,)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; ``extra=`` fields become keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "invocation_id": getattr(record, "invocation_id", "-"),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# gRPC's own Python loggers: at DEBUG, a "[_cygrpc] Loaded running loop" line for every
# call (22 of 30 lines of a short session; probe 107) buried the executor's own.
GRPC_LOGGER: Final = "grpc"


def configure(level: str, fmt: str, *, grpc_debug: bool = False) -> None:
    """Configure the root logger; only the CLI calls this.

    gRPC's own loggers log from INFO up even at DEBUG, unless ``grpc_debug``
    (``GRPC_VERBOSITY=debug``, gRPC's own switch for its core's logs, asks for them).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(InvocationFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(invocation_id)s] %(message)s")
        )
    core = logging.getLogger(GRPC_CORE_LOGGER)
    if not any(isinstance(f, UnsentAnswerFilter) for f in core.filters):
        core.addFilter(UnsentAnswerFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quieter = root.level < logging.INFO and not grpc_debug
    logging.getLogger(GRPC_LOGGER).setLevel(logging.INFO if quieter else logging.NOTSET)
