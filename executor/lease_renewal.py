"""A fleet replica's lease loop: renew on the shared store every third of a lease, until cancelled.

A lease lasts ``lease_s`` unrenewed, so a turn every third of it leaves two turns to fail
(PostgreSQL away, a stalled loop) before another replica may take the work over. The
firing claims (``triggers/firings.py``) and the Execute claims (``runs/invocation_ids.py``)
each run one; whoever starts the task cancels it at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from executor.errors import UnavailableError


async def renew_forever(
    renew: Callable[[], object],
    *,
    lease_s: float,
    what: str,
    logger: logging.Logger,
    failed: Callable[[], None] | None = None,
) -> None:
    """Call ``renew`` at once, then every third of ``lease_s``, until cancelled.

    A store unreachable for now (UnavailableError) is logged at WARNING on ``logger`` as
    "<what>: <error>", ``failed`` told, and tried again at the next turn; any other error
    ends the loop (a bug, not an outage, and not logged for ever).
    """
    while True:
        try:
            renew()
        except UnavailableError as err:
            if failed is not None:
                failed()
            logger.warning("%s: %s", what, err)
        await asyncio.sleep(lease_s / 3)
