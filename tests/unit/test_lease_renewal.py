"""``lease_renewal.renew_forever``: one turn per third of a lease, failures logged, until cancelled."""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest

from executor.errors import UnavailableError
from executor.lease_renewal import renew_forever

LOGGER = logging.getLogger("tests.lease_renewal")


async def test_it_renews_at_once_and_stops_when_cancelled() -> None:
    renewed = asyncio.Event()
    # A lease of an hour: the next turn is 20 minutes off, so a turn seen is the first.
    task = asyncio.create_task(
        renew_forever(renewed.set, lease_s=3600, what="claims", logger=LOGGER)
    )
    await asyncio.wait_for(renewed.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert task.cancelled()


async def test_the_turns_are_a_third_of_a_lease_apart() -> None:
    loop = asyncio.get_running_loop()
    turns: list[float] = []
    third = asyncio.Event()

    def renew() -> None:
        turns.append(loop.time())
        if len(turns) == 3:
            third.set()

    task = asyncio.create_task(renew_forever(renew, lease_s=0.3, what="claims", logger=LOGGER))
    await asyncio.wait_for(third.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    # At least a third apart (the loop may wake up to its clock's resolution early).
    assert all(later - earlier >= 0.099 for earlier, later in itertools.pairwise(turns))


async def test_a_store_unreachable_for_now_is_logged_told_and_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures: list[str] = []
    renewed = asyncio.Event()
    turns = 0

    def renew() -> None:
        nonlocal turns
        turns += 1
        if turns == 1:
            raise UnavailableError("PostgreSQL is away")
        renewed.set()

    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        task = asyncio.create_task(
            renew_forever(
                renew,
                lease_s=0.03,
                what="firing claims",
                logger=LOGGER,
                failed=lambda: failures.append("told"),
            )
        )
        await asyncio.wait_for(renewed.wait(), 5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert failures == ["told"]
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        (LOGGER.name, logging.WARNING, "firing claims: PostgreSQL is away")
    ]


async def test_any_other_error_ends_the_loop() -> None:
    # Only a store unreachable for now is waited out; a bug is not logged for ever.
    def renew() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await asyncio.wait_for(renew_forever(renew, lease_s=0.03, what="x", logger=LOGGER), 5)
