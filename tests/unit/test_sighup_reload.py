"""SIGHUP while a fleet's store is away: this replica reloads at once, the fleet when it answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from executor import server
from executor.sql import StoreUnavailable
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.unit


class Engine:
    def __init__(self, store_away_for: int) -> None:
        self.store_away_for = store_away_for
        self.reloads: list[bool] = []

    async def reload_universal_off_loop(self, *, fleet_wide: bool = False) -> list[str]:
        if fleet_wide and self.store_away_for:
            self.store_away_for -= 1
            raise StoreUnavailable("PostgreSQL store unreachable")
        self.reloads.append(fleet_wide)
        return []


async def test_a_sighup_with_the_store_away_reloads_here_and_tells_the_fleet_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found by fault injection: the handler raised, and no replica, not even this one,
    # took the new callbacks.conf until the next SIGHUP.
    engine: Any = Engine(store_away_for=2)
    tell = server._tell_the_fleet
    monkeypatch.setattr(server, "_tell_the_fleet", lambda e: tell(e, interval_s=0.01))

    server._reload(engine)

    assert await eventually(lambda: engine.reloads == [False], timeout_s=5)  # here, at once
    assert await eventually(lambda: engine.reloads == [False, True], timeout_s=5)
    await asyncio.sleep(0)
    assert not server._background
