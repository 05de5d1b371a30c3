"""``cbexec farm workers N``: simulated render workers that take, run and finish frames.

Each worker is a task of this client process that calls the farm like a real worker's
daemon would: ``TakeWork`` (the farm picks the item, Qube's way: one item per instance,
priority then age), waits ``frame_seconds``, then completes or fails it with
``ChangeWork``. A job whose agenda is done completes by the supervisor's own rule.
Workers are a client, not a serve setting, so they can be started, stopped and scaled
while the service runs, from any machine that reaches it, through the same RPCs and
token a real farm would use.

Determinism: whether an attempt fails depends only on ``--seed``, the job id, the item
and the attempt number, never on which worker took it or when. Which worker takes which
item depends on timing.

Stopping: the first SIGINT/SIGTERM stops taking work and finishes the items in flight
(at most ``frame_seconds``); a second one leaves them running, names them with the
command that ends them, and exits.

An executor that cannot take a call now (restarting, say, or its data dir full: both
answer UNAVAILABLE) does not lose a rendered frame: its end is reported again for up to
``REPORT_RETRY_S``, as a worker's daemon would, and an idle worker asks for work again
as long. If it still cannot, the workers stop, finishing the other frames in flight the
same way, and every item left running is named with the command that ends it, as is
one whose end the executor refused for another reason than its being gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO, TypeVar

import grpc

from executor.visible_text import escaped, printable
from supervisor_client import ExecutorRpcError, FarmClient, RetryableError

IDLE_POLL_S: Final = 0.2
# How long a worker keeps reporting a frame's end to an executor it cannot reach.
REPORT_RETRY_S: Final = 30.0
REPORT_BACKOFF_S: Final = (0.5, 5.0)  # first and longest pause between reports

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """How the simulated workers behave."""

    count: int
    frame_seconds: float
    fail_rate: float
    seed: int
    host_prefix: str = "worker"


def fails(plan: WorkerPlan, job_id: int, work_name: str, attempt: int) -> bool:
    """Whether this attempt fails: a pure function of the seed and the attempt's identity."""
    if plan.fail_rate <= 0:
        return False
    key = f"{plan.seed}:{job_id}:{work_name}:{attempt}".encode()
    draw = random.Random(hashlib.sha256(key).digest()).random()
    return draw < plan.fail_rate


class Workers:
    """N workers on one farm client; ``run`` until ``stop`` (then drain) or ``abandon``."""

    def __init__(self, farm: FarmClient, plan: WorkerPlan, out: TextIO) -> None:
        self._farm = farm
        self._plan = plan
        self._out = out
        self._stopping = asyncio.Event()
        # Set by a second Ctrl-C: the items in flight are left running on purpose.
        self._abandoned = False
        self.finished = 0
        # host -> the item it has taken and not yet reported ("12:5", or "12" for a job).
        self.in_flight: dict[str, str] = {}
        # Items whose end the executor refused for another reason than their being gone.
        self.unreported: list[str] = []

    def _say(self, line: str) -> None:
        # Job and work names are a submitter's: a CR/LF in one must not start a line.
        print(escaped(line), file=self._out, flush=True)

    def stop(self) -> None:
        """Take no more work; finish the items in flight."""
        self._stopping.set()

    def abandon(self) -> None:
        """Leave the items in flight running: the caller then cancels ``run``.

        What is left is named as stopped by the user, not as unreported because the
        executor did not answer (it may have answered all along).
        """
        self._abandoned = True
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _again(
        self, host: str, what: str, call: Callable[[], Awaitable[_T]], *, until_stopped: bool
    ) -> _T | None:
        """``call``, again with backoff while the executor cannot take it, for REPORT_RETRY_S.

        An executor restarting, or one whose data dir is full (UNAVAILABLE naming the
        file), takes it once it can. With ``until_stopped``, a stop ends the wait (None):
        nothing taken, nothing to finish.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPORT_RETRY_S
        pause, longest = REPORT_BACKOFF_S
        while True:
            try:
                return await call()
            except RetryableError as err:
                if loop.time() + pause > deadline:
                    raise
                self._say(f"{host}: cannot {what} yet ({err.code.name}); again in {pause:g}s")
                if until_stopped:
                    await self._pause(pause)
                    if self._stopping.is_set():
                        return None
                else:
                    await asyncio.sleep(pause)
                pause = min(pause * 2, longest)

    async def _report(self, host: str, taken: Any, change: str) -> Any:
        """ChangeWork for a taken item (a TakeWorkResponse), again while the executor cannot take it."""
        return await self._again(
            host,
            "report",
            lambda: self._farm.change_work(
                job_id=taken.job_id,
                work=[taken.work_name] if taken.work_name else [],
                change=change,
                host=host,
                attempt=taken.attempt,  # an attempt taken from it meanwhile ends nothing
            ),
            until_stopped=False,  # a rendered frame is reported even while stopping
        )

    async def _worker(self, host: str) -> None:
        while not self._stopping.is_set():
            taken = await self._again(
                host, "take work", lambda: self._farm.take_work(host), until_stopped=True
            )
            if taken is None:
                break
            if not taken.taken:
                await self._pause(IDLE_POLL_S)
                continue
            name = f"{taken.job_id}:{taken.work_name}" if taken.work_name else str(taken.job_id)
            self.in_flight[host] = name
            item = f"{taken.job_id}:{taken.work_name}" if taken.work_name else f"job {taken.job_id}"
            attempt = f", attempt {taken.attempt}" if taken.attempt > 1 else ""
            self._say(f"{host}: took {item} ({printable(taken.job_name)}{attempt})")
            await asyncio.sleep(self._plan.frame_seconds)  # the frame renders; not cut short
            change = (
                "fail"
                if fails(self._plan, taken.job_id, taken.work_name, taken.attempt)
                else "complete"
            )
            try:
                done = await self._report(host, taken, change)
            except RetryableError:
                raise
            except ExecutorRpcError as err:  # removed meanwhile, say: report, go on
                del self.in_flight[host]
                self._say(f"{host}: {item} could not {change}: {err.details}")
                if err.code != grpc.StatusCode.NOT_FOUND:  # it may still be running: name it
                    self.unreported.append(name)
                continue
            del self.in_flight[host]
            self.finished += 1
            if done.changed:
                self._say(f"{host}: {item} {'failed' if change == 'fail' else 'complete'}")
            else:  # killed, blocked, or given to another worker meanwhile
                self._say(f"{host}: {item} left alone: {done.message}")

    async def run(self) -> None:
        """Run every worker until stopped; an RPC error that is not about one item ends all.

        The others then finish their frames in flight first; what is left running after
        is named (``in_flight``), with the commands that end it.
        """
        hosts = [f"{self._plan.host_prefix}-{n}" for n in range(1, self._plan.count + 1)]
        tasks = [asyncio.create_task(self._worker(host)) for host in hosts]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            self.stop()  # one failed (or all drained): the others finish their frames
            await asyncio.wait(tasks)
            failed = next((err for task in tasks if (err := task.exception())), None)
            if failed is not None:
                raise failed
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._say_left_running()

    def _say_left_running(self) -> None:
        stopped = sorted(set(self.in_flight.values())) if self._abandoned else []
        unreported = sorted({*self.in_flight.values(), *self.unreported} - set(stopped))
        ending = "end them with: cbexec farm complete {} (or fail, or kill then retry)"
        if stopped:
            names = " ".join(stopped)
            self._say(
                f"left running (stopped before their end was reported): {names}; "
                + ending.format(names)
            )
        if unreported:
            names = " ".join(unreported)
            self._say(
                f"left running (taken, their end never reported): {names}; once the executor "
                "answers, " + ending.format(names)
            )


async def run_until_signalled(workers: Workers, say: Callable[[str], None]) -> None:
    """Run the workers; the first SIGINT/SIGTERM drains them, a second abandons them."""
    loop = asyncio.get_running_loop()
    running = asyncio.create_task(workers.run())
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            say("stopping: finishing the items in flight (again to leave them running)")
            workers.stop()
        else:
            workers.abandon()
            running.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    try:
        await asyncio.wait([running])  # ends when the workers drain, fail, or are abandoned
        if not running.cancelled():
            running.result()  # an RPC error that ended them
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
