"""A new fleet client's first calls: every SERVING executor of a list in the round robin first.

gRPC's round_robin picks among the executors connected and SERVING at each pick, and a
new channel gets there one executor at a time: the calls made while it connects wait
for the first one ready and all go to it (nine at once on three executors ran 0/9/0;
after a health call and 0.2 s, 3/3/3). Waiting for the channel to be READY is not
enough (it is READY with one), and gRPC's Python API says neither which executors its
round robin holds nor which one a call reached. So an executor's health answer names
its process (``INSTANCE_KEY``, initial metadata), and before a client's first call
``spread_first_calls``:

1. asks each listed address's health on a channel of its own (the client's credentials,
   options and authority), all at once, for the executors that answer SERVING;
2. meanwhile, as soon as two have answered SERVING, asks health through the fleet
   channel until each executor that answered SERVING has answered there: round robin
   then holds them all, and the calls that follow are spread over them.

An address that refuses the connection, answers NOT_SERVING or fails, or an executor
that names no process (an older one), is not waited for. One where nothing answers at
all (a hung or stopped process: the connection is taken, then nothing) does not hold
up the others: it is waited for until those that answered SERVING are in the round
robin and ``LATE_ANSWER_S`` has passed since the last SERVING answer, then left to
gRPC. Nothing waits longer than ``CONNECT_WAIT_S`` in all (while no address has
answered SERVING, say), and a call waits for this for half its deadline at most
(client.py), so that it keeps time to be made. Measured (nine calls at once on
loopback): three executors answering, a few milliseconds and 3/3/3; one of them hung,
0.25 s and 4/5 over the other two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from supervisor_client.targets import HEALTH_SERVICE

__all__ = ["CONNECT_WAIT_S", "INSTANCE_KEY", "LATE_ANSWER_S", "spread_first_calls"]

#: The initial-metadata key of an executor's health answers: an id of its process.
INSTANCE_KEY: Final = "cbexec-instance"
#: The longest a new fleet client's first call waits for the other executors.
CONNECT_WAIT_S: Final = 2.0
#: How long after the last SERVING answer an address that answers nothing is waited for.
LATE_ANSWER_S: Final = 0.25
# How long to let a connection progress when a check brought no executor not yet seen.
_PAUSE_S: Final = 0.005
_CHECK: Final = health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)


async def _answered(
    channel: grpc.aio.Channel, timeout: float, *, wait_for_ready: bool = False
) -> tuple[int, str] | None:
    """The health status and process id an executor answers on ``channel``; None if none."""
    # The health stubs declare Check only on the sync stub's type.
    check: Any = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]
    call = check(_CHECK, timeout=timeout, wait_for_ready=wait_for_ready)
    try:
        reply = await call
        metadata = await call.initial_metadata()
    except (grpc.aio.AioRpcError, grpc.aio.UsageError):  # not reached, or the client closed
        return None
    instance = dict(metadata or ()).get(INSTANCE_KEY)
    return int(reply.status), instance if isinstance(instance, str) else ""


async def _serving(
    open_one: Callable[[str], grpc.aio.Channel], address: str, timeout: float
) -> str:
    """The process id of the executor at ``address`` if it answers SERVING; "" otherwise."""
    channel = open_one(address)
    try:
        answer = await _answered(channel, timeout)
    finally:
        await channel.close()
    if answer is None or answer[0] != health_pb2.HealthCheckResponse.SERVING:
        return ""
    return answer[1]


async def spread_first_calls(
    fleet: grpc.aio.Channel,
    addresses: Sequence[str],
    open_one: Callable[[str], grpc.aio.Channel],
    timeout_s: float = CONNECT_WAIT_S,
) -> None:
    """Return once ``fleet``'s round robin holds every executor of ``addresses`` SERVING now.

    ``open_one(address)`` opens a channel to one address as the fleet's are opened.
    Returns at ``timeout_s`` at the latest, whatever the executors do, and
    ``LATE_ANSWER_S`` after the last SERVING answer at the latest once those executors
    are in the round robin.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    fleet.get_state(try_to_connect=True)  # connecting meanwhile
    checks = {asyncio.ensure_future(_serving(open_one, a, timeout_s)) for a in addresses}
    serving: set[str] = set()  # the processes that answered SERVING at their own address
    seen: set[str] = set()  # those the fleet channel has answered from
    last_serving = loop.time()
    try:
        while (left := deadline - loop.time()) > 0:
            unseen = serving - seen
            if len(serving) >= 2 and unseen:
                answer = await _answered(fleet, left, wait_for_ready=True)
                if answer is None:
                    return  # the call that follows says why
                seen.add(answer[1])
                if answer[1] not in unseen:
                    await asyncio.sleep(_PAUSE_S)  # let the connections progress
            elif not checks:
                return  # every address has answered
            else:  # wait for the next address's answer, but not for ever
                wait = left
                if serving:
                    wait = min(wait, last_serving + LATE_ANSWER_S - loop.time())
                    if wait <= 0:
                        return  # the rest answer nothing: left to gRPC
                await asyncio.wait(checks, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for check in [check for check in checks if check.done()]:
                checks.discard(check)
                if instance := check.result():
                    serving.add(instance)
                    last_serving = loop.time()
    finally:
        for check in checks:
            check.cancel()  # this function's own tasks
        if checks:
            await asyncio.wait(checks)
