"""A submission seen is not waited for, nor taken twice (probe 128), on PostgreSQL as on SQLite.

A job is submitted once: a callback whose every way needs a submission already seen
will not fire again, and `why`, the dashboard's row and the journal say so, as of a
clock that fired; a repeated submit of a job never registered fires no level callback
again; the texts of a job without an agenda, of a dry run and of a spent callback say
what the engine does.
"""

from __future__ import annotations

from typing import Any

import pytest

from executor.api.explanations import explanation_message, journal_message
from executor.cli.explain import format_dry_run
from executor.model import Event
from executor.triggers.journal import EntryKind
from executor.web.explain import explain_reply
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.helpers.trigger_engines import MakeEngine

pytestmark = pytest.mark.service

NEVER = "it will not fire again: it needs {}, which will not latch again"


def _job(job_id: int, *triggers: str, pgrp: int = 0, label: str = "", mode: str = "edge") -> Any:
    return {
        "id": job_id,
        "pgrp": pgrp or job_id,
        "label": label,
        "callbacks": [
            {"triggers": t, "language": "qube", "code": "unblock-self", "mode": mode}
            for t in triggers
        ],
    }


async def test_a_callback_needing_a_seen_submission_says_it_will_not_fire_again(
    engines: MakeEngine,
) -> None:
    engine = engines()
    engine.register_job(_job(100, label="plates"))
    await engine.publish(Event("submit", "job", 100), wait=True)
    engine.register_job(
        _job(
            101,
            "submit-job-plates && complete-job-self",
            "submit-job-self && complete-job-self",
            "submit-job-plates || complete-job-self",
            pgrp=100,
        )
    )
    await engine.publish(Event("submit", "job", 101), wait=True)
    fired, _ = await engine.publish(Event("complete", "job", 101), wait=True)
    assert sorted(f.callback.callback_id for f in fired) == [2, 3]

    plates, own, either = engine.explain(101).callbacks
    # It said "waiting for submit-job-plates" over "... so it will not come again".
    assert plates.waiting_for[0] == NEVER.format("submit-job-plates")
    assert own.waiting_for[0] == NEVER.format("submit-job-self")
    # An `||` waits for its other way only, as with a clock that fired.
    assert (either.waiting, either.waiting_for[0].split(":")[0]) == (
        "complete-job-self",
        "complete-job-self",
    )
    assert not plates.spent  # spent: it has fired its maximum, which it has not
    # The journal's entry of the event that left it so, and the dashboard's row.
    assert plates.journal[-1].reason == NEVER.format("submit-job-plates")
    rows = explain_reply(explanation_message(engine.explain(101)))
    assert rows[1].waiting_for.startswith(NEVER.format("submit-job-plates"))
    assert rows[2].waiting_for.startswith(NEVER.format("submit-job-self"))


async def test_an_edge_callback_waits_for_a_submission_not_seen_yet(
    engines: MakeEngine,
) -> None:
    # A scheduler registers a job, then publishes its submit: until then it is awaited.
    engine = engines()
    engine.register_job(_job(110, "submit-job-self && complete-job-self"))
    (explained,) = engine.explain(110).callbacks
    assert explained.waiting == "submit-job-self && complete-job-self"
    assert not any("will not" in line for line in explained.waiting_for)

    await engine.publish(Event("submit", "job", 110), wait=True)
    (explained,) = engine.explain(110).callbacks
    assert explained.callback.latches == (True, False)

    # Registered again (a retry): the submission is still the one seen.
    engine.register_job(_job(110, "submit-job-self && complete-job-self"))
    fired, _ = await engine.publish(Event("complete", "job", 110), wait=True)
    assert len(fired) == 1
    (explained,) = engine.explain(110).callbacks
    assert explained.waiting_for[0] == NEVER.format("submit-job-self")


async def test_a_level_callback_waits_for_no_submission_its_registration_was(
    engines: MakeEngine,
) -> None:
    engine = engines()
    engine.register_job(_job(120, "submit-job-self && complete-job-self", mode="level"))
    (explained,) = engine.explain(120).callbacks
    assert explained.callback.latches == (True, False)
    await engine.publish(Event("submit", "job", 120), wait=True)
    fired, _ = await engine.publish(Event("complete", "job", 120), wait=True)
    assert len(fired) == 1
    (explained,) = engine.explain(120).callbacks
    assert explained.waiting_for[0] == NEVER.format("submit-job-self")


async def test_a_repeated_submit_of_a_job_never_registered_fires_no_level_callback_again(
    engines: MakeEngine,
) -> None:
    engine = engines()
    await engine.publish(Event("submit", "job", 200), wait=True)
    after = engine.register_job(_job(201, "submit-job-200", mode="level"))
    assert len(after.fired) == 1
    # A scheduler that publishes it again without an event id: the same submission.
    fired, _ = await engine.publish(Event("submit", "job", 200), wait=True)
    assert fired == []
    (explained,) = engine.explain(201).callbacks
    assert explained.callback.count == 1
    assert explained.waiting_for[0] == NEVER.format("submit-job-200")

    # Twice in one transaction: the first fires a level callback registered before it.
    engine.register_job(_job(211, "submit-job-210", mode="level"))
    applied = await engine.publish_many([Event("submit", "job", 210)] * 2)
    assert [len(fired) for fired, _ in applied] == [1, 0]


async def test_a_job_submitted_before_it_registered_is_said_so_to_its_id(
    engines: MakeEngine,
) -> None:
    # Probe 143: why gave the level rule its first registration had just not applied.
    engine = engines()
    await engine.publish(Event("submit", "job", 220), wait=True)
    await engine.publish(Event("complete", "job", 220), wait=True)
    engine.register_job(_job(221, "complete-job-220", mode="level"))
    registered = {"id": 220, "pgrp": 220, "status": "complete"}
    assert engine.register_job(registered).fired == []
    # A registration again, and the submit a scheduler resends, keep what it was.
    assert engine.register_job(registered).fired == []
    await engine.publish(Event("submit", "job", 220), wait=True)

    (explained,) = engine.explain(221).callbacks
    assert explained.waiting_for[0].endswith(
        "(already happened, but not latched: job 220 was submitted before it first"
        " registered, and a level callback naming it by id had its events as they came, so"
        " that registration latched only those naming it by the label it registers with;"
        " this waits for the next such event)"
    )


async def test_a_work_atom_of_a_job_without_an_agenda_is_not_said_unknown(
    engines: MakeEngine,
) -> None:
    engine = engines()
    engine.register_job(_job(300, "complete-work-self-1 && complete-work-self-2"))
    await engine.publish(Event("complete", "work", 300, work_name="1"), wait=True)
    (explained,) = engine.explain(300).callbacks
    assert explained.atoms[1].state == (
        "no event of work 2 yet (job 300 was registered without an agenda: any work name counts)"
    )


async def test_a_dry_run_says_what_would_happen(engines: MakeEngine) -> None:
    engine = engines()
    engine.register_job(
        _job(400, "complete-job-1 && complete-job-2", "complete-job-2 && complete-job-3")
    )
    await engine.publish(Event("complete", "job", 3), wait=True)
    decision = engine.match(Event("complete", "job", 2), dry=True)
    reply = executor_pb2.DryRunResponse(
        explanations=[journal_message(entry) for entry in decision.entries]
    )
    reply.would_fire.add(job_id=400, callback_id=2, language="qube", triggers="x")
    reply.would_latch.add(
        job_id=400, id=1, triggers="complete-job-1 && complete-job-2", latches=[False, True]
    )
    text = format_dry_run(reply).splitlines()
    assert text[1] == (
        "would latch: job 400 callback 1 complete-job-1 && complete-job-2"
        " (then latched: complete-job-2)"
    )
    assert text[-1] == "  job 400 callback 2: would latch complete-job-2; would fire (count 1)"


async def test_a_spent_callback_collects_no_near_misses(engines: MakeEngine) -> None:
    engine = engines()
    engine.register_job(_job(500, label="shot"))
    registered = _job(501, "complete-job-dep || complete-job-self", pgrp=500, label="comp")
    registered["callbacks"][0]["maximum"] = 1
    engine.register_job(registered)
    fired, _ = await engine.publish(Event("complete", "job", 501), wait=True)
    assert len(fired) == 1
    await engine.publish(Event("complete", "job", 500), wait=True)  # in its pgrp
    (explained,) = engine.explain(501).callbacks
    assert explained.spent
    assert [entry.kind for entry in explained.journal] == [EntryKind.FIRED]
