"""Only a call the server refused unseen (REFUSED_STREAM) is sent again, and within its deadline."""

from __future__ import annotations

import grpc
import pytest

from supervisor_client.errors import RetryableError
from supervisor_client.refused_streams import sent_again_while_refused

pytestmark = pytest.mark.unit

REFUSED = "Stream removed (RST_STREAM (Received RST_STREAM with error code 7))"


async def test_a_refused_call_is_sent_again_with_what_is_left_of_its_deadline() -> None:
    sent: list[float | None] = []

    async def send(timeout: float | None) -> str:
        sent.append(timeout)
        if len(sent) < 3:
            raise RetryableError(grpc.StatusCode.UNAVAILABLE, REFUSED)
        return "answer"

    assert await sent_again_while_refused(send, 30.0) == "answer"
    assert len(sent) == 3
    assert all(t is not None and 29 < t <= 30 for t in sent), sent


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; ... Socket closed"),
        (grpc.StatusCode.UNAVAILABLE, "Stream removed (RST_STREAM with error code 2)"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, REFUSED),
    ],
)
async def test_any_other_failure_is_raised_at_once(code: grpc.StatusCode, details: str) -> None:
    sent = 0

    async def send(timeout: float | None) -> str:
        nonlocal sent
        sent += 1
        raise RetryableError(code, details)

    with pytest.raises(RetryableError):
        await sent_again_while_refused(send, None)
    assert sent == 1


async def test_refusals_end_at_the_deadline() -> None:
    async def send(timeout: float | None) -> str:
        raise RetryableError(grpc.StatusCode.UNAVAILABLE, REFUSED)

    with pytest.raises(RetryableError, match="error code 7"):
        await sent_again_while_refused(send, 0.2)
