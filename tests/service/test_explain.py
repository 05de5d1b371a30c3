"""Dependencies that explain themselves, over gRPC: checks, why, near misses, level mode, CLI."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from executor.triggers.nodes import QB_TIME_EPOCH_OFFSET
from supervisor_client import InvalidRequestError
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2
from tests.conftest import Stack
from tests.helpers.waiting import eventually
from tests.service.test_runs import cbexec

pytestmark = pytest.mark.service

FRAMES = ["1", "2"]


def typo_job(job_id: int, pgrp: int) -> dict[str, Any]:
    return {
        "id": job_id,
        "pgrp": pgrp,
        "label": "comp",
        "user": "alice",
        "callbacks": [
            {"triggers": "complete-work-ribgn-*", "language": "qube", "code": "unblock-self"}
        ],
    }


async def complete_all(stack: Stack, job_id: int) -> None:
    for frame in FRAMES:
        stack.supervisor.start_work(job_id, frame)
        stack.supervisor.complete_work(job_id, frame)
    await stack.settle()


async def test_a_label_typo_is_found_at_registration_and_explained_by_why(
    stack_warm: Stack,
) -> None:
    stack = stack_warm
    (ribgen,) = stack.supervisor.submit(
        [{"name": "ribgen", "label": "ribgen", "user": "alice", "agenda": FRAMES}]
    )
    await stack.settle()
    pgrp = ribgen["pgrp"]

    with pytest.raises(InvalidRequestError, match=r"strict.*label 'ribgn' names no job"):
        await stack.client.register_job(typo_job(900, pgrp), strict=True)
    reply = await stack.client.register_job(typo_job(900, pgrp))
    (warning,) = reply.warnings
    assert warning.kind == executor_pb2.TRIGGER_CHECK_KIND_UNKNOWN_LABEL
    assert (warning.job_id, warning.callback_id, warning.atom) == (
        900,
        1,
        "complete-work-ribgn-*",
    )
    assert "did you mean 'ribgen'?" in warning.message

    await complete_all(stack, ribgen["id"])  # the frames it was meant to wait for

    (explained,) = (await stack.client.explain_callbacks(900)).callbacks
    assert explained.callback.count == 0
    assert explained.checks[0].message == warning.message
    assert explained.waiting_for[0].startswith(
        f"complete-work-ribgn-*: label 'ribgn' names no job in pgrp {pgrp}"
    )
    misses = [e for e in explained.journal if e.kind == executor_pb2.JOURNAL_ENTRY_KIND_NEAR_MISS]
    assert len(misses) == 2  # one per completed frame of ribgen
    assert misses[0].reason.endswith(f"this event was job {ribgen['id']} 'ribgen' in pgrp {pgrp}")

    code, out, err = await cbexec("triggers", "why", "900:1", "--address", stack.address)
    assert (code, err) == (0, "")
    assert out.startswith(f"job 900 'comp' in pgrp {pgrp}\n")
    assert "did you mean 'ribgen'? [unknown label]" in out
    assert "near miss of complete-work-ribgn-*" in out
    code, out, _ = await cbexec("triggers", "why", "900", "--json", "--address", stack.address)
    plain = json.loads(out)
    assert code == 0 and plain["job_id"] == 900
    assert plain["callbacks"][0]["checks"][0]["kind"] == "TRIGGER_CHECK_KIND_UNKNOWN_LABEL"


async def test_a_near_miss_across_pgrps_is_explained(stack_warm: Stack) -> None:
    stack = stack_warm
    (waiter,) = stack.supervisor.submit(
        [
            {
                "name": "comp",
                "label": "comp",
                "user": "alice",
                "status": "blocked",
                "callbacks": [
                    {"triggers": "complete-job-ribgen", "language": "qube", "code": "unblock-self"}
                ],
            }
        ]
    )
    # ribgen submitted on its own: it lands in a pgrp of its own, not the waiter's.
    (ribgen,) = stack.supervisor.submit(
        [{"name": "ribgen", "label": "ribgen", "user": "alice", "agenda": FRAMES}]
    )
    await complete_all(stack, ribgen["id"])

    assert stack.supervisor.job(waiter["id"])["status"] == "blocked"
    (explained,) = (await stack.client.explain_callbacks(waiter["id"])).callbacks
    (miss,) = explained.journal
    assert miss.kind == executor_pb2.JOURNAL_ENTRY_KIND_NEAR_MISS
    assert miss.reason == (
        f"label 'ribgen' names no job in pgrp {waiter['pgrp']}; "
        f"this event was job {ribgen['id']} 'ribgen' in pgrp {ribgen['pgrp']}"
    )
    assert miss.seen.event.name == "complete" and miss.seen.job_id == ribgen["id"]


@pytest.mark.parametrize("language", ["python", "qube"])
async def test_level_mode_fires_once_for_a_job_submitted_after_its_dependency_completed(
    stack_warm: Stack, language: str
) -> None:
    stack = stack_warm
    (job_a,) = stack.supervisor.submit([{"name": "jobA", "user": "alice", "agenda": FRAMES}])
    await complete_all(stack, job_a["id"])
    assert stack.supervisor.job(job_a["id"])["status"] == "complete"
    code = {"python": "qb.unblock(qb.jobid())", "qube": "unblock-self"}[language]

    def later(mode: str) -> dict[str, Any]:
        return {
            "name": f"jobB-{mode}",
            "user": "alice",
            "status": "blocked",
            "callbacks": [
                {
                    "triggers": f"complete-job-{job_a['id']}",
                    "language": language,
                    "code": code,
                    "mode": mode,
                }
            ],
        }

    level, edge = stack.supervisor.submit([later("level"), later("edge")])
    await stack.settle()
    await stack.running.engine.wait_idle()

    assert stack.supervisor.job(level["id"])["status"] == "pending"
    assert stack.supervisor.job(edge["id"])["status"] == "blocked"  # Qube's pitfall, kept
    (fired,) = (await stack.client.explain_callbacks(level["id"])).callbacks
    assert fired.callback.mode == types_pb2.TRIGGER_MODE_LEVEL
    assert fired.callback.count == 1
    assert [e.kind for e in fired.journal] == [executor_pb2.JOURNAL_ENTRY_KIND_LEVEL]
    (waiting,) = (await stack.client.explain_callbacks(edge["id"])).callbacks
    assert "a level callback latches what has happened when it registers" in waiting.waiting_for[0]
    runs = await stack.client.list_runs(job_id=level["id"])
    assert [run.callback_id for run in runs.runs] == [1]  # once


UNBLOCK_THE_FIRING_FRAME = {
    "python": "print('frame', qb.workid())\nqb.workunblock('%d:%s' % (qb.jobid(), qb.workid()))",
    "perl": 'print "frame ", qb::workid(), "\\n";\nqb::workunblock("$qb::jobid:" . qb::workid());',
    "qube": "unblock-work-self",
}


@pytest.mark.parametrize(
    "language",
    [
        "python",
        pytest.param(
            "perl",
            marks=pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
        ),
        "qube",
    ],
)
async def test_a_level_firing_by_a_frame_done_before_registration_has_that_frame(
    stack_warm: Stack, language: str
) -> None:
    stack = stack_warm
    (ribgen,) = stack.supervisor.submit([{"name": "ribgen", "user": "alice", "agenda": FRAMES}])
    await complete_all(stack, ribgen["id"])
    comp = {
        "name": "comp",
        "user": "alice",
        "agenda": [{"name": "1", "status": "blocked"}],
        "callbacks": [
            {
                "triggers": f"complete-work-{ribgen['id']}-1",
                "language": language,
                "code": UNBLOCK_THE_FIRING_FRAME[language],
                "mode": "level",
            }
        ],
    }

    (job,) = stack.supervisor.submit([comp])
    await stack.settle()
    await stack.running.engine.wait_idle()

    (run,) = (await stack.client.list_runs(job_id=job["id"])).runs
    ran = await stack.client.get_run(run.invocation_id)
    assert ran.result.failure.message == ""
    assert run.outcome == executor_pb2.OUTCOME_SUCCEEDED
    if language != "qube":
        assert ran.result.stdout == "frame 1\n"
    (frame,) = stack.supervisor.job(job["id"])["agenda"]
    assert frame["status"] != "blocked"


async def test_a_dry_run_explains_over_the_wire_and_the_cli(stack_warm: Stack) -> None:
    stack = stack_warm
    await stack.client.register_job(
        {
            "id": 700,
            "user": "alice",
            "callbacks": [
                {"triggers": "complete-job-1 && complete-job-2", "language": "qube", "code": "x"}
            ],
        }
    )
    reply = await stack.client.dry_run(name="complete", type="job", job_id=2)
    (entry,) = reply.explanations
    assert (entry.kind, list(entry.latched), entry.waiting_for) == (
        executor_pb2.JOURNAL_ENTRY_KIND_MATCHED,
        ["complete-job-2"],
        "complete-job-1",
    )
    code, out, _ = await cbexec(
        "triggers", "dry-run", "--event", "complete-job-2", "--address", stack.address
    )
    assert code == 0
    assert "job 700 callback 1: would latch complete-job-2; still waiting for complete-job-1" in out
    assert (await stack.client.explain_callbacks(700)).callbacks[0].journal == []


async def test_register_from_the_cli_warns_and_strict_refuses(
    stack_warm: Stack, tmp_path: Path
) -> None:
    stack = stack_warm
    job = tmp_path / "job.toml"
    job.write_text(
        'id = 800\nuser = "alice"\n\n[[callbacks]]\ntriggers = "done-job-parent"\n'
        'language = "qube"\ncode = "unblock-self"\nmode = "level"\n'
    )
    code, out, err = await cbexec(
        "triggers", "register", str(job), "--strict", "--address", stack.address
    )
    assert code == 1
    assert "refused" in err and "job 800 has no parent" in err
    code, out, err = await cbexec("triggers", "register", str(job), "--address", stack.address)
    assert (code, err) == (0, "")
    assert "registered: job 800 callback 1 (qube) done-job-parent" in out
    assert "warning: callback 1 done-job-parent: job 800 has no parent" in out
    (explained,) = (await stack.client.explain_callbacks(800)).callbacks
    assert explained.callback.mode == types_pb2.TRIGGER_MODE_LEVEL


async def test_why_names_what_is_not_registered(stack_warm: Stack) -> None:
    code, _, err = await cbexec("triggers", "why", "4242", "--address", stack_warm.address)
    assert code == 3
    assert err == (
        "cbexec: NOT_FOUND: job 4242 is not registered with the trigger engine "
        "(never, or removed)\n"
    )
    code, _, err = await cbexec("triggers", "why", "12:x")
    assert code == 2 and "expected JOB or JOB:CALLBACK" in err


@pytest.mark.parametrize("command", ["why", "register", "dry-run"])
async def test_the_new_commands_have_help(command: str) -> None:
    code, out, _ = await cbexec("triggers", command, "--help")
    assert code == 0 and out.startswith("usage: cbexec triggers")


async def test_reload_reports_the_universal_triggers_checks(stack_warm: Stack) -> None:
    conf = stack_warm.settings.data_dir / "callback"
    conf.mkdir(exist_ok=True)
    (conf / "callbacks.conf").write_text("notify.qcb [level] = failed-job-self-*\n")
    (conf / "notify.qcb").write_text("mail-status")

    reply = await stack_warm.client.reload_universal_callbacks()

    assert (reply.reloaded, reply.active) == (True, 1)
    assert list(reply.warnings) == [
        f"{conf}/callbacks.conf:1: failed-job-self-*: job events take no extra: '-*' is "
        "ignored (a label cannot contain '-')"
    ]
    code, out, _ = await cbexec("triggers", "reload", "--address", stack_warm.address)
    assert code == 0 and out.startswith("warning: ")


async def test_a_failed_reload_reports_its_errors_not_the_kept_sets_warnings(
    stack_warm: Stack,
) -> None:
    conf = stack_warm.settings.data_dir / "callback"
    conf.mkdir(exist_ok=True)
    (conf / "notify.qcb").write_text("mail-status")
    (conf / "callbacks.conf").write_text("notify.qcb = complete-job-self-foo\n")
    assert (await stack_warm.client.reload_universal_callbacks()).warnings  # '-foo' ignored
    # Line 1 now holds other text: the kept set's warning would seem to be about it.
    (conf / "callbacks.conf").write_text("notify.qcb = complete-jb-self\n")

    reply = await stack_warm.client.reload_universal_callbacks()

    assert (reply.reloaded, reply.active, list(reply.warnings)) == (False, 1, [])
    (error,) = reply.errors
    assert error.startswith(f"{conf}/callbacks.conf:1: ")
    code, out, _ = await cbexec("triggers", "reload", "--address", stack_warm.address)
    assert code != 0
    assert "warning" not in out and "-foo" not in out
    assert out.splitlines()[-1] == "kept the previous set: 1 active"


def _qube_now() -> int:
    return int(time.time()) - QB_TIME_EPOCH_OFFSET


async def _fired(stack: Stack, job_id: int, count: int) -> bool:
    async def check() -> bool:
        (explained,) = (await stack.client.explain_callbacks(job_id)).callbacks
        return explained.callback.count >= count

    return bool(await eventually(check))


async def test_a_repeat_ticking_past_the_year_9999_is_refused_with_its_column(
    stack_warm: Stack,
) -> None:
    # It was accepted, and `triggers why` for its job died with "year 10026 is out of range".
    trigger = f"dummy-repeat-self-{_qube_now() - 10}-252455597999"
    job = {"id": 951, "user": "u", "callbacks": [{"triggers": trigger, "language": "python"}]}

    with pytest.raises(InvalidRequestError, match=r"ticks past the year 9999 at column 29;"):
        await stack_warm.client.register_job(job)
    code, out, err = await cbexec("triggers", "check", trigger)
    assert code != 0 and "ticks past the year 9999 at column 29" in out + err


async def test_why_says_a_fired_time_and_a_removed_lines_clock_will_not_come(
    stack_warm: Stack,
) -> None:
    stack = stack_warm
    once = f"dummy-time-self-{_qube_now() - 1}"
    await stack.client.register_job(
        {
            "id": 952,
            "user": "u",
            "callbacks": [
                {"triggers": f"{once} && complete-job-self", "language": "python", "code": "1"}
            ],
        }
    )
    await stack.client.publish_event(name="complete", type="job", job_id=952, wait=True)
    assert await _fired(stack, 952, 1)

    code, out, err = await cbexec("triggers", "why", "952", "--address", stack.address)

    assert (code, err) == (0, "")
    # It was "due ... (4 s ago)", as if overdue (probe 92).
    assert f"    {once}: this job: job 952 in pgrp 952, its clock has fired" in out
    assert "ago" not in out

    conf = stack.settings.data_dir / "callback"
    conf.mkdir(exist_ok=True)
    (conf / "tick.py").write_text("print('tick')\n")
    repeat = f"globalrepeat-{_qube_now()}-2"
    (conf / "callbacks.conf").write_text(f"tick.py = {repeat}\n")
    assert (await stack.client.reload_universal_callbacks()).active == 1
    await stack.client.register_job({"id": 953, "user": "u", "callbacks": []})
    assert await _fired(stack, 953, 1)
    (conf / "callbacks.conf").write_text("")
    assert (await stack.client.reload_universal_callbacks()).active == 0

    code, out, err = await cbexec("triggers", "why", "953", "--address", stack.address)

    assert (code, err) == (0, "")
    # It was "next tick ... (in 1 s), every 2 s", the line's removal unsaid.
    assert "next tick" not in out
    assert (
        f"    {repeat}: no job (a global atom), its clock is stopped: its callbacks.conf line"
        " was removed by a reload"
    ) in out
    code, out, _ = await cbexec("triggers", "why", "953", "--json", "--address", stack.address)
    (explained,) = json.loads(out)["callbacks"]
    assert explained["atoms"][0]["next_due_unix"] == 0


async def test_why_names_the_universal_lines_loaded_after_the_jobs_registration(
    stack_warm: Stack,
) -> None:
    # The admin's first question (probe): a line added and reloaded did nothing for a
    # job registered before, and `why` said only "no callbacks".
    stack = stack_warm
    await stack.client.register_job({"id": 960, "user": "u", "callbacks": []})
    conf = stack.settings.data_dir / "callback"
    conf.mkdir(exist_ok=True)
    (conf / "notify.py").write_text("print('notify')\n")
    (conf / "callbacks.conf").write_text("notify.py = done-job-self\n")
    assert (await stack.client.reload_universal_callbacks()).active == 1

    code, out, err = await cbexec("triggers", "why", "960", "--address", stack.address)

    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "job 960 in pgrp 960",
        "  universal lines loaded after this job's registration are not attached to it:"
        f" {conf}/notify.py = done-job-self; a job takes the current set when it is"
        " registered again",
        "  no callbacks",
    ]
    # A job registered after the reload has the line, and nothing to say of it.
    await stack.client.register_job({"id": 961, "user": "u", "callbacks": []})
    later = await stack.client.explain_callbacks(961)
    assert [each.callback.source for each in later.callbacks] == [f"{conf}/notify.py"]
    assert later.universal_not_attached == ""
    # Registered again, the first job takes the set loaded now: the note goes.
    await stack.client.register_job({"id": 960, "user": "u", "callbacks": []})
    again = await stack.client.explain_callbacks(960)
    assert [each.callback.source for each in again.callbacks] == [f"{conf}/notify.py"]
    assert again.universal_not_attached == ""
