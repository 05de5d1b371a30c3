"""Trigger semantics probes 42 and 87 found wrong, on PostgreSQL as on SQLite.

A universal line keeps its state and journal when its per-job id moves, and a replaced
callback's journal is not shown as the new one's; without an agenda, an atom without
``{work}`` latches for the items events name later too, and with one, for the items a
registration adds; a job's own callback registered again with its trigger written
otherwise (same canonical form) keeps its latches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from executor.model import Event
from executor.triggers.journal import EntryKind
from tests.helpers.trigger_engines import MakeEngine

pytestmark = pytest.mark.service


def own(job_id: int, *triggers: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": job_id,
        "callbacks": [
            {"triggers": t, "language": "qube", "code": "unblock-self"} for t in triggers
        ],
    }


async def test_a_level_line_whose_id_moved_keeps_its_submission_and_journal(
    engines: MakeEngine, tmp_path: Path
) -> None:
    conf = tmp_path / "callback"
    conf.mkdir()
    (conf / "logged.qcb").write_text("mail-status")
    (conf / "other.qcb").write_text("mail-status")
    (conf / "callbacks.conf").write_text("logged.qcb [level] = submit-job-self\n")
    engine = engines(universal_dirs=[conf])
    assert engine.reload_universal() == []
    first = engine.register_job(
        own(60, "complete-job-self", "complete-job-self && failed-job-self")
    )
    assert [f.callback.callback_id for f in first.fired] == [3]
    await engine.publish(Event("complete", "job", 60), wait=True)

    (conf / "callbacks.conf").write_text(
        "other.qcb = done-job-self\nlogged.qcb [level] = submit-job-self\n"
    )
    assert engine.reload_universal() == []
    again = engine.register_job(
        own(60, "complete-job-self", "complete-job-self && killed-job-self")
    )
    assert again.fired == []

    explained = {cb.callback.callback_id: cb for cb in engine.explain(60).callbacks}
    assert explained[1].callback.count == 1  # kept: same id, trigger, code and mode
    assert [e.kind for e in explained[1].journal] == [EntryKind.FIRED]
    assert (explained[2].callback.latches, explained[2].journal) == ((False, False), ())
    assert (explained[3].callback.triggers, explained[3].journal) == ("done-job-self", ())
    assert explained[4].callback.triggers == "submit-job-self"
    assert explained[4].callback.count == 1
    assert [e.kind for e in explained[4].journal] == [EntryKind.LEVEL]


async def test_without_an_agenda_what_latches_for_every_item_reaches_items_named_later(
    engines: MakeEngine,
) -> None:
    engine = engines()
    engine.register_job({"id": 70, "pgrp": 70, "label": "lb"})
    engine.register_job(
        {
            "id": 71,
            "pgrp": 70,
            "callbacks": [
                {"triggers": t, "language": "qube", "code": "unblock-work-self"}
                for t in (
                    "complete-work-self-{work} && complete-job-lb",
                    "complete-work-self-{work} && complete-work-self-*",
                )
            ],
        }
    )

    # In one group: the later events read what the earlier ones left, not yet written.
    decided = await engine.publish_many(
        [
            Event("complete", "job", 70, event_id="lb"),
            Event("complete", "work", 71, work_name="1", event_id="w1"),
            Event("complete", "work", 71, work_name="2", event_id="w2"),
        ]
    )
    assert [[(f.callback.callback_id, f.work_name) for f in fired] for fired, _ in decided] == [
        [],
        [(1, "1"), (2, "1")],
        [(1, "2"), (2, "2")],
    ]
    fired, _ = await engine.publish(Event("complete", "work", 71, work_name="3"), wait=True)
    assert [(f.callback.callback_id, f.work_name) for f in fired] == [(1, "3"), (2, "3")]


async def test_the_submission_of_a_job_never_registered_is_remembered_for_level_callbacks(
    engines: MakeEngine,
) -> None:
    engine = engines()
    waiting = {"triggers": "submit-job-80", "language": "qube", "code": "x", "mode": "level"}
    engine.register_job({"id": 81, "pgrp": 81, "callbacks": [waiting]})
    decided = await engine.publish_many([Event("submit", "job", 80, event_id="s80")])
    assert [f.callback.job_id for f in decided[0][0]] == [81]

    later = engine.register_job({"id": 82, "pgrp": 82, "callbacks": [waiting]})
    assert [f.callback.job_id for f in later.fired] == [82]
    assert engine.register_job({"id": 80, "pgrp": 80}).fired == []  # the same submission
    with engine.store.outside_transaction() as db:
        count = db.execute("SELECT count(*) FROM unregistered_submissions").fetchone()[0]
    assert count == 0  # its states took over


def level_star(job_id: int, trigger: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": 90,
        "callbacks": [{"triggers": trigger, "language": "qube", "code": "x", "mode": "level"}],
    }


async def test_a_level_star_atom_fires_with_the_item_whose_event_came_last(
    engines: MakeEngine,
) -> None:
    engine = engines()
    frames = [{"name": n, "status": "pending"} for n in ("1", "2", "3")]
    engine.register_job({"id": 90, "pgrp": 90, "label": "src", "agenda": frames})
    for frame in ("1", "3", "2"):  # not agenda order: the last event wins, not the first item
        await engine.publish(Event("complete", "work", 90, work_name=frame), wait=True)

    registration = engine.register_job(level_star(91, "complete-work-src-*"))

    assert [f.work_name for f in registration.fired] == ["2"]
    (entry,) = engine.explain(91).callbacks[0].journal
    assert entry.seen.event == Event("complete", "work", 90, work_name="2")


async def test_a_level_star_atom_takes_an_item_an_event_moved_over_registered_states(
    engines: MakeEngine,
) -> None:
    engine = engines()
    # States a registration gave carry no time: of those, the last in agenda order.
    done = [{"name": n, "status": "complete"} for n in ("1", "2")]
    engine.register_job({"id": 90, "pgrp": 90, "label": "src", "agenda": done})
    assert [f.work_name for f in engine.register_job(level_star(91, "done-work-src-*")).fired] == [
        "2"
    ]

    # An event came after the registration that gave the others: its item is the latest.
    frames = [{"name": "1", "status": "pending"}, {"name": "2", "status": "complete"}]
    engine.register_job({"id": 92, "pgrp": 90, "label": "other", "agenda": frames})
    await engine.publish(Event("complete", "work", 92, work_name="1"), wait=True)
    assert [
        f.work_name for f in engine.register_job(level_star(93, "complete-work-other-*")).fired
    ] == ["1"]


async def test_an_own_callback_registered_again_in_other_spacing_keeps_its_latches(
    engines: MakeEngine,
) -> None:
    # Probe 87: the canonical trigger tells a job's own callback apart, as it does a line.
    engine = engines()
    engine.register_job(own(100, "running-job-self && complete-job-self"))
    await engine.publish(Event("running", "job", 100), wait=True)

    again = engine.register_job(own(100, "running-job-self&&complete-job-self"))

    assert again.callbacks[0].latches == (True, False)
    fired, _ = await engine.publish(Event("complete", "job", 100), wait=True)
    assert [f.callback.callback_id for f in fired] == [1]


async def test_an_item_a_registration_adds_to_the_agenda_starts_from_what_latched_for_all(
    engines: MakeEngine,
) -> None:
    # Probe 87: as an item an event first names (no agenda) does.
    engine = engines()

    def job(*frames: str) -> dict[str, Any]:
        return {
            "id": 101,
            "pgrp": 101,
            "agenda": [{"name": frame, "status": "pending"} for frame in frames],
            "callbacks": [
                {
                    "triggers": "complete-work-self-{work} && running-job-self",
                    "language": "qube",
                    "code": "unblock-work-self",
                }
            ],
        }

    engine.register_job(job("1"))
    await engine.publish_many([Event("running", "job", 101, event_id="r101")])
    engine.register_job(job("1", "2"))

    decided = await engine.publish_many(
        [
            Event("complete", "work", 101, work_name="2", event_id="w2"),
            Event("complete", "work", 101, work_name="1", event_id="w1"),
        ]
    )
    assert [[f.work_name for f in fired] for fired, _ in decided] == [["2"], ["1"]]


def watcher(job_id: int, *triggers: str, mode: str = "level", **extra: Any) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": 1500,
        **extra,
        "callbacks": [
            {"triggers": t, "language": "qube", "code": f"{job_id}:{t}", "mode": mode}
            for t in triggers
        ],
    }


def fired_by(fired: Any) -> list[tuple[int, int, str]]:
    return sorted((f.callback.job_id, f.callback.callback_id, f.work_name) for f in fired)


async def test_a_level_callback_takes_the_state_a_job_registers_with_after_it(
    engines: MakeEngine,
) -> None:
    # Probe 116 F7: registered first, a level callback on a label never latched the
    # finished state of the job that took the label later; the other way round it fired.
    engine = engines()
    engine.register_job(watcher(1500, "complete-job-ribgen"))
    engine.register_job(watcher(1502, "complete-job-ribgen", mode="edge"))
    ribgen = {"id": 1501, "pgrp": 1500, "label": "ribgen", "status": "complete"}

    registered = engine.register_job(ribgen)

    assert fired_by(registered.fired) == [(1500, 1, "")]
    (level,) = engine.explain(1500).callbacks
    assert level.callback.count == 1
    (entry,) = level.journal
    assert (entry.kind, entry.latched, entry.reason) == (
        EntryKind.LEVEL,
        ("complete-job-ribgen",),
        "the registration of job 1501",
    )
    assert entry.seen.event == Event("complete", "job", 1501)
    (edge,) = engine.explain(1502).callbacks  # edge waits for the next such event
    assert (edge.callback.count, edge.journal) == (0, ())
    assert engine.register_job(ribgen).fired == []  # the same state: not taken again


async def test_level_callbacks_naming_a_job_by_id_or_parent_take_its_first_registration(
    engines: MakeEngine,
) -> None:
    engine = engines()
    engine.register_job(watcher(1510, "complete-job-parent", pid=1511))
    engine.register_job(watcher(1512, "failed-job-1511 || done-job-1511 || submit-job-1511"))
    engine.register_job(watcher(1513, "complete-job-1511 && complete-job-1514"))

    registered = engine.register_job({"id": 1511, "pgrp": 1500, "status": "complete"})

    # One firing for the ``||``: what the state shows latches at once, as at a registration.
    assert fired_by(registered.fired) == [(1510, 1, ""), (1512, 1, "")]
    (waiting,) = engine.explain(1513).callbacks
    assert waiting.callback.latches == (True, False)
    assert waiting.waiting == "complete-job-1514"
    fired, _ = await engine.publish(Event("complete", "job", 1514), wait=True)
    assert fired_by(fired) == [(1513, 1, "")]


async def test_level_work_callbacks_take_the_item_states_a_job_registers_with(
    engines: MakeEngine,
) -> None:
    engine = engines()
    frames = ["1", "2", "3"]
    engine.register_job(watcher(1520, "complete-work-ribgen-{work}", agenda=frames))
    engine.register_job(watcher(1521, "complete-work-ribgen-*"))
    engine.register_job(watcher(1522, "done-job-ribgen && complete-work-ribgen-2"))
    states = ["complete", "pending", "complete"]
    agenda = [{"name": n, "status": s} for n, s in zip(frames, states, strict=True)]

    registered = engine.register_job(
        {"id": 1523, "pgrp": 1500, "label": "ribgen", "status": "running", "agenda": agenda}
    )

    # A ``*`` atom latches once, with the last item in agenda order (no event times).
    assert fired_by(registered.fired) == [(1520, 1, "1"), (1520, 1, "3"), (1521, 1, "3")]
    (per_item,) = engine.explain(1520).callbacks
    assert per_item.callback.count == 2
    assert engine.explain(1522).callbacks[0].callback.latches == (False, False)
    fired, _ = await engine.publish(Event("complete", "work", 1523, work_name="2"), wait=True)
    assert (1520, 1, "2") in fired_by(fired)


async def test_a_job_whose_events_came_before_it_registered_is_not_taken_twice(
    engines: MakeEngine,
) -> None:
    # Its events reached the callbacks naming it by id as they came: its registration
    # is the same submission and the same completion, not new ones.
    engine = engines()
    engine.register_job(watcher(1531, "complete-job-1530"))
    decided = await engine.publish_many(
        [Event("submit", "job", 1530, event_id="s1530"), Event("complete", "job", 1530)]
    )
    assert [fired_by(fired) for fired, _ in decided] == [[], [(1531, 1, "")]]
    engine.register_job(watcher(1532, "complete-job-late"))

    registered = engine.register_job(
        {"id": 1530, "pgrp": 1500, "label": "late", "status": "complete"}
    )

    assert fired_by(registered.fired) == [(1532, 1, "")]  # the label one could not see them
