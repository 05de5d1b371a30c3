"""Whether the supervisor is known to be unreachable, and the wait until it answers again.

The executor learns it from its own calls: a ``qb`` call (``GrpcSupervisor``) or a result
report (``GrpcReportTransport``) that met UNAVAILABLE or ran out of its deadline says
``lost``; a ``qb`` call's answer says ``answered``. A report's answer says nothing: a
supervisor may take results while its job calls are down (a split backend behind a
proxy), and a hold that such an answer ended re-ran a firing that failed for the outage
about every 0.1 s while it lasted (probe 160). The firing worker holds fired runs while
it is lost (``executor.triggers.firings``) and waits in ``until_answering``: the
channel's connectivity first (gRPC reconnects with its own backoff, 2 s at most; waiting
on a state change costs nothing), then one cheap real call, a JobInfo of job 0 that
reads no agenda, since a proxy in front of a supervisor that is down accepts
connections too. Any answer but UNAVAILABLE or DEADLINE_EXCEEDED (NOT_FOUND, say) means
it answers. The waits between looks grow, and go on growing in the hold that follows a
re-run which failed for the outage again (``again``), rather than starting over.

The embedded supervisor answers UNAVAILABLE only while ``supervisor.db`` takes no write
(another process holds its write lock, a full disk), and its reads go on meanwhile: an
answered read says nothing of what failed. So for it (``write_check``) only an answered
action, or a write to ``supervisor.db`` that the look itself tries, says it answers
(probe 141: the hold ended after 0.0 s and the effects it held were lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final

import grpc

from executor.api.lenient_answers import supervisor_stub
from executor.runs.outbox import Backoff
from supervisor_client.qbcallback.v1 import supervisor_pb2

# Between two looks while it stays away: from a tenth of a second up to 5 s.
PROBE_BACKOFF: Final = Backoff(first_s=0.1, cap_s=5.0)

# The embedded supervisor's look: why supervisor.db takes no write now, or "" when it takes one.
WriteCheck = Callable[[], Awaitable[str]]


class SupervisorReach:
    """What the executor's own calls found of the supervisor's reach, and the wait for it."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        timeout_s: float,
        *,
        backoff: Backoff = PROBE_BACKOFF,
        rng: random.Random | None = None,
        write_check: WriteCheck | None = None,
    ) -> None:
        """``write_check``: the embedded supervisor's, its look instead of a JobInfo (module doc)."""
        self._channel = channel
        self._write_check = write_check
        self._stub = supervisor_stub(channel)
        self._timeout_s = timeout_s
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._why = ""
        self._last_why = ""
        self._losses = 0
        # The looks that found it away since the wait last started over (``until_answering``).
        self._looks = 0

    @property
    def losses(self) -> int:
        """How many calls have found it unreachable so far (a run compares before and after)."""
        return self._losses

    @property
    def unreachable(self) -> str:
        """Why the last call found it unreachable, while no answer came since; else ""."""
        return self._why

    @property
    def last_unreachable(self) -> str:
        """Why the last call that found it unreachable did, kept after an answer ("" before any).

        A hold says it while it lasts, whatever other calls meet meanwhile.
        """
        return self._last_why

    def lost(self, err: grpc.aio.AioRpcError) -> None:
        """A call met it unreachable (UNAVAILABLE, or DEADLINE_EXCEEDED after the whole deadline)."""
        self._lost(f"{err.code().name}: {err.details() or ''}".strip())

    def _lost(self, why: str) -> None:
        self._losses += 1
        self._why = self._last_why = why

    def answered(self, *, acted: bool) -> None:
        """A ``qb`` call got an answer (any status the supervisor gave, or a response).

        ``acted``: the call was an action, not a read; the embedded supervisor's read
        says nothing of its writes (module doc). A result report's answer is not one
        (``report_failed``).
        """
        if acted or self._write_check is None:
            self._why = ""

    def noted(self, err: grpc.aio.AioRpcError, *, acted: bool, took_it_all: bool = True) -> None:
        """Note what a failed ``qb`` call says of the reach: ``lost`` or ``answered``.

        A CANCELLED call says neither: it may have been cut off on this side.
        """
        if _found_away(err, took_it_all=took_it_all):
            self.lost(err)
        elif err.code() != grpc.StatusCode.CANCELLED:
            self.answered(acted=acted)

    def report_failed(self, err: grpc.aio.AioRpcError, *, took_it_all: bool) -> None:
        """A result report failed: ``lost`` if it found the supervisor away.

        A report's answer, an error or a response, marks nothing reachable (module doc).
        """
        if _found_away(err, took_it_all=took_it_all):
            self.lost(err)

    async def until_answering(self, *, again: bool = False) -> None:
        """Return once the supervisor answers (at once unless it is known unreachable).

        Only the look's answer, or a ``qb`` call's meanwhile, ends the wait. ``again``:
        a re-run failed for the outage after the last wait ended; it counts as one more
        look that found the supervisor away, so the waits go on growing from where that
        one's stopped and the first look comes after one (else they start over at
        0.1 s and the first look is at once).
        """
        if not self._why:
            return
        if again:
            await self._wait_after_look()
        else:
            self._looks = 0
        while self._why:
            if self._channel.get_state(try_to_connect=True) == grpc.ChannelConnectivity.READY:
                await self._probe()
                if not self._why:
                    return
            await self._wait_after_look()

    async def _wait_after_look(self) -> None:
        """The backoff's next wait, cut short by a change of the channel's state (connected, say)."""
        self._looks += 1
        state = self._channel.get_state()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._backoff.delay(self._looks, self._rng)):
                await self._channel.wait_for_state_change(state)

    async def _probe(self) -> None:
        """One cheap real call: whatever it is answered, but not unreachable, is an answer.

        The embedded supervisor's look is a write instead: it fails as its actions do.
        """
        if self._write_check is not None:
            refusal = await self._write_check()
            if refusal:  # in the words its actions are answered with
                self._lost(f"{grpc.StatusCode.UNAVAILABLE.name}: {refusal}")
            else:
                self._why = ""
            return
        request = supervisor_pb2.JobInfoRequest(id=0, agenda=supervisor_pb2.AGENDA_SCOPE_NONE)
        started = time.monotonic()
        try:
            await self._stub.JobInfo(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            self.noted(err, acted=False, took_it_all=time.monotonic() - started >= self._timeout_s)
            return
        self.answered(acted=False)


def _found_away(err: grpc.aio.AioRpcError, *, took_it_all: bool) -> bool:
    """Whether a failed call found the supervisor unreachable.

    UNAVAILABLE, or DEADLINE_EXCEEDED when the call took its whole deadline
    (``took_it_all``): one the supervisor answered sooner is an answer.
    """
    code = err.code()
    return code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.DEADLINE_EXCEEDED and took_it_all
    )
