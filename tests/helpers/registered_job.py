"""A trigger engine behind its servicer with one registered job, and an event it must apply once.

For tests that make the store refuse a ``PublishEvent`` (a lost backend, a read-only
server) and check the event was not half applied: refused UNAVAILABLE, then applied
once when resent under its id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest

from executor.api.triggers import TriggerServicer
from executor.triggers.engine import TriggerEngine
from executor.triggers.store import TriggerStore
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.helpers.servicer_context import Aborted, FakeContext, as_context
from tests.helpers.trigger_engines import LIMITS, Recorder, job


@dataclass
class RegisteredJob:
    """Job ``job_id``, whose callback ``x`` runs on its ``running`` event."""

    store: TriggerStore
    recorder: Recorder
    triggers: TriggerServicer
    job_id: int

    def running_event(self, event_id: str) -> executor_pb2.PublishEventRequest:
        return executor_pb2.PublishEventRequest(
            name="running", type="job", job_id=self.job_id, event_id=event_id
        )

    async def refused(self, request: executor_pb2.PublishEventRequest) -> str:
        """The UNAVAILABLE refusal's details (a publisher resends only that code)."""
        with pytest.raises(Aborted) as refused:
            await self.triggers.PublishEvent(request, as_context(FakeContext()))
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value.details
        return refused.value.details

    async def applied_once_when_resent(self, request: executor_pb2.PublishEventRequest) -> None:
        """Nothing of the refused event was applied: resent, it is applied now, and once."""
        again = await self.triggers.PublishEvent(request, as_context(FakeContext()))
        assert not again.duplicate
        assert (await self.triggers.PublishEvent(request, as_context(FakeContext()))).duplicate
        await self.recorder.ran(1)
        assert self.recorder.codes == ["x"]


@asynccontextmanager
async def registered_job(store_url: str, job_id: int) -> AsyncIterator[RegisteredJob]:
    """An engine on ``store_url`` with ``job_id`` registered; closed after."""
    store = TriggerStore(store_url)
    recorder = Recorder()
    engine = TriggerEngine(store, recorder, limits=LIMITS)
    triggers = TriggerServicer(engine)
    engine.start()
    try:
        await triggers.RegisterJob(
            executor_pb2.RegisterJobRequest(
                job=job_from_dict(job(job_id, ("running-job-self", "x")))
            ),
            as_context(FakeContext()),
        )
        yield RegisteredJob(store, recorder, triggers, job_id)
    finally:
        await engine.close()
        store.close()
