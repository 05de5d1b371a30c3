"""Each callbacks.conf line is a callback of its own: one file on two lines keeps two sets of options."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from executor.api.triggers import TriggerServicer
from executor.model import Event
from executor.triggers.universal import (
    MAX_UNIVERSAL_LINES,
    UniversalCallback,
    UniversalConfigError,
    find_line,
    lines_not_attached,
    load_universal,
)
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.helpers.servicer_context import FakeContext, as_context
from tests.helpers.trigger_engines import Engines, Recorder, job

pytestmark = pytest.mark.unit


def _directory(path: Path, conf: str) -> Path:
    """A universal directory holding ``blockme.py`` and the callbacks.conf given."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "blockme.py").write_text("print('blocking')\n")
    (path / "callbacks.conf").write_text(conf)
    return path


async def test_a_shadow_line_keeps_its_options_beside_a_live_line_of_the_same_file(
    tmp_path: Path, engines: Engines
) -> None:
    conf = _directory(
        tmp_path / "callback",
        "blockme.py = submit-job-self\nblockme.py [shadow] = failed-job-self\n",
    )
    recorder = Recorder()
    engine = engines(recorder, universal_dirs=[conf])
    assert engine.reload_universal() == []
    engine.register_job(job(5))

    await engine.publish(Event("submit", "job", 5), wait=True)
    await engine.publish(Event("failed", "job", 5), wait=True)

    assert [(run.callback.triggers, run.shadow) for run in recorder.runs] == [
        ("submit-job-self", False),
        ("failed-job-self", True),
    ]
    assert [run.refusal for run in recorder.runs] == ["", ""]


async def test_a_removed_line_is_refused_while_another_line_still_names_its_file(
    tmp_path: Path, engines: Engines
) -> None:
    conf = _directory(tmp_path / "callback", "blockme.py [shadow] = failed-job-self\n")
    recorder = Recorder()
    engine = engines(recorder, universal_dirs=[conf])
    assert engine.reload_universal() == []
    engine.register_job(job(6))
    (conf / "callbacks.conf").write_text("blockme.py = done-job-self\n")
    assert engine.reload_universal() == []

    await engine.publish(Event("failed", "job", 6), wait=True)

    (run,) = recorder.runs
    assert run.callback.triggers == "failed-job-self"
    assert run.refusal and not run.shadow
    assert f"{conf}/blockme.py = failed-job-self is no longer in callbacks.conf" in run.refusal


async def test_a_line_refused_for_a_broken_conf_says_so_not_that_it_was_removed(
    tmp_path: Path, engines: Engines
) -> None:
    # Found by a probe: an upgrade that refuses a callbacks.conf the old version took
    # (one line twice), with no set kept from before, turns the set off; every earlier
    # job's callback was refused as "removed by a reload", its line there, no reload made.
    before = _directory(tmp_path / "before", "blockme.py = failed-job-self\n")
    registering = engines(Recorder(), universal_dirs=[before])
    assert registering.reload_universal() == []
    registering.register_job(job(9))
    twice = "blockme.py = failed-job-self\nblockme.py = failed-job-self\n"
    after = _directory(tmp_path / "after", twice)
    recorder = Recorder()
    starting = engines(recorder, universal_dirs=[after])
    problems = starting.reload_universal(quiet=True)
    assert len(problems) == 1
    assert starting.keep_last_good() is None

    await starting.publish(Event("failed", "job", 9), wait=True)

    (run,) = recorder.runs
    assert run.refusal == (
        f"universal callback {before}/blockme.py = failed-job-self: not run: universal "
        f"callbacks are off: callbacks.conf has 1 problem (first: {problems[0]}); fix it, "
        "then cbexec triggers reload"
    )


async def test_a_line_is_found_by_its_file_name_at_a_replica_with_its_own_directory(
    tmp_path: Path, engines: Engines
) -> None:
    """A fleet: the same callbacks.conf at <data_dir>/callback of each replica."""
    text = "blockme.py = submit-job-self\nblockme.py [shadow] = failed-job-self\n"
    here = _directory(tmp_path / "one" / "callback", text)
    there = _directory(tmp_path / "two" / "callback", text)
    registering = engines(Recorder(), universal_dirs=[here])
    assert registering.reload_universal() == []
    registering.register_job(job(7))
    recorder = Recorder()
    firing = engines(recorder, universal_dirs=[there])
    assert firing.reload_universal() == []

    await firing.publish(Event("submit", "job", 7), wait=True)
    await firing.publish(Event("failed", "job", 7), wait=True)

    assert [(run.callback.triggers, run.shadow, run.refusal) for run in recorder.runs] == [
        ("submit-job-self", False, ""),
        ("failed-job-self", True, ""),
    ]


def test_find_line_matches_the_file_and_the_trigger() -> None:
    live = UniversalCallback("/a/blockme.py", "python", "", "submit-job-self")
    shadow = UniversalCallback("/a/blockme.py", "python", "", "failed-job-self", shadow=True)
    other_dir = UniversalCallback("/b/blockme.py", "python", "", "done-job-self")
    loaded = [live, shadow, other_dir]
    here = [Path("/a"), Path("/b")]

    assert find_line(loaded, "/a/blockme.py", "failed-job-self", here) is shadow
    # However the trigger's words are spaced.
    assert find_line(loaded, "/a/blockme.py", " submit-job-self ", here) is live
    assert find_line(loaded, "/a/blockme.py", "done-job-self || failed-job-self", here) is None
    # Another replica's path: by directory and file name, when one loaded line has them
    # with that trigger.
    assert find_line(loaded, "/elsewhere/a/blockme.py", "failed-job-self", here) is shadow
    both = [*loaded, UniversalCallback("/c/a/blockme.py", "python", "", "failed-job-self")]
    assert find_line(both, "/elsewhere/a/blockme.py", "failed-job-self", here) is None
    assert find_line(both, "/c/a/blockme.py", "failed-job-self", here) is both[-1]


def test_the_lines_a_job_does_not_hold_are_those_find_line_finds_none_of_its_for() -> None:
    live = UniversalCallback("/a/blockme.py", "python", "", "submit-job-self")
    shadow = UniversalCallback("/a/blockme.py", "python", "", "failed-job-self", shadow=True)
    added = UniversalCallback("/b/notify.py", "python", "", "done-job-self")
    loaded = [live, shadow, added]
    here = [Path("/a"), Path("/b")]

    # Its lines however spaced, and one registered at another replica's path: held.
    held = [("/a/blockme.py", " submit-job-self "), ("/elsewhere/a/blockme.py", "failed-job-self")]
    assert lines_not_attached(loaded, held, here) == [added]
    # A line whose trigger changed is another line; a directory configured here keeps
    # its lines, never taken for another directory's.
    assert lines_not_attached(loaded, [("/a/blockme.py", "done-job-self")], here) == loaded
    assert lines_not_attached(loaded, [("/b/blockme.py", "submit-job-self")], here) == loaded
    # Two loaded lines of its directory's and file's names: it is neither (find_line: None).
    both = [*loaded, UniversalCallback("/c/a/blockme.py", "python", "", "failed-job-self")]
    assert lines_not_attached(both, [("/elsewhere/a/blockme.py", "failed-job-self")], here) == both
    assert lines_not_attached([], held, here) == []


def test_one_file_with_one_trigger_twice_is_a_load_error(tmp_path: Path) -> None:
    conf = _directory(
        tmp_path,
        "blockme.py = done-job-self\nblockme.py = submit-job-self\n"
        "blockme.py [shadow] = done-job-self\n",
    )

    with pytest.raises(UniversalConfigError) as raised:
        load_universal([conf], lambda _: None)

    assert raised.value.errors == [
        f"{conf}/callbacks.conf:3: blockme.py = done-job-self is also line 1; one file's "
        "lines need different triggers"
    ]


def test_load_errors_show_control_characters_as_escapes(tmp_path: Path) -> None:
    # Before, `triggers reload` and the log printed the ESC raw (the terminal cleared).
    conf = _directory(tmp_path, "missing\x1b[2J.py = done-job-self\nblockme.py = x\u202e\n")

    def check(trigger: str) -> str | None:
        return None if trigger == "done-job-self" else f"bad trigger '{trigger}'"

    with pytest.raises(UniversalConfigError) as raised:
        load_universal([conf], check)

    assert raised.value.errors == [
        f"{conf}/callbacks.conf:1: 'missing\\x1b[2J.py' holds a control character: not a file name",
        f"{conf}/callbacks.conf:2: bad trigger 'x\\u202e'",
    ]


async def test_a_line_respaced_around_its_operators_is_the_same_line_after_a_reload(
    tmp_path: Path, engines: Engines
) -> None:
    # Before, `a&&b` -> `a && b` was a changed trigger: jobs registered earlier got REJECTED.
    conf = _directory(tmp_path / "callback", "blockme.py = submit-job-self&&failed-job-self\n")
    recorder = Recorder()
    engine = engines(recorder, universal_dirs=[conf])
    assert engine.reload_universal() == []
    engine.register_job(job(8))
    (conf / "callbacks.conf").write_text(
        "blockme.py [shadow] = (submit-job-self AND failed-job-self)\n"
    )
    assert engine.reload_universal() == []

    await engine.publish(Event("submit", "job", 8), wait=True)
    await engine.publish(Event("failed", "job", 8), wait=True)

    (run,) = recorder.runs
    assert (run.refusal, run.shadow) == ("", True)


def test_find_line_compares_canonical_triggers() -> None:
    line = UniversalCallback("/a/blockme.py", "python", "", "done-job-self && failed-job-007")

    here = [Path("/a")]
    assert find_line([line], "/a/blockme.py", "done-job-self&&failed-job-7", here) is line
    assert find_line([line], "/a/blockme.py", "(done-job-self and failed-job-7)", here) is line
    assert find_line([line], "/a/blockme.py", "done-job-self || failed-job-7", here) is None


def test_one_trigger_twice_however_its_operators_are_spaced_is_a_load_error(
    tmp_path: Path,
) -> None:
    conf = _directory(
        tmp_path,
        "blockme.py = done-job-self&&failed-job-self\n"
        "blockme.py = done-job-self && failed-job-self\n",
    )

    with pytest.raises(UniversalConfigError) as raised:
        load_universal([conf], lambda _: None)

    assert raised.value.errors == [
        f"{conf}/callbacks.conf:2: blockme.py = done-job-self && failed-job-self is also "
        "line 1; one file's lines need different triggers"
    ]


async def test_after_the_data_dir_moved_a_line_is_named_by_the_file_loaded_now(
    tmp_path: Path, engines: Engines
) -> None:
    """Stop, ``mv A B``, start on B: the runs and listings named A's file, which did not run."""
    text = "blockme.py = submit-job-self\n"
    before = _directory(tmp_path / "A" / "callback", text)
    registering = engines(Recorder(), universal_dirs=[before])
    assert registering.reload_universal() == []
    registering.register_job(job(8))
    (tmp_path / "A").rename(tmp_path / "B")
    _directory(tmp_path / "A" / "callback", "").joinpath("blockme.py").write_text("other\n")
    now = tmp_path / "B" / "callback" / "blockme.py"
    recorder = Recorder()
    moved = engines(recorder, universal_dirs=[tmp_path / "B" / "callback"])
    assert moved.reload_universal() == []

    await moved.publish(Event("submit", "job", 8), wait=True)

    (run,) = recorder.runs
    assert (run.callback.source, run.refusal) == (str(now), "")
    triggers = TriggerServicer(moved)
    listed = await triggers.ListRegisteredJobs(
        executor_pb2.ListRegisteredJobsRequest(job_id=8), as_context(FakeContext())
    )
    assert [cb.source for cb in listed.jobs[0].callbacks if cb.universal] == [str(now)]
    explained = moved.explain(8)
    assert [c.callback.source for c in explained.callbacks if c.callback.universal] == [str(now)]


def test_more_lines_than_a_site_has_are_refused_unread(tmp_path: Path) -> None:
    # Each line is a callback of every job: 32,000 lines made each RegisterJob take 2.4 s
    # (probe 109).
    first = _directory(
        tmp_path / "first", "".join(f"blockme.py = complete-work-self-{n}\n" for n in range(600))
    )
    lines = "".join(f"blockme.py = complete-work-self-{n}\n" for n in range(401))
    second = _directory(tmp_path / "second", f"# {MAX_UNIVERSAL_LINES} at most\n{lines}")

    with pytest.raises(UniversalConfigError) as refused:
        load_universal([first, second], lambda _: None)

    assert refused.value.errors == [
        f"{second}/callbacks.conf: 401 lines of callbacks, 1001 with the directories before "
        "it: at most 1000 in all (each is a callback of every job): not read"
    ]
    assert len(load_universal([second], lambda _: None)) == 401


async def test_a_reload_reads_and_checks_the_files_off_the_event_loop(
    tmp_path: Path, engines: Engines
) -> None:
    # A reload of a long callbacks.conf held every call's answers for seconds (probe 109).
    conf = _directory(tmp_path / "callback", "blockme.py = complete-job-self\n")
    loop_ran = threading.Event()

    def check_code(language: str, code: str, path: Path) -> str | None:
        # Checked on the loop, this waits in vain: the loop cannot run meanwhile.
        return None if loop_ran.wait(timeout=5) else "the loop did not run during the check"

    engine = engines(Recorder(), universal_dirs=[conf], check_code=check_code)
    reload = asyncio.ensure_future(engine.reload_universal_off_loop())
    await asyncio.sleep(0.05)
    loop_ran.set()

    assert await reload == []
    assert [cb.triggers for cb in engine.universal] == ["complete-job-self"]
