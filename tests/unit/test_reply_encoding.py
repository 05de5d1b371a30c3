"""A big reply frame is encoded in steps that let the loop run, into protocol.encode's very bytes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from executor.child import protocol
from executor.sandbox import reply_encoding
from executor.sandbox.reply_encoding import encode_in_steps, is_big

pytestmark = pytest.mark.unit

AGENDA: list[dict[str, object]] = [
    {"name": str(n), "status": "pending", "resultpackage": {}, "subid": -1, "t": 1.5, "h": None}
    for n in range(30_000)
]
MESSAGES: list[dict[str, Any]] = [
    {"type": "reply", "id": 1, "ok": True, "value": 3},
    {"type": "reply", "id": 2, "ok": True, "value": [{"id": 1, "agenda": AGENDA[:10]}]},
    {
        "type": "reply",
        "id": 3,
        "ok": True,
        # A job's agenda, a few big jobs, a tuple, a key JSON converts, text to escape.
        "value": [
            {"id": 1, "agenda": AGENDA, "notes": 'é\n"x"', "range": (1, 2)},
            {"id": 2, "agenda": AGENDA[:2500], 7: "seven"},
            AGENDA[:999],
            [],
        ],
    },
]


@pytest.mark.parametrize("message", MESSAGES)
async def test_the_bytes_are_protocol_encodes(message: dict[str, Any]) -> None:
    assert await encode_in_steps(message) == protocol.encode(message)


async def test_a_big_reply_lets_the_loop_run_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reply_encoding, "YIELD_AFTER_S", 0.0)  # a turn after every piece
    turns = 0
    encoding = asyncio.ensure_future(encode_in_steps(MESSAGES[2]))
    while not encoding.done():
        turns += 1
        await asyncio.sleep(0)
    assert is_big(MESSAGES[2]) and not is_big(MESSAGES[1])
    assert turns > len(AGENDA) // reply_encoding.STEP_ITEMS
