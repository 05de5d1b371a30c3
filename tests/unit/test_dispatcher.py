"""Dispatcher admission on a fake sandbox: slots, the queue bound, fired runs, stops, drain.

No processes: the fake runner's runs wait until the test lets them end, or until they
are stopped, and report what they were given.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from executor.child.protocol import StartFrame
from executor.dispatcher import (
    BEHIND_POLL_S,
    CALLER_CANCELLED,
    INTERNAL_FAILURE,
    SHUTTING_DOWN,
    Dispatcher,
)
from executor.errors import (
    AlreadyExistsError,
    CapacityError,
    InvalidRequestError,
    UnavailableError,
)
from executor.host_api import HostApi
from executor.model import (
    CallbackSpec,
    Failure,
    Invocation,
    Language,
    Limits,
    Outcome,
    RunResult,
    Usage,
)
from executor.runtimes.child import ChildRuntime
from executor.sandbox.exit_status import SandboxResult
from executor.sandbox.lifecycle import RunStop, RunStopped, stoppable

pytestmark = pytest.mark.unit

LIMITS = Limits(1, 5, 1 << 28, 1 << 16, 8, 1 << 20)


def sandbox_result(outcome: Outcome, failure: Failure | None = None) -> SandboxResult:
    return SandboxResult(outcome, failure, 0, 0, "", "", False, False, Usage(0.01, 0.005, 4096))


class FakeRunner:
    """A sandbox whose runs (named by their code) last until ``finish(code)`` or a stop."""

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []  # (code, slot), in the order they began
        self.stopped: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}
        # Codes whose child is still being made until the event is set (a stop may come).
        self.making: dict[str, asyncio.Event] = {}
        self.preparing = True
        self.closed = False

    def finish(self, code: str) -> None:
        self._gates.setdefault(code, asyncio.Event()).set()

    async def run(
        self,
        *,
        runtime: ChildRuntime,
        limits: Limits,
        slot: int,
        start: StartFrame,
        on_call: Any,
        stop: RunStop | None = None,
        policy: Any = None,
        gate: Callable[[], None] | None = None,
    ) -> SandboxResult:
        code = start["code"]
        assert start["language"] == runtime.language
        if code == "bug":  # as has_ended's select() past FD_SETSIZE did
            raise ValueError("filedescriptor out of range in select()")
        stop = stop or RunStop()
        if (made := self.making.get(code)) is not None:
            await made.wait()
        if not stop.start():  # as the sandbox: stopped before its start, it never runs
            return sandbox_result(Outcome.KILLED, Failure(stop.reason))
        if gate is not None:  # as the sandbox opens it: once started
            gate()
        self.started.append((code, slot))
        try:
            async with stoppable(stop):
                await self._gates.setdefault(code, asyncio.Event()).wait()
        except RunStopped:
            self.stopped.append(code)
            return sandbox_result(Outcome.KILLED, Failure(stop.reason))
        return sandbox_result(Outcome.SUCCEEDED)

    def stop_preparing(self) -> None:
        self.preparing = False

    async def close(self) -> None:
        self.closed = True


class FakeQube:
    """Qube code strings that never end on their own."""

    async def run(self, invocation: Invocation, host: HostApi) -> RunResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Harness:
    def __init__(
        self,
        *,
        slots: int,
        queue: int,
        languages: str = "python,qube",
        queue_bytes: int | None = None,
        unenforceable: str | None = None,
    ) -> None:
        self.runner = FakeRunner()
        self.recorded: list[RunResult] = []
        self.recorded_as: list[Invocation] = []  # the invocation of each, as it ran
        self.refusal: Exception | None = None  # what recording raises (the store refusing it)
        self.dispatcher = Dispatcher(
            runner=self.runner,
            supervisor=None,  # type: ignore[arg-type]  # no qb call reaches it
            qube=FakeQube(),
            languages=frozenset(Language(name) for name in languages.split(",")),
            max_concurrent=slots,
            max_queue=queue,
            max_queue_bytes=queue_bytes,
            on_result=self._record,
            unenforceable=lambda limits: unenforceable,
        )

    def _record(self, invocation: Invocation, result: RunResult) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.recorded_as.append(invocation)
        self.recorded.append(result)

    def start(
        self,
        code: str,
        *,
        fired: bool = False,
        language: str = "python",
        request_bytes: int = 0,
        user: str = "alice",
    ) -> asyncio.Task[RunResult]:
        return asyncio.create_task(
            self.dispatcher.execute(
                invocation(code, language, user), fired=fired, request_bytes=request_bytes
            )
        )

    def execute(
        self,
        code: str,
        *,
        fired: bool = False,
        language: str = "python",
        gate: Callable[[], None] | None = None,
    ) -> Any:
        return self.dispatcher.execute(invocation(code, language), fired=fired, gate=gate)

    def outcomes(self) -> dict[str, tuple[Outcome, str]]:
        return {
            r.invocation_id: (r.outcome, r.failure.message if r.failure else "")
            for r in self.recorded
        }


def invocation(code: str, language: str = "python", user: str = "alice") -> Invocation:
    return Invocation(
        invocation_id=f"run-{code}",
        callback=CallbackSpec(language=language, code=code),
        job={"id": 1, "user": user},
        limits=LIMITS,
    )


async def settle() -> None:
    """Let every task that can move do so (no real I/O here: a few loop turns suffice)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_refusal_at_capacity_counts_one_slot_and_one_queued_run_in_the_singular() -> None:
    # Found by a tester: "all 2 slots are busy and 1 runs are queued".
    harness = Harness(slots=1, queue=1)
    tasks = [harness.start(code) for code in "ab"]
    await settle()
    with pytest.raises(
        CapacityError, match=r"^the 1 slot is busy and 1 run is queued; retry later$"
    ):
        await harness.execute("c")
    harness.runner.finish("a")
    await settle()
    harness.runner.finish("b")
    await asyncio.gather(*tasks)


async def test_a_fired_runs_recheck_decides_what_it_runs_as_once_it_has_its_slot() -> None:
    # Found by a probe: a universal firing waiting for a slot ran as its line was before
    # a reload (removed, or turned shadow); the engine's recheck is its look at the line.
    harness = Harness(slots=1, queue=1)
    blocker = harness.start("a")
    await settle()
    looked: list[str] = []

    def recheck(to: Invocation) -> Invocation:
        looked.append(to.callback.code)
        if to.callback.code == "removed":
            return replace(to, refusal="its line is gone")
        return replace(to, shadow=True)

    fired = [
        asyncio.create_task(
            harness.dispatcher.execute(invocation(code), fired=True, recheck=recheck)
        )
        for code in ("removed", "shadowed")
    ]
    await settle()
    assert looked == []  # waiting: nothing decided yet
    harness.runner.finish("a")
    await settle()
    harness.runner.finish("shadowed")
    removed, shadowed = await asyncio.gather(*fired)
    await blocker

    assert looked == ["removed", "shadowed"]
    assert (removed.outcome, removed.failure) == (Outcome.REJECTED, Failure("its line is gone"))
    assert shadowed.outcome is Outcome.SUCCEEDED
    assert [code for code, _ in harness.runner.started] == ["a", "shadowed"]
    shadows = {ran.callback.code: ran.shadow for ran in harness.recorded_as}
    assert shadows == {"a": False, "removed": False, "shadowed": True}
    assert harness.dispatcher.active == 0


async def test_runs_take_free_slots_then_queue_in_order_then_are_refused() -> None:
    harness = Harness(slots=2, queue=2)
    tasks = [harness.start(code) for code in "abcd"]
    await settle()

    assert harness.runner.started == [("a", 0), ("b", 1)]
    assert (harness.dispatcher.active, harness.dispatcher.waiting) == (2, 2)
    with pytest.raises(CapacityError, match="all 2 slots are busy and 2 runs are queued"):
        await harness.execute("e")

    harness.runner.finish("b")
    await settle()
    assert harness.runner.started[2:] == [("c", 1)]  # first come, first served
    harness.runner.finish("a")
    await settle()
    assert harness.runner.started[3:] == [("d", 0)]
    for code in "cd":
        harness.runner.finish(code)

    results = await asyncio.gather(*tasks)
    assert [r.outcome for r in results] == [Outcome.SUCCEEDED] * 4
    assert [r.invocation_id for r in harness.recorded] == ["run-b", "run-a", "run-c", "run-d"]
    assert results[2].usage.queue_seconds > 0
    assert (harness.dispatcher.active, harness.dispatcher.waiting) == (0, 0)


MIB = 1 << 20


async def test_the_queue_is_refused_past_the_bytes_its_requests_may_total() -> None:
    harness = Harness(slots=1, queue=100, queue_bytes=32 * MIB)
    running = harness.start("a", request_bytes=15 * MIB)  # a slot: not counted
    queued = [harness.start(code, request_bytes=15 * MIB) for code in "bc"]
    await settle()
    assert (harness.dispatcher.waiting, harness.dispatcher.waiting_bytes) == (2, 30 * MIB)

    with pytest.raises(CapacityError, match="would pass max_queue_bytes") as refused:
        await harness.dispatcher.execute(invocation("d"), request_bytes=15 * MIB)
    assert refused.value.retry_after_s == 1.0
    assert "the 2 queued requests take 30.0 MiB; with this one's 15.0 MiB" in str(refused.value)
    small = harness.start("e", request_bytes=2 * MIB)  # what still fits waits
    fired = harness.start("fired", fired=True, request_bytes=15 * MIB)  # never refused
    await settle()
    assert harness.dispatcher.waiting_bytes == 47 * MIB  # past the bound: fired runs wait

    for code in ["a", "b", "c", "e", "fired"]:
        harness.runner.finish(code)
        await settle()
    await asyncio.gather(running, *queued, small, fired)
    assert (harness.dispatcher.waiting, harness.dispatcher.waiting_bytes) == (0, 0)


async def test_a_queued_run_stopped_before_its_slot_gives_back_its_bytes() -> None:
    harness = Harness(slots=1, queue=100, queue_bytes=20 * MIB)
    running = harness.start("a")
    queued = harness.start("b", request_bytes=15 * MIB)
    await settle()
    assert harness.dispatcher.waiting_bytes == 15 * MIB
    queued.cancel()  # its caller's deadline
    await asyncio.gather(queued, return_exceptions=True)
    assert harness.dispatcher.waiting_bytes == 0
    again = harness.start("c", request_bytes=15 * MIB)  # fits again
    await settle()
    harness.runner.finish("a")
    harness.runner.finish("c")
    await asyncio.gather(running, again)


async def test_a_fired_run_is_never_refused_for_a_full_queue() -> None:
    harness = Harness(slots=1, queue=1)
    running = harness.start("a")
    queued = harness.start("b")
    await settle()
    with pytest.raises(CapacityError):
        await harness.execute("c")

    fired = [harness.start(f"fired{n}", fired=True) for n in range(3)]
    await settle()

    assert harness.dispatcher.waiting == 4  # beyond the bound: fired runs wait
    with pytest.raises(CapacityError):
        await harness.execute("d")  # an Execute still is refused
    for code in ["a", "b", "fired0", "fired1", "fired2"]:
        harness.runner.finish(code)
        await settle()
    await asyncio.gather(running, queued, *fired)
    assert [code for code, _ in harness.runner.started] == ["a", "b", "fired0", "fired1", "fired2"]


async def test_a_freed_slot_goes_round_robin_across_users_first_come_within_each() -> None:
    # Probe 105: alice's twelve 15 s callbacks on 4 slots kept bob's trivial one waiting 44 s.
    harness = Harness(slots=1, queue=8)
    tasks = [harness.start("a0")]
    await settle()
    tasks += [harness.start(code) for code in ("a1", "a2", "a3")]
    tasks += [harness.start(code, user="bob") for code in ("b1", "b2")]
    tasks.append(harness.start("c1", user="carol", fired=True))  # a fired run takes turns alike
    await settle()
    assert harness.dispatcher.waiting == 6

    for _ in range(6):
        harness.runner.finish(harness.runner.started[-1][0])
        await settle()
    harness.runner.finish("a3")
    await asyncio.gather(*tasks)
    # alice, bob and carol in the order they began waiting; each one's own first come first.
    started = [code for code, _ in harness.runner.started]
    assert started == ["a0", "a1", "b1", "c1", "a2", "b2", "a3"]


FULL = r"^the 1 slot is busy and 3 runs are queued; retry later$"


async def test_a_user_is_admitted_to_a_queue_another_filled_in_place_of_its_newest_run() -> None:
    # Probe 105: alice's 3000 calls filled the queue, and bob's one was refused.
    harness = Harness(slots=1, queue=3)
    running = harness.start("a0")
    await settle()
    alices = [harness.start(code) for code in ("a1", "a2", "a3")]
    await settle()
    bob = harness.start("b1", user="bob")
    await settle()

    with pytest.raises(CapacityError) as refused:
        await alices[2]
    assert str(refused.value) == (
        "the 1 slot is busy and 3 runs are queued, the most of them (3) of user 'alice': "
        "this one, the newest of them, gave its place to a run of user 'bob', who had fewer "
        "queued; retry later"
    )
    assert refused.value.retry_after_s == 1.0
    assert harness.dispatcher.waiting == 3  # a1, a2, b1
    # alice 2, bob 1: neither would take the other's place and still hold fewer.
    with pytest.raises(CapacityError, match=FULL):
        await harness.execute("a4")
    with pytest.raises(CapacityError, match=FULL):
        await harness.dispatcher.execute(invocation("b2", user="bob"))

    for code in ("a0", "a1", "b1", "a2"):
        harness.runner.finish(code)
        await settle()
    await asyncio.gather(running, *alices[:2], bob)
    assert [code for code, _ in harness.runner.started] == ["a0", "a1", "b1", "a2"]
    assert "run-a3" not in harness.outcomes()  # refused, as at the door: not a run
    assert (harness.dispatcher.active, harness.dispatcher.waiting) == (0, 0)


async def test_a_user_is_admitted_past_the_queues_bytes_in_place_of_the_heaviest_users_newest() -> (
    None
):
    harness = Harness(slots=1, queue=100, queue_bytes=32 * MIB)
    running = harness.start("a", request_bytes=15 * MIB)
    alices = [harness.start(code, request_bytes=15 * MIB) for code in "bc"]
    await settle()
    bob = harness.start("d", user="bob", request_bytes=15 * MIB)
    await settle()

    with pytest.raises(CapacityError) as refused:
        await alices[1]
    assert str(refused.value) == (
        "the 1 slot is busy and the 2 queued requests take 30.0 MiB, the most of it "
        "(30.0 MiB) of user 'alice'; with a 15.0 MiB request of user 'bob' they would pass "
        "max_queue_bytes (32.0 MiB): this one, the newest of them, gave its place to it; "
        "retry later"
    )
    assert harness.dispatcher.waiting_bytes == 30 * MIB
    # alice 15 MiB, bob 15 MiB: bob's next would make bob the heavier; refused as ever.
    with pytest.raises(CapacityError, match="would pass max_queue_bytes"):
        await harness.dispatcher.execute(invocation("e", user="bob"), request_bytes=15 * MIB)

    for code in "abd":
        harness.runner.finish(code)
        await settle()
    await asyncio.gather(running, alices[0], bob)
    assert (harness.dispatcher.waiting, harness.dispatcher.waiting_bytes) == (0, 0)


async def test_runs_with_no_user_share_one_place_and_fired_runs_keep_theirs() -> None:
    harness = Harness(slots=1, queue=3)
    tasks = [harness.start("a0")]
    await settle()
    tasks.append(harness.start("f1", fired=True))  # alice's: counted, never given up
    tasks += [harness.start(code, user="") for code in ("u1", "u2")]
    await settle()
    # The runs with no user are one group, not one each: u3 takes no place of theirs.
    with pytest.raises(CapacityError, match=FULL):
        await harness.dispatcher.execute(invocation("u3", user=""))
    # alice has no Execute call waiting (f1 is fired): bob takes the place of u2.
    tasks.append(harness.start("b1", user="bob"))
    await settle()
    with pytest.raises(CapacityError, match="the most of them \\(2\\) of no user: this one"):
        await tasks.pop(3)
    for code in ("a0", "f1", "u1", "b1"):
        harness.runner.finish(code)
        await settle()
    await asyncio.gather(*tasks)
    assert [code for code, _ in harness.runner.started] == ["a0", "f1", "u1", "b1"]


async def test_drain_stops_every_run_records_it_and_answers_its_caller() -> None:
    harness = Harness(slots=2, queue=4)
    child = harness.start("a")
    qube = harness.start("unblock-self", language="qube")
    queued = harness.start("b")
    fired = harness.start("c", fired=True)
    await settle()
    assert (harness.dispatcher.active, harness.dispatcher.waiting) == (2, 2)

    await harness.dispatcher.drain()

    results = await asyncio.gather(child, qube)
    assert {r.outcome for r in results} == {Outcome.KILLED}
    assert {r.failure.message for r in results if r.failure} == {SHUTTING_DOWN}
    assert harness.outcomes() == {r.invocation_id: (Outcome.KILLED, SHUTTING_DOWN) for r in results}
    # A queued Execute never started: not a run, so its caller may send it again.
    with pytest.raises(UnavailableError, match="did not start"):
        await queued
    # A queued firing never started: not a run, so the engine keeps it for the next start.
    with pytest.raises(UnavailableError, match=SHUTTING_DOWN):
        await fired
    assert harness.runner.stopped == ["a"]  # the queued ones never started
    assert not harness.runner.preparing and harness.runner.closed
    assert (harness.dispatcher.active, harness.dispatcher.waiting) == (0, 0)
    with pytest.raises(UnavailableError, match=SHUTTING_DOWN):
        await harness.execute("d")
    with pytest.raises(UnavailableError, match=SHUTTING_DOWN):
        await harness.execute("e", fired=True)


async def test_a_fired_run_drain_stopped_is_recorded_and_kept_for_the_next_start() -> None:
    # Marked done, a routine restart left the dependency it was to unblock blocked.
    harness = Harness(slots=2, queue=4)
    fired = harness.start("f", fired=True)
    finished = harness.start("g", fired=True)
    await settle()
    harness.runner.finish("g")
    assert (await finished).outcome == Outcome.SUCCEEDED
    await harness.dispatcher.drain()

    with pytest.raises(UnavailableError, match=SHUTTING_DOWN):
        await fired
    assert harness.runner.stopped == ["f"]
    assert harness.outcomes() == {
        "run-g": (Outcome.SUCCEEDED, ""),
        "run-f": (Outcome.KILLED, SHUTTING_DOWN),
    }


async def test_a_fired_run_that_fails_inside_the_executor_is_a_failed_run_recorded() -> None:
    # It was dropped: never recorded nor reported, its waiter answered with no result.
    harness = Harness(slots=1, queue=1)
    result = await harness.execute("bug", fired=True)
    assert (result.outcome, result.failure) == (Outcome.FAILED, Failure(INTERNAL_FAILURE))
    assert harness.outcomes() == {"run-bug": (Outcome.FAILED, INTERNAL_FAILURE)}
    # Its slot is free again; an Execute's caller is still answered INTERNAL (an error).
    with pytest.raises(ValueError, match="out of range"):
        await harness.execute("bug")
    harness.runner.finish("ok")
    assert (await harness.execute("ok")).outcome == Outcome.SUCCEEDED


async def test_limits_the_host_cannot_enforce_refuse_a_childs_run_not_a_qube_one() -> None:
    refusal = "limits.cpu_seconds = 200 cannot be enforced on this host: ..."
    harness = Harness(slots=1, queue=1, unenforceable=refusal)
    with pytest.raises(InvalidRequestError, match="cannot be enforced"):
        await harness.execute("a")
    fired = await harness.execute("b", fired=True)
    assert (fired.outcome, fired.failure) == (Outcome.REJECTED, Failure(refusal))
    # A qube run sets no rlimits: nothing of it to enforce. It runs (until the drain).
    qube = harness.start("unblock-self", language="qube")
    await settle()
    assert harness.dispatcher.active == 1
    await harness.dispatcher.drain()
    assert (await qube).outcome == Outcome.KILLED


async def test_a_qube_run_a_stop_ends_keeps_the_time_it_ran() -> None:
    # Its log line and record said wall=0.000s for a mail run stopped 3 s in (probe 96).
    harness = Harness(slots=1, queue=1)
    qube = harness.start("mail-status", language="qube")
    await asyncio.sleep(0.2)
    await harness.dispatcher.drain()
    result = await qube
    assert result.outcome == Outcome.KILLED
    assert 0.2 <= result.usage.wall_seconds < 5


async def test_a_cancelled_caller_stops_its_run_which_is_still_recorded() -> None:
    harness = Harness(slots=1, queue=1)
    caller = harness.start("a")
    await settle()

    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller

    assert harness.runner.stopped == ["a"]
    assert harness.outcomes() == {"run-a": (Outcome.KILLED, CALLER_CANCELLED)}
    assert harness.dispatcher.active == 0
    harness.runner.finish("b")
    assert (await harness.execute("b")).outcome == Outcome.SUCCEEDED  # the slot came back


async def test_a_refusal_a_gone_caller_would_have_been_told_is_logged_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The store refusing a result its caller left was logged as an executor bug (probe 88).
    harness = Harness(slots=1, queue=1)
    harness.refusal = refusal = UnavailableError("the outbox refused the result for now")
    waiting = harness.start("b")
    await settle()
    assert [code for code, _ in harness.runner.started] == ["b"]

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    (record,) = [r for r in caplog.records if "run-b" in r.getMessage()]
    assert (record.levelname, record.exc_info) == ("WARNING", None)
    assert record.getMessage() == f"run run-b, whose caller has gone: {refusal}"


async def test_a_run_its_caller_left_in_the_queue_is_logged_as_no_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = Harness(slots=1, queue=1)
    running = harness.start("a")
    waiting = harness.start("b")
    await settle()

    with caplog.at_level(logging.INFO, logger="executor.dispatcher"):
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    (record,) = [r for r in caplog.records if "run-b" in r.getMessage()]
    assert (record.levelname, record.exc_info) == ("INFO", None)
    assert record.getMessage() == (
        f"run run-b, whose caller has gone: {CALLER_CANCELLED} before the callback started: no run"
    )
    harness.runner.finish("a")
    await running


async def test_a_run_its_caller_left_in_the_queue_is_freed_without_the_cyclic_collector() -> None:
    # Probe 183: its task's error held the task's frame, the frame the run, the run the
    # task: each cancelled queued Execute kept its request (15 MiB) until a gc pass.
    harness = Harness(slots=1, queue=1)
    running = harness.start("a")
    waiting = harness.start("b")
    await settle()
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "run run-b"]
    run_task = weakref.ref(task)
    del task
    gc.disable()
    try:
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        del waiting
        await settle()
        assert run_task() is None
    finally:
        gc.enable()
    harness.runner.finish("a")
    await running


async def test_a_caller_cancelled_in_the_queue_gives_up_its_place() -> None:
    harness = Harness(slots=1, queue=2)
    running = harness.start("a")
    waiting = harness.start("b")
    behind = harness.start("c")
    await settle()

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert harness.dispatcher.waiting == 1
    harness.runner.finish("a")
    harness.runner.finish("c")
    await asyncio.gather(running, behind)

    assert [code for code, _ in harness.runner.started] == ["a", "c"]
    assert "run-b" not in harness.outcomes()  # it never started: no run (probe 129)


async def test_a_disabled_language_is_rejected_and_recorded_without_a_slot() -> None:
    harness = Harness(slots=1, queue=0, languages="qube")
    harness.start("a", language="qube")
    await settle()

    result = await harness.execute("b", language="perl")

    assert result.outcome == Outcome.REJECTED
    assert result.failure is not None and "'languages' setting" in result.failure.message
    assert harness.recorded == [result]
    await harness.dispatcher.drain()


async def test_an_unknown_language_is_an_invalid_request() -> None:
    harness = Harness(slots=1, queue=0)

    with pytest.raises(InvalidRequestError, match=r"callback\.language 'cobol'"):
        await harness.execute("a", language="cobol")

    assert harness.recorded == []


async def test_a_fired_callback_in_an_unknown_language_is_rejected_and_recorded() -> None:
    # Registration refuses such callbacks; one registered before it did must not vanish.
    harness = Harness(slots=1, queue=0)

    result = await harness.execute("a", language="ruby", fired=True)

    assert result.outcome == Outcome.REJECTED
    assert result.failure is not None
    assert result.failure.message.startswith("callback.language 'ruby' is not supported")
    assert harness.recorded == [result]
    assert harness.runner.started == []


async def test_an_invocation_id_still_running_is_not_run_twice() -> None:
    harness = Harness(slots=2, queue=0)
    first = harness.start("a")
    await settle()

    with pytest.raises(UnavailableError, match="still in progress"):
        await harness.execute("a")

    harness.runner.finish("a")
    assert (await first).outcome == Outcome.SUCCEEDED
    assert (await harness.execute("a")).outcome == Outcome.SUCCEEDED  # once it has ended


async def test_an_execute_naming_a_fired_runs_id_in_progress_is_told_it_is_a_firings() -> None:
    harness = Harness(slots=2, queue=0)
    fired = harness.start("a", fired=True)
    await settle()

    with pytest.raises(AlreadyExistsError, match="is a fired callback's"):
        await harness.execute("a")

    harness.runner.finish("a")
    await fired


class Gate:
    """An Execute's id checks (``IdGate``): counted, and refusing when told to."""

    def __init__(self, refusal: Exception | None = None) -> None:
        self.refusal = refusal
        self.opened = 0

    def __call__(self) -> None:
        self.opened += 1
        if self.refusal is not None:
            raise self.refusal


async def test_a_run_opens_its_gate_once_before_it_starts() -> None:
    harness = Harness(slots=1, queue=0)
    harness.runner.finish("a")
    gate = Gate()

    assert (await harness.execute("a", gate=gate)).outcome == Outcome.SUCCEEDED
    assert gate.opened == 1
    assert len(harness.recorded) == 1


@pytest.mark.parametrize("language", ["python", "qube", "perl"])
async def test_a_gate_that_refuses_leaves_the_run_unstarted_and_unrecorded(language: str) -> None:
    # perl is disabled here: a refused language is recorded REJECTED, but not before the gate.
    harness = Harness(slots=1, queue=0)
    gate = Gate(AlreadyExistsError("invocation_id 'run-a' is already recorded for another run"))

    with pytest.raises(AlreadyExistsError, match="another run"):
        await harness.execute("a", language=language, gate=gate)

    assert (gate.opened, harness.recorded, harness.runner.started) == (1, [], [])
    assert harness.dispatcher.active == 0
    harness.runner.finish("b")
    assert (await harness.execute("b")).outcome == Outcome.SUCCEEDED  # the slot came back


async def test_an_execute_a_drain_stops_before_it_started_is_unavailable_and_unrecorded() -> None:
    # Answered KILLED and recorded, it was lost in a rolling restart (probe 95): a fleet
    # caller resends only what is retryable. Its id was never claimed (the gate unopened).
    harness = Harness(slots=2, queue=1)
    running = harness.start("a")
    harness.runner.making["b"] = made = asyncio.Event()
    in_slot = asyncio.create_task(harness.execute("b", gate=(in_slot_gate := Gate())))
    await settle()
    queued_gate = Gate()
    queued = asyncio.create_task(harness.execute("c", gate=queued_gate))
    await settle()
    assert (harness.dispatcher.active, harness.dispatcher.waiting) == (2, 1)

    draining = asyncio.create_task(harness.dispatcher.drain())
    await settle()
    made.set()  # "b"'s child is ready only after the stop: it never gets its start
    await draining

    for call in (in_slot, queued):
        with pytest.raises(UnavailableError, match="did not start; it may be sent again"):
            await call
    assert (in_slot_gate.opened, queued_gate.opened) == (0, 0)
    assert harness.outcomes() == {"run-a": (Outcome.KILLED, SHUTTING_DOWN)}
    assert [code for code, _ in harness.runner.started] == ["a"]
    assert (harness.dispatcher.active, harness.dispatcher.waiting) == (0, 0)
    await running


async def test_a_run_its_caller_left_before_it_started_is_no_run_and_opens_no_gate() -> None:
    # Recorded KILLED before, as a run that never ran (probe 129); a stop's is no run either.
    harness = Harness(slots=1, queue=1)
    running = harness.start("a")
    await settle()
    gate = Gate()
    waiting = asyncio.create_task(harness.execute("b", gate=gate))
    await settle()

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    assert gate.opened == 0
    assert harness.outcomes() == {}
    harness.runner.finish("a")
    await running


@pytest.mark.parametrize("turns", range(6))
async def test_a_caller_cancelled_as_its_queued_run_gets_a_slot_gives_the_slot_back(
    turns: int,
) -> None:
    # With turns=0 the freed slot is handed to b's ticket, then b's caller (cancelled in
    # the same loop turn) stops b before b's task has woken to take it: that slot was kept
    # by a run that never started, for good.
    harness = Harness(slots=1, queue=1)
    running = harness.start("a")
    waiting = harness.start("b")
    await settle()

    harness.runner.finish("a")
    for _ in range(turns):
        await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await running
    await settle()

    assert harness.dispatcher.active == 0
    # A run only once it started; one stopped before is no run (probe 129).
    started = "b" in [code for code, _ in harness.runner.started]
    expected = {"run-b": (Outcome.KILLED, CALLER_CANCELLED)} if started else {}
    assert {k: v for k, v in harness.outcomes().items() if k == "run-b"} == expected
    harness.runner.finish("c")
    assert (await harness.execute("c")).outcome == Outcome.SUCCEEDED  # the slot came back


async def test_a_queued_run_does_not_start_once_no_run_may_start() -> None:
    # Probe 136: past outbox_max_bytes, the runs already waiting for a slot started all
    # the same (the bound was checked only at the door): 1 MiB bound, 3.2 MiB pending.
    refusal = [""]
    harness = Harness(slots=1, queue=2)
    harness.dispatcher._refusal = lambda: refusal[0]
    blocker = harness.start("a")
    queued = harness.start("b")
    fired = harness.start("c", fired=True)
    await settle()
    refusal[0] = "the supervisor has not taken 8 results: the executor runs nothing"
    harness.runner.finish("a")
    await blocker

    # Answered as the door's refusal is: not run, not recorded; a fired one waits in its
    # queue (the firing worker tries it again).
    try:
        with pytest.raises(UnavailableError, match="has not taken 8 results"):
            await asyncio.wait_for(queued, 5)
        with pytest.raises(UnavailableError, match="has not taken 8 results"):
            await asyncio.wait_for(fired, 5)
    finally:  # had they started, they end
        for code in "bc":
            harness.runner.finish(code)
        await asyncio.gather(queued, fired, return_exceptions=True)
    assert [code for code, _ in harness.runner.started] == ["a"]
    assert list(harness.outcomes()) == ["run-a"]
    assert (harness.dispatcher.active, harness.dispatcher.waiting) == (0, 0)


async def test_an_ended_run_keeps_its_slot_while_the_bookkeeping_is_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Probe 153: callbacks filling 16 MiB streams faster than the history wrote them grew
    # the executor by GBs, since each slot was free again at its run's end.
    caplog.set_level(logging.INFO, "executor.dispatcher")
    behind = ["the runs not yet written hold 80 MiB of output (more than 64 MiB)"]
    harness = Harness(slots=1, queue=2)
    harness.dispatcher._behind = lambda: behind[0]
    first = harness.start("a")
    queued = harness.start("b")
    await settle()
    harness.runner.finish("a")
    assert (await first).outcome is Outcome.SUCCEEDED  # answered all the same
    await asyncio.sleep(3 * BEHIND_POLL_S)
    assert [code for code, _ in harness.runner.started] == ["a"]
    assert (harness.dispatcher.active, harness.dispatcher.waiting) == (1, 1)
    assert harness.dispatcher.kept_for_history == 1
    also_queued = harness.start("c")
    await settle()
    with pytest.raises(CapacityError):  # the queue's bound holds as ever
        await harness.execute("d")
    (kept,) = [r for r in caplog.records if "keep their slots" in r.getMessage()]
    assert kept.levelname == "WARNING" and "80 MiB of output" in kept.getMessage()

    behind[0] = ""
    harness.runner.finish("b")
    assert (await asyncio.wait_for(queued, 5)).outcome is Outcome.SUCCEEDED
    assert [code for code, _ in harness.runner.started] == ["a", "b", "c"]
    assert any("caught up" in r.getMessage() for r in caplog.records)
    assert harness.dispatcher.kept_for_history == 0
    harness.runner.finish("c")
    assert (await asyncio.wait_for(also_queued, 5)).outcome is Outcome.SUCCEEDED


async def test_a_stop_frees_the_slots_kept_for_the_bookkeeping() -> None:
    harness = Harness(slots=2, queue=2)
    harness.dispatcher._behind = lambda: "behind for good (a history that never writes)"
    runs = [harness.start(code) for code in "ab"]
    await settle()
    for code in "ab":
        harness.runner.finish(code)
    await asyncio.gather(*runs)
    assert harness.dispatcher.active == 2
    await asyncio.wait_for(harness.dispatcher.drain(), 5)
    assert harness.dispatcher.active == 0
