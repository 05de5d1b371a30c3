"""What the outbox's log says of a spell of failed deliveries, and its backoff (probe 137 F2).

OutboxOutage on its own, with a clock the test moves: a minute passes in no time.
"""

from __future__ import annotations

import logging
import random

import pytest

from executor.runs.outbox import Backoff
from executor.runs.outbox_outage import OutboxOutage

pytestmark = pytest.mark.unit

WHY = "UNAVAILABLE: connection refused"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.name == "executor.runs.outbox_outage" and r.levelno >= logging.INFO
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outage(clock: Clock) -> OutboxOutage:
    return OutboxOutage(Backoff(first_s=0.1, cap_s=5.0), random.Random(7), clock=clock)


def test_a_long_outage_is_told_once_a_minute(
    outage: OutboxOutage, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="executor.runs.outbox_outage")
    for _ in range(50):  # 125 s of tries 2.5 s apart
        outage.failed(WHY, 3)
        clock.now += 2.5
    outage.went_through(3, 0)
    lines = _lines(caplog)
    assert [line.split(" (")[0] for line in lines] == [
        "WARNING outbox: results cannot be delivered",
        "WARNING outbox: results still cannot be delivered after 60 s, 25 tries",
        "WARNING outbox: results still cannot be delivered after 120 s, 49 tries",
        "INFO outbox: delivery resumed after 125.0 s",
    ], lines
    assert f"({WHY}): 3 pending, retrying in " in lines[1], lines[1]
    assert lines[-1].endswith("(50 tries failed): 3 delivered, 0 pending"), lines[-1]


def test_a_flapping_supervisor_is_told_once_a_minute_with_its_spells_counted(
    outage: OutboxOutage, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="executor.runs.outbox_outage")
    for _ in range(21):  # away 1.5 s, answering 1.5 s: 63 s
        outage.failed(WHY, 1)
        clock.now += 1.5
        outage.went_through(1, 0)
        clock.now += 1.5
    lines = _lines(caplog)
    assert len(lines) == 4, lines
    assert lines[1].startswith("INFO outbox: delivery resumed after 1.5 s"), lines
    assert lines[2].startswith("WARNING outbox: results cannot be delivered"), lines
    assert lines[2].endswith("; it failed and went through again 19 times since the last such line")


def test_the_backoff_starts_again_from_its_floor_only_after_a_quiet_spell(
    outage: OutboxOutage, clock: Clock
) -> None:
    for _ in range(8):
        outage.failed(WHY, 1)
    outage.went_through(1, 0)
    clock.now += 10.0  # answered, then away again soon
    assert outage.failed(WHY, 1) >= 2.5
    outage.went_through(1, 0)
    clock.now += 30.0  # delivering for a while: a new outage starts at the floor
    assert outage.failed(WHY, 1) <= 0.1
