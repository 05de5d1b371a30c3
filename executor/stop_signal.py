"""SIGINT and SIGTERM, the stop signals, from the process's first moments until the service takes them.

A Ctrl-C during ``cbexec serve``'s start-up raised KeyboardInterrupt wherever it fell: in
the imports (a traceback), or, through asyncio.Runner's own handler, as a cancel of
whatever start-up awaited, gRPC's server start included, whose stop then failed (a
traceback, "Task exception was never retrieved", exit 1; probe 107). So ``cbexec serve``
notes either signal from before its imports (``defer``); ``serve_forever`` takes them over
(its loop's handlers) and stops cleanly if one came (``take_deferred``): a stop is the
same stop whenever it is asked for.

A Python handler, not ``SIG_IGN``: an ignored signal stays ignored across exec, in every
process the executor starts.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Final

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class _Noted:
    """The stop signal that came since ``defer`` (the first one), if any."""

    signum: int | None = None
    deferred = False


def _note(signum: int, frame: FrameType | None) -> None:
    if _Noted.signum is None:
        _Noted.signum = signum


def defer() -> None:
    """Note SIGTERM and SIGINT instead of acting on them, until the service takes them over."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _note)
    _Noted.deferred = True


def take_deferred() -> int | None:
    """The stop signal noted since ``defer``, if one came; the note is cleared."""
    signum, _Noted.signum = _Noted.signum, None
    return signum


def release() -> None:
    """Give both signals back their usual actions, then act on one noted meanwhile.

    For the commands that do not run the service (``--check-config``): a Ctrl-C is the
    KeyboardInterrupt it always is, a SIGTERM ends the process.
    """
    if not _Noted.deferred:
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _Noted.deferred = False
    if (signum := take_deferred()) is not None:
        signal.raise_signal(signum)
