"""A real SupervisorService on loopback for tests that count what the executor delivers.

``CountingSupervisor`` is the reference supervisor's service, counting every reported
result by invocation id (applied, or acknowledged as a duplicate) and every action
request by ``(invocation_id, action_seq)`` (the store applies each pair once; its
history shows what was applied), and recording what each JobInfo asked of the agenda;
``HintIgnoringSupervisor`` answers every JobInfo with the whole agenda,
``NameDroppingSupervisor`` a named one without its first name,
``BrieflyUnavailableSupervisor`` UNAVAILABLE to the next calls it is told of; ``SupervisorEndpoint``
serves it on one loopback port that can be stopped and started again (in TLS, requiring a
token, as a site's remote one may).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import grpc

from executor import server
from supervisor_client import ExecutorClient, ReferenceSupervisor, SupervisorServicer
from supervisor_client.qbcallback.v1 import supervisor_pb2, supervisor_pb2_grpc
from supervisor_client.reference.security import BearerTokenCheck, add_supervisor_port
from tests.conftest import stack_settings


class CountingSupervisor(SupervisorServicer):
    """The reference Supervisor service, counting reported results by invocation id.

    Both ways in count: ReportResult, and each entry of a ReportResults batch.
    """

    def __init__(self, store: ReferenceSupervisor, delay_s: float = 0.0) -> None:
        super().__init__(store)
        self.applied: Counter[str] = Counter()
        # By run: (invocation_id, ended_at). A later run of an id (a caller's resend) is
        # applied too, in place of the earlier one; each run's report only once.
        self.applied_runs: Counter[tuple[str, float]] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.batches: list[int] = []
        self.delay_s = delay_s
        # Every action request, in arrival order: (invocation_id, action_seq).
        self.action_requests: list[tuple[str, int]] = []
        # Every JobInfo: what of the agenda it asked for (scope name, work names) and
        # how many work items the answer held.
        self.job_info_asked: list[tuple[str, list[str]]] = []
        self.job_info_items: list[int] = []

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        scope = supervisor_pb2.AgendaScope.Name(request.agenda)
        self.job_info_asked.append((scope, list(request.work_names)))
        response = await super().JobInfo(request, context)
        self.job_info_items.append(sum(len(job.agenda) for job in response.jobs))
        return response

    async def JobAction(
        self, request: supervisor_pb2.JobActionRequest, context: Any
    ) -> supervisor_pb2.JobActionResponse:
        self.action_requests.append((request.invocation_id, request.action_seq))
        return await super().JobAction(request, context)

    async def WorkAction(
        self, request: supervisor_pb2.WorkActionRequest, context: Any
    ) -> supervisor_pb2.WorkActionResponse:
        self.action_requests.append((request.invocation_id, request.action_seq))
        return await super().WorkAction(request, context)

    async def SubjobAction(
        self, request: supervisor_pb2.SubjobActionRequest, context: Any
    ) -> supervisor_pb2.SubjobActionResponse:
        self.action_requests.append((request.invocation_id, request.action_seq))
        return await super().SubjobAction(request, context)

    async def ReportResult(
        self, request: supervisor_pb2.ReportResultRequest, context: Any
    ) -> supervisor_pb2.ReportResultResponse:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        response = await super().ReportResult(request, context)
        self._count(request, response)
        return response

    async def ReportResults(
        self, request: supervisor_pb2.ReportResultsRequest, context: Any
    ) -> supervisor_pb2.ReportResultsResponse:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        response = await super().ReportResults(request, context)
        for entry, answer in zip(request.results, response.results, strict=True):
            self._count(entry, answer)
        self.batches.append(len(request.results))
        return response

    def _count(
        self,
        request: supervisor_pb2.ReportResultRequest,
        answer: supervisor_pb2.ReportResultResponse,
    ) -> None:
        counter = self.duplicates if answer.duplicate else self.applied
        counter[request.result.invocation_id] += 1
        if not answer.duplicate:
            self.applied_runs[(request.result.invocation_id, request.ended_at)] += 1


class SingleResultSupervisor(CountingSupervisor):
    """A supervisor written before ReportResults: it answers UNIMPLEMENTED to batches."""

    ReportResults = supervisor_pb2_grpc.SupervisorServiceServicer.ReportResults  # type: ignore[assignment]


class BatchOnlySupervisor(CountingSupervisor):
    """A supervisor that implements ReportResults only: it answers UNIMPLEMENTED to ReportResult."""

    ReportResult = supervisor_pb2_grpc.SupervisorServiceServicer.ReportResult  # type: ignore[assignment]


class HintIgnoringSupervisor(CountingSupervisor):
    """A supervisor that ignores JobInfo's ``agenda`` hint: it answers every work item."""

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        scope = supervisor_pb2.AgendaScope.Name(request.agenda)
        self.job_info_asked.append((scope, list(request.work_names)))
        every_item = supervisor_pb2.JobInfoRequest()
        every_item.CopyFrom(request)
        every_item.ClearField("agenda")
        every_item.ClearField("work_names")
        response = await SupervisorServicer.JobInfo(self, every_item, context)
        self.job_info_items.append(sum(len(job.agenda) for job in response.jobs))
        return response


class NameDroppingSupervisor(CountingSupervisor):
    """A supervisor that bends JobInfo's hint: a named read's answer lacks the first name.

    What a site's supervisor with its own idea of the agenda may do; the executor then
    reads every item, so the callback sees what a full read shows.
    """

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        response = await super().JobInfo(request, context)
        if request.agenda == supervisor_pb2.AGENDA_SCOPE_NAMED and request.work_names:
            for job in response.jobs:
                kept = [w for w in job.agenda if w.name != request.work_names[0]]
                del job.agenda[:]
                job.agenda.extend(kept)
        return response


class BrieflyUnavailableSupervisor(CountingSupervisor):
    """A supervisor restarting: the next ``unavailable[rpc]`` calls of an RPC find it away.

    Each such call is answered UNAVAILABLE before the store sees it (nothing is applied
    or recorded), as when the supervisor's process is between a stop and a start.
    """

    def __init__(self, store: ReferenceSupervisor, delay_s: float = 0.0) -> None:
        super().__init__(store, delay_s)
        self.unavailable: Counter[str] = Counter()

    async def _away(self, rpc: str, context: Any) -> None:
        if self.unavailable[rpc] > 0:
            self.unavailable[rpc] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the supervisor is restarting")

    async def JobInfo(
        self, request: supervisor_pb2.JobInfoRequest, context: Any
    ) -> supervisor_pb2.JobInfoResponse:
        await self._away("JobInfo", context)
        return await super().JobInfo(request, context)

    async def JobAction(
        self, request: supervisor_pb2.JobActionRequest, context: Any
    ) -> supervisor_pb2.JobActionResponse:
        await self._away("JobAction", context)
        return await super().JobAction(request, context)

    async def WorkAction(
        self, request: supervisor_pb2.WorkActionRequest, context: Any
    ) -> supervisor_pb2.WorkActionResponse:
        await self._away("WorkAction", context)
        return await super().WorkAction(request, context)

    async def SubjobAction(
        self, request: supervisor_pb2.SubjobActionRequest, context: Any
    ) -> supervisor_pb2.SubjobActionResponse:
        await self._away("SubjobAction", context)
        return await super().SubjobAction(request, context)

    async def ReportResult(
        self, request: supervisor_pb2.ReportResultRequest, context: Any
    ) -> supervisor_pb2.ReportResultResponse:
        await self._away("ReportResult", context)
        return await super().ReportResult(request, context)

    async def ReportResults(
        self, request: supervisor_pb2.ReportResultsRequest, context: Any
    ) -> supervisor_pb2.ReportResultsResponse:
        await self._away("ReportResults", context)
        return await super().ReportResults(request, context)


class SupervisorEndpoint:
    """A Supervisor service on one loopback port that can be stopped and started again."""

    def __init__(
        self,
        db: Path,
        servicer: type[CountingSupervisor] = CountingSupervisor,
        *,
        max_receive_bytes: int | None = None,
        event_outbox: bool = False,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        client_ca: bytes | None = None,
        token: str | None = None,
    ) -> None:
        """With a chain and key it serves TLS (a client CA: mutual TLS); a token it requires."""
        self.store = ReferenceSupervisor(str(db), event_outbox=event_outbox)
        self.servicer = servicer(self.store)
        self.port = 0
        self.max_receive_bytes = max_receive_bytes
        self._tls = {
            "certificate_chain": certificate_chain,
            "private_key": private_key,
            "client_ca": client_ca,
        }
        self._token_check = BearerTokenCheck(token) if token is not None else None
        self._server: grpc.aio.Server | None = None

    @property
    def refused_tokens(self) -> int:
        """Calls refused for their token (0 without a token)."""
        return self._token_check.refused if self._token_check is not None else 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        options = []
        if self.max_receive_bytes is not None:
            options.append(("grpc.max_receive_message_length", self.max_receive_bytes))
        interceptors = [self._token_check] if self._token_check is not None else []
        self._server = grpc.aio.server(options=options, interceptors=interceptors)
        supervisor_pb2_grpc.add_SupervisorServiceServicer_to_server(self.servicer, self._server)
        bound = add_supervisor_port(self._server, f"127.0.0.1:{self.port}", **self._tls)
        assert bound and (self.port in (0, bound)), "could not rebind the supervisor's port"
        self.port = bound
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    def stored_ids(self) -> list[str]:
        return [r["invocation_id"] for r in self.store.results()]

    def assert_exactly_once(self, expected: set[str]) -> None:
        stored = self.stored_ids()
        assert len(stored) == len(set(stored))
        assert set(stored) == expected
        assert set(self.servicer.applied) == expected
        assert set(self.servicer.applied.values()) == {1}, "a result was applied twice"


class GarbledAnswers:
    """A 'supervisor' on loopback answering every call OK with bytes that are not its answer.

    What one built from an incompatible proto, or a broken proxy, sends. ``methods``
    counts the calls by method name.
    """

    BODY: Final = b"\xff\xff\xff"

    def __init__(self) -> None:
        self.methods: Counter[str] = Counter()
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        garbled = self

        async def answer(request: bytes, context: Any) -> bytes:
            return garbled.BODY

        class Handler(grpc.GenericRpcHandler):
            def service(
                self, details: grpc.HandlerCallDetails
            ) -> grpc.RpcMethodHandler[bytes, bytes]:
                garbled.methods[str(details.method).rsplit("/", 1)[-1]] += 1
                return grpc.unary_unary_rpc_method_handler(
                    answer, request_deserializer=bytes, response_serializer=bytes
                )

        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((Handler(),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None


@asynccontextmanager
async def executor_beside(
    tmp_path: Path, servicer: type[CountingSupervisor], **settings: object
) -> AsyncIterator[ExecutorClient]:
    """A client of an executor whose supervisor is ``servicer`` on a loopback port; all stopped after."""
    endpoint = SupervisorEndpoint(tmp_path / "supervisor.db", servicer)
    await endpoint.start()
    running = await server.start(
        stack_settings(tmp_path / "data", supervisor=endpoint.address, **settings)
    )
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            yield client
    finally:
        await running.stop()
        await endpoint.stop()
        endpoint.store.close()
