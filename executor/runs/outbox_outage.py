"""A spell of failed deliveries: how far the outbox backs off, and what its log says of it.

A supervisor away overnight must not cost the log two lines a retry (probe 137: an INFO
and a WARNING each time, ~2,300 lines an hour). A spell of failing is told at WARNING as
it begins, again at most once every ``say_again_s`` while it goes on (for how long, how
many tries), and at INFO as it ends (after how long, how many results went out then);
each try only at DEBUG. The spells of a flapping supervisor (answering for a moment
between failures) share that budget: one that begins within ``say_again_s`` of the last
WARNING is told, and ends, at DEBUG, and is counted in the next WARNING.

The backoff starts again from its floor only once delivery has gone through for
``quiet_s`` without failing: a supervisor that answers one exchange and fails the next
is not tried again at the floor each time it answers (the tries stay at most
``Backoff.cap_s`` apart, as ever).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # the outbox imports this module
    from executor.runs.outbox import Backoff

logger = logging.getLogger(__name__)

SAY_AGAIN_S: Final = 60.0
QUIET_S: Final = 30.0


class OutboxOutage:
    """The outbox's failed tries in a row, told as spells."""

    def __init__(
        self,
        backoff: Backoff,
        rng: random.Random,
        *,
        say_again_s: float = SAY_AGAIN_S,
        quiet_s: float = QUIET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backoff = backoff
        self._rng = rng
        self._say_again_s = say_again_s
        self._quiet_s = quiet_s
        self._clock = clock
        # Failed tries the backoff counts: kept across an answer followed by failure soon.
        self._failures = 0
        # The spell now (None while delivery goes through): when it began, its tries,
        # and whether it was told at WARNING (its end is then told at INFO).
        self._since: float | None = None
        self._tries = 0
        self._told = False
        # When delivery last went through after a spell; when the last WARNING was; the
        # spells begun and ended since then without one.
        self._through_since = -math.inf
        self._said_at = -math.inf
        self._untold = 0

    def failed(self, why: str, pending: int | None) -> float:
        """A try failed (``pending``: None when the store cannot say); the delay before the next."""
        now = self._clock()
        if self._since is None:
            if now - self._through_since >= self._quiet_s:
                self._failures = 0
            self._since, self._tries, self._told = now, 0, False
        self._failures += 1
        self._tries += 1
        delay = self._backoff.delay(self._failures, self._rng)
        waiting = "" if pending is None else f"{pending} pending, "
        if now - self._said_at < self._say_again_s:
            logger.debug("outbox: %sretrying in %.2fs (%s)", waiting, delay, why)
            return delay
        flaps = (
            f"; it failed and went through again {self._untold} times since the last such line"
            if self._untold
            else ""
        )
        if self._tries == 1:
            logger.warning(
                "outbox: results cannot be delivered (%s): %sretrying in %.2fs%s",
                why,
                waiting,
                delay,
                flaps,
            )
        else:
            logger.warning(
                "outbox: results still cannot be delivered after %.0f s, %d tries (%s): "
                "%sretrying in %.2fs%s",
                now - self._since,
                self._tries,
                why,
                waiting,
                delay,
                flaps,
            )
        self._said_at, self._told, self._untold = now, True, 0
        return delay

    def went_through(self, delivered: int, pending: int | None) -> None:
        """An exchange was answered and done with (``delivered`` of its results delivered)."""
        if self._since is None:
            return
        now = self._clock()
        left = "" if pending is None else f", {pending} pending"
        logger.log(
            logging.INFO if self._told else logging.DEBUG,
            "outbox: delivery resumed after %.1f s (%d tries failed): %d delivered%s",
            now - self._since,
            self._tries,
            delivered,
            left,
        )
        if not self._told:
            self._untold += 1
        self._since = None
        self._through_since = now
