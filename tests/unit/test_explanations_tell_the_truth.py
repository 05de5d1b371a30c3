"""`why`, `dry-run`, the journal and the dashboard say what the engine will do (probe 116).

Each test is a place where one of them said something false: a removed universal line
shown as live, a callback its policy refuses shown as firing, a label check resolved by
a job that no longer holds the label, a dead clock still waited for, a journal cut
short without saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from executor.api.explanations import explanation_message
from executor.api.triggers import TriggerServicer
from executor.cli.check_config import _universal
from executor.cli.explain import format_dry_run, format_entry, format_explanation
from executor.config import Settings
from executor.model import Event, Language
from executor.policies import Policy, PolicySet
from executor.triggers.nodes import QB_TIME_EPOCH_OFFSET
from executor.triggers.universal import load_universal
from executor.web.explain import explain_reply
from supervisor_client.client import as_plain
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.helpers.servicer_context import FakeContext, as_context
from tests.helpers.trigger_engines import LIMITS, Engines, Recorder

pytestmark = pytest.mark.unit

REMOVED = "is no longer in callbacks.conf (its line was removed, or its trigger changed, by a"


def _directory(path: Path, conf: str, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, code in files.items():
        (path / name.replace("_", ".")).write_text(code)
    (path / "callbacks.conf").write_text(conf)
    return path


async def _dry_run(engine: Any, name: str, job_id: int) -> str:
    reply = await TriggerServicer(engine).DryRun(
        executor_pb2.DryRunRequest(name=name, type="job", job_id=job_id),
        as_context(FakeContext()),
    )
    return format_dry_run(reply)


def _why(engine: Any, job_id: int) -> str:
    return format_explanation(explanation_message(engine.explain(job_id)))


def _policies(**languages: frozenset[Language]) -> PolicySet:
    """The built-in policies and one policy per keyword, with the languages given (user bob)."""
    made = {
        name: Policy(name, True, default_limits=LIMITS, max_limits=LIMITS)
        for name in ("job", "universal")
    }
    for name, allowed in languages.items():
        made[name] = Policy(
            name, True, languages=allowed, default_limits=LIMITS, max_limits=LIMITS, users=("bob",)
        )
    return PolicySet(made)


# -- F4: a removed universal line, a shadow line ---------------------------------------


async def test_a_removed_universal_line_reads_as_refused_everywhere(
    tmp_path: Path, engines: Engines
) -> None:
    conf = _directory(tmp_path / "callback", "uni.py = complete-job-self\n", uni_py="print(1)\n")
    recorder = Recorder()
    engine = engines(recorder, universal_dirs=[conf])
    assert engine.reload_universal() == []
    engine.register_job({"id": 900, "pgrp": 900})
    (conf / "callbacks.conf").write_text("")
    assert engine.reload_universal() == []

    # `why` showed it as a plain waiting callback (probe 116 F4).
    text = _why(engine, 900)
    (refused,) = [line for line in text.splitlines() if "REJECTED" in line]
    assert refused.startswith("  each firing is refused (REJECTED), not run: universal callback")
    assert REMOVED in refused and "until a reload brings the line back" in refused
    # The dashboard's row reads the same explanation.
    (row,) = explain_reply(explanation_message(engine.explain(900))).values()
    assert row.waiting_for.startswith("each firing is refused (REJECTED), not run: ")

    # `dry-run` said "would fire".
    said = await _dry_run(engine, "complete", 900)
    assert said.splitlines()[0].startswith(
        "would be refused: job 900 callback 1 (python) complete-job-self: universal callback"
    )
    assert not any(line.startswith("would fire") for line in said.splitlines())
    assert "would fire (count 1), would be refused: universal callback" in said

    # The journal said "FIRED as <id>" and nothing of the refusal.
    await engine.publish(Event("complete", "job", 900), wait=True)
    (run,) = recorder.runs
    assert REMOVED in run.refusal
    (entry,) = as_plain(explanation_message(engine.explain(900)))["callbacks"][0]["journal"]
    line = format_entry(entry)
    assert f"FIRED as {run.invocation_id} (count 1), refused: " in line
    assert run.refusal in line


async def test_a_shadow_line_says_its_actions_are_not_applied(
    tmp_path: Path, engines: Engines
) -> None:
    conf = _directory(
        tmp_path / "callback", "sh.py [shadow] = complete-job-self\n", sh_py="print(1)\n"
    )
    engine = engines(Recorder(), universal_dirs=[conf])
    assert engine.reload_universal() == []
    engine.register_job({"id": 2800, "pgrp": 2800})

    text = _why(engine, 2800)
    assert "  shadow: it runs, its qb actions are recorded, not applied" in text.splitlines()
    said = await _dry_run(engine, "complete", 2800)
    assert said.splitlines()[0] == (
        "would fire: job 2800 callback 1 (python) complete-job-self (shadow: actions not applied)"
    )


# -- F5: a callback its own policy refuses ----------------------------------------------


async def test_a_job_callback_its_policy_refuses_is_warned_of_and_dry_run_says_so(
    engines: Engines,
) -> None:
    recorder = Recorder()
    engine = engines(recorder, policies=_policies(pyonly=frozenset({Language.PYTHON})))
    perl = {"triggers": "complete-job-self", "language": "perl", "code": "print 1;\n"}
    registered = engine.register_job({"id": 1000, "user": "bob", "callbacks": [perl]})

    refusal = "perl callbacks are not allowed by policy 'pyonly' (policies.pyonly.languages)"
    assert [check.line() for check in registered.checks] == [
        f"callback 1: each firing would be REJECTED: {refusal}"
    ]
    said = await _dry_run(engine, "complete", 1000)
    assert said.splitlines()[0] == (
        f"would be refused: job 1000 callback 1 (perl) complete-job-self: {refusal}"
    )
    text = _why(engine, 1000)
    assert f"  each firing is refused (REJECTED), not run: {refusal}" in text.splitlines()
    # Another user's perl callback is no one's business of pyonly's.
    other = engine.register_job({"id": 1001, "user": "ann", "callbacks": [perl]})
    assert other.checks == []


def test_a_universal_line_its_policy_refuses_is_warned_of_at_load(tmp_path: Path) -> None:
    conf = _directory(
        tmp_path / "callback",
        "x.pl [policy=pyonly] = complete-job-self\nx.pl = done-job-self\n",
        x_pl="print 1;\n",
    )
    loaded = load_universal(
        [conf],
        lambda _: None,
        known_policies=["job", "universal", "pyonly"],
        policy_languages={"pyonly": {"python"}, "universal": {"python", "perl"}},
    )
    assert [cb.warnings for cb in loaded] == [
        (
            f"{conf}/callbacks.conf:1: perl callbacks are not allowed by policy 'pyonly' "
            "(policies.pyonly.languages): each firing of this line is refused (REJECTED)",
        ),
        (),
    ]


async def test_the_engine_and_check_config_warn_of_a_line_its_policy_refuses(
    tmp_path: Path, engines: Engines
) -> None:
    conf = _directory(
        tmp_path / "callback", "x.pl [policy=pyonly] = complete-job-self\n", x_pl="print 1;\n"
    )
    engine = engines(
        Recorder(),
        universal_dirs=[conf],
        policies=_policies(pyonly=frozenset({Language.PYTHON})),
    )
    assert engine.reload_universal() == []
    assert any("not allowed by policy 'pyonly'" in w for w in engine.universal_warnings)
    engine.register_job({"id": 2700, "pgrp": 2700})
    said = await _dry_run(engine, "complete", 2700)
    assert said.startswith("would be refused: job 2700 callback 1 (perl)")

    settings = Settings(
        data_dir=tmp_path / "data",
        universal_callback_path=str(conf),
        policies={"pyonly": {"languages": ["python"]}},
    )
    checked = _universal(settings)
    assert "WARNING: " in checked and "not allowed by policy 'pyonly'" in checked


# -- F1: a label check's resolution follows the label -----------------------------------


async def test_a_label_checks_resolution_follows_the_label(engines: Engines) -> None:
    engine = engines(Recorder())
    waiting = {"triggers": "complete-job-ribgen", "language": "qube", "code": "unblock-self"}
    engine.register_job({"id": 200, "pgrp": 200, "callbacks": [waiting]})

    def resolved() -> str:
        (check,) = engine.explain(200).callbacks[0].checks
        return check.resolved

    engine.register_job({"id": 201, "pgrp": 200, "label": "ribgen"})
    assert resolved().startswith("label 'ribgen' names job 201 since ")
    engine.register_job({"id": 201, "pgrp": 200, "label": "other"})
    # It said "names job 201" while the atoms said no job held it (probe 116 F1).
    assert resolved() == "label 'ribgen' names no job in pgrp 200 now (job 201 held it)"
    engine.register_job({"id": 202, "pgrp": 200, "label": "ribgen"})
    assert resolved() == "label 'ribgen' names job 202 now (job 201 held it first)"
    engine.register_job({"id": 202, "pgrp": 200, "label": "other2"})
    engine.register_job({"id": 201, "pgrp": 200, "label": "ribgen"})
    assert resolved().startswith("label 'ribgen' names job 201 since ")


# -- F6: a dead clock is not waited for in the journal or a dry run -----------------------


async def test_the_journal_and_dry_run_leave_a_fired_time_out(engines: Engines) -> None:
    now = 1_800_000_000
    once = f"dummy-time-self-{now - QB_TIME_EPOCH_OFFSET - 5}"
    engine = engines(Recorder(), clock=lambda: now)
    qube = {"language": "qube", "code": "unblock-self"}
    engine.register_job(
        {
            "id": 1200,
            "pgrp": 1200,
            "callbacks": [
                {"triggers": f"{once} && complete-job-self", **qube},
                {"triggers": f"({once} && complete-job-self) || killed-job-self", **qube},
            ],
        }
    )
    engine.fire_due_timers()
    await engine.publish(Event("complete", "job", 1200), wait=True)  # both fire

    said = await _dry_run(engine, "complete", 1200)
    # It said "still waiting for dummy-time-self-..." (probe 116 F6).
    assert f"still waiting for {once}" not in said
    assert (
        "  job 1200 callback 1: would latch complete-job-self; it will not fire again: it needs "
        f"{once}, which will not latch again"
    ) in said.splitlines()
    assert (
        "  job 1200 callback 2: would latch complete-job-self; still waiting for killed-job-self"
    ) in said.splitlines()
    await engine.publish(Event("complete", "job", 1200), wait=True)
    journal = as_plain(explanation_message(engine.explain(1200)))["callbacks"][0]["journal"]
    assert "it will not fire again" in format_entry(journal[-1])
    assert f"still waiting for {once}" not in format_entry(journal[-1])


# -- F9: a journal cut short says so -----------------------------------------------------


async def test_why_says_how_many_journal_entries_it_left_out(engines: Engines) -> None:
    engine = engines(Recorder())
    agenda = [{"name": str(n), "status": "pending"} for n in range(1, 8)]
    work = {"triggers": "complete-work-self-{work} && done-job-1", "language": "qube"}
    engine.register_job(
        {"id": 2100, "pgrp": 2100, "agenda": agenda, "callbacks": [{**work, "code": "x"}]}
    )
    for n in range(1, 8):
        await engine.publish(Event("complete", "work", 2100, work_name=str(n)), wait=True)

    explained = explanation_message(engine.explain(2100, journal_limit=3))
    assert len(explained.callbacks[0].journal) == 3
    assert explained.callbacks[0].journal_left_out == 4
    text = format_explanation(explained)
    assert (
        "  journal (oldest first): the newest 3 entries of 7, of every work item "
        "(cbexec triggers why 2100:1 --work NAME for one item's)"
    ) in text.splitlines()
    one = explanation_message(engine.explain(2100, work_name="2", journal_limit=3))
    assert one.callbacks[0].journal_left_out == 0
    assert "  journal (oldest first):" in format_explanation(one).splitlines()
