"""A universal line added and reloaded at one replica fires at another that has not polled yet.

Probe 59: a job registered at the replica that had reloaded got the new line; fired at
a replica that had not yet seen the fleet's version row move, it was refused REJECTED
"is no longer in callbacks.conf (its line was removed ...)": the firing spent, the
message false. Now that replica reloads first when the row has moved, and a refusal
says what it knows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from executor.model import Event
from executor.triggers import timers
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from tests.helpers.trigger_engines import LIMITS, Recorder, engines_made, job

pytestmark = pytest.mark.service

LINE = "tagged.qcb = complete-job-self\n"


def directory(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "tagged.qcb").write_text("mail-status")
    (path / "callbacks.conf").write_text("")
    return path


@pytest.fixture
async def replicas(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[TriggerEngine, TriggerEngine, Recorder, Path, Path]]:
    """Replicas r1 and r3 of a fleet, each with a callbacks.conf of its own; r3's runs recorded.

    Neither polls the version row while the test runs: the test is the moment before.
    """
    monkeypatch.setattr(timers, "FLEET_POLL_S", 3600.0)
    # Each replica's <data_dir>/callback: the same directory name, as a fleet's lines need.
    here, there = directory(tmp_path / "r1" / "callback"), directory(tmp_path / "r3" / "callback")
    recorder = Recorder()

    def open_engine(dirs: list[Path], runs: Recorder, **kwargs: Any) -> TriggerEngine:
        return TriggerEngine(
            TriggerStore(pg_url), runs, limits=LIMITS, universal_dirs=dirs, **kwargs
        )

    async with engines_made(open_engine) as make:
        r1, r3 = make([here], Recorder()), make([there], recorder)
        assert r1.reload_universal() == [] and r3.reload_universal() == []
        yield r1, r3, recorder, here, there


async def test_a_line_reloaded_at_one_replica_fires_at_another_before_its_poll(
    replicas: tuple[TriggerEngine, TriggerEngine, Recorder, Path, Path],
) -> None:
    r1, r3, recorder, here, there = replicas
    for conf in (here, there):
        (conf / "callbacks.conf").write_text(LINE)
    assert r1.reload_universal(fleet_wide=True) == []  # SIGHUP at r1
    r1.register_job(job(81))

    await r3.publish(Event("complete", "job", 81), wait=True)

    (run,) = recorder.runs
    assert (run.callback.triggers, run.refusal) == ("complete-job-self", "")


async def test_a_line_this_replica_never_read_is_not_said_to_be_removed(
    replicas: tuple[TriggerEngine, TriggerEngine, Recorder, Path, Path],
) -> None:
    r1, r3, recorder, here, _ = replicas
    (here / "callbacks.conf").write_text(LINE)  # forgotten at r3
    assert r1.reload_universal(fleet_wide=True) == []
    r1.register_job(job(82))

    await r3.publish(Event("complete", "job", 82), wait=True)

    (run,) = recorder.runs
    assert run.refusal == (
        f"universal callback {here}/tagged.qcb = complete-job-self is not in this "
        "replica's callbacks.conf: not run"
    )


async def test_why_at_a_replica_names_a_line_the_registering_replica_had_not_loaded(
    replicas: tuple[TriggerEngine, TriggerEngine, Recorder, Path, Path],
) -> None:
    r1, r3, _, here, there = replicas
    (here / "callbacks.conf").write_text(LINE)  # forgotten at r3
    assert r1.reload_universal(fleet_wide=True) == []
    assert r3.reload_universal() == []  # its poll: its own file, without the line
    r3.register_job(job(83))

    # Loaded at r1 after the job registered, or missing at the replica it registered at:
    # which of the two, r1 cannot tell, so it says both.
    assert r1.explain(83).universal_not_attached == (
        "universal lines loaded after this job's registration (or missing from the"
        " callbacks.conf of the replica it was registered at) are not attached to it:"
        f" {here}/tagged.qcb = complete-job-self; a job takes the current set when it is"
        " registered again"
    )
    assert r3.explain(83).universal_not_attached == ""
    # A job registered at r1 holds the line r3 has at its own path (the same names).
    (there / "callbacks.conf").write_text(LINE)
    assert r3.reload_universal() == []
    r1.register_job(job(84))
    assert r3.explain(84).universal_not_attached == ""
    # Registered again at r3, job 83 takes r3's set, which has the line now.
    r3.register_job(job(83))
    assert r1.explain(83).universal_not_attached == ""
