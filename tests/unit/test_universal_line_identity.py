"""A universal line is its directory as configured, its file and its trigger: never another directory's.

Probe 138: with ``universal_callback_path = "A, B [policy=wide]"``, both holding
``a.py = done-job-self`` (different code), removing A's line and reloading let A's
callback run under ``wide``, named ``B/a.py``: the firing's line was looked up by file
name when its path was no longer loaded (meant for a fleet, a moved data dir) and B's
was taken. Such a firing is refused (REJECTED), at the firing and when its run gets
its slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from executor.model import Event, Invocation, RunResult
from executor.triggers.universal import UniversalCallback, find_line
from tests.helpers.trigger_engines import Engines, Recorder, job

pytestmark = pytest.mark.unit


def _directory(path: Path, conf: str, code: str) -> Path:
    """A universal directory whose ``a.py`` prints ``code``, with the callbacks.conf given."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "a.py").write_text(f"print({code!r})\n")
    (path / "callbacks.conf").write_text(conf)
    return path


def _two_directories(tmp_path: Path) -> tuple[Path, Path]:
    line = "a.py = done-job-self\n"
    return _directory(tmp_path / "A", line, "A"), _directory(tmp_path / "B", line, "B")


@pytest.mark.parametrize(
    "conf_after", ["", "a.py = failed-job-self\n"], ids=["line removed", "trigger changed"]
)
async def test_a_line_gone_from_one_directory_is_refused_not_run_as_anothers(
    tmp_path: Path, engines: Engines, conf_after: str
) -> None:
    a, b = _two_directories(tmp_path)
    recorder = Recorder()
    engine = engines(recorder, universal_dirs=[a, b], universal_policies={b: "wide"})
    assert engine.reload_universal() == []
    engine.register_job(job(1))
    (a / "callbacks.conf").write_text(conf_after)
    assert engine.reload_universal() == []

    await engine.publish(Event("done", "job", 1), wait=True)

    ran = {run.callback.code: run for run in recorder.runs}
    assert set(ran) == {"print('A')\n", "print('B')\n"}
    removed, kept = ran["print('A')\n"], ran["print('B')\n"]
    assert removed.callback.source == f"{a}/a.py"
    assert f"{a}/a.py = done-job-self is no longer in callbacks.conf" in removed.refusal
    assert (kept.callback.source, kept.policy, kept.refusal) == (f"{b}/a.py", "wide", "")
    # `why` and the listings name each its own file, and say the removed one is refused.
    explained = engine.explain(1)
    universal = [c.callback for c in explained.callbacks if c.callback.universal]
    assert sorted((cb.source, cb.code) for cb in universal) == [
        (f"{a}/a.py", "print('A')\n"),
        (f"{b}/a.py", "print('B')\n"),
    ]
    refusals = {cb.source: engine.firing_refusal(cb)[0] for cb in universal}
    assert "no longer in callbacks.conf" in refusals[f"{a}/a.py"]
    assert refusals[f"{b}/a.py"] == ""
    assert {engine.as_loaded(cb).source for cb in universal} == {f"{a}/a.py", f"{b}/a.py"}


class _SlotAfterReload(Recorder):
    """Its runs get their slot only once the test has reloaded (``reloaded`` set)."""

    def __init__(self) -> None:
        super().__init__()
        self.reloaded = asyncio.Event()
        self.waiting = asyncio.Event()

    async def __call__(
        self,
        invocation: Invocation,
        *,
        recheck: Callable[[Invocation], Invocation] | None = None,
        queued_at: float | None = None,
    ) -> RunResult:
        self.waiting.set()
        await self.reloaded.wait()
        return await super().__call__(invocation, recheck=recheck, queued_at=queued_at)


async def test_a_line_removed_while_its_run_waits_for_a_slot_is_refused_then(
    tmp_path: Path, engines: Engines
) -> None:
    a, b = _two_directories(tmp_path)
    recorder = _SlotAfterReload()
    engine = engines(recorder, universal_dirs=[a, b], universal_policies={b: "wide"})
    assert engine.reload_universal() == []
    engine.register_job(job(2))
    publishing = asyncio.ensure_future(engine.publish(Event("done", "job", 2), wait=True))
    async with asyncio.timeout(10):
        await recorder.waiting.wait()
    (a / "callbacks.conf").write_text("")
    assert engine.reload_universal() == []
    recorder.reloaded.set()
    await publishing

    ran = {run.callback.code: run for run in recorder.runs}
    removed, kept = ran["print('A')\n"], ran["print('B')\n"]
    assert removed.callback.source == f"{a}/a.py"
    assert "no longer in callbacks.conf" in removed.refusal
    assert (kept.policy, kept.refusal) == ("wide", "")


async def test_a_directory_dropped_from_the_path_does_not_hand_its_lines_to_another(
    tmp_path: Path, engines: Engines
) -> None:
    a, b = _two_directories(tmp_path)
    registering = engines(Recorder(), universal_dirs=[a, b], universal_policies={b: "wide"})
    assert registering.reload_universal() == []
    registering.register_job(job(3))
    recorder = Recorder()
    restarted = engines(recorder, universal_dirs=[b], universal_policies={b: "wide"})
    assert restarted.reload_universal() == []

    await restarted.publish(Event("done", "job", 3), wait=True)

    ran = {run.callback.code: run for run in recorder.runs}
    assert ran["print('A')\n"].refusal
    assert ran["print('A')\n"].callback.source == f"{a}/a.py"
    assert ran["print('B')\n"].refusal == ""


def test_a_line_is_found_elsewhere_only_for_a_directory_not_configured_here() -> None:
    a = UniversalCallback("/one/A/a.py", "python", "", "done-job-self")
    b = UniversalCallback("/one/B/a.py", "python", "", "done-job-self", policy="wide")
    here = [Path("/one/A"), Path("/one/B")]

    # A's line gone: A is configured here, so B's line of the same name is not it.
    assert find_line([b], "/one/A/a.py", "done-job-self", here) is None
    # A directory of another name, not configured here: not A's nor B's either.
    assert find_line([a, b], "/gone/C/a.py", "done-job-self", here) is None
    # The same directory at another path (a moved data dir, another replica's): found.
    assert find_line([a, b], "/two/A/a.py", "done-job-self", here) is a
    assert find_line([b], "/two/A/a.py", "done-job-self", here) is None
