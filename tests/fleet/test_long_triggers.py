"""Long triggers on PostgreSQL as on SQLite: cut journal texts, a journal written in parts.

And a dry run read on a snapshot connection (which takes no row locks).
"""

from __future__ import annotations

from typing import Any

import pytest

from executor.model import Event
from executor.triggers.deferred_writes import MAX_WAITING_ENTRIES
from executor.triggers.journal import MAX_ENTRY_TEXT_CHARS, EntryKind
from tests.helpers.trigger_engines import MakeEngine

pytestmark = pytest.mark.service


def own(job_id: int, *triggers: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": job_id,
        "callbacks": [{"triggers": t, "language": "qube", "code": "x"} for t in triggers],
    }


async def test_a_batch_over_a_long_trigger_journals_cut_texts_and_the_newest_entries(
    engines: MakeEngine,
) -> None:
    engine = engines()
    long_chain = " && ".join(f"done-job-{n}" for n in range(1, 1001))
    engine.register_job(own(7, f"complete-work-self-* && {long_chain}"))
    frames = [str(n) for n in range(1, MAX_WAITING_ENTRIES + 51)]

    await engine.publish_many(
        [Event("complete", "work", 7, work_name=f) for f in frames]
        + [Event("complete", "job", 1), Event("complete", "job", 2)]
    )

    journal = engine.explain(7).callbacks[0].journal
    assert [e.seen.event.work_name for e in journal[:-2]] == frames[-18:]
    last = journal[-1]
    assert (last.kind, last.latched) == (EntryKind.MATCHED, ("done-job-2",))
    assert len(last.waiting_for) <= MAX_ENTRY_TEXT_CHARS
    assert last.waiting_for.startswith("done-job-3 && done-job-4 && ")
    assert last.waiting_for.endswith(" more atoms)")


async def test_a_dry_run_reads_without_locking_and_writes_nothing(engines: MakeEngine) -> None:
    engine = engines()
    engine.register_job(own(8, "complete-job-1 && complete-job-2", "complete-job-2"))

    decision = engine.match(Event("complete", "job", 2), dry=True)

    assert [f.callback.callback_id for f in decision.fired] == [2]
    assert [(item.callback.callback_id, item.latches) for item in decision.latched] == [
        (1, (False, True))
    ]
    assert [e.waiting_for for e in decision.entries] == ["complete-job-1", ""]
    assert engine.explain(8).callbacks[0].journal == ()
    assert not any(any(cb.latches) for cb in engine.store.callbacks_of(8))
