"""Wait in a test for something another task or process makes true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(check: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02) -> T:
    """Poll ``check`` until its value is truthy or ``timeout_s`` has passed; returns the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(interval_s)
