"""The event path's up-front refusals as a user meets them: the farm, the CLI, the wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from supervisor_client import FarmClient, InvalidRequestError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack
from tests.helpers.cli import cbexec

pytestmark = pytest.mark.service


async def test_submit_jobs_refuses_a_trigger_the_engine_would_refuse(stack_warm: Stack) -> None:
    jobs: list[dict[str, Any]] = [
        {"name": "ok", "label": "okB"},
        {
            "name": "bad",
            "callbacks": [{"triggers": "complete-jb-self", "language": "python", "code": "x"}],
        },
    ]
    async with FarmClient(stack_warm.channel) as farm:
        with pytest.raises(InvalidRequestError) as refused:
            await farm.submit_jobs(jobs)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details.startswith(
            "job 2 of the submission, callback 1: triggers: unknown event type 'jb' at column 10;"
        )
        assert list((await farm.list_jobs()).jobs) == []  # all or nothing: none stored

        jobs[1]["callbacks"][0]["triggers"] = ["complete-job-self", "failed-job-self"]
        stored = await farm.submit_jobs(jobs)
        await stack_warm.settle()
        shown = await farm.get_job(stored.jobs[1].id)
        assert [cb.canonical_triggers for cb in shown.callbacks] == [
            "complete-job-self || failed-job-self"
        ]


async def test_register_a_job_file_with_a_list_valued_trigger(
    stack_warm: Stack, tmp_path: Path
) -> None:
    job: dict[str, Any] = {
        "id": 40,
        "name": "lst",
        "callbacks": [
            {
                "triggers": ["complete-job-self", "failed-job-self"],
                "language": "python",
                "code": "print(1)",
            }
        ],
    }
    path = tmp_path / "lst.json"
    path.write_text(json.dumps(job))
    said = await cbexec("triggers", "register", str(path), address=stack_warm.address)
    assert said.code == 0, said
    assert said.out.splitlines() == [
        "registered: job 40 callback 1 (python) complete-job-self || failed-job-self"
    ]

    job["callbacks"][0]["triggers"] = ["complete-job-self", 7]
    path.write_text(json.dumps(job))
    said = await cbexec("triggers", "register", str(path), address=stack_warm.address)
    assert said.code == 2, said
    assert "Traceback" not in said.err
    assert said.err.strip() == (f"cbexec: {path}: callbacks[0].triggers[1] must be a string, got 7")

    job["callbacks"][0]["triggers"] = ["complete-job-self", "failed-job-self"]
    path.write_text(json.dumps(job))
    said = await cbexec(
        "triggers",
        "register",
        str(path),
        "--publishes",
        "complete,bogus",
        address=stack_warm.address,
    )
    assert said.code == 1, said
    assert "refused: published_events[1]: unknown event name 'bogus'" in said.err


async def test_register_job_refuses_an_agenda_naming_one_work_item_twice(
    stack_warm: Stack,
) -> None:
    # Found by an independent client: SubmitJobs refused it and RegisterJob took it.
    job = {"id": 71, "agenda": [{"name": "1"}, {"name": "2"}, {"name": "1"}]}
    with pytest.raises(InvalidRequestError) as refused:
        await stack_warm.client.register_job(job)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details == (
        "job.agenda[2].name: '1' is also job.agenda[0]'s; a job's work names are unique"
    )
    registered = await stack_warm.client.register_job({**job, "label": "a b", "agenda": []})
    assert [(w.kind, w.message) for w in registered.warnings] == [
        (
            executor_pb2.TRIGGER_CHECK_KIND_LABEL_UNNAMEABLE,
            "label 'a b': no trigger can name this job by its label"
            " (a label in a trigger is ASCII letters, digits, '_' and '.')",
        )
    ]
