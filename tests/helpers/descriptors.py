"""Raise this process's descriptor numbers past select()'s FD_SETSIZE (1024)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

# Past FD_SETSIZE with room: every descriptor opened meanwhile is numbered above it.
FIRST_FREE: Final = 1100


@contextmanager
def descriptors_past_fd_setsize() -> Iterator[None]:
    """Fill every descriptor number below ``FIRST_FREE``, so new ones are numbered above 1023.

    What an executor holding ~1000 client connections, or ~70 slots' prepared children,
    looks like to its own code. Closed again on exit.
    """
    fillers: list[int] = []
    try:
        while not fillers or fillers[-1] < FIRST_FREE:
            fillers.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
