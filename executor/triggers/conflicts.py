"""Transactions run again while PostgreSQL picks them as a deadlock's or serialization's victim."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from executor.sql import StoreConflict

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
# How often a transaction that lost a deadlock (a fleet's replicas racing) is run again.
_CONFLICT_TRIES = 8


def retrying(run: Callable[[], _T]) -> _T:
    """``run()``, again while PostgreSQL picks it as a deadlock's or serialization's victim."""
    for attempt in range(1, _CONFLICT_TRIES + 1):
        try:
            return run()
        except StoreConflict:
            if attempt == _CONFLICT_TRIES:
                raise
            logger.debug("store conflict (try %d); running the transaction again", attempt)
    raise AssertionError("unreachable")
