"""Execute over gRPC on loopback: qb calls reach the embedded supervisor, limits hold, bad input is refused."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from supervisor_client import ExecutorClient, InvalidRequestError
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2
from tests.conftest import Stack

pytestmark = pytest.mark.service

Outcome = executor_pb2.Outcome
MIB = 1 << 20


async def run_python(
    stack: Stack, job_id: int, code: str, **limits: Any
) -> executor_pb2.ExecuteResponse:
    return await stack.client.execute_callback(
        language="python", code=code, job=stack.supervisor.job(job_id), limits=limits or None
    )


async def assert_service_answers(stack: Stack, job_id: int) -> None:
    response = await run_python(stack, job_id, "print(qb.jobid())")
    assert response.outcome == Outcome.OUTCOME_SUCCEEDED
    assert response.stdout.strip() == str(job_id)


@pytest.fixture
def blocked_job(stack: Stack) -> int:
    (job,) = stack.supervisor.submit(
        [
            {
                "name": "comp",
                "user": "alice",
                "status": "blocked",
                "agenda": [{"name": str(n), "status": "blocked"} for n in range(1, 6)],
            }
        ]
    )
    return int(job["id"])


async def test_unblock_own_job_changes_supervisor_state(stack: Stack, blocked_job: int) -> None:
    response = await run_python(stack, blocked_job, "qb.unblock(qb.jobid())")

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    assert stack.supervisor.job(blocked_job)["status"] == "pending"
    (action,) = response.actions
    assert (action.verb, action.target, action.ok) == ("unblock", str(blocked_job), True)


async def test_workunblock_unblocks_exactly_that_frame(stack: Stack, blocked_job: int) -> None:
    response = await run_python(stack, blocked_job, "qb.workunblock('%d:3' % qb.jobid())")

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    statuses = {w["name"]: w["status"] for w in stack.supervisor.job(blocked_job)["agenda"]}
    assert statuses == {
        "1": "blocked",
        "2": "blocked",
        "3": "pending",
        "4": "blocked",
        "5": "blocked",
    }


async def test_workunblock_range(stack: Stack, blocked_job: int) -> None:
    response = await run_python(
        stack, blocked_job, "import qb\nqb.workunblock(f'{qb.jobid()}:2-4')"
    )

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    pending = [
        w["name"] for w in stack.supervisor.job(blocked_job)["agenda"] if w["status"] == "pending"
    ]
    assert pending == ["2", "3", "4"]


async def test_jobinfo_returns_the_job_dict(stack: Stack, blocked_job: int) -> None:
    code = "import json\nprint(json.dumps(qb.jobinfo('-id', qb.jobid())))"
    response = await run_python(stack, blocked_job, code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    (job,) = json.loads(response.stdout)
    assert job["id"] == blocked_job
    assert job["name"] == "comp"
    assert job["status"] == "blocked"
    assert [w["name"] for w in job["agenda"]] == ["1", "2", "3", "4", "5"]


async def test_jobinfo_keyword_and_pgrp_forms(stack: Stack) -> None:
    first, second = stack.supervisor.submit(
        [{"name": "a", "user": "alice"}, {"name": "b", "user": "alice"}]
    )
    code = (
        "print(len(qb.jobinfo('-pgrp', qb.jobid())), len(qb.jobinfo(pgrp=qb.jobid())),"
        f" qb.jobinfo(id={second['id']})[0]['name'])"
    )
    response = await run_python(stack, first["id"], code)

    assert response.stdout.split() == ["2", "2", "b"], response.failure.message


async def test_qb_errors_raise_in_the_callback(stack: Stack, blocked_job: int) -> None:
    code = "try:\n    qb.unblock(999999)\nexcept qb.NoSuchJob as err:\n    print('caught', err)"
    caught = await run_python(stack, blocked_job, code)
    uncaught = await run_python(stack, blocked_job, "qb.unblock(999999)")

    assert caught.outcome == Outcome.OUTCOME_SUCCEEDED
    assert caught.stdout.startswith("caught") and "999999" in caught.stdout
    assert uncaught.outcome == Outcome.OUTCOME_FAILED
    assert uncaught.failure.exception_type == "NoSuchJob"
    assert not uncaught.actions[0].ok


async def test_ids_beyond_what_a_store_keeps_are_invalid_arguments(stack_warm: Stack) -> None:
    # 2**63 does not fit a stored id; beyond 2**64 no request can even carry one.
    code = (
        "for call in [lambda: qb.unblock(10**30), lambda: qb.unblock(2**63),\n"
        "             lambda: qb.jobinfo(id=2**64), lambda: qb.jobinfo('-pgrp', 2**70),\n"
        "             lambda: qb.jobstatus(2**63), lambda: qb.jobstatus('9' * 5000),\n"
        "             lambda: qb.workunblock('99999999999999999999999:1'),\n"
        "             lambda: qb.subjobunblock('1.99999999999')]:\n"
        "    try:\n"
        "        call()\n"
        "    except Exception as err:\n"
        "        print(type(err).__name__, str(err)[:100])\n"
    )
    response = await stack_warm.client.execute_callback(
        language="python", code=code, job={"id": 1, "user": "root"}
    )

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure
    lines = response.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["InvalidArgument"] * 8, lines
    assert lines[0] == f"InvalidArgument job id {10**30} is out of range (0 to {2**63 - 1})"
    assert lines[7].startswith("InvalidArgument instance id 99999999999 is out of range")


async def test_every_qb_function_called_wrongly_raises_invalid_argument(stack_warm: Stack) -> None:
    # Every public function of the real qb module, without its argument, with one too
    # many and with a named argument it does not take: a qb.QbError, never a TypeError.
    code = (
        "for name in sorted(dir(qb)):\n"
        "    fn = getattr(qb, name)\n"
        "    if name.startswith('_') or isinstance(fn, type) or not callable(fn):\n"
        "        continue\n"
        "    if getattr(fn, '__module__', '') != qb.__name__:\n"
        "        continue\n"
        "    calls = [('none', ()), ('named', {'bogus': 1})]\n"
        "    if name in ('jobinfo', 'jobstatus', 'workstatus', 'subjobstatus', 'jobid'):\n"
        "        calls.append(('two', ('1:1', '1:1')))\n"
        "    for label, given in calls:\n"
        "        try:\n"
        "            fn(**given) if isinstance(given, dict) else fn(*given)\n"
        "            result = 'ok'\n"
        "        except qb.QbError as err:\n"
        "            result = type(err).__name__\n"
        "        except BaseException as err:\n"
        "            result = f'{type(err).__name__}: {err}'\n"
        "        print(name, label, result)\n"
    )
    response = await stack_warm.client.execute_callback(
        language="python", code=code, job={"id": 1, "user": "root"}
    )

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure
    results = {
        tuple(line.split(" ", 2)[:2]): line.split(" ", 2)[2]
        for line in response.stdout.splitlines()
    }
    takes_nothing = {"jobid", "subid", "workid", "event", "callback"}
    for (name, label), result in results.items():
        if label == "none" and (name in takes_nothing or name == "jobinfo"):
            assert result in ("ok", "NoSuchJob"), (name, label, result)
        else:
            assert result == "InvalidArgument", (name, label, result)
    assert {name for name, _ in results} >= {"jobstatus", "workstatus", "unblock", "subjobkill"}
    assert len(results) > 100, "every verb in each of its spellings"


async def test_exception_reports_type_and_user_traceback(stack: Stack, blocked_job: int) -> None:
    response = await run_python(stack, blocked_job, "def f():\n    raise ValueError('boom')\nf()")

    assert response.outcome == Outcome.OUTCOME_FAILED
    assert response.failure.exception_type == "ValueError"
    assert "boom" in response.failure.message
    assert 'File "<callback>", line 2, in f' in response.failure.traceback
    assert "python_bootstrap" not in response.failure.traceback


async def test_code_that_does_not_compile_is_rejected(stack: Stack, blocked_job: int) -> None:
    response = await run_python(stack, blocked_job, "def (:")

    assert response.outcome == Outcome.OUTCOME_REJECTED
    assert "does not compile" in response.failure.message


@pytest.mark.parametrize(
    ("code", "limits", "outcome"),
    [
        ("while True:\n    pass", {"cpu_seconds": 1}, Outcome.OUTCOME_CPU_LIMIT),
        ("import time\ntime.sleep(1e6)", {"wall_seconds": 1}, Outcome.OUTCOME_WALL_TIMEOUT),
        ("x = bytearray(4 << 30)", {"memory_bytes": 256 * MIB}, Outcome.OUTCOME_MEMORY_LIMIT),
        # A real fault: the callback is PID 1 of its namespace, where kill() to itself is ignored.
        ("import ctypes\nctypes.string_at(0)", {}, Outcome.OUTCOME_KILLED),
    ],
    ids=["cpu", "wall", "memory", "segv"],
)
async def test_limits_end_the_callback_with_the_right_outcome(
    stack: Stack, blocked_job: int, code: str, limits: dict[str, Any], outcome: int
) -> None:
    response = await run_python(stack, blocked_job, code, **limits)

    assert response.outcome == outcome, (response.failure.message, response.stderr[-500:])
    assert response.failure.message
    await assert_service_answers(stack, blocked_job)


async def test_fork_loop_is_capped(stack: Stack, blocked_job: int) -> None:
    code = (
        "import os, time\n"
        "children = 0\n"
        "try:\n"
        "    for _ in range(1000):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        children += 1\n"
        "except OSError as err:\n"
        "    print('capped after', children, type(err).__name__)\n"
    )
    response = await run_python(stack, blocked_job, code, max_processes=8)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    words = response.stdout.split()
    assert words[:2] == ["capped", "after"], response.stdout
    assert int(words[2]) < 8
    await assert_service_answers(stack, blocked_job)


async def test_output_beyond_the_cap_is_truncated(stack: Stack, blocked_job: int) -> None:
    code = (
        "import sys\n"
        "line = 'x' * 1023 + '\\n'\n"
        "for _ in range(100 * 1024):\n"
        "    sys.stdout.write(line)\n"
        "sys.stderr.write('e' * (3 << 20))\n"
    )
    response = await run_python(stack, blocked_job, code, output_bytes=1 * MIB)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED
    assert response.stdout_truncated and response.stderr_truncated
    assert len(response.stdout) == 1 * MIB
    assert len(response.stderr) == 1 * MIB
    await assert_service_answers(stack, blocked_job)


@pytest.mark.parametrize(
    ("code", "outcome", "exit_code"),
    [
        ("import sys\nsys.exit()", Outcome.OUTCOME_SUCCEEDED, 0),
        ("import sys\nsys.exit(3)", Outcome.OUTCOME_FAILED, 3),
        # A bool is an int to Python: False exits 0, True 1 (the bridge takes no bool).
        ("import sys\nsys.exit(False)", Outcome.OUTCOME_SUCCEEDED, 0),
        ("import sys\nfailed = 3\nsys.exit(failed > 0)", Outcome.OUTCOME_FAILED, 1),
        ("import os\nos._exit(4)", Outcome.OUTCOME_FAILED, 4),
        ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", None, None),
        ("import os, signal\nos.kill(-1, signal.SIGKILL)", None, None),
        ("import os\nos.system('sleep 0.1; echo from-shell')", Outcome.OUTCOME_SUCCEEDED, 0),
    ],
    ids=[
        "sys.exit",
        "sys.exit(3)",
        "sys.exit(False)",
        "sys.exit(True)",
        "os._exit",
        "kill-parent",
        "kill-everything",
        "os.system",
    ],
)
async def test_exits_and_kills_harm_only_the_child(
    stack: Stack, blocked_job: int, code: str, outcome: int | None, exit_code: int | None
) -> None:
    response = await run_python(stack, blocked_job, code)

    if outcome is not None:
        assert response.outcome == outcome, response.failure.message
        assert response.exit_code == exit_code
    await assert_service_answers(stack, blocked_job)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda r: setattr(r.callback, "language", "ruby"),
            "callback.language 'ruby' is not supported",
        ),
        (lambda r: setattr(r.callback, "code", "   "), "callback.code is empty"),
        (lambda r: r.context.job.ClearField("id"), "context.job.id is required"),
        (lambda r: setattr(r.limits, "cpu_seconds", -1), "limits.cpu_seconds must not be negative"),
        (
            lambda r: setattr(r.limits, "memory_bytes", 1 << 50),
            "limits.memory_bytes = 1125899906842624 exceeds the server's cap",
        ),
        (
            lambda r: setattr(r.limits, "wall_seconds", 1e9),
            "limits.wall_seconds = 1000000000.0 exceeds the server's cap of 3600",
        ),
    ],
    ids=["language", "empty-code", "job-id", "negative", "memory-cap", "wall-cap"],
)
async def test_malformed_requests_are_invalid_argument(
    stack: Stack, blocked_job: int, mutate: Any, message: str
) -> None:
    request = executor_pb2.ExecuteRequest(
        invocation_id="bad-1",
        callback=types_pb2.Callback(language="python", code="print(1)"),
        context=executor_pb2.JobContext(job=job_from_dict(stack.supervisor.job(blocked_job))),
    )
    mutate(request)

    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await stack.stub.Execute(request)
    with pytest.raises(InvalidRequestError) as typed:
        await stack.client.execute(request)

    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (raw.value.details() or "")
    assert message in typed.value.details


async def test_raw_stub_and_typed_client_agree(stack: Stack, blocked_job: int) -> None:
    request = executor_pb2.ExecuteRequest(
        invocation_id="same-1",
        callback=types_pb2.Callback(
            language="python",
            code="print(qb.jobid(), qb.workid(), qb.subid(), qb.event()['name'])",
            user="alice",
        ),
        context=executor_pb2.JobContext(
            job=job_from_dict(stack.supervisor.job(blocked_job)),
            event=types_pb2.Event(name="complete", type="work", context="self", extra="3"),
            work_name="3",
        ),
    )
    raw = await stack.stub.Execute(request)
    async with ExecutorClient(stack.address) as client:
        typed = await client.execute(request)

    for response in (raw, typed):
        assert response.invocation_id == "same-1"
        assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
        assert response.stdout.split() == [str(blocked_job), "3", "-1", "complete"]
        assert response.usage.wall_seconds > 0
        assert response.usage.peak_rss_bytes > 0


UNPRINTABLE = (
    "class Unprintable(Exception):\n"
    "    def __str__(self):\n"
    "        raise RuntimeError('no words')\n"
)


@pytest.mark.parametrize(
    ("code", "exception_type", "exit_code"),
    [
        (UNPRINTABLE + "raise Unprintable()", "Unprintable", 1),
        (UNPRINTABLE + "raise ValueError(Unprintable())", "ValueError", 1),
        (UNPRINTABLE + "import sys\nsys.exit(Unprintable())", "", 1),
    ],
)
async def test_an_exception_whose_str_raises_is_still_the_callbacks_failure(
    stack: Stack, blocked_job: int, code: str, exception_type: str, exit_code: int
) -> None:
    # Found by a tester: the bootstrap's own str() of it raised, and the run was blamed
    # on the sandbox ("could not start the callback", exit 121).
    response = await run_python(stack, blocked_job, code)

    assert response.outcome == Outcome.OUTCOME_FAILED, response.failure.message
    assert response.exit_code == exit_code
    assert response.failure.exception_type == exception_type
    assert "could not start" not in response.failure.message
