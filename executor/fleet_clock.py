"""A fleet's clock for leases: this replica's time, set to the shared PostgreSQL's.

Every lease a fleet writes (firings, Execute claims, the outbox's delivery claims) is
compared by the other replicas with theirs: kept in each replica's own ``time.time()``,
a replica whose clock is behind wrote leases already run out for the others, which took
its firings over as it decided them (probe 114). So the leases are kept in the
database's clock: ``FleetClock`` measures the offset of PostgreSQL's
``clock_timestamp()`` from this replica's clock (once at open, then at most once a
``MEASURE_EVERY_S``, piggybacked on the lease renewals), and ``now`` is the replica's
time plus it. A replica's clock off by more than ``SKEW_WARN_S`` is named in a WARNING
at each measure: what still runs on it (time triggers, the history's times) is off too.
With SQLite there is one machine, and the offset stays 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from executor.sql import Db

logger = logging.getLogger(__name__)

# How often the offset is measured again: a clock stepped by NTP is followed within it.
MEASURE_EVERY_S: Final = 60.0
# An offset past this is logged (a WARNING): NTP keeps a clock within milliseconds.
SKEW_WARN_S: Final = 3.0
_NOW: Final = "SELECT extract(epoch FROM clock_timestamp())::float8"


class FleetClock:
    """The database's time, as this replica reads it: ``local()`` plus a measured offset."""

    def __init__(self, local: Callable[[], float] = time.time) -> None:
        self._local = local
        self.offset_s = 0.0
        self._measured_at: float | None = None  # monotonic; None: never

    def now(self) -> float:
        """Unix time in the database's clock (this replica's, before any measure)."""
        return self._local() + self.offset_s

    def measure(self, db: Db) -> float:
        """Measure the offset on ``db`` (PostgreSQL), in one round trip; the offset."""
        before = self._local()
        row = db.execute(_NOW).fetchone()
        after = self._local()
        # The server read its clock somewhere in the round trip: its middle, at most
        # half a round trip off.
        self.offset_s = float(row[0]) - (before + after) / 2
        self._measured_at = time.monotonic()
        if abs(self.offset_s) > SKEW_WARN_S:
            logger.warning(
                "this replica's clock is %.1f s %s the database's: its leases are kept in "
                "the database's clock, but its time triggers fire by its own, and the "
                "times it records are off by as much; set its clock right (NTP)",
                abs(self.offset_s),
                "behind" if self.offset_s > 0 else "ahead of",
            )
        return self.offset_s

    def measure_if_due(self, db: Db) -> None:
        """``measure`` when the last was ``MEASURE_EVERY_S`` ago (or never)."""
        if self._measured_at is None or time.monotonic() - self._measured_at >= MEASURE_EVERY_S:
            self.measure(db)
