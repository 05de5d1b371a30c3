"""What the dashboard reads: the executor's own gRPC API, called on the event loop from the HTTP thread.

The HTTP side port runs in threads of its own; the executor's state lives on the event
loop (SQLite connections included, which no other thread may use). So the pages read
it the way ``cbexec`` does, as a client of the API (``ExecutorClient`` over the
executor's internal channel, which carries the token), with each call handed to the
loop (``asyncio.run_coroutine_threadsafe``) and waited for in the HTTP thread, under a
deadline. The loop spends on a page what it spends on a ``cbexec runs`` (a run's page:
a ``cbexec runs show``, the whole record, ~0.25 s for 2 x 16 MiB of output); rendering
and sending happen in the HTTP thread.

A request that read a large run (or gave up waiting for one) has the heap trimmed once
its answer is sent (``request_done``), as a gRPC call with a large answer does
(``heap_return.py``): the page is made and sent after the GetRun has ended, so the trim
that call armed came too early, and loads of a big run's page left ~1.1 GB held
(probe 111).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple, TypeVar

import grpc

from executor.bounds import MAX_ID
from executor.heap_return import LARGE_CALL_BYTES, HeapTrimmer
from executor.runs.metrics import Metrics
from supervisor_client import ExecutorClient, ExecutorRpcError

T = TypeVar("T")

# A page waits at most this long for the loop; beyond it the page says the executor is busy.
DEFAULT_TIMEOUT_S: Final = 5.0
# /healthz waits this long for a fresh answer, then says the last one known (``health_now``).
HEALTHZ_WAIT_S: Final = 0.5


def parse_id(text: str) -> int:
    """A query's id (job, before) as the executor takes it: ASCII digits, 0 to ``MAX_ID``.

    ValueError saying what is wrong otherwise, checked here because the request message
    cannot even be built with a uint64 above 2**64 - 1 (protobuf's own ValueError).
    """
    if not (text.isascii() and text.isdigit()):  # str.isdigit alone takes "²", int() not
        raise ValueError(f"{text!r} is not a job id")
    # Counted before int(): Python refuses to convert more than 4300 digits at all.
    if len(text.lstrip("0")) > len(str(MAX_ID)) or int(text) > MAX_ID:
        raise ValueError(f"{text} is out of range (0 to {MAX_ID})")
    return int(text)


class SourceUnavailable(Exception):
    """The executor did not answer in time, refused, or is stopping (a 503 page)."""


class RunNotFound(Exception):
    """No record of the run: the executor's words say why (unknown or pruned, or in progress)."""


class SourceRefused(Exception):
    """The executor answered that the request itself is wrong (INVALID_ARGUMENT: a 400 page).

    Its text is the executor's, e.g. a run id prefix of several runs: "give more of the id".
    """


class HealthNow(NamedTuple):
    """What /healthz says: the health service's status, and why it is not SERVING ("" each)."""

    status: str
    storage_problem: str
    slots_problem: str


class ExecutorSource:
    """The dashboard's reads, each one call of the executor's API on its event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: ExecutorClient,
        metrics: Metrics,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        trimmer: HeapTrimmer | None = None,
    ) -> None:
        self._loop = loop
        self._trimmer = trimmer
        # Whether the current HTTP thread's request read a large run (``request_done``).
        self._large = threading.local()
        self._client = client
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._loop_thread = threading.get_ident()  # made on the loop's thread
        # /healthz's ask in flight, and the last answer and when it came.
        self._health_lock = threading.Lock()
        self._asking: concurrent.futures.Future[HealthNow] | None = None
        self._known: tuple[HealthNow, float] | None = None

    def _submit(self, call: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("the dashboard's source waits for the loop: never call it there")

        async def run() -> T:
            return await call()

        try:
            return asyncio.run_coroutine_threadsafe(run(), self._loop)
        except RuntimeError as err:  # the loop is closed: the executor is stopping
            raise SourceUnavailable("the executor is stopping") from err

    def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        return self._result(self._submit(call), self._timeout_s)

    def _result(self, future: concurrent.futures.Future[T], timeout_s: float) -> T:
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError as err:
            future.cancel()
            # Not "the executor is down": a page asking more than it can read in time
            # (a job of huge triggers) lands here too, while gRPC and /healthz answer.
            raise SourceUnavailable(
                f"the executor did not answer within {self._timeout_s:g} s: it is busy, or"
                " this page asked for more than it reads in that time (/healthz says whether"
                " it is serving; cbexec answers without this deadline)"
            ) from err
        except concurrent.futures.CancelledError as err:
            raise SourceUnavailable("the executor is stopping") from err
        except ExecutorRpcError as err:
            if err.code == grpc.StatusCode.NOT_FOUND:
                raise
            if err.code == grpc.StatusCode.INVALID_ARGUMENT:  # an answer, not an absence
                raise SourceRefused(err.details) from err
            raise SourceUnavailable(str(err)) from err

    def list_runs(
        self,
        *,
        job_id: int,
        outcome: str,
        language: str,
        since: float,
        limit: int,
        page_token: str = "",
    ) -> Any:
        """ListRuns with the page's filters (and the page token of an older page)."""
        return self._call(
            lambda: self._client.list_runs(
                job_id=job_id,
                outcome=outcome,
                language=language,
                since=since,
                limit=limit,
                page_token=page_token,
            )
        )

    def get_run(self, invocation_id: str) -> Any:
        """One run with its result; RunNotFound when it has no record (why, in its text)."""
        try:
            run = self._call(lambda: self._client.get_run(invocation_id))
        except ExecutorRpcError as err:  # NOT_FOUND: _call lets only that one through
            raise RunNotFound(err.details) from err
        except SourceUnavailable:
            self._large.seen = True  # it may have been made, large, after all
            raise
        if run.ByteSize() >= LARGE_CALL_BYTES:
            self._large.seen = True
        return run

    def request_done(self) -> None:
        """The HTTP thread's request has been answered: trim if it read a large run."""
        if not getattr(self._large, "seen", False):
            return
        self._large.seen = False
        if self._trimmer is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the executor stopped
                self._loop.call_soon_threadsafe(self._trimmer.after_call, LARGE_CALL_BYTES)

    def list_jobs(self, *, job_id: int, limit: int, before: int) -> Any:
        """ListRegisteredJobs: one job, or a page of them."""
        return self._call(
            lambda: self._client.list_registered_jobs(
                job_id=job_id, limit=limit, before_job_id=before
            )
        )

    def explain(
        self, job_id: int, journal_limit: int = 5, *, limit: int = 0, max_atoms: int = 0
    ) -> Any | None:
        """ExplainCallbacks for a job (its first ``limit`` callbacks, ``max_atoms`` atoms of each).

        None when the engine does not know the job (any more).
        """
        try:
            return self._call(
                lambda: self._client.explain_callbacks(
                    job_id, journal_limit=journal_limit, limit=limit, max_atoms=max_atoms
                )
            )
        except ExecutorRpcError:  # NOT_FOUND: _call lets only that one through
            return None

    def universal(self) -> Any:
        """GetUniversalCallbacks."""
        return self._call(self._client.get_universal_callbacks)

    def metrics(self) -> Any:
        """GetMetrics: counters and the readings of the executor's parts, now."""
        return self._call(self._client.get_metrics)

    def health_now(self) -> HealthNow:
        """/healthz's status and problems: asked anew, or the last known if the loop is held.

        A load balancer's probe gives up after a second or two, and the loop may be held
        that long by a statement waiting on the store (its lock timeout): so the answer
        is the last one known after ``HEALTHZ_WAIT_S``, as long as that is younger than
        the source's timeout (the ask goes on and refreshes it). Older, or none yet, the
        ask is waited for up to that timeout: a loop that answers nothing for so long is
        SourceUnavailable, as for any page.
        """
        with self._health_lock:
            asking = self._asking
            if asking is None or asking.done():
                asking = self._asking = self._submit(self._ask_health)
                asking.add_done_callback(self._remember_health)
        started = time.monotonic()
        concurrent.futures.wait([asking], HEALTHZ_WAIT_S)
        known = self._known
        if not asking.done() and known is not None and started - known[1] < self._timeout_s:
            return known[0]
        return self._result(asking, self._timeout_s - (time.monotonic() - started))

    async def _ask_health(self) -> HealthNow:
        # One call: its status and problems are read in one step of the loop, where a
        # Check and then a GetMetrics straddled a change (200 SERVING beside a
        # storage_problem, probe 175).
        metrics = await self._client.get_metrics()
        return HealthNow(metrics.health_status, metrics.storage_problem, metrics.slots_problem)

    def _remember_health(self, asked: concurrent.futures.Future[HealthNow]) -> None:
        if not asked.cancelled() and asked.exception() is None:
            self._known = (asked.result(), time.monotonic())

    def refresh_metrics(self) -> None:
        """Take the readings for a scrape of /metrics (on the loop; the registry is then read here)."""

        async def refresh() -> None:
            self._metrics.refresh()

        self._call(refresh)
