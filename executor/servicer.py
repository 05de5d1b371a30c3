"""The CallbackExecutor servicer: proto in, convert, dispatch, proto out; no process logic."""

from __future__ import annotations

from typing import Any

import grpc

from executor import convert, logs
from executor.config import Settings
from executor.dispatcher import Dispatcher
from executor.runs_rpc import RunsRpcMixin, RunsService
from executor.status import grpc_errors
from executor.triggers.engine import TriggerEngine
from executor.triggers.rpc import EventPathRpcs
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc


class CallbackExecutorServicer(
    EventPathRpcs, RunsRpcMixin, executor_pb2_grpc.CallbackExecutorServicer
):
    """Implements qbcallback.v1.CallbackExecutor; each feature's RPCs come from its mixin."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        settings: Settings,
        engine: TriggerEngine,
        runs: RunsService | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._settings = settings
        self._engine = engine
        self.runs = runs

    @grpc_errors
    async def Execute(  # noqa: N802 - gRPC method name
        self, request: executor_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> executor_pb2.ExecuteResponse:
        invocation = convert.invocation_from_request(
            request,
            default_limits=self._settings.default_limits,
            max_limits=self._settings.max_limits,
        )
        logs.invocation_id.set(invocation.invocation_id)
        result = await self._dispatcher.execute(invocation)
        return convert.response_from_result(result)
