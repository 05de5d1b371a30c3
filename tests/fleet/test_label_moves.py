"""A label or job id that comes to name another job: its old holder's latches go (probe 139).

A latch belongs to the job its atom named when it latched. Removing that job leaves the
latch (a finished render removed does not un-satisfy comp); a new job taking its label
in the pgrp, or its id registered again after its removal, clears the latches its old
holder's events set on atoms naming that label or id, so they wait for the new holder.
On PostgreSQL as on SQLite.
"""

from __future__ import annotations

from typing import Any

import pytest

from executor.cli.explain import entry_effect
from executor.model import Event
from executor.triggers.engine import TriggerEngine
from executor.triggers.journal import EntryKind
from tests.helpers.trigger_engines import MakeEngine

pytestmark = pytest.mark.service

BOTH = "complete-job-render && complete-job-ribgen"


def job(
    job_id: int, label: str, *triggers: str, mode: str = "edge", **extra: Any
) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": 1,
        "label": label,
        **extra,
        "callbacks": [
            {"triggers": t, "language": "qube", "code": "unblock-self", "mode": mode}
            for t in triggers
        ],
    }


def fired(result: tuple[list[Any], bool]) -> list[tuple[int, int]]:
    return [(f.callback.job_id, f.callback.callback_id) for f in result[0]]


async def _half_latched(engine: TriggerEngine) -> None:
    """In pgrp 1 render 2, ribgen 3, comp 4 (edge) and 6 (level) wait for both; render completes."""
    engine.register_job(job(2, "render", status="running"))
    engine.register_job(job(3, "ribgen", status="running"))
    engine.register_job(job(4, "comp", BOTH))
    engine.register_job(job(6, "comp2", BOTH, mode="level"))
    assert fired(await engine.publish(Event("complete", "job", 2), wait=True)) == []
    for comp in (4, 6):
        assert engine.explain(comp).callbacks[0].callback.latches == (True, False)


@pytest.mark.parametrize("remove", [True, False], ids=["removed", "relabelled"])
async def test_a_label_taken_by_a_new_job_clears_its_old_holders_latches(
    engines: MakeEngine, remove: bool
) -> None:
    engine = engines()
    await _half_latched(engine)
    if remove:
        await engine.publish(Event("removed", "job", 2), wait=True)
    else:
        engine.register_job(job(2, "render_v1", status="complete"))
    # The operator's resubmission of the render: pending, it has never run.
    engine.register_job(job(5, "render", status="pending"))

    for comp in (4, 6):
        (explained,) = engine.explain(comp).callbacks
        assert explained.callback.latches == (False, False)
        last = explained.journal[-1]
        assert last.kind is EntryKind.CLEARED
        assert last.latched == ("complete-job-render",)
        assert "the label 'render' now names job 5" in last.reason
        said = entry_effect({"kind": "cleared", "latched": last.latched, "reason": last.reason})
        assert said.startswith("cleared complete-job-render: the label 'render' now names job 5")
    # ribgen completing fired comp while job 5 was pending (probe 139 F1).
    assert fired(await engine.publish(Event("complete", "job", 3), wait=True)) == []
    assert sorted(fired(await engine.publish(Event("complete", "job", 5), wait=True))) == [
        (4, 1),
        (6, 1),
    ]


async def test_removing_the_job_a_latch_came_from_leaves_the_latch(engines: MakeEngine) -> None:
    engine = engines()
    await _half_latched(engine)
    await engine.publish(Event("removed", "job", 2), wait=True)
    for comp in (4, 6):
        assert engine.explain(comp).callbacks[0].callback.latches == (True, False)
    assert sorted(fired(await engine.publish(Event("complete", "job", 3), wait=True))) == [
        (4, 1),
        (6, 1),
    ]


async def test_the_same_job_taking_its_label_again_keeps_its_latches(engines: MakeEngine) -> None:
    engine = engines()
    await _half_latched(engine)
    engine.register_job(job(2, "render", status="complete"))  # registered again, unchanged
    engine.register_job(job(2, "other", status="complete"))
    engine.register_job(job(2, "render", status="complete"))  # back: no other job held it
    assert engine.explain(4).callbacks[0].callback.latches == (True, False)
    assert fired(await engine.publish(Event("complete", "job", 3), wait=True)) == [(4, 1), (6, 1)]


async def test_a_job_id_registered_again_after_its_removal_clears_its_old_latches(
    engines: MakeEngine,
) -> None:
    engine = engines()
    watcher = {
        "id": 10002,
        "pgrp": 10002,
        "callbacks": [
            {
                "triggers": "complete-job-10001 && complete-job-10003",
                "language": "qube",
                "code": "unblock-self",
                "mode": mode,
            }
            for mode in ("level", "edge")
        ],
    }
    engine.register_job({"id": 10001, "pgrp": 10001, "status": "running"})
    engine.register_job(watcher)
    assert fired(await engine.publish(Event("complete", "job", 10001), wait=True)) == []
    await engine.publish(Event("removed", "job", 10001), wait=True)
    latches = [cb.callback.latches for cb in engine.explain(10002).callbacks]
    assert latches == [(True, False), (True, False)]  # removal alone clears nothing

    engine.register_job({"id": 10001, "pgrp": 10001, "status": "pending"})  # another job
    explained = engine.explain(10002).callbacks
    assert [cb.callback.latches for cb in explained] == [(False, False), (False, False)]
    assert "job 10001 is another job now" in explained[0].journal[-1].reason
    # A level callback takes 10003's first registration; 10001 has not completed again.
    registered = engine.register_job({"id": 10003, "pgrp": 10003, "status": "complete"})
    assert registered.fired == []
    fired_now = fired(await engine.publish(Event("complete", "job", 10001), wait=True))
    assert fired_now == [(10002, 1)]  # the level one has 10003's completion already


async def test_a_label_checks_former_holder_is_the_last_one(engines: MakeEngine) -> None:
    engine = engines()
    waiting = {"triggers": "complete-job-render", "language": "qube", "code": "unblock-self"}
    engine.register_job({"id": 6001, "pgrp": 6001, "callbacks": [waiting]})

    def resolved() -> str:
        (check,) = engine.explain(6001).callbacks[0].checks
        return check.resolved

    engine.register_job({"id": 6005, "pgrp": 6001, "label": "render"})
    engine.register_job({"id": 6005, "pgrp": 6001, "label": "other"})
    engine.register_job({"id": 6006, "pgrp": 6001, "label": "render"})
    assert resolved() == "label 'render' names job 6006 now (job 6005 held it first)"
    engine.register_job({"id": 6006, "pgrp": 7000, "label": "render"})
    # It named 6005, which gave the label up before 6006 took it (probe 139 F2).
    assert resolved() == "label 'render' names no job in pgrp 6001 now (job 6006 held it)"
    engine.register_job({"id": 6007, "pgrp": 6001, "label": "render"})
    assert resolved() == "label 'render' names job 6007 now (job 6005 held it first)"
    engine.register_job({"id": 6005, "pgrp": 6001, "label": "render2"})
    engine.register_job({"id": 6007, "pgrp": 6001, "label": "x"})
    engine.register_job({"id": 6005, "pgrp": 6001, "label": "render"})
    assert resolved().startswith("label 'render' names job 6005 since ")


async def test_a_removal_in_a_group_is_remembered_for_the_id_registered_again(
    engines: MakeEngine,
) -> None:
    engine = engines()
    engine.register_job({"id": 20001, "pgrp": 20001, "status": "running"})
    engine.register_job(
        {
            "id": 20002,
            "pgrp": 20002,
            "callbacks": [
                {
                    "triggers": "complete-job-20001 && complete-job-20003",
                    "language": "qube",
                    "code": "unblock-self",
                }
            ],
        }
    )
    # One group (one transaction on PostgreSQL: group_*.py): the removal ends it.
    await engine.publish_many([Event("complete", "job", 20001), Event("removed", "job", 20001)])
    assert engine.explain(20002).callbacks[0].callback.latches == (True, False)
    engine.register_job({"id": 20001, "pgrp": 20001, "status": "pending"})
    assert engine.explain(20002).callbacks[0].callback.latches == (False, False)
    assert fired(await engine.publish(Event("complete", "job", 20003), wait=True)) == []
