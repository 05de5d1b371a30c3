"""Encode a reply frame for the child in steps, so that a big one lets the event loop run between them.

A ``qb.jobinfo`` of a 100,000-frame job is 8.5 MB of JSON: ``json.dumps`` of it is one
C call of ~70 ms that holds the interpreter, and a thread would not help (the C encoder
keeps Python's lock). So a big reply is encoded a piece at a time (each list of more
than ``STEP_ITEMS`` items ``STEP_ITEMS`` at a time, ~1 ms for an agenda's), with a turn
of the loop every ``YIELD_AFTER_S``; the bytes are exactly ``protocol.encode``'s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any, Final

from executor.child import protocol

# Items of a list encoded in one step.
STEP_ITEMS: Final = 1000
# A reply with fewer items than this in all its lists and objects is encoded at once.
BIG_ITEMS: Final = 5000
# The longest the encoding runs before the loop gets a turn.
YIELD_AFTER_S: Final = 0.002


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def is_big(value: object) -> bool:
    """Whether ``value``'s lists and objects hold ``BIG_ITEMS`` items or more (a bounded look)."""
    seen = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            seen += len(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            seen += len(item)
            stack.extend(item)
        if seen >= BIG_ITEMS:
            return True
    return False


def _pieces(value: object) -> Iterator[str]:
    """``value``'s JSON in pieces, each a bounded encoding unless an item alone is big."""
    if not is_big(value):
        yield _dumps(value)
    elif isinstance(value, dict) and all(type(key) is str for key in value):
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            yield f"{',' if index else ''}{_dumps(key)}:"
            yield from _pieces(item)
        yield "}"
    elif isinstance(value, list | tuple) and len(value) > STEP_ITEMS:
        yield "["
        for start in range(0, len(value), STEP_ITEMS):
            yield ("," if start else "") + _dumps(value[start : start + STEP_ITEMS])[1:-1]
        yield "]"
    elif isinstance(value, list | tuple):  # a few items, some of them big
        yield "["
        for index, item in enumerate(value):
            if index:
                yield ","
            yield from _pieces(item)
        yield "]"
    else:  # an object with keys JSON converts (numbers): rare, and encoded at once
        yield _dumps(value)


async def encode_in_steps(message: Mapping[str, Any]) -> bytes:
    """``protocol.encode(message)``, a big message with turns of the loop between pieces."""
    if not is_big(message):
        return protocol.encode(message)
    parts: list[str] = []
    turn = time.monotonic()
    for piece in _pieces(message):
        parts.append(piece)
        if time.monotonic() - turn >= YIELD_AFTER_S:
            await asyncio.sleep(0)
            turn = time.monotonic()
    body = "".join(parts).encode("utf-8")
    return protocol.HEADER.pack(len(body)) + body
