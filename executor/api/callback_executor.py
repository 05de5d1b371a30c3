"""CallbackExecutorService: Execute, one callback now; proto in, convert, dispatch, proto out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Iterator
from typing import Final

from executor import logs
from executor.api import convert
from executor.api.errors import Context, grpc_errors
from executor.api.interceptors import request_bytes
from executor.dispatcher import Dispatcher, in_progress
from executor.errors import AlreadyExistsError, PermissionDeniedError, UnavailableError
from executor.model import Invocation, Limits
from executor.policies import PolicySet
from executor.runs.history import RunIdentity
from executor.runs.invocation_ids import IdUse, InvocationIds
from executor.storage import StorageHealth
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
    ) -> None:
        self._dispatcher = dispatcher
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
        named_id = bool(request.invocation_id)  # one the executor makes names no earlier run
        # The parsed request is a copy of the bytes gRPC holds (a 16 MiB one, 16 MiB more):
        # not kept while the run waits for a slot and runs; the invocation has what it needs.
        del request
        if self._storage is not None and (problem := self._storage.problem):
            # Its effects would happen and its result be lost: a retry would repeat them.
            raise UnavailableError(
                f"the executor cannot record results now, so it runs nothing: {problem}"
            )
        with self._run_id_claimed(invocation) if named_id else contextlib.nullcontext():
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining
            result = await self._dispatcher.execute(
                invocation, deadline=deadline, request_bytes=request_bytes.get()
            )
        return convert.response_from_result(result)

    @contextlib.contextmanager
    def _run_id_claimed(self, invocation: Invocation) -> Iterator[None]:
        """The caller's id checked (and in a fleet, claimed) for the block's run.

        On the loop: memory and one indexed read of a local file, or one round trip to
        a fleet's store (as the result's commit is): a thread's hand-offs cost more. The
        claim is given back in the statement that commits the run's result
        (``Recorder.give_back_claims``), else once the block has ended: the run refused,
        or its result not committed.
        """
        if self._ids is None:
            yield
            return
        use = self._ids.claim(invocation.invocation_id)
        try:
            self._refuse_another_runs_id(invocation, use)
            if use.running:  # at another replica; one here the dispatcher refuses alike
                raise UnavailableError(in_progress(invocation.invocation_id))
            yield
        finally:
            if use.claimed:
                self._ids.release(invocation.invocation_id)

    @staticmethod
    def _refuse_another_runs_id(invocation: Invocation, use: IdUse) -> None:
        """AlreadyExistsError when the id is a fired run's, or recorded for another run.

        A repeat of an Execute's run of the same callback (``RunIdentity``: its code is no
        part of it) is a retry: it runs again and replaces the record (proto
        ExecuteRequest.invocation_id). A fired run's record stays, as does another
        identity's: the supervisor keeps the first result under the id, and so does the
        history.
        """
        invocation_id = invocation.invocation_id
        firing, recorded = use.firing, use.recorded
        if firing:
            # Never a retry: the engine made the id. Run first, this call would take the
            # fired callback's place at the supervisor, its actions counted as repeats.
            raise AlreadyExistsError(
                f"invocation_id {invocation_id!r} is a fired callback's, which has"
                " not run to its end yet; choose a new invocation_id"
            )
        if recorded is not None and recorded.fired:
            # Never a retry either, once it has ended: the engine made the id, and a
            # "repeat" would replace the fired run's result with its own code's.
            raise AlreadyExistsError(
                f"invocation_id {invocation_id!r} is a fired callback's run"
                f" ({recorded.describe()}); an Execute cannot repeat it; choose a new"
                " invocation_id"
            )
        if recorded is not None and recorded != RunIdentity.of(invocation):
            raise AlreadyExistsError(
                f"invocation_id {invocation.invocation_id!r} is already recorded for another "
                f"run ({recorded.describe()}); a repeat must name the same job and callback "
                "(id, language, triggers), else choose a new invocation_id"
            )
