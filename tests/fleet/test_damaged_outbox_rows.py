"""A fleet's outbox row damaged from outside is set aside as on SQLite, by the same code.

PostgreSQL's typed columns hold no text in a time, but they hold ``NaN`` and
``Infinity``, which sort above every number (never due, and no wait can end on them),
and an empty payload, which would parse as a blank report.
"""

from __future__ import annotations

import pytest

from executor.migrations import open_postgres
from executor.runs.outbox import Backoff, Outbox
from tests.fleet.test_store import RecordingReceiver

pytestmark = pytest.mark.service


@pytest.mark.parametrize(
    ("column", "change"),
    [
        ("retry_at", "retry_at = 'NaN'"),
        ("retry_at", "retry_at = 'Infinity'"),
        ("payload", "payload = ''::bytea"),
        ("ended_at", "ended_at = '-Infinity'"),
    ],
)
async def test_a_damaged_row_is_set_aside_and_the_rest_delivered(
    pg_url: str, column: str, change: str
) -> None:
    receiver = RecordingReceiver()
    outbox = Outbox(pg_url, receiver, backoff=Backoff(first_s=0.01, cap_s=0.05), linger_s=0)
    admin = open_postgres(pg_url, application_name="test-damage")
    try:
        admin.execute("DELETE FROM outbox")
        for key in ("pg-a", "pg-dmg", "pg-c"):
            outbox.put(key, b"report")
        admin.execute(f"UPDATE outbox SET {change} WHERE key = 'pg-dmg'")  # noqa: S608 - the test's own
        outbox.start()
        assert await outbox.flush(3), "the damaged row is still pending"
        assert sorted(key for key, _ in receiver.sent) == ["pg-a", "pg-c"]
        (letter,) = outbox.dead_letters()
        assert letter.key == "pg-dmg"
        assert letter.last_error.startswith(f"damaged row: its {column} ")
    finally:
        admin.close()
        await outbox.close()
