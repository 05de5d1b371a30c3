"""Registration semantics probe 42 found wrong, on PostgreSQL as on SQLite.

A universal line keeps its state and journal when its per-job id moves; a replaced
callback's journal is not shown as the new one's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.model import Event
from executor.triggers.engine import TriggerEngine
from executor.triggers.journal import EntryKind
from executor.triggers.store import TriggerStore
from tests.helpers.trigger_engines import LIMITS, Recorder

pytestmark = pytest.mark.service

Make = Callable[..., TriggerEngine]


@pytest.fixture
async def engines(either_store: str) -> AsyncIterator[Make]:
    made: list[TriggerEngine] = []

    def make(**kwargs: Any) -> TriggerEngine:
        engine = TriggerEngine(TriggerStore(either_store), Recorder(), limits=LIMITS, **kwargs)
        engine.start()
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.close()
        engine.store.close()


def own(job_id: int, *triggers: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": job_id,
        "callbacks": [
            {"triggers": t, "language": "qube", "code": "unblock-self"} for t in triggers
        ],
    }


async def test_a_level_line_whose_id_moved_keeps_its_submission_and_journal(
    engines: Make, tmp_path: Path
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
