"""Counts in words an admin reads: "1 job", "2 jobs", "0 jobs"; and the verb that goes with them."""

from __future__ import annotations


def counted(count: int, one: str, more: str = "") -> str:
    """``count`` and its noun: ``one`` for exactly 1, else ``more`` (``one`` + "s" by default)."""
    return f"{count} {one if count == 1 else more or one + 's'}"


def counted_are(count: int, one: str, more: str = "") -> str:
    """``counted`` with the verb that agrees: "1 run is", "2 runs are"."""
    return f"{counted(count, one, more)} {'is' if count == 1 else 'are'}"
