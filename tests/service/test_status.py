"""What the executor says about itself over gRPC: registered jobs, universal callbacks, the readings."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from supervisor_client import ExecutorRpcError
from supervisor_client.client import outcome_name
from tests.conftest import Stack
from tests.service.test_runs import cbexec, run_py

pytestmark = pytest.mark.service

HALF = "complete-work-self-1 && complete-work-self-2"


async def test_registered_jobs_show_latches_counts_and_pages(stack_warm: Stack) -> None:
    client = stack_warm.client
    for job_id in (11, 12, 13):
        await client.register_job(
            {
                "id": job_id,
                "name": f"shot{job_id}",
                "label": f"lbl{job_id}",
                "user": "alice",
                "callbacks": [{"triggers": HALF, "language": "qube", "code": "unblock-self"}],
            }
        )
    await client.publish_event(name="complete", type="work", job_id=12, work_name="1")

    everything = await client.list_registered_jobs()
    assert [job.id for job in everything.jobs] == [13, 12, 11]
    assert everything.total == 3
    twelve = everything.jobs[1]
    assert (twelve.name, twelve.label, twelve.user, twelve.pgrp) == ("shot12", "lbl12", "alice", 12)
    (callback,) = twelve.callbacks
    assert list(callback.latches) == [True, False]
    assert (callback.count, callback.maximum) == (0, 0)
    assert callback.canonical_triggers == HALF

    page = await client.list_registered_jobs(limit=2)
    assert [job.id for job in page.jobs] == [13, 12]
    rest = await client.list_registered_jobs(limit=2, before_job_id=page.jobs[-1].id)
    assert [job.id for job in rest.jobs] == [11]
    only = await client.list_registered_jobs(job_id=11)
    assert [job.id for job in only.jobs] == [11]
    assert not (await client.list_registered_jobs(job_id=99)).jobs


async def test_universal_callbacks_per_directory_and_the_last_reload(
    tmp_path: Path, stack_warm: Stack
) -> None:
    directory = stack_warm.settings.universal_callback_dirs[0]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "notify.qcb").write_text("unblock-self")
    (directory / "callbacks.conf").write_text("notify.qcb = complete-job-self\n")
    before = time.time()
    assert (await stack_warm.client.reload_universal_callbacks()).reloaded

    loaded = await stack_warm.client.get_universal_callbacks()
    (entry,) = loaded.directories
    assert (entry.path, entry.has_conf) == (str(directory), True)
    assert [(cb.language, cb.triggers) for cb in entry.callbacks] == [("qube", "complete-job-self")]
    assert loaded.last_reload_at >= before and loaded.loaded_at == loaded.last_reload_at
    assert not loaded.errors

    (directory / "callbacks.conf").write_text("missing.py = complete-job-self\n")
    assert not (await stack_warm.client.reload_universal_callbacks()).reloaded
    kept = await stack_warm.client.get_universal_callbacks()
    assert len(kept.directories[0].callbacks) == 1, "the last good set stays active"
    assert kept.errors and "missing.py" in kept.errors[0]
    assert kept.last_reload_at >= kept.loaded_at == loaded.loaded_at


async def test_metrics_carry_the_readings_and_labels(stack_warm: Stack) -> None:
    await run_py(stack_warm, "pass", 1)
    await stack_warm.client.register_job(
        {
            "id": 21,
            "callbacks": [
                {"triggers": "complete-job-self", "language": "python", "code": "print(1)"}
            ],
        }
    )
    await stack_warm.client.publish_event(name="complete", type="job", job_id=21, wait=True)

    metrics = await stack_warm.client.get_metrics()

    runs = {(outcome_name(c.outcome), c.language, c.source): c.runs for c in metrics.runs}
    assert runs == {("SUCCEEDED", "python", "execute"): 1, ("SUCCEEDED", "python", "job"): 1}
    assert (metrics.slots, metrics.queue_limit) == (4, 64)
    assert (metrics.trigger_jobs, metrics.trigger_callbacks) == (1, 1)
    assert (metrics.events_published, metrics.callbacks_fired) == (1, 1)
    python = next(z for z in metrics.zygotes if z.language == "python")
    assert python.pid > 0 and python.restarts == 0 and python.warm
    mechanisms = {m.name: m.active for m in metrics.sandbox.mechanisms}
    assert mechanisms["zygote_launcher"] is True
    assert set(mechanisms) >= {"pid_namespace", "network_namespace", "dedicated_uid"}
    assert "rlimits" in metrics.sandbox.description


async def test_list_runs_by_language(stack_warm: Stack) -> None:
    python = await run_py(stack_warm, "pass", 5)
    qube = await stack_warm.client.execute_callback(
        language="qube", code="unblock-self", job={"id": 5}
    )
    assert [r.invocation_id for r in (await stack_warm.client.list_runs(language="qube")).runs] == [
        qube.invocation_id
    ]
    assert [
        r.invocation_id for r in (await stack_warm.client.list_runs(language="python")).runs
    ] == [python.invocation_id]
    with pytest.raises(ExecutorRpcError, match="language 'cobol'"):
        await stack_warm.client.list_runs(language="cobol")


async def test_health_answers_serving(stack_warm: Stack) -> None:
    assert await stack_warm.client.health() == "SERVING"


async def test_cbexec_metrics_prints_the_same_numbers(stack_warm: Stack) -> None:
    await run_py(stack_warm, "raise SystemExit(3)", 7)
    code, out, err = await cbexec("metrics", "--address", stack_warm.address)
    assert code == 0, err
    assert "runs            1 (FAILED 1)" in out
    assert "slots           0 of 4 busy" in out
    assert "zygote          python  pid " in out

    code, out, err = await cbexec("metrics", "--address", stack_warm.address, "--json")
    assert code == 0, err
    plain = json.loads(out)
    assert plain["runs_by_outcome"] == {"FAILED": 1}
    assert plain["slots"] == 4
