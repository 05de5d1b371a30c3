"""StoreThread: the one thread a ReferenceSupervisor's calls run on, off the caller's event loop.

A verb over 100,000 items is a second or two of Python under the store's lock; on the
loop of the process that embeds the supervisor (the executor's, which runs every
callback) it held every other run meanwhile, and so did a small call that only waited
for the lock. One thread, as the store serialises its calls on that lock anyway: a call
waiting for it waits in this queue, and holds no thread of the loop's default pool.
A call the caller stops waiting for (a cancellation) still runs to its end, as an
action a caller may resend must.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

_T = TypeVar("_T")
_P = ParamSpec("_P")


class StoreThread:
    """Runs store calls one after another on a thread of its own."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="reference-supervisor")
        # Its thread started now, not at the first call: a process at its limit of
        # processes and threads (pids.max) could not start it then, and every call of
        # the supervisor would fail ("can't start new thread").
        self._pool.submit(lambda: None).result()

    async def run(self, call: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``call(*args, **kwargs)`` on the thread, awaited from the running loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    def close(self) -> None:
        """Let the thread go once the call it runs (if any) has ended; later calls are refused."""
        self._pool.shutdown(wait=False, cancel_futures=True)
