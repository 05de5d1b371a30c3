"""The warm zygotes: a death mid-callback is reported, never lost, and the next callback works."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from executor import logs
from executor.cli.metrics import format_metrics
from executor.runtimes.child import PerlRuntime
from executor.sandbox import spawners
from executor.sandbox.spawners import (
    MAX_ZYGOTE_FAILURES,
    ZYGOTE_LONGEST_WAIT_S,
    ZYGOTE_PING_PERIOD_S,
    ZygoteSpawner,
)
from executor.web.status_pages import health_body
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.clock import Clock
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

# Blocks its own job first: once the supervisor shows it, the callback is running.
SLEEP = {
    "python": "qb.block(qb.jobid())\nimport time\ntime.sleep(30)",
    "perl": "qb::block(qb::jobid());\nsleep 30;",
}
ALIVE = {"python": "print('alive')", "perl": 'print "alive\\n";'}
OTHER = {"python": "perl", "perl": "python"}


def warm_spawner(stack: Stack) -> ZygoteSpawner:
    spawner = stack.running.spawner
    assert isinstance(spawner, ZygoteSpawner)
    return spawner


async def sleeping_callback(
    stack: Stack, language: str
) -> asyncio.Task[executor_pb2.ExecuteResponse]:
    """A callback that sleeps, returned once its code runs (a fork of the zygote by then)."""
    (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
    running = asyncio.create_task(
        stack.client.execute_callback(
            language=language, code=SLEEP[language], job=job, limits={"wall_seconds": 60}
        )
    )
    blocked = await eventually(
        lambda: running.done() or stack.supervisor.job(job["id"])["status"] == "blocked", 60
    )
    assert blocked and not running.done(), running
    return running


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_zygote_death_reports_callbacks_in_flight_and_restarts(
    stack_warm: Stack, language: str
) -> None:
    stack = stack_warm
    spawner = warm_spawner(stack)
    running = await sleeping_callback(stack, language)
    zygote = spawner.pid_of(language)
    assert zygote is not None
    assert psutil.Process(zygote).children(), "the callback did not start from the zygote"
    os.kill(zygote, signal.SIGKILL)

    lost = await running
    (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
    after = await stack.client.execute_callback(language=language, code=ALIVE[language], job=job)

    assert lost.outcome == executor_pb2.Outcome.OUTCOME_KILLED
    assert "zygote died" in lost.failure.message
    assert after.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED
    assert after.stdout == "alive\n"
    assert spawner.pid_of(language) not in (None, zygote)


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_dead_zygote_is_logged_with_the_runs_it_cost(
    stack_warm: Stack, language: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Two cells with a child prepared for their next run, one callback running.
    stack = stack_warm
    (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
    await asyncio.gather(
        *(
            stack.client.execute_callback(language=language, code=ALIVE[language], job=job)
            for _ in range(2)
        )
    )
    await stack.running.runner.prepared_pids()
    running = await sleeping_callback(stack, language)
    zygote = warm_spawner(stack).pid_of(language)
    assert zygote is not None

    with caplog.at_level(logging.ERROR, logger="executor.sandbox.spawners"):
        os.kill(zygote, signal.SIGKILL)
        lost = await running

    assert lost.outcome == executor_pb2.Outcome.OUTCOME_KILLED
    (line,) = zygote_errors(caplog)
    assert f"(pid {zygote}) died: 1 callback running in it reported KILLED" in line, line
    assert "2 children prepared for runs discarded" in line, line
    assert "lost" not in line


async def test_a_dead_zygotes_discarded_children_leave_the_gauge_and_it_reads_died(
    stack_warm: Stack,
) -> None:
    # Two cells with a child prepared for their next run; the zygote dies and takes them.
    # They were counted until a run came to each cell, and the zygote read "not started".
    stack = stack_warm
    (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
    await asyncio.gather(
        *(
            stack.client.execute_callback(language="python", code=ALIVE["python"], job=job)
            for _ in range(2)
        )
    )
    assert len(await stack.running.runner.prepared_pids()) == 2
    spawner = warm_spawner(stack)
    zygote = spawner.pid_of("python")
    assert zygote is not None
    assert (await stack.client.get_metrics()).prepared_children == 2

    os.kill(zygote, signal.SIGKILL)
    assert await eventually(lambda: spawner.pid_of("python") is None, 10)
    reply = await stack.client.get_metrics()

    assert reply.prepared_children == 0
    (python,) = [z for z in reply.zygotes if z.language == "python"]
    assert (python.pid, python.died) == (0, True)
    state = "not running (died; starts again at the next run)"
    assert f"python  {state}, 0 restarts" in format_metrics(reply)
    page = str(health_body(SimpleNamespace(health=lambda: "SERVING", metrics=lambda: reply)))
    assert state in page
    assert "<th>Prepared children</th><td>0</td>" in page, page
    (perl,) = [z for z in reply.zygotes if z.language == "perl"]
    assert (perl.pid, perl.died) == (0, False)  # never started: not a death


async def test_a_dead_zygotes_error_names_no_run(
    stack_warm: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # The zygote's reader was registered while a run was served, and its callbacks ran
    # in that run's context: the ERROR carried the id of a run that had ended long ago.
    stack = stack_warm
    (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
    first = await stack.client.execute_callback(
        language="python", code=ALIVE["python"], job=job, invocation_id="first-of-the-zygote"
    )
    assert first.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED
    await stack.running.runner.prepared_pids()
    zygote = warm_spawner(stack).pid_of("python")
    assert zygote is not None

    caplog.handler.addFilter(logs.InvocationFilter())  # stamped as it is emitted
    with caplog.at_level(logging.ERROR, logger="executor.sandbox.spawners"):
        os.kill(zygote, signal.SIGKILL)
        assert await eventually(lambda: bool(zygote_errors(caplog)), 10)

    # Its ERROR lines only: an earlier test may have left the logger open to INFO.
    errors = [
        r
        for r in caplog.records
        if r.name == "executor.sandbox.spawners" and r.levelno >= logging.ERROR
    ]
    assert any("died" in record.getMessage() for record in errors)
    assert {record.invocation_id for record in errors} == {"-"}  # type: ignore[attr-defined]


def zygote_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ERROR lines of the zygotes (a death, a hang)."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "executor.sandbox.spawners" and record.levelno >= logging.ERROR
    ]


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """``pid`` stopped (SIGSTOP) while inside; let go after, if it is still there."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def within(seconds: float) -> AsyncIterator[None]:
    """A bound on a block that would otherwise wait for ever (the failure it guards against)."""
    async with asyncio.timeout(seconds):
        yield


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_live_zygote_answers_its_watchdog_through_a_long_callback(
    stack_warm: Stack, language: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Pinged all along (a callback runs in it), it answers: nothing is killed.
    stack = stack_warm
    (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
    sleep = ZYGOTE_LONGEST_WAIT_S + ZYGOTE_PING_PERIOD_S
    code = {
        "python": f"import time\ntime.sleep({sleep})\nprint('alive')",
        "perl": f'select(undef, undef, undef, {sleep}); print "alive\\n";',
    }[language]
    with caplog.at_level(logging.ERROR, logger="executor.sandbox.spawners"):
        response = await stack.client.execute_callback(language=language, code=code, job=job)
        zygote = warm_spawner(stack).pid_of(language)
        after = await stack.client.execute_callback(
            language=language, code=ALIVE[language], job=job
        )

    assert response.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED, response
    assert response.stdout == after.stdout == "alive\n"
    assert warm_spawner(stack).pid_of(language) == zygote
    assert zygote_errors(caplog) == []


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_hung_zygote_is_killed_and_no_slot_waits_for_it(
    stack_warm: Stack, language: str, caplog: pytest.LogCaptureFixture
) -> None:
    # More callbacks of the hung zygote's language than slots, then a qube and another
    # language's: each slot's run waits for the zygote (a spawn, or the end of the child
    # it ran), until the watchdog kills it; then every run goes on, cold or restarted.
    stack = stack_warm
    (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
    spawner = warm_spawner(stack)
    await stack.client.execute_callback(language=language, code=ALIVE[language], job=job)
    await stack.client.execute_callback(
        language=OTHER[language], code=ALIVE[OTHER[language]], job=job
    )
    zygote = spawner.pid_of(language)
    assert zygote is not None
    began = time.monotonic()
    with (
        caplog.at_level(logging.ERROR, logger="executor.sandbox.spawners"),
        stopped(zygote),
    ):
        async with within(3 * ZYGOTE_LONGEST_WAIT_S):
            responses = await asyncio.gather(
                *(
                    stack.client.execute_callback(language=language, code=ALIVE[language], job=job)
                    for _ in range(stack.settings.max_concurrent + 2)
                ),
                stack.client.execute_callback(language="qube", code="block-self", job=job),
                stack.client.execute_callback(
                    language=OTHER[language], code=ALIVE[OTHER[language]], job=job
                ),
            )
    took = time.monotonic() - began
    after = await stack.client.execute_callback(language=language, code=ALIVE[language], job=job)

    outcomes = {r.outcome for r in responses}
    assert outcomes == {executor_pb2.Outcome.OUTCOME_SUCCEEDED}, responses
    assert took < ZYGOTE_LONGEST_WAIT_S + 3, took
    assert after.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED
    assert spawner.pid_of(language) not in (None, zygote)
    assert not psutil.pid_exists(zygote) or psutil.Process(zygote).status() == "zombie"
    (line,) = zygote_errors(caplog)
    assert f"(pid {zygote}) did not answer for {ZYGOTE_PING_PERIOD_S:g} s and was killed" in line


async def test_a_hung_zygotes_error_counts_the_slots_of_answered_runs_it_held(
    stack_warm: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # Runs answered at their end mark, whose children the stopped zygote never reports
    # reaped: their slots wait for the watchdog, and its ERROR line says so.
    stack = stack_warm
    (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
    spawner = warm_spawner(stack)
    slots = stack.settings.max_concurrent
    await asyncio.gather(  # every cell runs one, and has its next child prepared after
        *(
            stack.client.execute_callback(language="python", code="pass", job=job)
            for _ in range(slots)
        )
    )
    zygote = spawner.pid_of("python")
    assert zygote is not None

    async def prepared() -> bool:  # children forked before the stop run the next callbacks
        children = spawner._zygotes["python"]._children.values()
        return sum(not child.running for child in children) >= slots

    assert await eventually(prepared, timeout_s=10)
    with (
        caplog.at_level(logging.ERROR, logger="executor.sandbox.spawners"),
        stopped(zygote),
    ):
        async with within(3 * ZYGOTE_LONGEST_WAIT_S):
            answered = await stack.client.execute_callback(language="python", code="pass", job=job)
            assert answered.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED

            async def logged() -> bool:
                return bool(zygote_errors(caplog))

            assert await eventually(logged, timeout_s=2 * ZYGOTE_LONGEST_WAIT_S)
    (line,) = zygote_errors(caplog)
    assert "0 callbacks running in it reported KILLED" in line, line
    assert re.search(r", [1-9][0-9]* slots? of runs already answered let go,", line), line


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_callback_running_in_a_hung_zygote_is_reported_killed(
    stack_warm: Stack, language: str
) -> None:
    stack = stack_warm
    running = await sleeping_callback(stack, language)
    zygote = warm_spawner(stack).pid_of(language)
    assert zygote is not None
    with stopped(zygote):
        async with within(3 * ZYGOTE_LONGEST_WAIT_S):  # it sleeps 30 s
            lost = await running

    assert lost.outcome == executor_pb2.Outcome.OUTCOME_KILLED
    assert lost.failure.message == (
        f"the sandbox zygote did not answer for {ZYGOTE_PING_PERIOD_S:g} s and was killed "
        "while the callback ran"
    )


async def test_a_prepared_child_of_a_hung_zygote_is_discarded_in_bounded_time(
    tmp_path: Path,
) -> None:
    # One slot, its child prepared by the first run; the next run's other limits do not
    # fit it: it is killed, and its end is the hung zygote's to report.
    async with running_stack(stack_settings(tmp_path / "data", max_concurrent=1)) as stack:
        (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
        await stack.client.execute_callback(language="python", code=ALIVE["python"], job=job)
        await stack.running.runner.prepared_pids()
        zygote = warm_spawner(stack).pid_of("python")
        assert zygote is not None
        with stopped(zygote):
            async with within(3 * ZYGOTE_LONGEST_WAIT_S):
                response = await stack.client.execute_callback(
                    language="python", code=ALIVE["python"], job=job, limits={"cpu_seconds": 7}
                )

    assert response.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED, response
    assert response.stdout == "alive\n"


async def test_a_run_waits_for_a_hung_zygote_at_most_its_wall_limit(tmp_path: Path) -> None:
    # Two slots. Slot 0 has a child prepared by the first run; slot 1 none yet: the
    # second run's child is asked of the hung zygote, and started cold at its wall limit.
    # That run prepares slot 1's next child, which the zygote never starts: the fourth
    # run waits for it as long, and starts cold too (the third runs slot 0's child).
    async with running_stack(stack_settings(tmp_path / "data", max_concurrent=2)) as stack:
        (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
        await stack.client.execute_callback(language="python", code=ALIVE["python"], job=job)
        zygote = warm_spawner(stack).pid_of("python")
        assert zygote is not None
        took = []
        with stopped(zygote):
            for _ in range(3):
                began = time.monotonic()
                async with within(3 * ZYGOTE_LONGEST_WAIT_S):
                    response = await stack.client.execute_callback(
                        language="python",
                        code=ALIVE["python"],
                        job=job,
                        limits={"wall_seconds": 1},
                    )
                took.append(time.monotonic() - began)
                assert response.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED, response

    # Under the watchdog's bound: a wall limit of 1 s bounded each wait.
    assert took[0] < ZYGOTE_PING_PERIOD_S - 0.3, took
    assert took[2] < ZYGOTE_PING_PERIOD_S - 0.3, took


async def test_a_warm_perl_callback_is_a_fork_of_the_perl_zygote(stack_warm: Stack) -> None:
    running = await sleeping_callback(stack_warm, "perl")
    zygote = psutil.Process(warm_spawner(stack_warm).pid_of("perl"))
    # The running callback and the child prepared for the next run are its children,
    # forked without an exec: they still run the zygote's script.
    children = zygote.children()
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)

    assert "zygote.pl" in " ".join(zygote.cmdline())
    assert children and all(child.exe() == zygote.exe() for child in children)
    assert all(child.cmdline() == zygote.cmdline() for child in children)


async def test_a_warm_perl_callback_gets_its_sigchld(stack_warm: Stack) -> None:
    # The Perl zygote reads its children's exits through a signalfd, with SIGCHLD blocked;
    # the callbacks it forks get the signal back.
    (job,) = stack_warm.supervisor.submit([{"name": "z", "user": "alice"}])
    code = (
        "my $got = 0; $SIG{CHLD} = sub { $got++ };\n"
        "my $pid = fork; CORE::exit(0) if !$pid;\n"
        "for (1 .. 100) { last if $got; select(undef, undef, undef, 0.05) }\n"
        'waitpid($pid, 0); print "signalled $got\\n";'
    )

    response = await stack_warm.client.execute_callback(language="perl", code=code, job=job)

    assert response.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED, response.stderr
    assert response.stdout == "signalled 1\n"


async def test_a_language_whose_zygote_cannot_start_runs_its_callbacks_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A Perl "zygote" that exits at once, as one would on a host it cannot run on.
    monkeypatch.setattr(PerlRuntime, "zygote_argv", lambda self, python: ["perl", "-e", "exit 3"])
    with caplog.at_level(logging.WARNING, logger="executor.sandbox.spawners"):
        async with running_stack(stack_settings(tmp_path / "data")) as stack:
            (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
            responses = [
                await stack.client.execute_callback(language="perl", code=ALIVE["perl"], job=job)
                for _ in range(MAX_ZYGOTE_FAILURES + 1)
            ]
            python = await stack.client.execute_callback(
                language="python", code=ALIVE["python"], job=job
            )
            spawner = warm_spawner(stack)

    assert [r.outcome for r in responses] == [executor_pb2.Outcome.OUTCOME_SUCCEEDED] * len(
        responses
    )
    assert {r.stdout for r in responses} == {"alive\n"}
    assert not spawner.warm("perl") and spawner.warm("python")
    assert python.stdout == "alive\n"
    assert "perl callbacks start cold, and its zygote is tried again in 60s" in caplog.text


async def test_a_language_gone_cold_tries_its_zygote_again_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Perl's zygote exits at once while the flag file is there (a fork failing for now,
    # say under a pids limit), and is the real one once it is gone.
    failing = tmp_path / "zygote-fails"
    failing.touch()
    real_argv = PerlRuntime.zygote_argv
    monkeypatch.setattr(
        PerlRuntime,
        "zygote_argv",
        lambda self, python: [
            "sh", "-c", f'test -e {failing} && exit 3; exec "$@"', "sh", *real_argv(self, python)
        ],
    )  # fmt: skip
    clock = Clock(0.0)
    monkeypatch.setattr(spawners, "time", SimpleNamespace(monotonic=clock))
    retry = spawners.ZYGOTE_RETRY_AFTER_S
    # Every child a run's own: each spawn below is one run's.
    settings = stack_settings(tmp_path / "data", prepare_ahead=False)
    with caplog.at_level(logging.WARNING, logger="executor.sandbox.spawners"):
        async with running_stack(settings) as stack:
            (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
            spawner = warm_spawner(stack)

            async def alive_at(now: float) -> tuple[str, int]:
                """Run a perl callback at ``now``: its output, and perl's zygote restarts by then."""
                clock.now = now
                response = await stack.client.execute_callback(
                    language="perl", code=ALIVE["perl"], job=job
                )
                (perl,) = [z for z in spawner.status() if z.language == "perl"]
                return response.stdout, perl.restarts

            failed = [await alive_at(0.0) for _ in range(MAX_ZYGOTE_FAILURES)]
            cold = not spawner.warm("perl")
            not_due = await alive_at(retry - 1)  # cold, no zygote tried
            tried = await alive_at(retry)  # one try, which fails again: the wait doubles
            doubled = await alive_at(2 * retry)
            failing.unlink()  # the cause has passed
            recovered = await alive_at(3 * retry)
            warm_again = spawner.warm("perl")

    assert [out for out, _ in failed] == ["alive\n"] * MAX_ZYGOTE_FAILURES
    assert cold
    gone_cold = failed[-1][1]
    assert not_due == ("alive\n", gone_cold)
    assert tried == ("alive\n", gone_cold + 1)
    assert doubled == ("alive\n", gone_cold + 1)
    assert recovered == ("alive\n", gone_cold + 2)
    assert warm_again
    assert "perl zygote failed again when tried" in caplog.text
    assert f"tried again in {2 * retry:g}s" in caplog.text
    assert "perl zygote works again; perl callbacks start warm" in caplog.text


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_the_zygotes_work_without_namespaces_or_cgroups(
    tmp_path: Path, language: str
) -> None:
    # What a host without root or user namespaces gives: no PID namespace, no cgroups,
    # no private mounts; the zygotes must not reach for any of them.
    settings = stack_settings(
        tmp_path / "data", pid_namespace="off", cgroup="off", dedicated_uid="off", network="host"
    )
    async with running_stack(settings) as stack:
        (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
        responses = [
            await stack.client.execute_callback(language=language, code=ALIVE[language], job=job)
            for _ in range(3)
        ]
        warm = warm_spawner(stack).warm(language)

    assert [r.stdout for r in responses] == ["alive\n"] * 3
    assert warm, "the zygote failed and its children were started cold"


def shrink_control_socket(spawner: ZygoteSpawner, language: str) -> spawners._Zygote:
    """The language's zygote, its control socket's send buffer small (8 KiB).

    A spawn message or two fill it: what a burst of runs does to the default buffer
    (~200 KiB, some 60 spawn messages) while the zygote is busy or held up.
    """
    zygote = spawner._zygotes[language]
    control = zygote._control
    assert control is not None
    control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return zygote


def nonblocking_control(zygote_pid: int) -> bool:
    """Whether the zygote's own end of its control socket is non-blocking (its CONTROL_FD)."""
    fd = next(arg for arg in psutil.Process(zygote_pid).cmdline() if arg.isdigit())
    flags = Path(f"/proc/{zygote_pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0]
    return bool(int(flags, 8) & os.O_NONBLOCK)


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_full_control_socket_is_waited_on_not_taken_for_a_death(
    tmp_path: Path, language: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A long callback runs in the zygote; a burst of runs finds its control socket full
    # (the zygote held up a moment). The spawns wait their turn: no run is killed, the
    # zygote is not restarted, and every child of the burst is its fork.
    shorts = 5
    settings = stack_settings(tmp_path / "data", max_concurrent=shorts + 1, prepare_ahead=False)
    async with running_stack(settings) as stack:
        (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
        spawner = warm_spawner(stack)
        first = await stack.client.execute_callback(
            language=language, code=ALIVE[language], job=job
        )
        assert first.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED, first
        pid = spawner.pid_of(language)
        assert pid is not None
        # Its reports (the other way) wait for room in its blocking end, never fail.
        zygote_end_blocks = not nonblocking_control(pid)
        code = {
            "python": "qb.block(qb.jobid())\nimport time\ntime.sleep(2)\nprint('alive')",
            "perl": 'qb::block(qb::jobid());\nselect(undef, undef, undef, 2); print "alive\\n";',
        }[language]
        long = asyncio.create_task(
            stack.client.execute_callback(language=language, code=code, job=job)
        )
        assert await eventually(
            lambda: long.done() or stack.supervisor.job(job["id"])["status"] == "blocked", 60
        )
        zygote = shrink_control_socket(spawner, language)
        with caplog.at_level(logging.WARNING, logger="executor.sandbox.spawners"):
            with stopped(pid):  # well within the watchdog's period
                burst = [
                    asyncio.create_task(
                        stack.client.execute_callback(
                            language=language, code=ALIVE[language], job=job
                        )
                    )
                    for _ in range(shorts)
                ]
                # Every spawn of the burst asked (or the zygote taken for dead).
                assert await eventually(lambda: len(zygote._starting) >= shorts or long.done(), 10)
                assert zygote._outbox or long.done(), "the socket never filled"
            async with within(3 * ZYGOTE_LONGEST_WAIT_S):
                answers = await asyncio.gather(long, *burst)
        forks = spawner.status()

    assert [(a.outcome, a.stdout) for a in answers] == [
        (executor_pb2.Outcome.OUTCOME_SUCCEEDED, "alive\n")
    ] * (shorts + 1), answers
    assert [z.restarts for z in forks if z.language == language] == [0]
    assert "zygote" not in caplog.text, caplog.text  # no death, no child started cold
    assert zygote_end_blocks


@pytest.mark.parametrize("wall_seconds", [1, None])
async def test_a_hung_zygote_behind_a_full_control_socket_is_still_killed(
    tmp_path: Path, wall_seconds: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    # Spawns wait for room in a socket the stopped zygote never reads: the watchdog's
    # ping waits behind them and is never answered. A run with a short wall limit gives
    # its spawn up first (its message, and the fds it carries, taken back) and starts cold.
    settings = stack_settings(tmp_path / "data", max_concurrent=4, prepare_ahead=False)
    limits = {} if wall_seconds is None else {"wall_seconds": wall_seconds}
    async with running_stack(settings) as stack:
        (job,) = stack.supervisor.submit([{"name": "z", "user": "alice"}])
        spawner = warm_spawner(stack)
        await stack.client.execute_callback(language="python", code=ALIVE["python"], job=job)
        pid = spawner.pid_of("python")
        assert pid is not None
        zygote = shrink_control_socket(spawner, "python")
        with (
            caplog.at_level(logging.ERROR, logger="executor.sandbox.spawners"),
            stopped(pid),
        ):
            async with within(3 * ZYGOTE_LONGEST_WAIT_S):
                responses = await asyncio.gather(
                    *(
                        stack.client.execute_callback(
                            language="python", code=ALIVE["python"], job=job, limits=limits
                        )
                        for _ in range(settings.max_concurrent)
                    )
                )
                unsent = list(zygote._outbox)

                async def logged() -> bool:
                    return bool(zygote_errors(caplog))

                assert await eventually(logged, timeout_s=2 * ZYGOTE_LONGEST_WAIT_S)
        after = await stack.client.execute_callback(
            language="python", code=ALIVE["python"], job=job
        )
        restarted = spawner.pid_of("python")

    assert [(r.outcome, r.stdout) for r in responses] == [
        (executor_pb2.Outcome.OUTCOME_SUCCEEDED, "alive\n")
    ] * settings.max_concurrent, responses
    assert unsent == []
    assert after.stdout == "alive\n"
    assert restarted not in (None, pid)
    (line,) = zygote_errors(caplog)
    assert f"(pid {pid}) did not answer for {ZYGOTE_PING_PERIOD_S:g} s and was killed" in line
