"""A job registered again: each callback keeps its state and journal, whatever id it has now.

A job's own callback is the one of the same id (the scheduler's) with the same trigger
in canonical form, code and mode; a universal callback is its callbacks.conf line (file and canonical
trigger), whose per-job id moves when the job's own callbacks change in number or a
reload adds a line before it. Found by probe 42: a `[level] submit-job-self` line fired
again for one submission when its id moved, and `why` showed a replaced callback's
journal under the id another callback took.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from executor.model import Event
from executor.triggers.engine import TriggerEngine
from executor.triggers.journal import EntryKind
from tests.helpers.trigger_engines import Engines, Recorder

pytestmark = pytest.mark.unit


def conf_dir(path: Path, conf: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "logged.qcb").write_text("mail-status")
    (path / "other.qcb").write_text("mail-status")
    (path / "callbacks.conf").write_text(conf)
    return path


def own(job_id: int, *triggers: str) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": job_id,
        "callbacks": [
            {"triggers": t, "language": "qube", "code": "unblock-self"} for t in triggers
        ],
    }


def universal_ids(engine: TriggerEngine, job_id: int) -> dict[str, int]:
    return {cb.triggers: cb.callback_id for cb in engine.store.callbacks_of(job_id) if cb.universal}


async def test_a_level_line_takes_one_submission_once_when_the_jobs_own_callbacks_change(
    tmp_path: Path, engines: Engines
) -> None:
    conf = conf_dir(tmp_path / "callback", "logged.qcb [level] = submit-job-self\n")
    recorder = Recorder()
    engine = engines(recorder, universal_dirs=[conf])
    assert engine.reload_universal() == []

    first = engine.register_job(own(40, "complete-job-self"))
    assert [(f.callback.callback_id, f.callback.universal) for f in first.fired] == [(2, True)]
    again = engine.register_job(own(40, "complete-job-self", "failed-job-self"))

    assert again.fired == []
    assert universal_ids(engine, 40) == {"submit-job-self": 3}
    (line,) = [cb for cb in engine.explain(40).callbacks if cb.callback.universal]
    assert line.callback.count == 1
    assert [(e.kind, e.callback_id) for e in line.journal] == [(EntryKind.LEVEL, 3)]
    fewer = engine.register_job(own(40))
    assert fewer.fired == []
    (line,) = engine.explain(40).callbacks
    assert (line.callback.callback_id, [e.kind for e in line.journal]) == (1, [EntryKind.LEVEL])
    await engine.wait_idle()
    assert len(recorder.runs) == 1


async def test_a_level_line_takes_one_submission_once_when_a_reload_adds_a_line_before_it(
    tmp_path: Path, engines: Engines
) -> None:
    conf = conf_dir(tmp_path / "callback", "logged.qcb [level] = submit-job-self\n")
    recorder = Recorder()
    engine = engines(recorder, universal_dirs=[conf])
    assert engine.reload_universal() == []
    assert len(engine.register_job(own(41, "complete-job-self")).fired) == 1

    (conf / "callbacks.conf").write_text(
        "other.qcb = done-job-self\nlogged.qcb [level] = submit-job-self\n"
    )
    assert engine.reload_universal() == []
    again = engine.register_job(own(41, "complete-job-self"))

    assert again.fired == []
    assert universal_ids(engine, 41) == {"done-job-self": 2, "submit-job-self": 3}
    explained = {cb.callback.triggers: cb for cb in engine.explain(41).callbacks}
    assert explained["done-job-self"].journal == ()  # a new line: nothing of the moved one's
    assert [e.kind for e in explained["submit-job-self"].journal] == [EntryKind.LEVEL]
    await engine.wait_idle()
    assert len(recorder.runs) == 1


async def test_a_level_line_is_kept_by_its_file_name_at_a_replica_with_its_own_directory(
    tmp_path: Path, engines: Engines
) -> None:
    text = "logged.qcb [level] = submit-job-self\n"
    # The default universal_callback_path, <data_dir>/callback: a directory per replica.
    here = conf_dir(tmp_path / "one" / "callback", text)
    there = conf_dir(tmp_path / "two" / "callback", text)
    registering = engines(Recorder(), universal_dirs=[here])
    assert registering.reload_universal() == []
    assert len(registering.register_job(own(42)).fired) == 1
    await registering.wait_idle()

    other = engines(Recorder(), universal_dirs=[there])
    assert other.reload_universal() == []
    assert other.register_job(own(42, "complete-job-self")).fired == []


async def test_a_line_moved_to_another_configured_directory_is_a_new_line_of_the_job(
    tmp_path: Path, engines: Engines
) -> None:
    # Probe 138: a line's identity is its directory too; the fallback by name is for a
    # directory not configured here (another replica's, a moved data dir).
    a = conf_dir(tmp_path / "A", "logged.qcb [level] = submit-job-self\n")
    b = conf_dir(tmp_path / "B", "")
    engine = engines(Recorder(), universal_dirs=[a, b], universal_policies={b: "wide"})
    assert engine.reload_universal() == []
    assert len(engine.register_job(own(43)).fired) == 1
    (a / "callbacks.conf").write_text("")
    (b / "callbacks.conf").write_text("logged.qcb [level] = submit-job-self\n")
    assert engine.reload_universal() == []

    again = engine.register_job(own(43, "complete-job-self"))

    assert [fired.callback.source for fired in again.fired] == [f"{b}/logged.qcb"]
    await engine.wait_idle()


async def test_a_line_whose_trigger_changed_in_spacing_only_keeps_its_latches(
    tmp_path: Path, engines: Engines
) -> None:
    conf = conf_dir(tmp_path / "callback", "logged.qcb = complete-job-self&&failed-job-44\n")
    engine = engines(Recorder(), universal_dirs=[conf])
    assert engine.reload_universal() == []
    engine.register_job(own(43, "killed-job-self"))
    await engine.publish(Event("complete", "job", 43), wait=True)

    (conf / "callbacks.conf").write_text("logged.qcb = (complete-job-self and failed-job-44)\n")
    assert engine.reload_universal() == []
    engine.register_job(own(43))

    (line,) = engine.store.callbacks_of(43)
    assert (line.callback_id, line.latches) == (1, (True, False))
    fired, _ = await engine.publish(Event("failed", "job", 44), wait=True)
    assert [f.callback.callback_id for f in fired] == [1]


async def test_a_callback_registered_anew_under_an_id_shows_no_journal_of_the_old_one(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(own(50, "complete-work-self-1 && complete-work-self-2"))
    await engine.publish(Event("complete", "work", 50, work_name="1"), wait=True)
    assert len(engine.explain(50).callbacks[0].journal) == 1

    engine.register_job(own(50, "complete-work-self-1 && complete-work-self-3"))

    (explained,) = engine.explain(50).callbacks
    assert (explained.callback.count, explained.journal) == (0, ())
    engine.register_job(own(50, "complete-work-self-1 && complete-work-self-3"))
    await engine.publish(Event("complete", "work", 50, work_name="3"), wait=True)
    assert [e.latched for e in engine.explain(50).callbacks[0].journal] == [
        ("complete-work-self-3",)
    ]


async def test_a_universal_callback_taking_an_own_callbacks_id_shows_none_of_its_journal(
    tmp_path: Path, engines: Engines
) -> None:
    conf = conf_dir(tmp_path / "callback", "logged.qcb = done-job-self\n")
    engine = engines(Recorder(), universal_dirs=[conf])
    assert engine.reload_universal() == []
    engine.register_job(own(51, "complete-job-self", "failed-job-self"))
    await engine.publish(Event("complete", "job", 51), wait=True)
    assert universal_ids(engine, 51) == {"done-job-self": 3}

    engine.register_job(own(51))

    (line,) = engine.explain(51).callbacks
    assert (line.callback.callback_id, line.callback.universal) == (1, True)
    # Its own entry (the complete event, under id 3 then) followed it; none of callback 1's.
    assert [(e.kind, e.seen.event.name) for e in line.journal] == [(EntryKind.FIRED, "complete")]
    assert line.callback.count == 1


async def test_a_job_registered_again_after_its_removal_starts_with_an_empty_journal(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(own(52, "complete-job-self && failed-job-self"))
    await engine.publish(Event("complete", "job", 52), wait=True)
    await engine.publish(Event("removed", "job", 52), wait=True)

    engine.register_job(own(52, "complete-job-self && failed-job-self"))

    assert engine.explain(52).callbacks[0].journal == ()


# Found by probe 87: a job's own callback registered again with its trigger written
# otherwise (``a&&b`` for ``a && b``) lost its latches, though the answer gave the same
# canonical trigger; a universal line was already told apart by its canonical form.


async def test_an_own_callback_whose_trigger_changed_in_spacing_only_keeps_its_latches(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(own(53, "running-job-self && complete-job-self"))
    await engine.publish(Event("running", "job", 53), wait=True)

    again = engine.register_job(own(53, "(running-job-self and complete-job-self)"))

    (cb,) = again.callbacks
    assert (cb.triggers, cb.latches) == ("(running-job-self and complete-job-self)", (True, False))
    assert [e.latched for e in engine.explain(53).callbacks[0].journal] == [("running-job-self",)]
    fired, _ = await engine.publish(Event("complete", "job", 53), wait=True)
    assert [f.callback.callback_id for f in fired] == [1]


async def test_an_own_callback_whose_trigger_changed_in_canonical_form_starts_afresh(
    engines: Engines,
) -> None:
    engine = engines(Recorder())
    engine.register_job(own(54, "running-job-self && complete-job-self"))
    await engine.publish(Event("running", "job", 54), wait=True)

    again = engine.register_job(own(54, "complete-job-self&&running-job-self"))

    (cb,) = again.callbacks
    assert cb.latches == (False, False)
    assert engine.explain(54).callbacks[0].journal == ()
