"""A universal line a load removes stops its clocks at every job, on SQLite as on PostgreSQL.

Probe 69: ``tick.qcb = globalrepeat-...`` removed and reloaded went on ticking for each
registered job (attached with no maximum, a repeat is never spent), each tick a REJECTED
run, for as long as the job was registered.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.triggers.universal import LAST_GOOD_NAME
from tests.helpers.trigger_engines import MakeEngine, finish_firings, job

pytestmark = pytest.mark.service

NOW = 1_800_000_000.0
# Qube's clock: seconds since 2000-01-01 (local), as the engine's own tests write it.
START = int(NOW) - 946702800
TICK = f"tick.qcb = globalrepeat-{START}-60\n"


def _directory(path: Path, conf: str) -> Path:
    path.mkdir()
    (path / "tick.qcb").write_text("mail-status")
    (path / "callbacks.conf").write_text(conf)
    return path


async def test_a_reload_that_removes_a_repeat_line_stops_its_clocks(
    engines: MakeEngine, tmp_path: Path
) -> None:
    now = [NOW]
    conf = _directory(tmp_path / "callback", TICK)
    engine = engines(universal_dirs=[conf], start=False, clock=lambda: now[0])
    assert engine.reload_universal() == []
    engine.register_job(job(1, (f"dummy-repeat-self-{START}-60", "unblock-self")))
    engine.register_job(job(2))
    ticked = engine.fire_due_timers()
    finish_firings(engine)
    assert sorted((f.callback.job_id, f.callback.universal) for f in ticked) == [
        (1, False),
        (1, True),
        (2, True),
    ]

    (conf / "callbacks.conf").write_text("")
    assert engine.reload_universal() == []
    now[0] += 60

    # The job's own repeat ticks on; the removed line's are gone, for both jobs.
    ticked = engine.fire_due_timers()
    assert [(f.callback.job_id, f.callback.universal) for f in ticked] == [(1, False)]
    finish_firings(engine)
    now[0] += 3600
    assert [f.callback.job_id for f in engine.fire_due_timers()] == [1]


async def test_a_line_removed_while_the_executor_was_stopped_stops_at_start_up(
    engines: MakeEngine, tmp_path: Path
) -> None:
    now = [NOW]
    conf = _directory(tmp_path / "callback", TICK)
    last_good = tmp_path / LAST_GOOD_NAME
    before = engines(universal_dirs=[conf], start=False, clock=lambda: now[0], last_good=last_good)
    assert before.reload_universal() == []
    before.register_job(job(3))
    assert len(before.fire_due_timers()) == 1

    (conf / "callbacks.conf").write_text("")
    after = engines(universal_dirs=[conf], start=False, clock=lambda: now[0], last_good=last_good)
    assert after.reload_universal(quiet=True) == []  # start-up's load
    now[0] += 60

    assert after.fire_due_timers() == []
    assert after.store.next_timer_due() is None


async def test_a_line_kept_by_a_reload_ticks_on(engines: MakeEngine, tmp_path: Path) -> None:
    now = [NOW]
    conf = _directory(tmp_path / "callback", TICK)
    engine = engines(universal_dirs=[conf], start=False, clock=lambda: now[0])
    assert engine.reload_universal() == []
    engine.register_job(job(4))
    assert len(engine.fire_due_timers()) == 1
    finish_firings(engine)

    # The same line, respaced: nothing removed.
    (conf / "callbacks.conf").write_text(f"tick.qcb  =  globalrepeat-{START}-60\n")
    assert engine.reload_universal() == []
    now[0] += 60

    assert [f.callback.job_id for f in engine.fire_due_timers()] == [4]


async def test_a_line_added_back_ticks_again_at_the_jobs_it_stayed_attached_to(
    engines: MakeEngine, tmp_path: Path
) -> None:
    # It stayed stopped until the job was registered again (probe 102: a save caught
    # half-way by a reload stopped every job's repeat for good).
    now = [NOW]
    conf = _directory(tmp_path / "callback", TICK)
    engine = engines(universal_dirs=[conf], start=False, clock=lambda: now[0])
    assert engine.reload_universal() == []
    engine.register_job(job(5))
    assert len(engine.fire_due_timers()) == 1
    finish_firings(engine)
    (conf / "callbacks.conf").write_text("")
    assert engine.reload_universal() == []
    now[0] += 30
    (conf / "callbacks.conf").write_text(TICK)
    assert engine.reload_universal() == []
    assert engine.fire_due_timers() == []  # from its next point on: no tick at once
    now[0] += 30

    assert [f.callback.job_id for f in engine.fire_due_timers()] == [5]
    (line,) = engine.explain(5).callbacks
    assert line.callback.count == 2  # the line kept, with its count
