"""A call whose headers pass 16 KiB is refused as soon as the executor takes it.

gRPC bounds a call's headers itself (16 KiB, advertised as HTTP/2's
``SETTINGS_MAX_HEADER_LIST_SIZE``), but only once the client has acknowledged the
server's SETTINGS: before that it holds the client to HTTP/2's default, 16 MiB a call.
A client that never acknowledges them sent calls of 1 MB headers (split in CONTINUATION
frames) that gRPC took whole and held, waiting for a request that never came, until the
settings timeout closed the connection: four such connections took the executor from
230 MB to 1.37 GB, before any token was seen (probe 149; ``grpc.absolute_max_metadata_size``
and ``grpc.max_metadata_size`` change nothing before the acknowledgement, measured on
grpcio 1.85). So the first generic handler measures each call's headers as it is taken
and, past the bound, answers RESOURCE_EXHAUSTED at once, without waiting for its request:
the call ends and gRPC lets go of its headers, and the refusal is counted as every
RESOURCE_EXHAUSTED of the executor's is (``Metrics.note_rejected``). What arrives before
the executor takes the calls is still held meanwhile (``README``: *Connections*).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import grpc

from executor.heap_return import LARGE_CALL_BYTES, HeapTrimmer
from executor.runs.metrics import Metrics

if TYPE_CHECKING:  # the stubs make it generic; the runtime class is not
    MethodHandler = grpc.RpcMethodHandler[Any, Any]

#: gRPC's bound on a call's headers together (its default hard limit), in HPACK's measure.
MAX_HEADER_BYTES: Final = 16 * 1024
# HPACK counts each entry as its name and value plus 32 bytes (RFC 7541 4.1).
_ENTRY_OVERHEAD: Final = 32


def header_bytes(details: grpc.HandlerCallDetails) -> int:
    """The call's path and metadata as HPACK measures a header list (the rest is a few bytes)."""
    size = len(":path") + len(details.method) + _ENTRY_OVERHEAD
    for key, value in details.invocation_metadata or ():
        size += len(key) + len(value) + _ENTRY_OVERHEAD
    return size


class HeaderBound(grpc.GenericRpcHandler):
    """Registered first: no handler for a call within the bound (the next one's), else a refusal."""

    def __init__(self, trimmer: HeapTrimmer | None = None, metrics: Metrics | None = None) -> None:
        self._trimmer = trimmer or HeapTrimmer()
        self._metrics = metrics

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler | None:
        size = header_bytes(handler_call_details)
        if size <= MAX_HEADER_BYTES:
            return None
        trimmer = self._trimmer
        metrics = self._metrics
        refusal = (
            f"the call's headers are {size} bytes together, more than {MAX_HEADER_BYTES} "
            "(gRPC's bound on metadata)"
        )

        async def refuse(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            del requests  # never read: the request may never come
            # Given back as a large request's: refused headers come in floods, not one by one.
            trimmer.after_call(max(size, LARGE_CALL_BYTES))
            if metrics is not None:
                metrics.note_rejected()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)

        # Request streaming, whatever the method: gRPC reads a unary call's request before
        # its handler runs, and a client that sends none would hold the call open.
        return grpc.stream_unary_rpc_method_handler(refuse)
