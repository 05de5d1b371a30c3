"""A SupervisorService stub whose calls give None for an answer that does not parse.

grpc.aio already gives None for such an answer, but only after logging "Exception
deserializing message!" with a traceback at ERROR, once per call: a supervisor built
from another version of the proto, or a proxy that mangles bodies, would fill the log
with gRPC's tracebacks. The callers say what went wrong themselves
(``supervisor.malformed_answer``, the outbox's delivery error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from supervisor_client.qbcallback.v1 import supervisor_pb2_grpc


def supervisor_stub(channel: grpc.aio.Channel) -> supervisor_pb2_grpc.SupervisorServiceStub:
    """The generated stub on ``channel``, its answers parsed leniently."""
    # The generated stub asks of its channel only ``unary_unary``.
    return supervisor_pb2_grpc.SupervisorServiceStub(_LenientChannel(channel))  # type: ignore[arg-type]


class _LenientChannel:
    """Just what the generated stub asks of a channel: its unary methods."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **options: Any,
    ) -> Any:
        parse = response_deserializer
        return self._channel.unary_unary(
            method,
            request_serializer=request_serializer,
            response_deserializer=None if parse is None else _or_none(parse),
            **options,
        )


def _or_none(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parsed(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return None

    return parsed
