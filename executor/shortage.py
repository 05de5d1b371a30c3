"""Runs refused because the executor itself ran short: of descriptors, or of processes.

Either is a capacity refusal, not a bug: the run is refused RESOURCE_EXHAUSTED with a
retry-after and a message naming the limit (``open_files``, ``process_limit``), and a
fired run waits in its queue and tries again. The log says so once per
``LOG_INTERVAL_S`` (with how many were refused meanwhile), without a traceback: under
load every request would otherwise write one.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Final, TypeGuard

from executor import open_files, process_limit
from executor.errors import CapacityError

logger = logging.getLogger(__name__)

# As for a full queue: a finished run gives its descriptors and processes back within moments.
RETRY_AFTER_S: Final = 1.0
LOG_INTERVAL_S: Final = 60.0


def at_capacity(err: BaseException) -> TypeGuard[OSError]:
    """Whether ``err`` says the executor (or the host) is out of descriptors or processes."""
    return open_files.out_of_descriptors(err) or process_limit.out_of_processes(err)


class Shortage:
    """Refusals of runs the executor had no descriptor or process for, and their log lines."""

    def __init__(
        self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._logged_at: float | None = None
        self._left_out = 0

    @staticmethod
    def describe(err: OSError) -> str:
        """What ran out, in words a person can act on."""
        if err.errno == errno.ENFILE:
            return "the host is out of file descriptors (the kernel's fs.file-max)"
        if process_limit.out_of_processes(err):
            limit = process_limit.own_limit()
            which = f"{limit[1]} is {limit[0]}" if limit is not None else "the host's"
            return f"the executor could not start a process (its process limit: {which})"
        return (
            "the executor is out of file descriptors "
            f"(its limit, RLIMIT_NOFILE, is {open_files.limit()})"
        )

    def refusal(self, err: OSError) -> CapacityError:
        """The run's refusal (logged or counted): RESOURCE_EXHAUSTED with a retry-after."""
        what = self.describe(err)
        self.note(f"runs refused: {what}")
        return CapacityError(f"{what}; retry later", retry_after_s=RETRY_AFTER_S)

    def note(self, line: str) -> None:
        """Log ``line`` at WARNING unless one was logged within the interval (then count it)."""
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < self._interval_s:
            self._left_out += 1
            return
        left_out, self._left_out, self._logged_at = self._left_out, 0, now
        more = f" ({left_out} more since the last such line, not logged)" if left_out else ""
        logger.warning("%s%s", line, more)
