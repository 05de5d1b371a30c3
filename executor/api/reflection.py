"""Server reflection (v1alpha), with a method's full name resolved to its file too.

grpcio-reflection answers ``file_containing_symbol`` with the descriptor pool's
``FindFileContainingSymbol``, and protobuf's default (upb) pool does not index methods:
``qbcallback.v1.CallbackExecutorService.Execute`` was NOT_FOUND while services,
messages, fields and enum values resolved, so ``grpcurl describe SERVICE.METHOD``
failed (grpc/grpc issue 34743, open). The servicer takes the pool to ask as an
argument: this one asks the default pool first, then looks the name up as a method and
answers with its service's file, as the C++ reflection service does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from executor.api.interceptors import CallGuard


class MethodResolvingPool:
    """A descriptor pool as grpcio-reflection asks it, whose symbols include methods."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        """The file that defines ``symbol``; KeyError (the pool's) when none does."""
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            try:
                method = self._pool.FindMethodByName(symbol)
            except KeyError:
                pass
            else:
                return method.containing_service.file
            raise  # the pool's own error, for the symbol as asked

    def __getattr__(self, name: str) -> Any:
        # Whatever else the servicer asks (files by name, extensions) is the pool's.
        return getattr(self._pool, name)


def enable_reflection(service_names: Iterable[str], guarded: CallGuard) -> None:
    """Serve reflection for ``service_names`` through ``guarded``, method names resolved too.

    Registered as the other services are: a method registered on the server itself is
    found before any generic handler, so the header bound (``HeaderBound``) and its
    count never saw a reflection call.
    """
    servicer = reflection.aio.ReflectionServicer(
        service_names, pool=MethodResolvingPool(descriptor_pool.Default())
    )
    guarded.register(reflection_pb2_grpc.add_ServerReflectionServicer_to_server, servicer)
