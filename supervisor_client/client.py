"""ExecutorClient: the supervisor's asyncio client of the CallbackExecutor service.

One method per RPC, taking and returning the generated messages, plus
``execute_callback`` which builds an ExecuteRequest from plain values. Every failed call
raises an ``ExecutorRpcError`` subclass (errors.py) instead of ``grpc.aio.AioRpcError``.
Deadlines are per call and off by default: a callback may legitimately run for as long
as the executor's wall-time cap allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from supervisor_client.credentials import open_channel
from supervisor_client.errors import from_rpc_error
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, types_pb2

__all__ = ["ExecutorClient", "build_execute_request"]

_Response = TypeVar("_Response")


async def _checked(call: Awaitable[_Response]) -> _Response:
    try:
        return await call
    except grpc.aio.AioRpcError as err:
        raise from_rpc_error(err) from err


def build_execute_request(
    *,
    language: str,
    code: str,
    job: Mapping[str, Any] | types_pb2.Job,
    event: Mapping[str, str] | None = None,
    work_name: str = "",
    subjob_id: int = -1,
    owner: str = "",
    limits: Mapping[str, Any] | None = None,
    invocation_id: str | None = None,
) -> executor_pb2.ExecuteRequest:
    """An ExecuteRequest from plain values (see ``ExecutorClient.execute_callback``).

    Raises ValueError (or TypeError) for a job dict, event or limits the messages cannot
    hold, before anything is sent.
    """
    context = executor_pb2.JobContext(
        job=job if isinstance(job, types_pb2.Job) else job_from_dict(dict(job)),
        work_name=work_name,
    )
    if event is not None:
        context.event.CopyFrom(types_pb2.Event(**event))
    if subjob_id >= 0:
        context.subjob_id = subjob_id
    request = executor_pb2.ExecuteRequest(
        invocation_id=invocation_id or str(uuid.uuid4()),
        callback=types_pb2.Callback(language=language, code=code, user=owner),
        context=context,
    )
    if limits:
        request.limits.CopyFrom(executor_pb2.Limits(**limits))
    return request


class ExecutorClient:
    """Calls a callback executor over one gRPC channel.

    Args:
        channel_or_address: an open ``grpc.aio.Channel`` (the caller keeps owning it and
            closes it), or a "host:port" to open a channel that this client owns and
            closes in ``close()``; the options below apply to such a channel only.
        root_certificates: PEM CA that signed the executor's certificate; turns on TLS.
        private_key, certificate_chain: PEM client key and certificate (mutual TLS).
        token: the executor's ``auth_token``, sent as ``authorization: Bearer <token>``.
    """

    def __init__(
        self,
        channel_or_address: grpc.aio.Channel | str,
        *,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        token: str | None = None,
    ) -> None:
        if isinstance(channel_or_address, str):
            self._channel = open_channel(
                channel_or_address,
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
                token=token,
            )
            self._owns_channel = True
        else:
            self._channel = channel_or_address
            self._owns_channel = False
        self._stub = executor_pb2_grpc.CallbackExecutorStub(self._channel)

    async def close(self) -> None:
        """Close the channel if this client opened it."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> ExecutorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_until_serving(self, timeout: float = 30.0, *, poll_s: float = 0.05) -> None:
        """Wait until the executor's health service answers SERVING (e.g. after a start).

        Raises TimeoutError when it has not within ``timeout`` seconds.
        """
        health = health_pb2_grpc.HealthStub(self._channel)
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                # The health stubs declare Check only on the sync stub's type.
                reply = await health.Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(), timeout=1
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"the executor was not SERVING within {timeout:g}s")

    async def execute(
        self, request: executor_pb2.ExecuteRequest, *, timeout: float | None = None
    ) -> executor_pb2.ExecuteResponse:
        """Run one callback now. A callback that fails is an OK response, not an error.

        Raises InvalidRequestError for a malformed request, RetryableError when the
        executor is busy or unreachable (or ``timeout`` seconds passed), and
        ExecutorRpcError otherwise.
        """
        return await _checked(self._stub.Execute(request, timeout=timeout))

    async def execute_callback(
        self,
        *,
        language: str,
        code: str,
        job: Mapping[str, Any] | types_pb2.Job,
        event: Mapping[str, str] | None = None,
        work_name: str = "",
        subjob_id: int = -1,
        owner: str = "",
        limits: Mapping[str, Any] | None = None,
        invocation_id: str | None = None,
        timeout: float | None = None,
    ) -> executor_pb2.ExecuteResponse:
        """Run ``code`` in ``job``'s context; builds the request from plain values.

        Args:
            language: "python", "perl" or "qube".
            code: the callback's source, or a qube code string.
            job: a Qube job dict (as ``ReferenceSupervisor.job`` returns) or a Job.
            event: the triggering event's ``name``, ``type``, ``context``, ``extra``.
            work_name: the triggering work item, for work events.
            subjob_id: the triggering instance; -1 for none.
            owner: the Qube user the callback acts as; empty means the job's owner.
            limits: Limits fields (``cpu_seconds``, ``wall_seconds``, ``memory_bytes``,
                ``output_bytes``, ``max_processes``, ``disk_bytes``); missing ones take
                server defaults.
            invocation_id: the idempotency key; a fresh uuid4 when None.
            timeout: gRPC deadline in seconds for the whole call.
        """
        request = build_execute_request(
            language=language,
            code=code,
            job=job,
            event=event,
            work_name=work_name,
            subjob_id=subjob_id,
            owner=owner,
            limits=limits,
            invocation_id=invocation_id,
        )
        return await self.execute(request, timeout=timeout)

    # -- event path and administration: thin typed wrappers, one per RPC ---------------

    async def register_job(
        self, request: executor_pb2.RegisterJobRequest, *, timeout: float | None = None
    ) -> executor_pb2.RegisterJobResponse:
        """Register (or re-register) a job and its callbacks with the trigger engine."""
        return await _checked(self._stub.RegisterJob(request, timeout=timeout))

    async def publish_event(
        self, request: executor_pb2.PublishEventRequest, *, timeout: float | None = None
    ) -> executor_pb2.PublishEventResponse:
        """Publish one state transition; the executor runs what it fires."""
        return await _checked(self._stub.PublishEvent(request, timeout=timeout))

    async def dry_run(
        self, request: executor_pb2.PublishEventRequest, *, timeout: float | None = None
    ) -> executor_pb2.DryRunResponse:
        """What an event would fire, without running or latching anything."""
        return await _checked(self._stub.DryRun(request, timeout=timeout))

    async def reload_universal_callbacks(
        self, *, timeout: float | None = None
    ) -> executor_pb2.ReloadUniversalCallbacksResponse:
        """Re-read callbacks.conf; on errors the last good set stays active."""
        request = executor_pb2.ReloadUniversalCallbacksRequest()
        return await _checked(self._stub.ReloadUniversalCallbacks(request, timeout=timeout))

    async def list_runs(
        self, request: executor_pb2.ListRunsRequest | None = None, *, timeout: float | None = None
    ) -> executor_pb2.ListRunsResponse:
        """Run history, newest first (no filter when ``request`` is None)."""
        request = request or executor_pb2.ListRunsRequest()
        return await _checked(self._stub.ListRuns(request, timeout=timeout))

    async def get_run(
        self, invocation_id: str, *, timeout: float | None = None
    ) -> executor_pb2.Run:
        """One run with its captured output."""
        request = executor_pb2.GetRunRequest(invocation_id=invocation_id)
        return await _checked(self._stub.GetRun(request, timeout=timeout))

    async def get_metrics(self, *, timeout: float | None = None) -> executor_pb2.Metrics:
        """Counters and latency histograms of the executor process."""
        request = executor_pb2.GetMetricsRequest()
        return await _checked(self._stub.GetMetrics(request, timeout=timeout))
