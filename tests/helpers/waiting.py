"""Wait in a test for something another task or process makes true."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

from supervisor_client import ExecutorClient

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T]], timeout_s: float = ..., interval_s: float = ...
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T], timeout_s: float = ..., interval_s: float = ...
) -> T: ...


async def eventually(
    check: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.02
) -> Any:
    """Poll ``check`` until its value is truthy or ``timeout_s`` has passed; returns the last value.

    ``check`` may be a coroutine function, for conditions only an RPC can see.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval_s)


async def outbox_drained(client: ExecutorClient, timeout_s: float = 30.0) -> bool:
    """Whether the executor's outbox empties in time.

    The supervisor stores a result before its reply reaches the executor, and only that
    reply lets the executor delete the row, so a test that saw the result must still wait.
    """

    async def empty() -> bool:
        return (await client.get_metrics()).outbox_pending == 0

    return await eventually(empty, timeout_s=timeout_s)
