"""A repeat's tick is skipped while its last firing is unfinished at any replica (probe 92).

The check reads the shared queue in the transaction that decides the tick, so a replica
that takes over a repeat's clock does not pile firings on one another replica still runs.
"""

from __future__ import annotations

import pytest

from tests.helpers.trigger_engines import MakeEngine, finish_firings

pytestmark = pytest.mark.service

NOW = 1_800_000_000.0
START = int(NOW) - 946702800


def _slow_repeat(job_id: int) -> dict[str, object]:
    trigger = f"dummy-repeat-self-{START}-1"
    return {
        "id": job_id,
        "user": "a",
        "callbacks": [{"triggers": trigger, "language": "qube", "code": "x"}],
    }


async def test_a_tick_at_another_replica_waits_for_the_unfinished_firing(
    engines: MakeEngine,
) -> None:
    now = [NOW]
    first = engines(start=False, clock=lambda: now[0])
    second = engines(start=False, clock=lambda: now[0])
    first.register_job(_slow_repeat(1))
    assert len(first.fire_due_timers()) == 1  # queued, owned by the first

    for _ in range(3):
        now[0] += 1
        assert second.fire_due_timers() == []
        assert first.fire_due_timers() == []
    assert second.stats.repeat_ticks_skipped + first.stats.repeat_ticks_skipped == 3
    assert second.store.count_firings() == 1

    finish_firings(first)
    now[0] += 1
    assert len(second.fire_due_timers()) == 1
