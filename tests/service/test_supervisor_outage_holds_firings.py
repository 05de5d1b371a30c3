"""Fired callbacks wait out a supervisor outage instead of failing for it (probe 88, finding 1).

A real executor calls the reference Supervisor service on its own loopback port, which
the test stops and starts again. Frames are blocked; each frame's ``complete`` event
fires a callback that unblocks it. Before, every firing started while the supervisor was
away ended FAILED (``SupervisorUnavailable``) and its frame stayed blocked for good; now
the firing worker holds fired runs while the supervisor is known to be unreachable, runs
again (once) a fired run that failed only for it, and resumes as soon as it answers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest

from executor import server
from supervisor_client import ExecutorClient, ReferenceSupervisor
from supervisor_client.qbcallback.v1 import executor_pb2, supervisor_pb2
from tests.conftest import stack_settings
from tests.helpers.supervisors import (
    BrieflyUnavailableSupervisor,
    CountingSupervisor,
    SupervisorEndpoint,
)
from tests.helpers.waiting import eventually, outbox_drained

pytestmark = pytest.mark.service

FRAMES: Final = 8
UNBLOCK: Final = "qb.workunblock('%d:%s' % (qb.jobid(), qb.workid()))\n"
HOLDING: Final = "holding fired runs"
RESUMING: Final = "fired runs resume"


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def _blocked_job(endpoint: SupervisorEndpoint) -> int:
    names = [str(n) for n in range(1, FRAMES + 1)]
    (job,) = endpoint.store.submit([{"name": "frames", "user": "alice", "agenda": names}])
    endpoint.store.work_action("block", job["id"], names, "alice")
    return int(job["id"])


def _blocked(endpoint: SupervisorEndpoint, job_id: int) -> list[str]:
    job = endpoint.store.job(job_id)
    assert job is not None
    return [w["name"] for w in job["agenda"] if w["status"] == "blocked"]


@asynccontextmanager
async def _farm(
    tmp_path: Path, servicer: type[CountingSupervisor] = CountingSupervisor
) -> AsyncIterator[tuple[SupervisorEndpoint, int]]:
    """A supervisor serving on loopback with a job of blocked frames; stopped and closed after."""
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db", servicer)
    job_id = await _blocked_job(endpoint)
    await endpoint.start()
    try:
        yield endpoint, job_id
    finally:
        await endpoint.stop()
        endpoint.store.close()


@asynccontextmanager
async def _executor(
    tmp_path: Path, endpoint: SupervisorEndpoint, **settings: Any
) -> AsyncIterator[server.RunningServer]:
    """A real executor calling ``endpoint``; stopped after."""
    running = await server.start(
        stack_settings(tmp_path / "data", supervisor=endpoint.address, **settings)
    )
    try:
        yield running
    finally:
        await running.stop()


async def _register(client: ExecutorClient, job_id: int) -> None:
    """The job, with a python callback that unblocks each frame as it completes."""
    callback = {"triggers": "complete-work-self-*", "language": "python", "code": UNBLOCK}
    await client.register_job(
        {"id": job_id, "name": "frames", "user": "alice", "callbacks": [callback]}
    )


async def _register_and_publish(client: ExecutorClient, job_id: int) -> None:
    await _register(client, job_id)
    await client.publish_events(
        [
            {"name": "complete", "type": "work", "job_id": job_id, "work_name": str(n)}
            for n in range(1, FRAMES + 1)
        ]
    )


async def test_fired_callbacks_decided_during_an_outage_run_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="executor.triggers.firings")
    async with (
        _farm(tmp_path) as (endpoint, job_id),
        _executor(tmp_path, endpoint, max_concurrent=2) as running,
        ExecutorClient(f"127.0.0.1:{running.port}") as client,
    ):
        await endpoint.stop()
        await _register_and_publish(client, job_id)
        # The first runs find the supervisor away; then the worker holds the rest.
        assert await eventually(lambda: _lines(caplog, HOLDING), timeout_s=20)
        metrics = await client.get_metrics()
        assert "UNAVAILABLE" in metrics.firings_held, metrics
        # An Execute is not held: its caller decides what to do about the outage.
        answer = await client.execute_callback(
            language="python", code="qb.jobstatus(qb.jobid())", job={"id": job_id}
        )
        assert answer.outcome == executor_pb2.OUTCOME_FAILED, answer
        assert answer.failure.exception_type == "SupervisorUnavailable", answer
        await asyncio.sleep(1.0)  # the outage goes on; nothing more starts
        assert not _lines(caplog, RESUMING)
        await endpoint.start()
        assert await eventually(lambda: running.engine.idle, timeout_s=30)
        assert await outbox_drained(client)
        runs = (await client.list_runs(job_id=job_id, limit=100)).runs
        metrics = await client.get_metrics()
        blocked = _blocked(endpoint, job_id)
    fired = [run for run in runs if run.work_name]
    assert len(fired) == FRAMES, runs
    assert {executor_pb2.Outcome.Name(run.outcome) for run in fired} == {"OUTCOME_SUCCEEDED"}
    assert blocked == []
    assert len(_lines(caplog, HOLDING)) == 1, caplog.text
    (resumed,) = _lines(caplog, RESUMING)
    assert "waited" in resumed, resumed
    assert metrics.firings_held == ""


async def test_a_long_outage_holds_without_spinning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While held, the worker waits on the channel with backoff: next to no CPU time."""
    caplog.set_level(logging.INFO, logger="executor.triggers.firings")
    async with (
        _farm(tmp_path) as (endpoint, job_id),
        _executor(tmp_path, endpoint, max_concurrent=2) as running,
        ExecutorClient(f"127.0.0.1:{running.port}") as client,
    ):
        await endpoint.stop()
        await _register_and_publish(client, job_id)
        assert await eventually(lambda: _lines(caplog, HOLDING), timeout_s=20)
        await asyncio.sleep(0.5)  # the failed runs' results settle
        cpu_before, wall_before = time.process_time(), time.monotonic()
        await asyncio.sleep(4.0)
        cpu_s = time.process_time() - cpu_before
        wall_s = time.monotonic() - wall_before
        queued = (await client.get_metrics()).firings_queued
        assert queued == FRAMES, queued  # all still waiting, none lost
        await endpoint.start()
        assert await eventually(lambda: running.engine.idle, timeout_s=30)
    # The whole test process (executor included) idles; a spinning hold takes a core.
    assert cpu_s < 0.15 * wall_s, (cpu_s, wall_s)
    assert len(_lines(caplog, HOLDING)) == 1, caplog.text


async def test_a_stop_during_the_hold_is_prompt_and_keeps_the_firings_queued(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A held worker does not keep a stop waiting; its firings run at the next start."""
    caplog.set_level(logging.INFO, logger="executor.triggers.firings")
    async with _farm(tmp_path) as (endpoint, job_id):
        settings = stack_settings(tmp_path / "data", supervisor=endpoint.address, max_concurrent=2)
        running = await server.start(settings)
        try:
            async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
                await endpoint.stop()
                await _register_and_publish(client, job_id)
                assert await eventually(lambda: _lines(caplog, HOLDING), timeout_s=20)
        finally:
            stopping = time.monotonic()
            await running.stop()
            stop_s = time.monotonic() - stopping
        assert stop_s < 5.0, stop_s
        await endpoint.start()
        async with _executor(tmp_path, endpoint, max_concurrent=2) as running:
            assert await eventually(lambda: running.engine.idle, timeout_s=30)
            blocked = _blocked(endpoint, job_id)
    assert blocked == []


@pytest.mark.parametrize(("refusals", "outcome"), [(1, "SUCCEEDED"), (2, "FAILED")])
async def test_a_run_failed_for_the_outage_runs_again_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, refusals: int, outcome: str
) -> None:
    """A supervisor (or a proxy before it) that answers UNAVAILABLE itself, its channel up.

    The failed run is run again once the supervisor answers (here at once: the probe's
    JobInfo is answered); a second failure for the same cause, the look answered at once
    again, is the firing's result.
    """
    caplog.set_level(logging.INFO, logger="executor.triggers.firings")
    async with (
        _farm(tmp_path, BrieflyUnavailableSupervisor) as (endpoint, job_id),
        _executor(tmp_path, endpoint) as running,
        ExecutorClient(f"127.0.0.1:{running.port}") as client,
    ):
        servicer = endpoint.servicer
        assert isinstance(servicer, BrieflyUnavailableSupervisor)
        await _register(client, job_id)
        servicer.unavailable["WorkAction"] = refusals
        answer = await client.publish_event(
            name="complete", type="work", job_id=job_id, work_name="1", wait=True
        )
        runs = dict((await client.get_metrics()).runs_by_outcome)
        blocked = _blocked(endpoint, job_id)
    (fired,) = answer.fired
    assert executor_pb2.Outcome.Name(fired.result.outcome) == f"OUTCOME_{outcome}", fired
    assert len(_lines(caplog, "failed because the supervisor was unreachable")) == refusals
    assert len(_lines(caplog, "is not run again")) == (outcome == "FAILED"), caplog.text
    assert runs == {"FAILED": 2} if outcome == "FAILED" else {"FAILED": 1, "SUCCEEDED": 1}
    assert ("1" in blocked) == (outcome == "FAILED")


class ProbeHoldingSupervisor(BrieflyUnavailableSupervisor):
    """Keeps each probe of the executor's hold (a JobInfo of job 0) until the test answers it.

    ``answer_probe(away)`` answers the oldest waiting probe UNAVAILABLE (away) or as ever.
    """

    def __init__(self, store: ReferenceSupervisor, delay_s: float = 0.0) -> None:
        super().__init__(store, delay_s)
        self.probes: asyncio.Queue[bool] = asyncio.Queue()
        self.probes_waiting = 0

    def answer_probe(self, *, away: bool) -> None:
        self.probes.put_nowait(away)

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        if request.id == 0:
            self.probes_waiting += 1
            try:
                away = await self.probes.get()
            finally:
                self.probes_waiting -= 1
            if away:
                self.unavailable["JobInfo"] += 1
        return await super().JobInfo(request, context)


async def test_a_run_failing_for_each_outage_runs_again_after_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Probe 141 F1: a re-run that meets the outage again goes back to the hold.

    Each time, the hold's look finds the supervisor away before it answers: its failures
    were the outage's, and the firing runs until its effect is applied. Before, the
    second failure was the firing's result whatever the look found.
    """
    caplog.set_level(logging.INFO, logger="executor.triggers.firings")
    async with (
        _farm(tmp_path, ProbeHoldingSupervisor) as (endpoint, job_id),
        # The failed runs' reports are answered meanwhile: that ends no hold (probe 160).
        _executor(tmp_path, endpoint) as running,
        ExecutorClient(f"127.0.0.1:{running.port}") as client,
    ):
        servicer = endpoint.servicer
        assert isinstance(servicer, ProbeHoldingSupervisor)
        await _register(client, job_id)
        servicer.unavailable["WorkAction"] = 3
        waiting = asyncio.ensure_future(
            client.publish_event(
                name="complete", type="work", job_id=job_id, work_name="1", wait=True
            )
        )
        for _ in range(3):  # each failed run's hold: away at its first look, then back
            assert await eventually(lambda: servicer.probes_waiting == 1, timeout_s=20)
            servicer.answer_probe(away=True)
            assert await eventually(
                lambda: servicer.probes_waiting == 1 and servicer.probes.empty(), timeout_s=20
            )
            servicer.answer_probe(away=False)
        answer = await waiting
        runs = dict((await client.get_metrics()).runs_by_outcome)
        blocked = _blocked(endpoint, job_id)
        unblocks = [h["text"] for h in endpoint.store.history(job_id) if "workunblock" in h["text"]]
    (fired,) = answer.fired
    assert executor_pb2.Outcome.Name(fired.result.outcome) == "OUTCOME_SUCCEEDED", fired
    assert runs == {"FAILED": 3, "SUCCEEDED": 1}, runs
    assert "1" not in blocked
    assert len(unblocks) == 1, unblocks
    assert not _lines(caplog, "is not run again"), caplog.text


def _held_for_s(held: str) -> int:
    found = re.search(r"unreachable for (\d+) s \((.+)\); 1 fired runs wait$", held)
    assert found is not None and found[2] == "UNAVAILABLE: the supervisor is restarting", held
    return int(found[1])


async def test_the_held_text_keeps_its_reason_and_clock_while_the_hold_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another call's answer, then the hold's own probe failing, neither resets the text.

    Probe 137 F1: a result report answered while the hold's probe was still out cleared
    the reason (``unreachable for 0 s ()``), and the probe's failure after it restarted
    the clock (2 s, 10 s, 18 s while the runs had been held 52 s).
    """
    caplog.set_level(logging.INFO, logger="executor.triggers.firings")
    async with (
        _farm(tmp_path, ProbeHoldingSupervisor) as (endpoint, job_id),
        # Long enough for a probe the supervisor keeps to stay out through the test.
        _executor(tmp_path, endpoint, supervisor_timeout_seconds=60) as running,
        ExecutorClient(f"127.0.0.1:{running.port}") as client,
    ):
        servicer = endpoint.servicer
        assert isinstance(servicer, ProbeHoldingSupervisor)
        await _register(client, job_id)
        # The run's read finds the supervisor away, and so do its result's reports.
        servicer.unavailable["JobInfo"] = 1
        servicer.unavailable["ReportResults"] = servicer.unavailable["ReportResult"] = 10**6
        await client.publish_event(name="complete", type="work", job_id=job_id, work_name="1")
        assert await eventually(lambda: _lines(caplog, HOLDING), timeout_s=20)
        assert await eventually(lambda: servicer.probes_waiting == 1)
        await asyncio.sleep(2.0)
        # The report is answered while the hold's probe is still out.
        servicer.unavailable["ReportResults"] = servicer.unavailable["ReportResult"] = 0
        assert await outbox_drained(client)
        answered = (await client.get_metrics()).firings_held
        # Then the probe finds it away: the hold goes on, and its next probe waits.
        servicer.answer_probe(away=True)
        assert await eventually(lambda: servicer.probes_waiting == 1 and servicer.probes.empty())
        lost_again = (await client.get_metrics()).firings_held
        servicer.answer_probe(away=False)
        assert await eventually(lambda: running.engine.idle, timeout_s=30)
        blocked = _blocked(endpoint, job_id)
    assert _held_for_s(answered) >= 2
    assert _held_for_s(lost_again) >= _held_for_s(answered)
    assert "1" not in blocked  # the run held went on once the supervisor answered
    assert len(_lines(caplog, RESUMING)) == 1, caplog.text


async def test_an_acknowledged_report_does_not_end_the_hold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Probe 160 F1: the job calls and the look refused UNAVAILABLE, the reports taken.

    Before, the failed run's acknowledged report ended the hold, and the one firing ran
    again about every 0.1 s while the outage lasted (14 runs in 5 s, 28 in 20 s), its
    effects outside ``qb`` repeated each time; now it waits the outage out, once.
    """
    caplog.set_level(logging.INFO, logger="executor.triggers.firings")
    async with (
        _farm(tmp_path, BrieflyUnavailableSupervisor) as (endpoint, job_id),
        _executor(tmp_path, endpoint) as running,
        ExecutorClient(f"127.0.0.1:{running.port}") as client,
    ):
        servicer = endpoint.servicer
        assert isinstance(servicer, BrieflyUnavailableSupervisor)
        await _register(client, job_id)
        servicer.unavailable["JobInfo"] = servicer.unavailable["WorkAction"] = 10**6
        waiting = asyncio.ensure_future(
            client.publish_event(
                name="complete", type="work", job_id=job_id, work_name="1", wait=True
            )
        )
        assert await eventually(lambda: _lines(caplog, HOLDING), timeout_s=20)
        assert await eventually(lambda: servicer.applied, timeout_s=20)  # its report taken
        await asyncio.sleep(4.0)
        during = dict((await client.get_metrics()).runs_by_outcome)
        servicer.unavailable["JobInfo"] = servicer.unavailable["WorkAction"] = 0
        answer = await asyncio.wait_for(waiting, 30)
        runs = dict((await client.get_metrics()).runs_by_outcome)
        blocked = _blocked(endpoint, job_id)
    assert during == {"FAILED": 1}, during
    (fired,) = answer.fired
    assert executor_pb2.Outcome.Name(fired.result.outcome) == "OUTCOME_SUCCEEDED", fired
    assert runs == {"FAILED": 1, "SUCCEEDED": 1}, runs
    assert "1" not in blocked
    assert len(_lines(caplog, RESUMING)) == 1, caplog.text


class FlappingLookSupervisor(BrieflyUnavailableSupervisor):
    """While ``flapping``, answers the hold's looks (JobInfo of job 0) UNAVAILABLE and as ever in turn."""

    def __init__(self, store: ReferenceSupervisor, delay_s: float = 0.0) -> None:
        super().__init__(store, delay_s)
        self.flapping = False
        self.looks = 0

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        if request.id == 0 and self.flapping:
            self.looks += 1
            if self.looks % 2:
                self.unavailable["JobInfo"] += 1
        return await super().JobInfo(request, context)


async def test_re_runs_that_fail_again_wait_longer_each_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each hold's look finds the supervisor away, then answering; the action stays refused.

    Every re-run fails for the outage again after a look found it away, so none is the
    firing's result; the waits go on growing from one hold to the next (0.1 s doubling up
    to 5 s) rather than starting at 0.1 s again, so the firing does not run ten times
    a second while that lasts.
    """
    caplog.set_level(logging.INFO, logger="executor.triggers.firings")
    async with (
        _farm(tmp_path, FlappingLookSupervisor) as (endpoint, job_id),
        _executor(tmp_path, endpoint) as running,
        ExecutorClient(f"127.0.0.1:{running.port}") as client,
    ):
        servicer = endpoint.servicer
        assert isinstance(servicer, FlappingLookSupervisor)
        await _register(client, job_id)
        servicer.flapping = True
        servicer.unavailable["WorkAction"] = 10**6
        waiting = asyncio.ensure_future(
            client.publish_event(
                name="complete", type="work", job_id=job_id, work_name="1", wait=True
            )
        )
        assert await eventually(lambda: _lines(caplog, HOLDING), timeout_s=20)
        await asyncio.sleep(4.0)
        during = dict((await client.get_metrics()).runs_by_outcome)
        servicer.flapping = False
        servicer.unavailable["WorkAction"] = 0
        answer = await asyncio.wait_for(waiting, 30)
        blocked = _blocked(endpoint, job_id)
    # Waits of at least 0.05 + 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 2.5 s: 4 s hold 4 runs or so.
    assert set(during) == {"FAILED"} and during["FAILED"] <= 5, during
    (fired,) = answer.fired
    assert executor_pb2.Outcome.Name(fired.result.outcome) == "OUTCOME_SUCCEEDED", fired
    assert "1" not in blocked
    assert not _lines(caplog, "is not run again"), caplog.text
