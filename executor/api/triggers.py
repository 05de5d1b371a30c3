"""TriggerService: jobs' callbacks, events, dry runs, explanations, the universal callbacks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

from google.protobuf.message import Message

from executor.api import convert, convert_status, explanations
from executor.api.answer_turns import AnswerTurns
from executor.api.errors import Context, grpc_errors
from executor.api.struct_values import job_dict
from executor.api.unread_answers import answer_room
from executor.errors import EventIdReusedError, InvalidRequestError
from executor.triggers.decide import Fired
from executor.triggers.engine import TriggerEngine
from executor.triggers.snapshots import MOST_READERS
from executor.triggers.store import TriggerStore
from executor.triggers.why import MAX_CALLBACKS_EXPLAINED
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc

DEFAULT_JOBS_LIMIT: Final = 50
MAX_JOBS_LIMIT: Final = 1000
# Events in one PublishEvents call (one transaction): a batch a scheduler has piled up.
MAX_BATCH_EVENTS: Final = 1000
# A DryRun answer's lists: at most this many items each, and this many bytes of them
# (a trigger's text may be 64 KiB): three lists within the 16 MiB a client takes.
MAX_DRY_RUN_ITEMS: Final = 1000
MAX_DRY_RUN_LIST_BYTES: Final = 4 << 20
# A wait answer's results keep this much stdout and stderr in all (UTF-8 bytes), in firing
# order: with 2 x 16 MiB per run, an event firing six made 201 MB, past what any client
# takes (ExecutorClient 160 MiB), resends alike (probe 167). A result whose output does
# not fit in what is left is given without it (``output_left_out``): GetRun has it.
MAX_WAIT_ANSWER_OUTPUT_BYTES: Final = 32 << 20

_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)


def _utf8_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _wait_answer_firings(fired: Iterable[Fired]) -> list[executor_pb2.Firing]:
    """The messages of a wait answer's firings, their output within the answer's bound."""
    messages = []
    room = MAX_WAIT_ANSWER_OUTPUT_BYTES
    for each in fired:
        result = each.result
        size = 0 if result is None else _utf8_bytes(result.stdout) + _utf8_bytes(result.stderr)
        if result is None or size <= room:
            room -= size
            messages.append(convert.firing_message(each))
            continue
        bare = dataclasses.replace(each, result=dataclasses.replace(result, stdout="", stderr=""))
        message = convert.firing_message(bare)
        message.output_left_out = True
        messages.append(message)
    return messages


def _first(found: Iterable[_T], to_message: Callable[[_T], _M]) -> tuple[list[_M], int]:
    """The messages of ``found``'s first items within the DryRun bounds, and how many did not fit."""
    kept: list[_M] = []
    size = left_out = 0
    for item in found:
        if left_out or len(kept) == MAX_DRY_RUN_ITEMS:
            left_out += 1
            continue
        message = to_message(item)
        size += message.ByteSize()
        if size > MAX_DRY_RUN_LIST_BYTES:
            left_out += 1
            continue
        kept.append(message)
    return kept, left_out


class TriggerServicer(executor_pb2_grpc.TriggerServiceServicer):
    """Implements qbcallback.v1.TriggerService over the trigger engine."""

    def __init__(self, engine: TriggerEngine, turns: AnswerTurns | None = None) -> None:
        """``turns``: shared with GetRun's (``answer_turns.py``): a repeat's wait reads in one."""
        self._engine = engine
        self._turns = turns or AnswerTurns()
        # Explanations and listings read on worker threads, as many at once as the store
        # has snapshot connections; more wait here, not on a thread each (the threads
        # also apply the events).
        self._reading = asyncio.Semaphore(MOST_READERS)

    @grpc_errors
    async def RegisterJob(
        self, request: executor_pb2.RegisterJobRequest, context: Context
    ) -> executor_pb2.RegisterJobResponse:
        """Store a job with its callbacks and the universal ones; answer them as registered.

        The answer holds the checks they failed (refused instead when ``strict``).
        """

        def checked() -> dict[str, Any]:
            convert.check_job(request.job, "job")
            convert.check_agenda(request.job, "job")
            return job_dict(request.job, "job")

        # Off the loop: a job of 100,000 items takes a quarter second to check and convert.
        job = await asyncio.to_thread(checked)
        published = convert.published_events(request.published_events)
        registration = await self._engine.register(
            job, strict=request.strict, published=published or None
        )

        def answer() -> executor_pb2.RegisterJobResponse:
            return executor_pb2.RegisterJobResponse(
                callbacks=[convert.registered_message(cb) for cb in registration.callbacks],
                warnings=[
                    explanations.check_message(request.job.id, check)
                    for check in registration.checks
                ],
                fired=[convert.firing_message(f) for f in registration.fired],
            )

        # One message per callback: for a big job, a while of its own.
        return await asyncio.to_thread(answer)

    @grpc_errors
    async def PublishEvent(
        self, request: executor_pb2.PublishEventRequest, context: Context
    ) -> executor_pb2.PublishEventResponse:
        """Apply one event durably and run what it fires (inline when ``wait``).

        A repeat with ``wait`` reads its results from the history in a turn
        (``answer_turns.py``), once its connection has room for the answer (CallGuard
        checked that room at the door: ``answer_room``); nothing awaits after it.
        """
        event = convert.event_from_request(request)
        room = answer_room.get()
        fired, duplicate = await self._engine.publish(
            event, wait=request.wait, in_turn=lambda read: self._turns.take(room, read)
        )
        messages = (
            _wait_answer_firings(fired)
            if request.wait
            else [convert.firing_message(f) for f in fired]
        )
        return executor_pb2.PublishEventResponse(fired=messages, duplicate=duplicate)

    @grpc_errors
    async def PublishEvents(
        self, request: executor_pb2.PublishEventsRequest, context: Context
    ) -> executor_pb2.PublishEventsResponse:
        """Apply several events in order, in one transaction; what they fire runs after."""
        if len(request.events) > MAX_BATCH_EVENTS:
            raise InvalidRequestError(
                f"events: at most {MAX_BATCH_EVENTS} per call, got {len(request.events)}"
            )
        for index, one in enumerate(request.events):
            if one.wait:
                raise InvalidRequestError(
                    f"events[{index}].wait: a batched event cannot wait; use PublishEvent"
                )
        events = []
        for index, one in enumerate(request.events):
            try:
                events.append(convert.event_from_request(one))
            except InvalidRequestError as err:
                raise InvalidRequestError(f"events[{index}]: {err}") from err
        try:
            applied = await self._engine.publish_many(events)
        except EventIdReusedError as err:  # all or none: named as its other refusals are
            raise EventIdReusedError(f"events[{err.index}]: {err}", err.index) from err
        return executor_pb2.PublishEventsResponse(
            results=[
                executor_pb2.PublishEventResponse(
                    fired=[convert.firing_message(f) for f in fired], duplicate=duplicate
                )
                for fired, duplicate in applied
            ]
        )

    @grpc_errors
    async def DryRun(
        self, request: executor_pb2.DryRunRequest, context: Context
    ) -> executor_pb2.DryRunResponse:
        """What an event would fire or latch, and why; nothing runs and no state changes.

        Each list of the answer is bounded (``MAX_DRY_RUN_ITEMS``, ``MAX_DRY_RUN_LIST_BYTES``),
        the items left out counted.
        """
        event = convert.event_from_request(request)

        def answer() -> executor_pb2.DryRunResponse:
            decision = self._engine.match(event, dry=True)
            would_fire, fire_left_out = _first(decision.fired, convert.firing_message)
            would_latch, latch_left_out = _first(
                decision.latched,
                lambda item: convert.registered_message(item.callback, item.latches),
            )
            entries, entries_left_out = _first(decision.entries, explanations.journal_message)
            return executor_pb2.DryRunResponse(
                would_fire=would_fire,
                would_latch=would_latch,
                explanations=entries,
                would_fire_left_out=fire_left_out,
                would_latch_left_out=latch_left_out,
                explanations_left_out=entries_left_out,
            )

        # An event that thousands of callbacks wait for is decided for a second or more:
        # on a thread, on a snapshot connection, as explanations are read.
        async with self._reading:
            return await asyncio.to_thread(answer)

    @grpc_errors
    async def ReloadUniversalCallbacks(
        self, request: executor_pb2.ReloadUniversalCallbacksRequest, context: Context
    ) -> executor_pb2.ReloadUniversalCallbacksResponse:
        """Re-read callbacks.conf (in a fleet, every replica does); on errors the last good set stays."""
        errors = await self._engine.reload_universal_off_loop(fleet_wide=True)
        # A failed reload answers only its errors: the warnings are the kept set's, and
        # their file:line would point into the new, broken file.
        return executor_pb2.ReloadUniversalCallbacksResponse(
            reloaded=not errors,
            errors=errors,
            active=len(self._engine.universal),
            warnings=[] if errors else self._engine.universal_warnings,
        )

    @grpc_errors
    async def ListRegisteredJobs(
        self, request: executor_pb2.ListRegisteredJobsRequest, context: Context
    ) -> executor_pb2.ListRegisteredJobsResponse:
        """Registered jobs, newest id first, with their callbacks' latches and counts."""
        store = self._engine.store
        job_id = convert.check_id("job_id", request.job_id)
        before = convert.check_id("before_job_id", request.before_job_id)
        limit = min(request.limit or DEFAULT_JOBS_LIMIT, MAX_JOBS_LIMIT)

        def answer() -> executor_pb2.ListRegisteredJobsResponse:
            with store.snapshot() as db:
                if job_id:
                    head = TriggerStore.head_in(db, job_id)
                    jobs = [head] if head is not None else []
                else:
                    jobs = TriggerStore.heads_in(db, limit=limit, before=before)
                return executor_pb2.ListRegisteredJobsResponse(
                    jobs=[
                        convert_status.registered_job_message(
                            job,
                            [
                                self._engine.as_loaded(cb)
                                for cb in TriggerStore.callbacks_in(db, job.job_id)
                            ],
                        )
                        for job in jobs
                    ],
                    total=TriggerStore.count_jobs_in(db),
                )

        # Up to 1000 jobs with all their callbacks: read on a snapshot, on a thread, so
        # neither the loop nor the events wait (nor it for a big job's registration).
        async with self._reading:
            return await asyncio.to_thread(answer)

    @grpc_errors
    async def GetUniversalCallbacks(
        self, request: executor_pb2.GetUniversalCallbacksRequest, context: Context
    ) -> executor_pb2.GetUniversalCallbacksResponse:
        """The active universal callbacks per directory, and the last reload."""
        engine = self._engine
        return convert_status.universal_message(
            engine.universal_dirs, engine.universal, engine.universal_reload
        )

    @grpc_errors
    async def ExplainCallbacks(
        self, request: executor_pb2.ExplainCallbacksRequest, context: Context
    ) -> executor_pb2.ExplainCallbacksResponse:
        """Why a job's callbacks did or did not fire (NOT_FOUND when it is not registered).

        ABORTED when the request names a registration of the job other than its current one.
        """
        convert.check_id("job_id", request.job_id, required=True)
        convert.check_text("work_name", request.work_name)  # a key no stored name holds
        limit = min(request.limit or MAX_CALLBACKS_EXPLAINED, MAX_CALLBACKS_EXPLAINED)

        def answer() -> executor_pb2.ExplainCallbacksResponse:
            explained = self._engine.explain(
                request.job_id,
                request.callback_id,
                work_name=request.work_name,
                journal_limit=request.journal_limit,
                after_callback_id=request.after_callback_id,
                limit=limit,
                registration=request.registration,
                max_atoms=request.max_atoms,
            )
            return explanations.explanation_message(explained)

        # A page of a big job reads (and converts) for a while: on a thread, on a snapshot
        # connection, so events and every other call go on meanwhile.
        async with self._reading:
            return await asyncio.to_thread(answer)
