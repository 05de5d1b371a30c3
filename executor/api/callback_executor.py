"""CallbackExecutorService: Execute, one callback now; proto in, convert, dispatch, proto out."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Final

from executor import logs
from executor.api import convert
from executor.api.errors import Context, grpc_errors
from executor.api.interceptors import request_bytes
from executor.api.unread_answers import answer_room
from executor.dispatcher import Dispatcher
from executor.errors import PermissionDeniedError, UnavailableError
from executor.model import Invocation, Limits
from executor.policies import PolicySet
from executor.runs.invocation_ids import IdGate, InvocationIds
from executor.storage import StorageHealth, runs_nothing
from executor.triggers.evaluate import JobPlace
from executor.triggers.parser import is_label
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc

# A job context of at least this many work items and instances is converted on a thread
# (~20 ms of the loop's time; a thread's hand-off costs more for a small one).
THREADED_JOB_ITEMS: Final = 10_000


class CallbackExecutorServicer(executor_pb2_grpc.CallbackExecutorServiceServicer):
    """Implements qbcallback.v1.CallbackExecutorService over the dispatcher."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        default_limits: Limits,
        max_limits: Limits,
        policies: PolicySet | None = None,
        storage: StorageHealth | None = None,
        ids: InvocationIds | None = None,
        label_owner: Callable[[int, str], int | None] | None = None,
    ) -> None:
        """``label_owner``: the job holding a label in a pgrp, as the trigger engine has them."""
        self._dispatcher = dispatcher
        self._label_owner = label_owner
        # What a caller's invocation id names already (executor.runs.invocation_ids).
        self._ids = ids
        self._default_limits = default_limits
        self._max_limits = max_limits
        self._policies = policies
        self._storage = storage

    @grpc_errors
    async def Execute(
        self, request: executor_pb2.ExecuteRequest, context: Context
    ) -> executor_pb2.ExecuteResponse:
        """Run one callback in a fresh sandboxed child; its failures are data in the answer."""
        default_limits, max_limits, policy = self._default_limits, self._max_limits, "job"
        cap_name = "the server's cap"
        if self._policies is not None:
            # Before the limits: a request that may not have the policy learns nothing more.
            chosen = self._policies.for_execute(
                request.callback.user or request.context.job.user, request.policy.strip()
            )
            (default_limits, max_limits), policy = chosen.limits, chosen.name
            if max_limits != self._max_limits:
                cap_name = f"policy {policy!r}'s cap (policies.{policy}.max_limits)"
        elif request.policy.strip() not in ("", "job"):
            raise PermissionDeniedError(f"no policy {request.policy.strip()!r} here")
        convert_request = functools.partial(
            convert.invocation_from_request,
            request,
            default_limits=default_limits,
            max_limits=max_limits,
            policy=policy,
            cap_name=cap_name,
        )
        job = request.context.job
        if len(job.agenda) + len(job.subjobs) < THREADED_JOB_ITEMS:
            invocation = convert_request()
        else:
            # Off the loop: each item is checked and made a dict, ~2 us apiece (7 s for
            # the 3.3 million a 16 MiB request holds), and on the loop every call waited.
            invocation = await asyncio.to_thread(convert_request)
        logs.invocation_id.set(invocation.invocation_id)
        invocation = await self._resolve_label(invocation)
        named_id = bool(request.invocation_id)  # one the executor makes names no earlier run
        # The parsed request is a copy of the bytes gRPC holds (a 16 MiB one, 16 MiB more):
        # not kept while the run waits for a slot and runs; the invocation has what it needs.
        del request
        if self._storage is not None and (problem := self._storage.problem):
            # Its effects would happen and its result be lost: a retry would repeat them.
            raise UnavailableError(runs_nothing(problem))
        # The id's checks (in a fleet, its claim) wait until the run is about to start.
        gate = IdGate(self._ids, invocation) if named_id and self._ids is not None else None
        try:
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            result = await self._dispatcher.execute(
                invocation,
                deadline=deadline,
                request_bytes=request_bytes.get(),
                gate=_checked_again(gate, self._storage),
            )
        finally:
            if gate is not None:
                gate.release()
        return convert.response_from_result(result)

    async def _resolve_label(self, invocation: Invocation) -> Invocation:
        """The invocation with its event's label resolved in the job's pgrp, as a trigger's is.

        A label no job registered there holds stays as given (``Event.unresolved``).
        """
        event = invocation.event
        if event is None or self._label_owner is None or not is_label(event.unresolved):
            return invocation
        pgrp = JobPlace.of(invocation.job).pgrp
        # A read of the trigger store (in a fleet, a round trip): off the loop.
        owner = await asyncio.to_thread(self._label_owner, pgrp, event.unresolved)
        if owner is None:
            return invocation
        return dataclasses.replace(invocation, event=event.resolved(owner))


def _checked_again(gate: IdGate | None, storage: StorageHealth | None) -> Callable[[], None] | None:
    """``gate``, after the door's checks of the caller's unread answers and of the storage.

    Calls sent together all pass the first (``unread_answers.py``) at the door, before any
    of their answers exist; and the storage may fail while a run waits for a slot (probe
    136: the outbox's bound, checked at the door only, let every queued run start; the
    dispatcher checks that one again). So both are made again as the callback is about
    to start, when a run refused has run nothing and is not recorded (waiting there
    would hold the slot).
    """
    room = answer_room.get()
    if room is None and storage is None:
        return gate

    def checked() -> None:
        if room is not None:
            room.check()
        if storage is not None and (problem := storage.problem):
            raise UnavailableError(runs_nothing(problem))
        if gate is not None:
            gate()

    return checked
