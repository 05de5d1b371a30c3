"""Admission and dispatch: bounded slots and queue, language gating, one RunResult per run.

Every run takes a slot (its pids cgroup is the slot's), or waits in a bounded queue;
past the queue the request is refused with CapacityError (RESOURCE_EXHAUSTED). Python
and Perl run in a sandboxed child; qube code strings run in the executor's own
interpreter. Draining refuses new runs and cancels running ones, whose sandboxes kill
and reap their children on the way out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Final, Protocol

from executor.errors import CapacityError, InvalidRequestError, UnavailableError
from executor.host_api import HostApi
from executor.model import Failure, Invocation, Language, Outcome, RunResult, Usage
from executor.runtimes import child_runtime
from executor.sandbox.exit_status import classify
from executor.sandbox.process import SandboxRunner
from executor.supervisor_link import SupervisorPort

logger = logging.getLogger(__name__)


# A failure's first line in the run's log line: enough to tell one failure from another
# without reading the history; the traceback stays in the history and the .cb log.
MAX_LOGGED_FAILURE_CHARS: Final = 200


def failure_note(result: RunResult) -> str:
    """`` failure="<first line>"`` for a run that did not succeed, else ""."""
    if result.failure is None or not result.failure.message.strip():
        return ""
    first = result.failure.message.strip().splitlines()[0]
    if len(first) > MAX_LOGGED_FAILURE_CHARS:
        first = first[:MAX_LOGGED_FAILURE_CHARS] + "..."
    return f" failure={json.dumps(first)}"


class QubeRunner(Protocol):
    """Runs a qube-language code string through the host API (executor/qube_language.py)."""

    async def run(self, invocation: Invocation, host: HostApi) -> RunResult: ...


class Dispatcher:
    """Runs invocations within the configured concurrency."""

    def __init__(
        self,
        *,
        runner: SandboxRunner,
        supervisor: SupervisorPort,
        qube: QubeRunner,
        languages: frozenset[Language],
        max_concurrent: int,
        max_queue: int,
        on_result: Callable[[Invocation, RunResult], None] | None = None,
    ) -> None:
        self._runner = runner
        self._supervisor = supervisor
        self._qube = qube
        self._languages = languages
        self._max_queue = max_queue
        self._max_concurrent = max_concurrent
        self._free_slots: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(max_concurrent):
            self._free_slots.put_nowait(slot)
        self._waiting = 0
        self._active: set[asyncio.Task[RunResult]] = set()
        self._draining = False
        self._on_result = on_result

    @property
    def runner(self) -> SandboxRunner:
        return self._runner

    @property
    def active(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return self._waiting

    async def execute(self, invocation: Invocation) -> RunResult:
        """Run one invocation to its RunResult. Raises CapacityError / UnavailableError."""
        if self._draining:
            raise UnavailableError("the executor is shutting down")
        try:
            language = Language(invocation.callback.language)
        except ValueError:
            valid = ", ".join(lang.value for lang in Language)
            raise InvalidRequestError(
                f"callback.language {invocation.callback.language!r} is not supported; "
                f"expected one of {valid}"
            ) from None
        if language not in self._languages:
            # Still a run: recorded and reported like any other (Qube fails silently here).
            result = RunResult(
                invocation.invocation_id,
                Outcome.REJECTED,
                failure=Failure(
                    f"{language} callbacks are disabled by the executor's 'languages' setting "
                    "(Qube's supervisor_language_flags)"
                ),
            )
        else:
            task = asyncio.current_task()
            assert task is not None
            self._active.add(task)
            try:
                result = await self._admitted(invocation, language)
            finally:
                self._active.discard(task)
        logger.info(
            "callback ran: job=%s callback=%s language=%s outcome=%s wall=%.3fs cpu=%.3fs "
            "rss=%dKiB queue=%.3fs actions=%d%s",
            invocation.job_id,
            invocation.callback.name,
            language,
            result.outcome,
            result.usage.wall_seconds,
            result.usage.cpu_seconds,
            result.usage.peak_rss_bytes // 1024,
            result.usage.queue_seconds,
            len(result.actions),
            failure_note(result),
        )
        if self._on_result is not None:
            self._on_result(invocation, result)
        return result

    async def _admitted(self, invocation: Invocation, language: Language) -> RunResult:
        if self._free_slots.empty() and self._waiting >= self._max_queue:
            raise CapacityError(
                f"all {self._max_concurrent} slots are busy and "
                f"{self._waiting} runs are queued; retry later",
                retry_after_s=1.0,
            )
        queued_at = time.monotonic()
        self._waiting += 1
        try:
            slot = await self._free_slots.get()
        finally:
            self._waiting -= 1
        queue_s = time.monotonic() - queued_at
        try:
            host = HostApi(self._supervisor, invocation)
            if language is Language.QUBE:
                result = await self._qube.run(invocation, host)
            else:
                result = await self._run_child(invocation, language, host, slot)
        finally:
            self._free_slots.put_nowait(slot)
        usage = result.usage
        return replace(
            result,
            usage=Usage(usage.wall_seconds, usage.cpu_seconds, usage.peak_rss_bytes, queue_s),
        )

    async def _run_child(
        self, invocation: Invocation, language: Language, host: HostApi, slot: int
    ) -> RunResult:
        child = await self._runner.run(
            runtime=child_runtime(language),
            limits=invocation.limits,
            slot=slot,
            start={
                "type": "start",
                "language": language.value,
                "code": invocation.callback.code,
                "context": invocation.child_context(),
            },
            on_call=host.serve_frame,
        )
        outcome, failure = classify(child, invocation.limits)
        if child.escaped_pids:
            logger.info(
                "callback %s left %d processes running; they were killed",
                invocation.invocation_id,
                len(child.escaped_pids),
            )
        if child.bridge_error:
            logger.warning(
                "callback %s broke the bridge protocol: %s",
                invocation.invocation_id,
                child.bridge_error,
            )
        return RunResult(
            invocation_id=invocation.invocation_id,
            outcome=outcome,
            exit_code=child.exit_code,
            signal=child.signal,
            stdout=child.stdout.text(),
            stderr=child.stderr.text(),
            stdout_truncated=child.stdout.truncated,
            stderr_truncated=child.stderr.truncated,
            failure=failure,
            usage=Usage(child.wall_seconds, child.cpu_seconds, child.peak_rss_bytes),
            actions=tuple(host.actions),
        )

    async def drain(self) -> None:
        """Refuse new runs, cancel running ones, and wait until their children are gone."""
        self._draining = True
        tasks = list(self._active)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._runner.close()  # the children prepared for runs that will not come
