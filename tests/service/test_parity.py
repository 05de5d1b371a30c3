"""Python, Perl and qube callbacks through Execute: one table of scenarios, the same outcome and state.

Each scenario submits the same jobs once per language, runs that language's code in the
first job's context, and compares the outcome and the supervisor state afterwards
(names and statuses of every job, work item and instance it submitted) across the
languages. Where a scenario says so, stdout and stderr must be identical too. Then the
seed's universal callbacks (``checkWork.pl``, ``mail-status.qcb``) run end to end.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from supervisor_client import ReferenceSupervisor
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.waiting import eventually

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
]

Outcome = executor_pb2.Outcome
MIB = 1 << 20
LANGUAGES = ("python", "perl", "qube")


def blocked_job(supervisor: ReferenceSupervisor) -> list[int]:
    (job,) = supervisor.submit(
        [
            {
                "name": "comp",
                "user": "alice",
                "status": "blocked",
                "cpus": 2,
                "agenda": [{"name": str(n), "status": "blocked"} for n in range(1, 4)],
            }
        ]
    )
    return [int(job["id"])]


def pgrp_with_blocked_sibling(supervisor: ReferenceSupervisor) -> list[int]:
    lead, other = supervisor.submit(
        [
            {"name": "lead", "label": "lead", "user": "alice", "agenda": ["1"]},
            {
                "name": "other",
                "label": "other",
                "user": "alice",
                "agenda": [{"name": str(n), "status": "blocked"} for n in range(1, 4)],
            },
        ]
    )
    return [int(lead["id"]), int(other["id"])]


@dataclass(frozen=True)
class Scenario:
    """One behaviour, written in each language that can express it."""

    name: str
    code: dict[str, str]
    outcome: int
    setup: Callable[[ReferenceSupervisor], list[int]] = blocked_job
    limits: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    same_output: bool = False


SCENARIOS = [
    Scenario(
        "unblock own job",
        {
            "python": "qb.unblock(qb.jobid())",
            "perl": "qb::unblock($qb::jobid);",
            "qube": "unblock-self",
        },
        Outcome.OUTCOME_SUCCEEDED,
    ),
    Scenario(
        "unblock the triggering frame",
        {
            "python": "qb.workunblock('%d:%s' % (qb.jobid(), qb.workid()))",
            "perl": 'qb::workunblock("$qb::jobid:" . qb::workid());',
            "qube": "unblock-work-self",
        },
        Outcome.OUTCOME_SUCCEEDED,
        context={"work_name": "2"},
    ),
    Scenario(
        "unblock a frame of another job in the pgrp",
        {
            "python": "other = [j for j in qb.jobinfo('-pgrp', qb.jobid()) if j['name'] == 'other']\n"
            "qb.workunblock('%d:2' % other[0]['id'])",
            "perl": "my ($other) = grep { $_->{name} eq 'other' } qb::jobinfo(-pgrp => $qb::jobid);\n"
            'qb::workunblock("$other->{id}:2");',
        },
        Outcome.OUTCOME_SUCCEEDED,
        setup=pgrp_with_blocked_sibling,
    ),
    Scenario(
        "read jobinfo",
        {
            "python": "job = qb.jobinfo('-id', qb.jobid())[0]\n"
            "print(job['name'], job['status'], len(job['agenda']), job['user'])",
            "perl": "my ($job) = qb::jobinfo(-id => $qb::jobid);\n"
            'print "$job->{name} $job->{status} ", scalar @{ $job->{agenda} }, " $job->{user}\\n";',
        },
        Outcome.OUTCOME_SUCCEEDED,
        same_output=True,
    ),
    Scenario(
        "read chosen jobinfo fields",
        {
            # Each checks its keys itself: the old executor ignored fields in both alike.
            "python": "job = qb.jobinfo('-id', qb.jobid(), fields=['callbacks', 'name'])[0]\n"
            "keys = ','.join(sorted(job))\n"
            "if keys != 'callbacks,id,name': raise SystemExit(keys)\n"
            "print(keys, job['name'])",
            "perl": "my ($job) = qb::jobinfo(-id => $qb::jobid, fields => ['callbacks', 'name']);\n"
            'my $keys = join(",", sort keys %$job);\n'
            'die "$keys\\n" if $keys ne "callbacks,id,name";\n'
            'print "$keys $job->{name}\\n";',
        },
        Outcome.OUTCOME_SUCCEEDED,
        same_output=True,
    ),
    Scenario(
        "a qb call the owner may not make",
        {
            "python": "qb.unblock(qb.jobid())",
            "perl": "qb::unblock($qb::jobid);",
            "qube": "unblock-self",
        },
        Outcome.OUTCOME_FAILED,
        context={"owner": "mallory"},
    ),
    Scenario(
        "raise an error",
        {"python": "raise RuntimeError('boom')", "perl": 'die "boom\\n";'},
        Outcome.OUTCOME_FAILED,
    ),
    Scenario(
        "exit with a status",
        {"python": "import sys\nsys.exit(3)", "perl": "exit 3;"},
        Outcome.OUTCOME_FAILED,
    ),
    Scenario(
        "exit with status 143, as a SIGTERM would",
        {"python": "import sys\nsys.exit(143)", "perl": "exit 143;"},
        Outcome.OUTCOME_FAILED,
    ),
    Scenario(
        "a SIGTERM the callback sends itself",
        {
            "python": "import os, signal, time\ntry:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(20)\n"
            "finally:\n    print('cleaned up')",
            "perl": "END { print \"cleaned up\\n\" }\nkill 'TERM', $$;\nsleep 20;",
        },
        Outcome.OUTCOME_KILLED,
        same_output=True,
    ),
    Scenario(
        "print a lone surrogate",  # escaped, warm or cold alike
        {"python": "print('a\\ud800b')"},
        Outcome.OUTCOME_SUCCEEDED,
    ),
    Scenario(
        "code that does not compile",
        {"python": "def broken(:", "perl": "sub broken {", "qube": "unblock-everything"},
        Outcome.OUTCOME_REJECTED,
    ),
    Scenario(
        "exceed the CPU limit",
        {"python": "while True:\n    pass", "perl": "1 while 1;"},
        Outcome.OUTCOME_CPU_LIMIT,
        limits={"cpu_seconds": 1, "wall_seconds": 20},
    ),
    Scenario(
        "exceed the wall-clock limit",
        {"python": "import time\ntime.sleep(30)", "perl": "sleep 30;"},
        Outcome.OUTCOME_WALL_TIMEOUT,
        limits={"wall_seconds": 1},
    ),
    Scenario(
        "exceed the memory limit",
        {"python": "n = 4 << 30\ns = 'x' * n", "perl": 'my $n = 4 * 1024 ** 3; my $s = "x" x $n;'},
        Outcome.OUTCOME_MEMORY_LIMIT,
        limits={"memory_bytes": 256 * MIB},
    ),
    Scenario(
        "print to stdout and stderr",
        {
            "python": "import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)",
            "perl": 'print "to stdout\\n"; print STDERR "to stderr\\n";',
        },
        Outcome.OUTCOME_SUCCEEDED,
        same_output=True,
    ),
]


def state(supervisor: ReferenceSupervisor, job_ids: list[int]) -> list[Any]:
    """What a scenario may change, without the ids that differ between submissions."""
    return [
        (
            job["name"],
            job["status"],
            [(w["name"], w["status"]) for w in job["agenda"]],
            [(s["id"], s["status"]) for s in job["subjobs"]],
        )
        for job in (supervisor.job(job_id) for job_id in job_ids)
    ]


@dataclass
class LanguageRun:
    response: executor_pb2.ExecuteResponse
    state: list[Any]


async def run_scenario(stack: Stack, scenario: Scenario, language: str) -> LanguageRun:
    job_ids = scenario.setup(stack.supervisor)
    await stack.settle()
    response = await stack.client.execute_callback(
        language=language,
        code=scenario.code[language],
        job=stack.supervisor.job(job_ids[0]),
        limits=scenario.limits or None,
        **scenario.context,
    )
    return LanguageRun(response, state(stack.supervisor, job_ids))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
async def test_languages_agree(stack: Stack, scenario: Scenario) -> None:
    runs = {
        lang: await run_scenario(stack, scenario, lang)
        for lang in LANGUAGES
        if lang in scenario.code
    }

    for language, run in runs.items():
        assert run.response.outcome == scenario.outcome, (
            language,
            run.response.failure.message,
            run.response.stderr,
        )
    first, *others = runs
    for language in others:
        assert runs[language].state == runs[first].state, language
        if scenario.same_output:
            assert runs[language].response.stdout == runs[first].response.stdout, language
            assert runs[language].response.stderr == runs[first].response.stderr, language


# -- the seed's universal callbacks -------------------------------------------------------

CHECK_WORK_PL = r"""
# checkWork.pl: report each finished frame of every job (universal, done-work-self-*).
use strict;
use warnings;
my $jobid = $qb::jobid;
my $work = qb::workid();
my ($job) = qb::jobinfo('-id', $jobid);
my ($item) = grep { $_->{name} eq $work } @{ $job->{agenda} };
print "checkWork: job $jobid ($job->{name}) work $work is $item->{status}\n";
"""


async def test_seed_universal_callbacks(tmp_path: Path) -> None:
    universal = tmp_path / "callback"
    universal.mkdir()
    (universal / "callbacks.conf").write_text(
        "# seed universal callbacks\n"
        "checkWork.pl = done-work-self-*\n"
        "mail-status.qcb = done-job-self\n"
    )
    (universal / "checkWork.pl").write_text(CHECK_WORK_PL)
    (universal / "mail-status.qcb").write_text("mail-status\n")
    settings = stack_settings(tmp_path / "data", universal_callback_path=str(universal))

    async with running_stack(settings) as stack:
        (job,) = stack.supervisor.submit(
            [
                {
                    "name": "seed",
                    "user": "alice",
                    "mailaddress": "lead@studio.example",
                    "agenda": ["1", "2"],
                },
            ]
        )
        job_id = int(job["id"])
        await stack.settle()
        for frame in ("1", "2"):
            stack.supervisor.start_work(job_id, frame)
            stack.supervisor.complete_work(job_id, frame)
            await stack.settle()
        assert stack.supervisor.job(job_id)["status"] == "complete"

        mail_dir = settings.mail_settings.directory / "new"
        files = await eventually(
            lambda: sorted(mail_dir.glob("*.eml")) if mail_dir.is_dir() else [], timeout_s=15.0
        )
        (mail_file,) = files
        mail = email.message_from_bytes(mail_file.read_bytes(), policy=email.policy.default)
        assert mail["To"] == "lead@studio.example"
        assert mail["Subject"] == f"[qube] job {job_id} (seed) is complete"

        async def finished_runs() -> list[executor_pb2.Run]:
            listed = await stack.client.list_runs(executor_pb2.ListRunsRequest(job_id=job_id))
            return [await stack.client.get_run(run.invocation_id) for run in listed.runs]

        runs: list[executor_pb2.Run] = []
        deadline = time.monotonic() + 15
        while len(runs) < 3 and time.monotonic() < deadline:
            runs = await finished_runs()
            await asyncio.sleep(0.05)
        by_language = sorted((run.language, run.result.stdout) for run in runs)
        assert all(run.outcome == Outcome.OUTCOME_SUCCEEDED for run in runs), by_language
        assert by_language == [
            ("perl", f"checkWork: job {job_id} (seed) work 1 is complete\n"),
            ("perl", f"checkWork: job {job_id} (seed) work 2 is complete\n"),
            ("qube", by_language[2][1]),
        ]
        assert by_language[2][1].startswith("mail-status: mailed the job status (complete)")
