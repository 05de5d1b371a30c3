"""A gRPC servicer context for calling servicer methods directly (no server involved)."""

from __future__ import annotations

from typing import Any, NoReturn, cast

import grpc


class Aborted(Exception):
    """What ``FakeContext.abort`` raises: the status and details a call was refused with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class FakeContext:
    """The servicer context's abort and trailers, recorded."""

    def __init__(self) -> None:
        self.trailers: tuple[tuple[str, str], ...] = ()

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailers = metadata


def as_context(fake: FakeContext) -> grpc.aio.ServicerContext[Any, Any]:
    return cast("grpc.aio.ServicerContext[Any, Any]", fake)  # only abort and trailers are used
