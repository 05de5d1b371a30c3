"""A settable Unix clock for the stores that take one, so times in tests are exact."""

from __future__ import annotations


class Clock:
    """Returns ``now`` until a test moves it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
