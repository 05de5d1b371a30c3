"""The slots kept by killed processes that have not ended, and the problem when they are every slot.

A run's process that outlives its SIGKILL by ``KILL_WAIT_S`` (a cgroup freezer the
executor cannot let it out of, state D in the kernel: an NFS hang) is answered without
it, and its slot stays taken until it ends (``process.SandboxRunner``). Held so, every
slot leaves the executor able to run nothing, however healthy it looks: this says so
(``problem``), to the health service (``edge.follow``: NOT_SERVING, so a load balancer
or a fleet client sends its work elsewhere), to the dispatcher's door (Execute refused
UNAVAILABLE at once, fired callbacks waiting in their queue) and to the metrics.
Everything here happens on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Final

logger = logging.getLogger(__name__)

# The processes a problem names; the rest are counted (a log line, not a list).
NAMED_AT_MOST: Final = 3


def refusal(problem: str) -> str:
    """The refusal of a run while ``problem`` (every slot kept) holds."""
    return f"{problem}: the executor runs nothing until one ends (fired callbacks wait)"


class StuckSlots:
    """Which slots a killed process that has not ended keeps, and why each process stays."""

    def __init__(self, slots: int) -> None:
        """``slots``: every slot there is (``max_concurrent``)."""
        self._slots = slots
        # Slot -> the process keeping it, as the WARNING of its kill says it.
        self._kept: dict[int, str] = {}
        self._problem = ""
        # Each hears the problem at every change ("" once a slot is free again).
        self.listeners: list[Callable[[str], None]] = []

    @property
    def count(self) -> int:
        """Slots kept by a killed process that has not ended."""
        return len(self._kept)

    @property
    def problem(self) -> str:
        """Why the executor can run nothing, every slot kept; "" while a slot is not."""
        return self._problem

    @contextlib.contextmanager
    def kept(self, slot: int, process: str) -> Iterator[None]:
        """``slot`` is kept by ``process`` (killed, not ended) for the block: until it ends."""
        self._kept[slot] = process
        self._changed()
        try:
            yield
        finally:
            del self._kept[slot]
            self._changed()

    def _changed(self) -> None:
        if len(self._kept) < self._slots:
            problem = ""
        else:
            named = [self._kept[slot] for slot in sorted(self._kept)][:NAMED_AT_MOST]
            more = len(self._kept) - len(named)
            problem = (
                f"every slot ({self._slots}) is held by a killed process that has not ended"
                f" ({'; '.join(named)}{f'; and {more} more' if more else ''})"
            )
        if problem == self._problem:
            return
        began = not self._problem
        self._problem = problem
        if problem and began:
            logger.warning(
                "%s: health is NOT_SERVING and Execute is refused until one ends", problem
            )
        elif not problem:
            logger.info(
                "a killed process that held a slot has ended: a slot is free again, and "
                "the executor runs callbacks again (%d of %d slots still held so)",
                len(self._kept),
                self._slots,
            )
        for listener in self.listeners:
            listener(problem)
