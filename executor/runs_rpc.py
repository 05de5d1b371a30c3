"""ListRuns / GetRun / GetMetrics: the servicer mixin, its backend, and the capacity-refusal counter.

``CallbackExecutorServicer`` inherits ``RunsRpcMixin`` and is given a ``RunsService``;
the mixin only converts between protobuf and the history / metrics types. Refusals at
capacity never reach ``on_result`` (nothing ran), so ``CapacityCounter`` counts them
where they become visible: as RESOURCE_EXHAUSTED statuses leaving the server.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import grpc

from executor import convert
from executor.history import RunRecord
from executor.metrics import Histogram, Metrics
from executor.model import Outcome
from executor.recorder import Recorder
from supervisor_client.qbcallback.v1 import executor_pb2

logger = logging.getLogger(__name__)

DEFAULT_LIST_LIMIT: Final = 50
MAX_LIST_LIMIT: Final = 1000
EXECUTOR_METHODS: Final = "/qbcallback.v1.CallbackExecutor/"

Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:  # the stubs make it generic; the runtime class is not
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
_T = TypeVar("_T")


class Gauges(Protocol):
    """What the dispatcher exposes about its current load."""

    @property
    def active(self) -> int: ...

    @property
    def waiting(self) -> int: ...


def outcome_message(outcome: Outcome) -> executor_pb2.Outcome.ValueType:
    return executor_pb2.Outcome.Value(f"OUTCOME_{outcome.value}")


def run_message(record: RunRecord) -> executor_pb2.Run:
    """The wire form of a history record (with ``result`` when the record has it)."""
    usage = record.usage
    run = executor_pb2.Run(
        invocation_id=record.invocation_id,
        job_id=record.job_id,
        callback_id=record.callback_id,
        triggers=record.triggers,
        language=record.language,
        outcome=outcome_message(record.outcome),
        started_at=record.started_at,
        usage=executor_pb2.Usage(
            wall_seconds=usage.wall_seconds,
            cpu_seconds=usage.cpu_seconds,
            peak_rss_bytes=usage.peak_rss_bytes,
            queue_seconds=usage.queue_seconds,
        ),
        work_name=record.work_name,
    )
    if record.event is not None:
        run.event.CopyFrom(convert.event_message(record.event))
    if record.result is not None:
        run.result.CopyFrom(convert.response_from_result(record.result))
    return run


def histogram_message(histogram: Histogram) -> executor_pb2.Histogram:
    return executor_pb2.Histogram(
        bounds_seconds=histogram.bounds_s,
        counts=histogram.counts,
        total=histogram.total,
        sum_seconds=histogram.sum_s,
    )


class EventCounts(Protocol):
    """The trigger engine's counters."""

    events_published: int
    callbacks_fired: int


class RunsService:
    """The three RPCs over the recorder's history and metrics and the dispatcher's gauges."""

    def __init__(
        self, recorder: Recorder, gauges: Gauges, event_counts: EventCounts | None = None
    ) -> None:
        self._recorder = recorder
        self._gauges = gauges
        self._event_counts = event_counts

    def list_runs(self, request: executor_pb2.ListRunsRequest) -> executor_pb2.ListRunsResponse:
        outcome = None
        if request.outcome:
            name = executor_pb2.Outcome.Name(request.outcome).removeprefix("OUTCOME_")
            outcome = Outcome(name)
        limit = min(request.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        records = self._recorder.history.list_runs(
            job_id=request.job_id or None,
            outcome=outcome,
            since=request.since if request.since > 0 else None,
            limit=limit,
        )
        return executor_pb2.ListRunsResponse(runs=[run_message(r) for r in records])

    def get_run(self, invocation_id: str) -> executor_pb2.Run | None:
        record = self._recorder.history.get(invocation_id)
        return None if record is None else run_message(record)

    def metrics(self) -> executor_pb2.Metrics:
        snapshot = self._recorder.metrics.snapshot(
            active=self._gauges.active,
            queue_depth=self._gauges.waiting,
            outbox_pending=self._recorder.outbox_pending(),
            events_published=self._event_counts.events_published if self._event_counts else 0,
            callbacks_fired=self._event_counts.callbacks_fired if self._event_counts else 0,
        )
        return executor_pb2.Metrics(
            runs_by_outcome=snapshot.runs_by_outcome,
            rejected_at_capacity=snapshot.rejected_at_capacity,
            active_children=snapshot.active_children,
            queue_depth=snapshot.queue_depth,
            run_wall_seconds=histogram_message(snapshot.run_wall),
            queue_seconds=histogram_message(snapshot.queue),
            outbox_pending=snapshot.outbox_pending,
            events_published=snapshot.events_published,
            callbacks_fired=snapshot.callbacks_fired,
        )


class RunsRpcMixin:
    """ListRuns, GetRun and GetMetrics for CallbackExecutorServicer; set ``runs`` to serve them."""

    runs: RunsService | None = None

    async def _backend(self, context: Context) -> RunsService:
        if self.runs is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "run history is not enabled")
        assert self.runs is not None
        return self.runs

    async def ListRuns(
        self, request: executor_pb2.ListRunsRequest, context: Context
    ) -> executor_pb2.ListRunsResponse:
        """Run history, newest first; filters by job, outcome and start time."""
        runs = await self._backend(context)
        if request.outcome and request.outcome not in executor_pb2.Outcome.values():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"outcome: unknown value {request.outcome}"
            )
        return await _storage_call(context, lambda: runs.list_runs(request))

    async def GetRun(
        self, request: executor_pb2.GetRunRequest, context: Context
    ) -> executor_pb2.Run:
        """One run with its result; NOT_FOUND when unknown or pruned."""
        runs = await self._backend(context)
        run = await _storage_call(context, lambda: runs.get_run(request.invocation_id))
        if run is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no run {request.invocation_id!r} in the history (unknown, or pruned)",
            )
        assert run is not None
        return run

    async def GetMetrics(
        self, request: executor_pb2.GetMetricsRequest, context: Context
    ) -> executor_pb2.Metrics:
        """Counters, histograms and gauges of this process."""
        runs = await self._backend(context)
        return await _storage_call(context, runs.metrics)


async def _storage_call(context: Context, call: Callable[[], _T]) -> _T:
    """Run a history/outbox read; a database failure is INTERNAL with a generic message."""
    try:
        return call()
    except sqlite3.Error:
        logger.exception("run history read failed")
        await context.abort(grpc.StatusCode.INTERNAL, "the run history could not be read")
    raise AssertionError("unreachable: context.abort raises")


class CapacityCounter(grpc.aio.ServerInterceptor):
    """Counts CallbackExecutor calls that end RESOURCE_EXHAUSTED (admission refused)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.unary_unary is None
            or not handler_call_details.method.startswith(EXECUTOR_METHODS)
        ):
            return handler
        behavior = handler.unary_unary
        metrics = self._metrics

        async def counted(request: Any, context: Context) -> Any:
            try:
                return await behavior(request, context)  # type: ignore[arg-type]  # aio handlers are async
            finally:
                if context.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    metrics.note_rejected()

        return grpc.unary_unary_rpc_method_handler(
            counted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
