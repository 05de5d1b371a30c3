"""ExecutorClient: the asyncio client of the executor's services (one channel, every RPC).

One method per RPC of CallbackExecutorService, TriggerService and RunService, returning
the generated messages; each takes its request message or, more simply, plain values
(``execute_callback``, ``register_job(job_dict)``, ``publish_event(name=..., ...)``,
``list_runs(job_id=...)``). Every failed call raises an ``ExecutorRpcError`` subclass
(errors.py) instead of ``grpc.aio.AioRpcError``. Deadlines are per call and off by
default: a callback may legitimately run for as long as the executor's wall-time cap
allows. ``as_plain`` and ``outcome_name`` turn answers into plain values for printing.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from supervisor_client.arguments import (
    check_mapping,
    check_message,
    check_request_alone,
    check_sequence,
    check_str,
    message_from,
    request_from,
)
from supervisor_client.credentials import KEEPALIVE_OPTIONS, RECONNECT_OPTIONS, open_channel
from supervisor_client.errors import ClientClosedError, ExecutorRpcError, checked_call
from supervisor_client.first_calls import CONNECT_WAIT_S, spread_first_calls
from supervisor_client.jobdict import job_message
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc, types_pb2
from supervisor_client.refused_streams import sent_again_while_refused
from supervisor_client.targets import resolve_target

__all__ = [
    "OUTCOMES",
    "ExecutorClient",
    "as_plain",
    "build_execute_request",
    "check_timeout",
    "executor_channel",
    "outcome_name",
    "outcome_value",
]

_Response = TypeVar("_Response")

# The largest answer an executor sends: an Execute result holds at most two streams of
# the output_bytes cap (64 MiB each), plus bounded actions and failure text. gRPC's
# default receive limit (4 MiB) would refuse a large but legitimate result.
MAX_ANSWER_BYTES: Final = 160 << 20


#: The longest deadline a call may ask for: gRPC turns one much longer (1e10 s) into a
#: deadline already passed. None is no deadline.
MAX_TIMEOUT_S: Final = 1e9


def check_timeout(timeout: float | None) -> float | None:
    """A call's deadline in seconds, or None for none; ValueError for one gRPC would misread.

    gRPC answers NaN, infinity, 0, a negative or a huge number with an immediate
    DEADLINE_EXCEEDED, as if the executor had been too slow.
    """
    return None if timeout is None else _timeout_s(timeout, ", or None for no deadline")


def _timeout_s(timeout: float, or_none: str = "") -> float:
    """``check_timeout`` for a timeout that must be given (``wait_until_serving``'s)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout: expected seconds as a number, got {type(timeout).__name__}")
    # False for NaN and infinity; compared as it is, an int too large for a float is too.
    if not 0 < timeout <= MAX_TIMEOUT_S:
        raise ValueError(
            f"timeout: expected seconds, more than 0 and at most {MAX_TIMEOUT_S:g}{or_none};"
            f" got {timeout!r}"
        )
    return float(timeout)


# gRPC's own words for a client made outside its loop or used from another name neither
# ("There is no current event loop", "Event loop is closed").
_ONE_LOOP: Final = (
    "make the client inside the running event loop that uses it (in an async function),"
    " one client per event loop: its channel belongs to the loop running when it is made"
)


def _loop_if_running() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _running_loop() -> asyncio.AbstractEventLoop:
    """The running event loop, which a channel opened now belongs to; RuntimeError if none."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(f"no event loop is running: {_ONE_LOOP}") from None


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
    context = request_from(executor_pb2.JobContext, job=job_message(job), work_name=work_name)
    if event is not None:
        event = check_mapping("event", event)
        context.event.CopyFrom(message_from(types_pb2.Event, event, where="event."))
    if not (isinstance(subjob_id, int) and subjob_id < 0):  # a negative int: no instance
        context.MergeFrom(request_from(executor_pb2.JobContext, subjob_id=subjob_id))
    check_str("owner", owner)  # the wire calls it user
    request = request_from(
        executor_pb2.ExecuteRequest,
        invocation_id=invocation_id or str(uuid.uuid4()),
        callback=request_from(types_pb2.Callback, language=language, code=code),
        context=context,
    )
    request.callback.user = owner
    if limits is not None and check_mapping("limits", limits):
        request.limits.CopyFrom(message_from(executor_pb2.Limits, limits, where="limits."))
    return request


def executor_channel(
    channel_or_address: grpc.aio.Channel | str | Sequence[str],
    *,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    token: str | None = None,
    fleet: bool = True,
) -> tuple[grpc.aio.Channel, bool]:
    """The channel a client uses, and whether the client opened it (and so closes it).

    A channel given is used as it is (the TLS and token options with it are a
    ValueError); for addresses (one, a list, or a DNS name, see ``targets.py``), one is
    opened with the TLS and token options, taking answers as large as an executor sends
    and pinging it (``KEEPALIVE_OPTIONS``); a fleet's channel balances round-robin over
    healthy executors, and a list's calls carry its first entry as their authority.
    ``fleet=False`` refuses several (ValueError): for what one executor owns.
    """
    opened = _open(
        channel_or_address,
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
        token=token,
        fleet=fleet,
    )
    return opened.channel, opened.owned


def _open(
    channel_or_address: grpc.aio.Channel | str | Sequence[str],
    *,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    token: str | None,
    fleet: bool,
) -> _Opened:
    """``executor_channel``'s work, and how to open a channel to one of a list's addresses."""
    if isinstance(channel_or_address, grpc.aio.Channel):
        given = {
            "root_certificates": root_certificates,
            "private_key": private_key,
            "certificate_chain": certificate_chain,
            "token": token,
        }
        if named := [name for name, value in given.items() if value is not None]:
            # They would be silently ignored: the channel's own credentials are used.
            raise ValueError(
                f"{', '.join(named)}: not with a channel given; open the channel with its "
                "credentials and token (credentials.open_channel), or give an address"
            )
        return _Opened(channel_or_address, owned=False)
    where = resolve_target(channel_or_address)
    if where.is_fleet and not fleet:
        raise ValueError(f"expected one executor's address, got a fleet: {where.target}")
    _running_loop()
    options: list[tuple[str, Any]] = [
        *RECONNECT_OPTIONS,
        *KEEPALIVE_OPTIONS,
        ("grpc.max_receive_message_length", MAX_ANSWER_BYTES),
    ]
    if where.authority is not None:
        # Not the whole list (gRPC's default), which past ~8 KiB exceeds an executor's
        # metadata limit; with TLS, also the name each executor's certificate must hold.
        options.append(("grpc.default_authority", where.authority))

    def open_one(target: str, options: Sequence[tuple[str, Any]] = options) -> grpc.aio.Channel:
        return open_channel(
            target,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            token=token,
            options=options,
        )

    if where.service_config is None:
        return _Opened(open_one(where.target), owned=True)
    fleet_options = [*options, ("grpc.service_config", where.service_config)]
    return _Opened(open_one(where.target, fleet_options), True, open_one, where.listed)


@dataclass(frozen=True, slots=True)
class _Opened:
    """A client's channel and whether it opened it; for a list, its addresses too.

    ``open_one`` opens a channel to one of them as the client's is opened (the same
    credentials, options and authority, no balancing).
    """

    channel: grpc.aio.Channel
    owned: bool
    open_one: Callable[[str], grpc.aio.Channel] | None = None
    listed: tuple[str, ...] = ()


class ChannelClient:
    """What ExecutorClient and FarmClient share: one channel, its calls, and ``close()``.

    The channel is the one given (the caller keeps owning it) or one opened on an
    address, which ``close()`` closes (``executor_channel``).
    """

    def __init__(
        self,
        channel_or_address: grpc.aio.Channel | str | Sequence[str],
        *,
        root_certificates: bytes | None,
        private_key: bytes | None,
        certificate_chain: bytes | None,
        token: str | None,
        fleet: bool,
    ) -> None:
        opened = _open(
            channel_or_address,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            token=token,
            fleet=fleet,
        )
        self._channel, self._owns_channel = opened.channel, opened.owned
        # The loop the channel belongs to: for a channel given outside one, its first call's.
        self._loop = _running_loop() if opened.owned else _loop_if_running()
        # Before a list's first call: its round robin holds every executor SERVING.
        self._spread: Callable[[], Awaitable[None]] | None = None
        if opened.open_one is not None and len(opened.listed) > 1:
            self._spread = functools.partial(
                spread_first_calls, self._channel, opened.listed, opened.open_one, CONNECT_WAIT_S
            )
        self._spreading: asyncio.Task[None] | None = None
        self._closed = False

    async def close(self) -> None:
        """Close the channel if this client opened it; the client takes no more calls."""
        self._closed = True
        if self._spreading is not None and not self._spreading.done():
            self._spreading.cancel()  # this client's own task
            await asyncio.wait({self._spreading})
        if self._owns_channel:
            await self._channel.close()

    async def _first_calls_spread(self, wait_s: float) -> None:
        """Wait (at most ``wait_s``) for ``spread_first_calls``, once per client (first_calls.py)."""
        if self._spread is None or self._closed:
            return
        if self._spreading is None:
            self._spreading = asyncio.ensure_future(self._spread())
        await asyncio.wait({self._spreading}, timeout=wait_s)
        if self._spreading.done():
            self._spread = None

    async def _call(
        self,
        method: Callable[..., Awaitable[_Response]],
        request: Any,
        timeout: float | None,
        *,
        spread: bool = True,
    ) -> _Response:
        """One call, its failure as the typed error (errors.py); ClientClosedError after close.

        A call the server refused unseen (past ``max_streams``) is sent again within the
        deadline (refused_streams.py).

        A list's first calls wait for ``_first_calls_spread`` first, for half their
        deadline at most: the call itself keeps the other half.
        """
        deadline = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop and not self._closed:  # after close(): ClientClosedError
            raise RuntimeError(f"the client was made in another event loop: {_ONE_LOOP}")
        if spread and self._spread is not None:
            started = loop.time()
            await self._first_calls_spread(CONNECT_WAIT_S if deadline is None else deadline / 2)
            if deadline is not None:  # the rest, but some even if the loop was held
                deadline = max(deadline - (loop.time() - started), 0.001)
        return await sent_again_while_refused(
            lambda left: checked_call(self._closed, lambda: method(request, timeout=left)),
            deadline,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class ExecutorClient(ChannelClient):
    """Calls a callback executor over one gRPC channel.

    Args:
        channel_or_address: an open ``grpc.aio.Channel`` (the caller keeps owning it and
            closes it), or where to open a channel that this client owns and closes in
            ``close()``: a "host:port"; a fleet as a list of "IP:PORT" (comma-separated,
            or a sequence of strings) or as "dns:///name:port" (every record of the
            name), balanced round-robin over the executors that are healthy (see
            ``supervisor_client.targets``); a list's first call waits until every
            executor of it SERVING is in the round robin, at most
            ``first_calls.CONNECT_WAIT_S`` and half the call's deadline
            (``supervisor_client.first_calls``). The
            options below apply to such a channel only: with a channel given they are a
            ValueError.
        root_certificates: PEM CA that signed the executor's certificate; turns on TLS.
        private_key, certificate_chain: PEM client key and certificate (mutual TLS).
        token: the executor's ``auth_token``, sent as ``authorization: Bearer <token>``
            (without surrounding whitespace; printable ASCII, else ValueError).

    Make it inside the event loop that uses it: its channel belongs to the loop running
    when it is made. After ``close()`` every method raises ClientClosedError.
    """

    def __init__(
        self,
        channel_or_address: grpc.aio.Channel | str | Sequence[str],
        *,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(
            channel_or_address,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            token=token,
            fleet=True,
        )
        # Every stub now: gRPC's C core can corrupt the heap when a method is first
        # registered on a channel already closed.
        self._executor = executor_pb2_grpc.CallbackExecutorServiceStub(self._channel)
        self._triggers = executor_pb2_grpc.TriggerServiceStub(self._channel)
        self._runs = executor_pb2_grpc.RunServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def wait_until_serving(self, timeout: float = 30.0, *, poll_s: float = 0.05) -> None:
        """Wait until the executor's health service answers SERVING (e.g. after a start).

        For a list of executors, until one answers SERVING, then until every executor of
        the list that answers SERVING then is in the channel's round robin (at most
        ``first_calls.CONNECT_WAIT_S`` more, within ``timeout``), so that the calls made
        next are spread over them all. Raises TimeoutError when none was SERVING within
        ``timeout`` seconds (as ``check_timeout`` takes them, None excepted).
        """
        wait_s = _timeout_s(timeout)  # NaN or -1 raised TimeoutError, the executor SERVING
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while loop.time() < deadline:
            try:
                if await self._health_status("", 1, spread=False) == "SERVING":
                    # Only now: the executors may have been starting until a moment ago.
                    await self._first_calls_spread(max(deadline - loop.time(), 0))
                    return
            except ClientClosedError:
                raise
            except ExecutorRpcError:
                pass  # not up yet
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"the executor was not SERVING within {wait_s:g}s")

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The standard health service's answer for ``service`` ("" = the whole executor).

        "SERVING", or "NOT_SERVING" while the storage cannot record results, while every
        slot is held by a killed process that has not ended, and from the start of a stop.
        Raises RetryableError when the executor cannot be reached.
        """
        return await self._health_status(service, timeout)

    async def _health_status(
        self, service: str, timeout: float | None, *, spread: bool = True
    ) -> str:
        request = request_from(health_pb2.HealthCheckRequest, service=service)
        try:
            # The health stubs declare Check only on the sync stub's type.
            check = self._health.Check  # type: ignore[attr-defined]
            reply = await self._call(check, request, timeout, spread=spread)
        except ExecutorRpcError as err:
            if err.code == grpc.StatusCode.NOT_FOUND and not err.details:
                # The health service says nothing more itself.
                raise ExecutorRpcError(
                    err.code, f"the executor has no health status for service {service!r}"
                ) from err
            raise
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def execute(
        self, request: executor_pb2.ExecuteRequest, *, timeout: float | None = None
    ) -> executor_pb2.ExecuteResponse:
        """Run one callback now. A callback that fails is an OK response, not an error.

        Raises InvalidRequestError for a malformed request, RetryableError when the
        executor is busy, unreachable or stopping before the callback started (or
        ``timeout`` seconds passed): send the same request again, its invocation_id
        unchanged; and ExecutorRpcError otherwise.
        """
        request = check_message("request", request, executor_pb2.ExecuteRequest)
        return await self._call(self._executor.Execute, request, timeout)

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
        policy: str = "",
        timeout: float | None = None,
    ) -> executor_pb2.ExecuteResponse:
        """Run ``code`` in ``job``'s context; builds the request from plain values.

        Args:
            language: "python", "perl", "qube" or "mail".
            code: the callback's source, or qube code strings ("" for mail).
            job: a Qube job dict (as ``ReferenceSupervisor.job`` returns) or a Job.
            event: the triggering event's ``name``, ``type``, ``context``, ``extra``.
            work_name: the triggering work item, for work events.
            subjob_id: the triggering instance; -1 for none.
            owner: the Qube user the callback acts as; empty means the job's owner.
            limits: Limits fields (``cpu_seconds``, ``wall_seconds``, ``memory_bytes``,
                ``output_bytes``, ``max_processes``, ``disk_bytes``); missing ones take
                server defaults.
            invocation_id: the idempotency key; a fresh uuid4 when None.
            policy: the executor's sandbox policy to ask for; empty for the owner's
                default (PERMISSION_DENIED when the owner may not have it).
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
        request.MergeFrom(request_from(executor_pb2.ExecuteRequest, policy=policy))
        return await self.execute(request, timeout=timeout)

    # -- TriggerService -----------------------------------------------------------------

    async def register_job(
        self,
        job: Mapping[str, Any] | types_pb2.Job | executor_pb2.RegisterJobRequest,
        *,
        strict: bool = False,
        published_events: Sequence[str] = (),
        timeout: float | None = None,
    ) -> executor_pb2.RegisterJobResponse:
        """Register (or re-register) a job and its callbacks with the trigger engine.

        Args:
            job: a Qube job dict (with ``callbacks``; a callback's ``mode`` may be
                "level"), a Job, or the whole request (then without the options below:
                ValueError).
            strict: refuse the job (InvalidRequestError) when a check fails on one of its
                own callbacks; otherwise the response's ``warnings`` list them.
            published_events: the events the scheduler publishes ("complete",
                "running-job"), so that a trigger waiting for another is reported.
            timeout: gRPC deadline in seconds.
        """
        if isinstance(job, executor_pb2.RegisterJobRequest):
            check_request_alone(job, {"strict": strict, "published_events": published_events})
            request = job
        else:
            request = request_from(
                executor_pb2.RegisterJobRequest,
                job=job_message(job),
                strict=strict,
                published_events=published_events,
            )
        return await self._call(self._triggers.RegisterJob, request, timeout)

    async def publish_event(
        self,
        request: executor_pb2.PublishEventRequest | None = None,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> executor_pb2.PublishEventResponse:
        """Publish one state transition; the executor runs what it fires.

        Give the request, or its fields (not both: ValueError): ``name``, ``type``,
        ``job_id``, ``work_name``, ``subjob_id``, ``host``, ``event_id``, ``wait``.
        """
        check_request_alone(request, fields)
        if request is None:
            request = request_from(executor_pb2.PublishEventRequest, **fields)
        request = check_message("request", request, executor_pb2.PublishEventRequest)
        return await self._call(self._triggers.PublishEvent, request, timeout)

    async def publish_events(
        self,
        events: Sequence[executor_pb2.PublishEventRequest | Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> executor_pb2.PublishEventsResponse:
        """Publish several transitions at once, applied in order in one transaction.

        Each is a request or its fields (as ``publish_event`` takes them; ``wait`` is not
        allowed). All are applied or none; sending the batch again is safe when each
        event has an ``event_id``.
        """
        given = check_sequence("events", events, "event dicts or PublishEventRequests")
        for index, event in enumerate(given):
            if not isinstance(event, executor_pb2.PublishEventRequest | Mapping):
                raise TypeError(
                    f"events[{index}]: expected a dict or a PublishEventRequest, "
                    f"got {type(event).__name__}"
                )
        request = executor_pb2.PublishEventsRequest(
            events=[
                e
                if isinstance(e, executor_pb2.PublishEventRequest)
                else message_from(executor_pb2.PublishEventRequest, e, where=f"events[{index}].")
                for index, e in enumerate(given)
            ]
        )
        return await self._call(self._triggers.PublishEvents, request, timeout)

    async def dry_run(
        self,
        request: executor_pb2.DryRunRequest | None = None,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> executor_pb2.DryRunResponse:
        """What an event would fire, without running or latching anything.

        Give the request, or its fields (not both: ValueError): ``name``, ``type``,
        ``job_id``, ``work_name``, ``subjob_id``, ``host``. Each list of the answer
        holds the first 1000 items at most (and 4 MiB of them); its ``*_left_out``
        field counts the others.
        """
        check_request_alone(request, fields)
        if request is None:
            request = request_from(executor_pb2.DryRunRequest, **fields)
        request = check_message("request", request, executor_pb2.DryRunRequest)
        return await self._call(self._triggers.DryRun, request, timeout)

    async def reload_universal_callbacks(
        self, *, timeout: float | None = None
    ) -> executor_pb2.ReloadUniversalCallbacksResponse:
        """Re-read callbacks.conf; on errors the last good set stays active."""
        request = executor_pb2.ReloadUniversalCallbacksRequest()
        return await self._call(self._triggers.ReloadUniversalCallbacks, request, timeout)

    async def list_registered_jobs(
        self,
        *,
        job_id: int = 0,
        limit: int = 0,
        before_job_id: int = 0,
        timeout: float | None = None,
    ) -> executor_pb2.ListRegisteredJobsResponse:
        """Jobs registered with the trigger engine, newest id first, with their callbacks.

        ``job_id`` asks for one job; ``limit`` and ``before_job_id`` page through the rest
        (the next page starts below the last id of this one).
        """
        request = request_from(
            executor_pb2.ListRegisteredJobsRequest,
            job_id=job_id,
            limit=limit,
            before_job_id=before_job_id,
        )
        return await self._call(self._triggers.ListRegisteredJobs, request, timeout)

    async def get_universal_callbacks(
        self, *, timeout: float | None = None
    ) -> executor_pb2.GetUniversalCallbacksResponse:
        """The active universal callbacks per directory, and the last reload's errors."""
        request = executor_pb2.GetUniversalCallbacksRequest()
        return await self._call(self._triggers.GetUniversalCallbacks, request, timeout)

    async def explain_callbacks(
        self,
        job_id: int,
        callback_id: int = 0,
        *,
        work_name: str = "",
        journal_limit: int = 0,
        limit: int = 0,
        after_callback_id: int = 0,
        registration: int = 0,
        max_atoms: int = 0,
        timeout: float | None = None,
    ) -> executor_pb2.ExplainCallbacksResponse:
        """Why a job's callbacks (or one of them) did or did not fire, and what they wait for.

        ``work_name`` explains one work item of a ``{work}`` callback in full;
        ``journal_limit`` bounds the journal entries per callback (0: the executor's
        bound). One answer holds at most ``limit`` callbacks (0: the most, 1000), those
        with ids above ``after_callback_id``; its ``next_after_callback_id`` is where the
        next page starts (0: none follows). Ask for the next pages with the first
        answer's ``registration``: a job registered again since is then ABORTED
        (ExecutorRpcError), and its pages are asked for again from the first. Of each
        callback the first ``max_atoms`` atoms (0: all; ``atoms_left_out`` counts the
        rest). NOT_FOUND for a job or callback not registered.
        """
        request = request_from(
            executor_pb2.ExplainCallbacksRequest,
            job_id=job_id,
            callback_id=callback_id,
            work_name=work_name,
            journal_limit=journal_limit,
            limit=limit,
            after_callback_id=after_callback_id,
            registration=registration,
            max_atoms=max_atoms,
        )
        return await self._call(self._triggers.ExplainCallbacks, request, timeout)

    # -- RunService -------------------------------------------------------------------------

    async def list_runs(
        self,
        request: executor_pb2.ListRunsRequest | None = None,
        *,
        job_id: int = 0,
        outcome: str = "",
        since: float = 0.0,
        limit: int = 0,
        language: str = "",
        shadow_only: bool = False,
        page_token: str = "",
        timeout: float | None = None,
    ) -> executor_pb2.ListRunsResponse:
        """Run history, newest first, a page at a time.

        Give the request, or filters (not both: ValueError): ``job_id``, ``outcome`` (a
        name such as "FAILED"), ``since`` (Unix seconds), ``language``, ``limit``,
        ``shadow_only`` (only shadow runs, each with its result: the actions it would
        have taken); none means every run (the server's default limit applies).
        ``page_token``: the answer's ``next_page_token`` for the page after it, with the
        same filters (empty: the first page); the last page's ``next_page_token`` is empty.
        """
        filters = {
            "job_id": job_id,
            "since": since,
            "limit": limit,
            "language": language,
            "shadow_only": shadow_only,
            "page_token": page_token,
        }
        check_request_alone(request, {**filters, "outcome": outcome})
        if request is None:
            request = request_from(executor_pb2.ListRunsRequest, **filters)
            if check_str("outcome", outcome):
                request.outcome = outcome_value(outcome)
        request = check_message("request", request, executor_pb2.ListRunsRequest)
        return await self._call(self._runs.ListRuns, request, timeout)

    async def get_run(
        self, invocation_id: str, *, timeout: float | None = None
    ) -> executor_pb2.Run:
        """One run with its captured output (NOT_FOUND when unknown or pruned)."""
        request = request_from(executor_pb2.GetRunRequest, invocation_id=invocation_id)
        response = await self._call(self._runs.GetRun, request, timeout)
        return response.run

    async def get_metrics(self, *, timeout: float | None = None) -> executor_pb2.GetMetricsResponse:
        """Counters and latency histograms of the executor process."""
        request = executor_pb2.GetMetricsRequest()
        return await self._call(self._runs.GetMetrics, request, timeout)

    async def list_dead_letters(
        self, *, limit: int = 0, timeout: float | None = None
    ) -> executor_pb2.ListDeadLettersResponse:
        """Results the outbox set aside instead of delivering them, newest first."""
        request = request_from(executor_pb2.ListDeadLettersRequest, limit=limit)
        return await self._call(self._runs.ListDeadLetters, request, timeout)

    async def retry_dead_letters(
        self, invocation_ids: Sequence[str] = (), *, timeout: float | None = None
    ) -> executor_pb2.RetryDeadLettersResponse:
        """Queue dead letters for delivery again: the ones named (at most 1,000), or every one if none is."""
        request = request_from(
            executor_pb2.RetryDeadLettersRequest,
            invocation_ids=invocation_ids,
            all=not invocation_ids,
        )
        return await self._call(self._runs.RetryDeadLetters, request, timeout)


def outcome_name(value: int) -> str:
    """The short name of an outcome, as the README and the CLI write it: SUCCEEDED."""
    return executor_pb2.Outcome.Name(executor_pb2.Outcome.ValueType(value)).removeprefix("OUTCOME_")


def outcome_value(name: str) -> executor_pb2.Outcome.ValueType:
    """The Outcome for "SUCCEEDED" (or "OUTCOME_SUCCEEDED"); ValueError for an unknown name."""
    key = name.strip().upper()
    key = key if key.startswith("OUTCOME_") else f"OUTCOME_{key}"
    if key not in executor_pb2.Outcome.keys() or key == "OUTCOME_UNSPECIFIED":  # noqa: SIM118
        raise ValueError(f"unknown outcome {name!r}; expected one of {', '.join(OUTCOMES)}")
    return executor_pb2.Outcome.Value(key)


# The outcome names, in the contract's order.
OUTCOMES: tuple[str, ...] = tuple(
    name.removeprefix("OUTCOME_") for name in executor_pb2.Outcome.keys()[1:]
)


def as_plain(message: Message) -> dict[str, Any]:
    """A message as plain JSON-ready values, for printing.

    Field names as in the .proto, every field present (an unset message field as None),
    64-bit integers as numbers (not the strings of protobuf's JSON mapping) and outcomes
    by their short names ("SUCCEEDED").
    """
    plain: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            plain[field.name] = {key: _plain_value(value_field, v) for key, v in value.items()}
        elif field.is_repeated:
            plain[field.name] = [_plain_value(field, item) for item in value]
        elif field.has_presence and not message.HasField(field.name):
            plain[field.name] = None
        else:
            plain[field.name] = _plain_value(field, value)
    return plain


def _plain_value(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Struct":
            return json_format.MessageToDict(value)
        return as_plain(value)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        if known is None:
            return value  # a number this client's contract does not know
        return (
            known.name.removeprefix("OUTCOME_") if field.enum_type.name == "Outcome" else known.name
        )
    return value
