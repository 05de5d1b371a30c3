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
