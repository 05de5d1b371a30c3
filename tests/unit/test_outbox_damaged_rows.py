"""Outbox rows damaged from outside (an admin's sqlite3, a disk fault) are set aside, not retried.

SQLite stores what an UPDATE gives it whatever the column's type; a pending row it
cannot read must become a dead letter naming the column, logged once, and never hold
up the rows behind it nor the start-up's recovery.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from executor.runs.outbox import Backoff, Outbox
from executor.runs.outbox_rows import DamagedRow, read_pending
from supervisor_client.reference import ReferenceSupervisor
from tests.unit.test_outbox import ReferenceReceiver, payload

pytestmark = pytest.mark.unit

FAST = Backoff(first_s=0.01, cap_s=0.05)

# (column named in the reason, the damage done to the row)
DAMAGE = {
    "retry_at text": ("retry_at", "retry_at = 'x'"),
    "retry_at infinite": ("retry_at", "retry_at = 1e999"),
    "payload empty": ("payload", "payload = X''"),
    "payload text": ("payload", "payload = 'not bytes'"),
    "payload a number": ("payload", "payload = 5"),
    "key a blob": ("key", "key = X'00'"),
    "key empty": ("key", "key = ''"),
    "attempts text": ("attempts", "attempts = 'x'"),
    "ended_at text": ("ended_at", "ended_at = 'yesterday'"),
}


@pytest.fixture
def receiver() -> ReferenceReceiver:
    return ReferenceReceiver(ReferenceSupervisor(":memory:"))


def damage(path: Path, change: str, key: str = "dmg") -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"UPDATE outbox SET {change} WHERE key = ?", (key,))  # noqa: S608 - the test's own


def dead_letter_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]


@pytest.mark.parametrize("kind", DAMAGE)
async def test_a_damaged_pending_row_is_set_aside_once_naming_its_column(
    kind: str, tmp_path: Path, receiver: ReferenceReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    column, change = DAMAGE[kind]
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, receiver, backoff=FAST, linger_s=0.001)
    for key in ("a", "dmg", "c"):
        outbox.put(key, payload(0))
    damage(path, change)
    outbox.start()
    assert await outbox.flush(3), "the damaged row is still pending"
    for _ in range(20):  # more delivery turns: the row is not read (nor logged) again
        outbox.put("later", payload(1))
        assert await outbox.flush(3)
    assert sorted(receiver.order) == ["a", "c", "later"]  # no blank report among them
    assert receiver.supervisor.result("") is None
    (letter,) = outbox.dead_letters()
    await outbox.close()
    assert letter.last_error.startswith(f"damaged row: its {column} ")
    (line,) = dead_letter_lines(caplog)
    assert f"set aside as a dead letter: damaged row: its {column} " in line
    assert not [r for r in caplog.records if "unexpectedly" in r.getMessage()]


async def test_a_row_damaged_while_delivery_waits_is_set_aside(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, receiver, backoff=FAST, linger_s=0.001)
    outbox.start()
    outbox.put("a", payload(0))
    assert await outbox.flush(3)
    receiver.down = True  # "dmg" waits in the outbox while its row is damaged
    outbox.put("dmg", payload(1))
    damage(path, "retry_at = 'x'")
    receiver.down = False
    outbox.put("c", payload(2))
    assert await outbox.flush(3)
    assert receiver.order == ["a", "c"]
    (letter,) = outbox.dead_letters()
    assert letter.key == "dmg" and "retry_at" in letter.last_error
    await outbox.close()


async def test_a_row_the_start_up_could_not_rebuild_from_is_set_aside_once_delivery_starts(
    tmp_path: Path, receiver: ReferenceReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, receiver, backoff=FAST, linger_s=0.001)
    outbox.put("a", payload(0), ended_at=10.0, notes="{}")
    outbox.put("dmg", payload(1), ended_at=11.0, notes="{}")
    damage(path, "ended_at = 'yesterday'")
    assert [row.key for row in outbox.kept_notes()] == ["a"]  # the start-up's recovery
    outbox.start()
    assert await outbox.flush(3)
    assert receiver.order == ["a"]
    (letter,) = outbox.dead_letters()
    assert letter.key == "dmg" and letter.last_error.startswith("damaged row: its ended_at ")
    assert len(dead_letter_lines(caplog)) == 1
    await outbox.close()


async def test_a_dead_letter_with_damaged_columns_is_still_listed(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, receiver)
    outbox.put("dmg", payload(0))
    damage(path, "attempts = 'x', created_at = 'x'")
    outbox.start()
    assert await outbox.flush(3)
    (letter,) = outbox.dead_letters()
    assert (letter.key, letter.attempts, letter.created_at) == ("dmg", 0, 0.0)
    await outbox.close()


def test_an_empty_payload_is_refused_at_put(tmp_path: Path, receiver: ReferenceReceiver) -> None:
    outbox = Outbox(tmp_path / "outbox.db", receiver)
    with pytest.raises(ValueError, match="payload: the message under 'a' is empty"):
        outbox.put("a", b"")
    assert outbox.pending() == 0


@pytest.mark.parametrize(
    ("row", "column"),
    [
        # What PostgreSQL's typed columns can still hold: NaN and Infinity, empty bytes.
        ((1, "a", memoryview(b"x"), math.nan, 0, 1.0), "retry_at"),
        ((1, "a", memoryview(b"x"), 0.0, 0, math.inf), "ended_at"),
        ((1, "a", memoryview(b""), 0.0, 0, 1.0), "payload"),
        ((1, "a", b"x", 0.0, -1, 1.0), "attempts"),
        ((1, None, b"x", 0.0, 0, 1.0), "key"),
    ],
)
def test_each_column_is_read_as_its_type(row: tuple[object, ...], column: str) -> None:
    with pytest.raises(DamagedRow, match=f"^damaged row: its {column} ") as raised:
        read_pending(*row)
    assert raised.value.column == column


def test_a_sound_row_reads_as_its_values() -> None:
    row = read_pending(3, "a", memoryview(b"x"), 2, 1, 10.5)
    assert row == (3, "a", b"x", 2.0) and type(row.payload) is bytes
