"""The reference Supervisor service over loopback gRPC, and the executor client's error mapping."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from supervisor_client import (
    ExecutorClient,
    InvalidRequestError,
    ReferenceSupervisor,
    RetryableError,
    add_reference_supervisor,
)
from supervisor_client.errors import ExecutorRpcError
from supervisor_client.qbcallback.v1 import (
    executor_pb2,
    executor_pb2_grpc,
    supervisor_pb2,
    supervisor_pb2_grpc,
    types_pb2,
)
from supervisor_client.reference import Transition

pytestmark = pytest.mark.service

JobVerb = supervisor_pb2.JobVerb
WorkVerb = supervisor_pb2.WorkVerb


@dataclass
class Served:
    supervisor: ReferenceSupervisor
    stub: supervisor_pb2_grpc.SupervisorServiceStub
    events: list[Transition]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    events: list[Transition] = []
    supervisor = ReferenceSupervisor(":memory:", listeners=[events.append])
    server = grpc.aio.server()
    add_reference_supervisor(server, supervisor)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Served(supervisor, supervisor_pb2_grpc.SupervisorServiceStub(channel), events)
    finally:
        await channel.close()
        await server.stop(None)
        supervisor.close()


@pytest.fixture
def blocked_job(served: Served) -> int:
    (job,) = served.supervisor.submit(
        [
            {
                "name": "comp",
                "user": "alice",
                "status": "blocked",
                "cpus": 2,
                "agenda": [{"name": str(n), "status": "blocked"} for n in range(1, 6)],
                "package": {"range": "1-5"},
                "notes": "from the test",
                "callbacks": [
                    {"triggers": "complete-job-self", "language": "qube", "code": "unblock-self"}
                ],
            }
        ]
    )
    return int(job["id"])


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# -- JobInfo ------------------------------------------------------------------------------


async def test_jobinfo_by_id_carries_every_field(served: Served, blocked_job: int) -> None:
    response = await served.stub.JobInfo(supervisor_pb2.JobInfoRequest(id=blocked_job))

    (job,) = response.jobs
    assert (job.id, job.name, job.label, job.pgrp, job.status, job.user, job.cpus) == (
        blocked_job,
        "comp",
        "qube0",
        blocked_job,
        "blocked",
        "alice",
        2,
    )
    assert (job.priority, job.prototype) == (9999, "cmdline")
    assert job.timesubmit > 0
    assert [(w.name, w.status, w.subid) for w in job.agenda][:2] == [
        ("1", "blocked", -1),
        ("2", "blocked", -1),
    ]
    assert [(s.id, s.status) for s in job.subjobs] == [(0, "blocked"), (1, "blocked")]
    assert json_format.MessageToDict(job.extra) == {
        "package": {"range": "1-5"},
        "notes": "from the test",
    }
    assert not job.callbacks


async def test_jobinfo_callbacks_only_when_asked(served: Served, blocked_job: int) -> None:
    request = supervisor_pb2.JobInfoRequest(id=blocked_job, include_callbacks=True)
    (job,) = (await served.stub.JobInfo(request)).jobs

    assert [(c.id, c.triggers, c.language, c.code, c.user) for c in job.callbacks] == [
        (1, "complete-job-self", "qube", "unblock-self", "alice"),
    ]


async def test_jobinfo_by_pgrp(served: Served) -> None:
    served.supervisor.submit([{"name": "a"}, {"name": "b"}])

    group = await served.stub.JobInfo(supervisor_pb2.JobInfoRequest(pgrp=1, actor="anyone"))
    empty = await served.stub.JobInfo(supervisor_pb2.JobInfoRequest(pgrp=42))

    assert [job.name for job in group.jobs] == ["a", "b"]
    assert list(empty.jobs) == []


async def test_jobinfo_answers_the_agenda_its_scope_asks_for(
    served: Served, blocked_job: int
) -> None:
    async def agenda(**scope: Any) -> list[list[str]]:
        for selector in ("id", "pgrp"):
            request = supervisor_pb2.JobInfoRequest(include_callbacks=True, **scope)
            setattr(request, selector, blocked_job)
            response = await served.stub.JobInfo(request)
            assert [len(job.callbacks) for job in response.jobs] == [1]
            assert [len(job.subjobs) for job in response.jobs] == [2]
        return [[work.name for work in job.agenda] for job in response.jobs]

    every = [[str(n) for n in range(1, 6)]]
    assert await agenda() == every
    assert await agenda(agenda=supervisor_pb2.AGENDA_SCOPE_ALL, work_names=["2"]) == every
    assert await agenda(agenda=supervisor_pb2.AGENDA_SCOPE_NONE, work_names=["2"]) == [[]]
    named = await agenda(agenda=supervisor_pb2.AGENDA_SCOPE_NAMED, work_names=["4", "9", "2"])
    assert named == [["2", "4"]]
    assert await agenda(agenda=supervisor_pb2.AGENDA_SCOPE_NAMED) == [[]]
    # A scope this contract does not know (a newer caller's) is answered in full.
    assert await agenda(agenda=7, work_names=["2"]) == every


async def test_jobinfo_errors(served: Served) -> None:
    missing = await rpc_error(served.stub.JobInfo(supervisor_pb2.JobInfoRequest(id=99)))
    no_selector = await rpc_error(served.stub.JobInfo(supervisor_pb2.JobInfoRequest()))

    assert (missing.code(), missing.details()) == (grpc.StatusCode.NOT_FOUND, "no job 99")
    assert no_selector.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert no_selector.details() == "JobInfoRequest needs an id or a pgrp"


# -- actions ------------------------------------------------------------------------------


async def test_job_action_changes_the_store_and_emits(served: Served, blocked_job: int) -> None:
    request = supervisor_pb2.JobActionRequest(
        verb=JobVerb.JOB_VERB_KILL, job_id=blocked_job, actor="alice", invocation_id="inv-1"
    )
    response = await served.stub.JobAction(request)

    assert (response.changed, response.message) == (1, f"job {blocked_job} blocked -> killed")
    assert served.supervisor.job(blocked_job)["status"] == "killed"
    assert Transition("killed", "job", blocked_job) in served.events
    assert served.supervisor.history(blocked_job)[-1]["invocation_id"] == "inv-1"


async def test_a_verb_that_does_not_apply_is_ok_with_changed_zero(
    served: Served, blocked_job: int
) -> None:
    request = supervisor_pb2.JobActionRequest(
        verb=JobVerb.JOB_VERB_RESUME, job_id=blocked_job, actor="alice"
    )
    response = await served.stub.JobAction(request)

    assert response.changed == 0
    assert response.message == f"job {blocked_job} is blocked; resume applies to suspended jobs"


@pytest.mark.parametrize("verb", [v for v in JobVerb.values() if v != JobVerb.JOB_VERB_UNSPECIFIED])
async def test_every_job_verb_reaches_the_store(
    served: Served, blocked_job: int, verb: supervisor_pb2.JobVerb.ValueType
) -> None:
    request = supervisor_pb2.JobActionRequest(verb=verb, job_id=blocked_job, actor="root")
    response = await served.stub.JobAction(request)

    assert response.message.startswith(f"job {blocked_job}")


@pytest.mark.parametrize(
    ("verb", "message"),
    [(JobVerb.JOB_VERB_UNSPECIFIED, "verb is required"), (99, "unknown verb number 99")],
)
async def test_bad_verbs_are_invalid_argument(
    served: Served, blocked_job: int, verb: int, message: str
) -> None:
    request = supervisor_pb2.JobActionRequest(verb=verb, job_id=blocked_job, actor="alice")  # type: ignore[arg-type]  # 99 is no JobVerb on purpose
    error = await rpc_error(served.stub.JobAction(request))

    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


async def test_permission_denied(served: Served, blocked_job: int) -> None:
    request = supervisor_pb2.JobActionRequest(
        verb=JobVerb.JOB_VERB_UNBLOCK, job_id=blocked_job, actor="bob"
    )
    error = await rpc_error(served.stub.JobAction(request))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == f"bob may not unblock job {blocked_job} owned by alice"
    assert served.supervisor.job(blocked_job)["status"] == "blocked"


async def test_work_action_takes_names_as_given(served: Served, blocked_job: int) -> None:
    request = supervisor_pb2.WorkActionRequest(
        verb=WorkVerb.WORK_VERB_UNBLOCK, job_id=blocked_job, work_names=["3"], actor="alice"
    )
    response = await served.stub.WorkAction(request)
    del request.work_names[:]
    request.work_names.append("2-4")  # ranges are the executor's to expand
    error = await rpc_error(served.stub.WorkAction(request))

    assert response.changed == 1
    statuses = [w["status"] for w in served.supervisor.job(blocked_job)["agenda"]]
    assert statuses == ["blocked", "blocked", "pending", "blocked", "blocked"]
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"job {blocked_job} has no work item '2-4'"


async def test_subjob_action(served: Served, blocked_job: int) -> None:
    request = supervisor_pb2.SubjobActionRequest(
        verb=JobVerb.JOB_VERB_UNBLOCK, job_id=blocked_job, subjob_ids=[1], actor="alice"
    )
    response = await served.stub.SubjobAction(request)
    request.subjob_ids[:] = [7]
    missing = await rpc_error(served.stub.SubjobAction(request))
    request.verb = JobVerb.JOB_VERB_REMOVE
    remove = await rpc_error(served.stub.SubjobAction(request))

    assert response.message == f"instance {blocked_job}.1 blocked -> pending"
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert remove.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_repeated_numbered_action_gets_the_first_answer_and_applies_nothing(
    served: Served, blocked_job: int
) -> None:
    unblock = supervisor_pb2.JobActionRequest(
        verb=JobVerb.JOB_VERB_UNBLOCK,
        job_id=blocked_job,
        actor="alice",
        invocation_id="inv-1",
        action_seq=1,
    )
    first = await served.stub.JobAction(unblock)
    served.supervisor.job_action("block", blocked_job, "alice")  # an operator's, applied
    repeat = await served.stub.JobAction(unblock)

    assert first.changed == 1 and repeat == first
    assert served.supervisor.job(blocked_job)["status"] == "blocked"
    history = served.supervisor.history(blocked_job)
    assert [line["invocation_id"] for line in history].count("inv-1") == 1


async def test_a_repeated_numbered_refusal_is_refused_the_same_way(
    served: Served, blocked_job: int
) -> None:
    request = supervisor_pb2.WorkActionRequest(
        verb=WorkVerb.WORK_VERB_UNBLOCK,
        job_id=blocked_job,
        work_names=["9"],
        actor="alice",
        invocation_id="inv-2",
        action_seq=4,
    )
    first = await rpc_error(served.stub.WorkAction(request))
    repeat = await rpc_error(served.stub.WorkAction(request))

    assert first.code() == repeat.code() == grpc.StatusCode.NOT_FOUND
    assert first.details() == repeat.details() == f"job {blocked_job} has no work item '9'"
    assert dict(repeat.trailing_metadata() or ())["qb-error-kind"] == "NoSuchWork"
    assert served.supervisor.job(blocked_job)["agenda"][0]["status"] == "blocked"


async def test_another_action_under_an_applied_pair_is_refused_naming_both(
    served: Served, blocked_job: int
) -> None:
    request = supervisor_pb2.JobActionRequest(
        verb=JobVerb.JOB_VERB_UNBLOCK,
        job_id=blocked_job,
        actor="alice",
        invocation_id="inv-3",
        action_seq=1,
    )
    await served.stub.JobAction(request)
    request.verb = JobVerb.JOB_VERB_KILL
    refused = await rpc_error(served.stub.JobAction(request))

    # A refusal of the site's own: the callback's qb call raises QbError with the message.
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details() == (
        f"action_seq 1 of invocation 'inv-3' was applied as 'unblock job {blocked_job}';"
        f" 'kill job {blocked_job}' is another action, not its repeat: refused"
        " (was the invocation id reused for another callback?)"
    )
    assert "qb-error-kind" not in dict(refused.trailing_metadata() or ())
    assert served.supervisor.job(blocked_job)["status"] == "pending"


# -- results ------------------------------------------------------------------------------


async def test_report_result_is_idempotent(served: Served, blocked_job: int) -> None:
    request = supervisor_pb2.ReportResultRequest(
        result=executor_pb2.ExecuteResponse(
            invocation_id="inv-9",
            outcome=executor_pb2.Outcome.OUTCOME_FAILED,
            exit_code=3,
        ),
        job_id=blocked_job,
        callback=types_pb2.Callback(id=1, triggers="complete-job-self", language="python"),
        event=types_pb2.Event(name="complete", type="job", context="self"),
    )

    first = await served.stub.ReportResult(request)
    again = await served.stub.ReportResult(request)

    assert (first.duplicate, again.duplicate) == (False, True)
    stored = served.supervisor.result("inv-9")
    assert stored is not None
    payload = stored["payload"]
    assert (payload["outcome"], payload["exit_code"]) == ("OUTCOME_FAILED", 3)
    assert payload["callback"]["triggers"] == "complete-job-self"
    assert payload["event"] == {"name": "complete", "type": "job", "context": "self"}


async def test_report_result_needs_an_invocation_id(served: Served) -> None:
    error = await rpc_error(served.stub.ReportResult(supervisor_pb2.ReportResultRequest(job_id=1)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_report_result_with_a_nan_end_is_refused_naming_the_field(
    served: Served, blocked_job: int
) -> None:
    request = supervisor_pb2.ReportResultRequest(
        result=executor_pb2.ExecuteResponse(invocation_id="inv-nan"),
        job_id=blocked_job,
        ended_at=float("nan"),
    )

    error = await rpc_error(served.stub.ReportResult(request))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("ended_at: NaN is not a time; Unix seconds must be a finite number")
    assert served.supervisor.result("inv-nan") is None


async def test_report_results_stores_a_batch_whole_or_refuses_it_whole(
    served: Served, blocked_job: int
) -> None:
    def entry(invocation_id: str) -> supervisor_pb2.ReportResultRequest:
        return supervisor_pb2.ReportResultRequest(
            result=executor_pb2.ExecuteResponse(invocation_id=invocation_id),
            job_id=blocked_job,
        )

    refused = await rpc_error(
        served.stub.ReportResults(
            supervisor_pb2.ReportResultsRequest(results=[entry("inv-1"), entry("")])
        )
    )
    batch = [entry("inv-1"), entry("inv-2"), entry("inv-1")]
    answer = await served.stub.ReportResults(supervisor_pb2.ReportResultsRequest(results=batch))

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r.duplicate for r in answer.results] == [False, False, True]
    assert [r["invocation_id"] for r in served.supervisor.results()] == ["inv-1", "inv-2"]


async def test_a_store_failure_is_internal_with_a_generic_message(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    served.supervisor.close()  # every store call now fails inside sqlite3

    with caplog.at_level(logging.ERROR):
        error = await rpc_error(served.stub.JobInfo(supervisor_pb2.JobInfoRequest(id=1)))

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error in the reference supervisor"
    assert "closed database" in caplog.text


# -- the executor client against a scripted executor ----------------------------------------


class ScriptedExecutor(executor_pb2_grpc.CallbackExecutorServiceServicer):
    """Answers Execute by the callback's code: "ok", or the name of a status to fail with."""

    def __init__(self) -> None:
        self.requests: list[executor_pb2.ExecuteRequest] = []

    async def Execute(
        self, request: executor_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.ExecuteResponse:
        self.requests.append(request)
        if request.callback.code == "slow":
            await asyncio.sleep(30)
        if request.callback.code != "ok":
            await context.abort(
                grpc.StatusCode[request.callback.code], f"scripted {request.callback.code}"
            )
        return executor_pb2.ExecuteResponse(
            invocation_id=request.invocation_id, outcome=executor_pb2.Outcome.OUTCOME_SUCCEEDED
        )


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedExecutor, str]]:
    # Only CallbackExecutorService is served: the other services answer UNIMPLEMENTED.
    executor = ScriptedExecutor()
    server = grpc.aio.server()
    executor_pb2_grpc.add_CallbackExecutorServiceServicer_to_server(executor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield executor, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def test_execute_callback_builds_the_request(scripted: tuple[ScriptedExecutor, str]) -> None:
    executor, address = scripted
    job = {"id": 12, "name": "comp", "user": "alice", "agenda": [{"name": "3"}], "notes": "n"}

    async with ExecutorClient(address) as client:
        response = await client.execute_callback(
            language="python",
            code="ok",
            job=job,
            event={"name": "complete", "type": "work"},
            work_name="3",
            subjob_id=0,
            owner="bob",
            limits={"wall_seconds": 5, "max_processes": 4},
        )
        await client.execute_callback(language="qube", code="ok", job=types_pb2.Job(id=13))

    first, second = executor.requests
    assert response.invocation_id == first.invocation_id
    assert len(first.invocation_id) == 36  # a uuid4
    assert first.invocation_id != second.invocation_id
    assert (first.callback.language, first.callback.user, first.context.job.id) == (
        "python",
        "bob",
        12,
    )
    assert json_format.MessageToDict(first.context.job.extra) == {"notes": "n"}
    assert (first.context.event.name, first.context.work_name, first.context.subjob_id) == (
        "complete",
        "3",
        0,
    )
    assert (first.limits.wall_seconds, first.limits.max_processes) == (5, 4)
    assert not second.context.HasField("subjob_id")
    assert not second.HasField("limits")


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        ("INVALID_ARGUMENT", InvalidRequestError),
        ("RESOURCE_EXHAUSTED", RetryableError),
        ("UNAVAILABLE", RetryableError),
        ("PERMISSION_DENIED", ExecutorRpcError),
    ],
)
async def test_client_raises_typed_errors(
    scripted: tuple[ScriptedExecutor, str], code: str, error_type: type[ExecutorRpcError]
) -> None:
    _, address = scripted
    async with ExecutorClient(address) as client:
        with pytest.raises(error_type) as caught:
            await client.execute_callback(language="python", code=code, job={"id": 1})

    assert type(caught.value) is error_type
    assert caught.value.code == grpc.StatusCode[code]
    assert caught.value.details == f"scripted {code}"
    assert isinstance(caught.value.__cause__, grpc.aio.AioRpcError)


async def test_deadline_passed_is_retryable(scripted: tuple[ScriptedExecutor, str]) -> None:
    _, address = scripted
    async with ExecutorClient(address) as client:
        with pytest.raises(RetryableError) as caught:
            await client.execute_callback(
                language="python", code="slow", job={"id": 1}, timeout=0.3
            )

    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_unreachable_executor_is_retryable_and_a_borrowed_channel_stays_open(
    scripted: tuple[ScriptedExecutor, str],
) -> None:
    _, address = scripted
    async with (
        grpc.aio.insecure_channel("127.0.0.1:1") as dead,
        grpc.aio.insecure_channel(address) as live,
    ):
        async with ExecutorClient(dead) as client:
            with pytest.raises(RetryableError):
                await client.execute_callback(
                    language="python", code="ok", job={"id": 1}, timeout=5
                )
        async with ExecutorClient(live) as client:
            await client.execute_callback(language="python", code="ok", job={"id": 1})
        # Leaving the client's block did not close the channel it was given.
        response = await ExecutorClient(live).execute_callback(
            language="python", code="ok", job={"id": 1}
        )
        assert response.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED


async def test_every_store_call_runs_off_the_event_loop(
    served: Served, blocked_job: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 20,000-item agenda is ~100 ms of Python, a verb over 100,000 items a second or
    # two: on the loop (the executor's, when embedded) every other run waited for it.
    # A small call goes to the thread too: on the loop it would wait for the store's
    # lock while the thread holds it.
    threads: list[bool] = []
    job, work_action = served.supervisor.job, served.supervisor.work_action

    def watched(*args: Any, **kwargs: Any) -> dict[str, Any]:
        threads.append(threading.current_thread() is threading.main_thread())
        return job(*args, **kwargs)

    def watched_action(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return work_action(*args, **kwargs)

    monkeypatch.setattr(served.supervisor, "job", watched)
    monkeypatch.setattr(served.supervisor, "work_action", watched_action)
    whole = await served.stub.JobInfo(supervisor_pb2.JobInfoRequest(id=blocked_job))
    named = await served.stub.JobInfo(
        supervisor_pb2.JobInfoRequest(
            id=blocked_job, agenda=supervisor_pb2.AGENDA_SCOPE_NAMED, work_names=["2"]
        )
    )
    await served.stub.WorkAction(
        supervisor_pb2.WorkActionRequest(
            verb=supervisor_pb2.WORK_VERB_UNBLOCK,
            job_id=blocked_job,
            work_names=["2"],
            actor="root",
        )
    )
    assert [len(whole.jobs[0].agenda), len(named.jobs[0].agenda)] == [5, 1]
    assert threads == [False, False, False]  # the loop's thread is the main one here
