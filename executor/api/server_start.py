"""Starting a grpc.aio server whole: a cancel that comes meanwhile is taken once it has started.

gRPC's ``start`` cancelled half-way (a Ctrl-C during start-up cancels it) leaves a
server that can neither serve nor stop: its stop raised ``InvalidStateError``, and its
own loop task logged "Task exception was never retrieved" (probe 107). Started, it
stops as any other, so the cancel waits the few milliseconds the start takes.
"""

from __future__ import annotations

import asyncio

import grpc


async def start_whole(server: grpc.aio.Server) -> None:
    """``server.start()``, finished even if this is cancelled meanwhile (then cancelled after)."""
    starting = asyncio.ensure_future(server.start())
    cancelled: asyncio.CancelledError | None = None
    while not starting.done():
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError as err:
            cancelled = cancelled or err  # the start goes on; the cancel is taken after it
    starting.result()  # the start's own error, if it had one
    if cancelled is not None:
        raise cancelled
