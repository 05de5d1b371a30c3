"""Jobs of many callbacks: explaining and registering them leaves the service answering.

An explanation or a registration held at a point inside its work (a barrier, not a
stopwatch) while other calls are made: they are answered meanwhile, so the work is
neither on the event loop nor holding a lock the events wait for.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from executor.api.triggers import TriggerServicer
from executor.triggers import checks, registration, why
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2
from tests.helpers.servicer_context import FakeContext, as_context
from tests.helpers.trigger_engines import Engines, Recorder, job

pytestmark = pytest.mark.unit

# How long a held piece of work waits for the other calls before it gives up (only a
# failure waits that long: on the loop, nothing else can run meanwhile).
HOLD_S = 5.0


def context() -> grpc.aio.ServicerContext[Any, Any]:
    return as_context(FakeContext())


class Hold:
    """Wraps a function: its first call says it started, then waits until released."""

    def __init__(self, wrapped: Callable[..., Any]) -> None:
        self._wrapped = wrapped
        self.started = threading.Event()
        self.released = threading.Event()
        self.released_in_time: bool | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.started.is_set():
            self.started.set()
            self.released_in_time = self.released.wait(HOLD_S)
        return self._wrapped(*args, **kwargs)

    async def until_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, HOLD_S + 5)


def publish(job_id: int) -> executor_pb2.PublishEventRequest:
    return executor_pb2.PublishEventRequest(name="running", type="job", job_id=job_id)


async def test_an_event_is_applied_while_a_big_job_is_explained(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engines(Recorder())
    triggers = TriggerServicer(engine)
    engine.register_job(job(5, ("complete-job-self", "nothing-self")))
    engine.register_job(job(6, ("running-job-self", "unblock-self")))
    hold = Hold(why._callback)
    monkeypatch.setattr(why, "_callback", hold)  # inside the explanation's reads

    explaining = asyncio.ensure_future(
        triggers.ExplainCallbacks(executor_pb2.ExplainCallbacksRequest(job_id=5), context())
    )
    await hold.until_started()
    answered = await triggers.PublishEvent(publish(6), context())
    listed = await triggers.ListRegisteredJobs(
        executor_pb2.ListRegisteredJobsRequest(job_id=6), context()
    )
    hold.released.set()
    explained = await explaining

    assert hold.released_in_time  # on the loop (or holding the store's lock) it waited in vain
    assert [f.callback_id for f in answered.fired] == [1]
    assert [j.id for j in listed.jobs] == [6]
    assert [cb.callback.id for cb in explained.callbacks] == [1]


async def test_calls_are_answered_while_a_big_job_registers(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engines(Recorder())
    triggers = TriggerServicer(engine)
    engine.register_job(job(6, ("running-job-self", "unblock-self")))
    hold = Hold(registration.callback_specs)
    # Inside the registration, before its transaction.
    monkeypatch.setattr("executor.triggers.registrar.callback_specs", hold)

    callback = types_pb2.Callback(triggers="complete-job-self", language="qube", code="x")
    request = executor_pb2.RegisterJobRequest(job=types_pb2.Job(id=5, callbacks=[callback]))
    registering = asyncio.ensure_future(triggers.RegisterJob(request, context()))
    await hold.until_started()
    answered = await triggers.PublishEvent(publish(6), context())
    listed = await triggers.ListRegisteredJobs(
        executor_pb2.ListRegisteredJobsRequest(job_id=6), context()
    )
    hold.released.set()
    registered = await registering

    assert hold.released_in_time
    assert [f.callback_id for f in answered.fired] == [1]
    assert [j.id for j in listed.jobs] == [6]
    assert [cb.id for cb in registered.callbacks] == [1]


async def test_jobs_are_listed_while_a_registration_writes(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engines(Recorder())
    triggers = TriggerServicer(engine)
    engine.register_job(job(6, ("running-job-self", "unblock-self")))
    hold = Hold(checks.replace_job)
    monkeypatch.setattr(checks, "replace_job", hold)  # inside the registration's transaction

    callback = types_pb2.Callback(triggers="complete-job-self", language="qube", code="x")
    request = executor_pb2.RegisterJobRequest(job=types_pb2.Job(id=5, callbacks=[callback]))
    registering = asyncio.ensure_future(triggers.RegisterJob(request, context()))
    await hold.until_started()
    listed = await triggers.ListRegisteredJobs(executor_pb2.ListRegisteredJobsRequest(), context())
    hold.released.set()
    await registering

    assert hold.released_in_time  # the listing did not wait for the transaction
    assert ([j.id for j in listed.jobs], listed.total) == ([6], 1)  # what was committed


async def test_registrations_run_one_at_a_time_and_queue_what_they_fire(
    engines: Engines,
) -> None:
    recorder = Recorder()
    engine = engines(recorder)
    triggers = TriggerServicer(engine)
    level = types_pb2.Callback(
        triggers="submit-job-self", language="qube", code="x", mode=types_pb2.TRIGGER_MODE_LEVEL
    )
    requests = [
        executor_pb2.RegisterJobRequest(job=types_pb2.Job(id=7, callbacks=[level]))
        for _ in range(4)
    ]
    answers = await asyncio.gather(*(triggers.RegisterJob(r, context()) for r in requests))

    # One submission fires a level submit-job-self once, however many registrations race.
    assert sorted(len(a.fired) for a in answers) == [0, 0, 0, 1]
    await recorder.ran(1)
    assert recorder.codes == ["x"]


def _many(job_id: int, count: int) -> dict[str, Any]:
    # Every callback names a label no job holds: a check each, to be found on its page.
    return job(job_id, *((f"complete-work-nolabel{n}-1", "unblock-self") for n in range(count)))


async def test_a_big_job_is_explained_a_page_at_a_time(engines: Engines) -> None:
    engine = engines(Recorder())
    triggers = TriggerServicer(engine)
    engine.register_job(_many(5, why.MAX_CALLBACKS_EXPLAINED + 5))

    async def explain(**fields: Any) -> executor_pb2.ExplainCallbacksResponse:
        request = executor_pb2.ExplainCallbacksRequest(job_id=5, **fields)
        return await triggers.ExplainCallbacks(request, context())

    first = await explain()
    assert len(first.callbacks) == why.MAX_CALLBACKS_EXPLAINED
    assert first.total_callbacks == why.MAX_CALLBACKS_EXPLAINED + 5
    assert first.next_after_callback_id == why.MAX_CALLBACKS_EXPLAINED
    last = await explain(after_callback_id=first.next_after_callback_id)
    assert [cb.callback.id for cb in last.callbacks] == list(range(1001, 1006))
    assert last.next_after_callback_id == 0
    # Each callback with its own checks, on whichever page it is.
    assert [c.atom for c in last.callbacks[-1].checks] == ["complete-work-nolabel1004-1"]
    small = await explain(limit=2, after_callback_id=10)
    assert [cb.callback.id for cb in small.callbacks] == [11, 12]
    assert small.next_after_callback_id == 12
    assert len((await explain(limit=5000)).callbacks) == why.MAX_CALLBACKS_EXPLAINED
    one = await explain(callback_id=1003)
    assert [cb.callback.id for cb in one.callbacks] == [1003]
    assert one.next_after_callback_id == 0


async def test_an_explanation_of_huge_triggers_reads_only_the_atoms_asked_for(
    engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2,000 atoms a callback (a legal trigger, under 64 KiB): each atom explained is reads and
    # ~400 bytes, and the jobs page asked for all of 150 such callbacks (120 MB).
    engine = engines(Recorder())
    triggers = TriggerServicer(engine)
    atoms = 2_000
    engine.register_job(
        job(
            5,
            *(
                (" || ".join(f"complete-work-self-w{k}" for k in range(atoms)), "x")
                for _ in range(3)
            ),
        )
    )
    built = 0
    explain_atom = why._View.atom

    def counted(view: why._View, *args: Any) -> Any:
        nonlocal built
        built += 1
        return explain_atom(view, *args)

    monkeypatch.setattr(why._View, "atom", counted)
    request = executor_pb2.ExplainCallbacksRequest(job_id=5, max_atoms=50)
    reply = await triggers.ExplainCallbacks(request, context())

    assert built == 3 * 50
    for explained in reply.callbacks:
        assert len(explained.atoms) == 50
        assert explained.atoms_left_out == atoms - 50
        assert len(explained.waiting_for) == 50, "a line per open atom explained, no more"
        assert explained.waiting.count("complete-work-self-w") == atoms, "the residual is whole"
    whole = await triggers.ExplainCallbacks(
        executor_pb2.ExplainCallbacksRequest(job_id=5, callback_id=1), context()
    )
    assert len(whole.callbacks[0].atoms) == atoms and whole.callbacks[0].atoms_left_out == 0
