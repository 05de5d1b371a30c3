"""Logging set-up and the context filter that stamps each record with the invocation id."""

from __future__ import annotations

import contextvars
import json
import logging
import sys

invocation_id: contextvars.ContextVar[str] = contextvars.ContextVar("invocation_id", default="-")


class InvocationFilter(logging.Filter):
    """Adds ``record.invocation_id`` from the context of the request being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.invocation_id = invocation_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "invocation_id": getattr(record, "invocation_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str, fmt: str) -> None:
    """Configure the root logger; only the CLI calls this."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(InvocationFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(invocation_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
