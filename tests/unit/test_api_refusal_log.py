"""Calls refused for their token: one WARNING per address and reason per interval, with a count."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest

from executor.api.interceptors import (
    RefusalLog,
    TokenAuthInterceptor,
    WrongTokenTurns,
    peer_address,
)
from tests.helpers.servicer_context import Aborted, FakeContext

pytestmark = pytest.mark.unit

METHOD = "/qbcallback.v1.RunService/GetMetrics"


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    caplog.clear()
    return lines


def test_one_line_per_address_and_reason_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = SimpleNamespace(t=0.0)
    log = RefusalLog(60.0, clock=lambda: now.t)
    for _ in range(500):
        log.refused("10.0.0.1", METHOD, "no bearer token")
    log.refused("10.0.0.1", METHOD, "wrong bearer token")
    log.refused("10.0.0.2", METHOD, "no bearer token")
    assert warnings(caplog) == [
        f"refused {METHOD} from 10.0.0.1: no bearer token",
        f"refused {METHOD} from 10.0.0.1: wrong bearer token",
        f"refused {METHOD} from 10.0.0.2: no bearer token",
    ]
    now.t = 59.0
    log.refused("10.0.0.1", METHOD, "no bearer token")
    assert warnings(caplog) == []
    now.t = 60.0
    log.refused("10.0.0.1", METHOD, "no bearer token")
    assert warnings(caplog) == [
        f"refused {METHOD} from 10.0.0.1: no bearer token (500 more since the last such line, "
        "not logged)"
    ]


def test_addresses_held_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    now = SimpleNamespace(t=0.0)
    log = RefusalLog(60.0, max_keys=2, clock=lambda: now.t)
    log.refused("10.0.0.1", METHOD, "no bearer token")
    log.refused("10.0.0.1", METHOD, "no bearer token")
    log.refused("10.0.0.2", METHOD, "no bearer token")
    for last in range(3, 100):
        log.refused(f"10.0.0.{last}", METHOD, "no bearer token")
    assert len(warnings(caplog)) == 3, "two addresses, then one line for all the others"
    now.t = 61.0  # the held ones are over: let go, their counts said
    log.refused("10.0.0.200", METHOD, "no bearer token")
    assert warnings(caplog) == [
        "refused calls from 10.0.0.1: no bearer token (1 more since the last such line, "
        "not logged)",
        "refused calls from other addresses: no bearer token (96 more since the last such "
        "line, not logged)",
        f"refused {METHOD} from 10.0.0.200: no bearer token",
    ]


def test_the_port_is_not_part_of_the_address() -> None:
    assert peer_address("ipv4:127.0.0.1:54321") == "127.0.0.1"
    assert peer_address("ipv6:[::1]:54321") == "[::1]"
    assert peer_address("unix:/run/cbexec.sock") == "unix:/run/cbexec.sock"


class PeerContext(FakeContext):
    def __init__(self, peer: str) -> None:
        super().__init__()
        self._peer = peer

    def peer(self) -> str:
        return self._peer


async def test_every_call_is_refused_and_one_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def handle(request: Any, context: Any) -> Any:
        return request

    async def continuation(details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(handle)

    # No wait for a wrong token here: this is about the log (test_token_guessing: the wait).
    interceptor = TokenAuthInterceptor("tok", turns=WrongTokenTurns(delay_s=0))
    details = cast(
        grpc.HandlerCallDetails,
        SimpleNamespace(method=METHOD, invocation_metadata=(("authorization", "Bearer x"),)),
    )
    for port in range(1000, 1200):  # each call on a connection of its own
        handler = await interceptor.intercept_service(continuation, details)
        assert handler is not None and handler.stream_unary is not None
        with pytest.raises(Aborted) as refused:
            await handler.stream_unary(iter(()), PeerContext(f"ipv4:10.1.2.3:{port}"))  # type: ignore[arg-type]
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert warnings(caplog) == [f"refused {METHOD} from 10.1.2.3: wrong bearer token"]


@pytest.mark.parametrize(
    ("metadata", "told"),
    [
        ((), "this executor requires 'authorization: Bearer <token>' metadata"),
        (
            (("authorization", "Basic dG9r"),),
            "this executor requires 'authorization: Bearer <token>' metadata; "
            "the authorization given is not a bearer token",
        ),
        (
            (("authorization", "Bearer guessed-secret"),),
            "the bearer token does not match this executor's token",
        ),
        (
            (("authorization", "Bearer tok"), ("authorization", "Bearer tok")),
            "this executor requires one 'authorization: Bearer <token>' metadata entry; "
            "the call carried more than one",
        ),
    ],
)
async def test_the_caller_is_told_what_was_wrong_never_the_token(
    metadata: tuple[tuple[str, str], ...], told: str
) -> None:
    async def continuation(details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(lambda request, context: request)

    details = SimpleNamespace(method=METHOD, invocation_metadata=metadata)
    handler = await TokenAuthInterceptor("tok").intercept_service(
        continuation, cast(grpc.HandlerCallDetails, details)
    )
    assert handler is not None and handler.stream_unary is not None
    with pytest.raises(Aborted) as refused:
        await handler.stream_unary(iter(()), PeerContext("ipv4:10.1.2.3:1000"))  # type: ignore[arg-type]
    assert (refused.value.code, refused.value.details) == (grpc.StatusCode.UNAUTHENTICATED, told)
