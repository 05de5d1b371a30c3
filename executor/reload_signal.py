"""SIGHUP, the reload signal, from the process's first moments until the service takes it over.

``serve_forever`` installs the reload handler once start-up is done: the databases
opened and checked, the history rebuilt, callbacks.conf compiled, the zygotes started.
Until then SIGHUP's default action would end the executor, silently; config management
that restarts it and then asks for a reload (new callbacks.conf, restart, HUP) could.
So ``cbexec serve`` notes a SIGHUP from before its imports (``defer``), and the service
reloads once, when up, if one came (``take_deferred``).

A Python handler, not ``SIG_IGN``: an ignored signal stays ignored across exec, in
every process the executor starts. The note is the process's own, as signals are.
"""

from __future__ import annotations

import signal
from types import FrameType


class _Noted:
    """Whether a SIGHUP came since ``defer`` (or since the last ``take_deferred``)."""

    came = False


def _note(signum: int, frame: FrameType | None) -> None:
    _Noted.came = True


def defer() -> None:
    """Note SIGHUP instead of dying of it, until the service installs its reload handler."""
    signal.signal(signal.SIGHUP, _note)


def take_deferred() -> bool:
    """Whether a SIGHUP was noted; the note is cleared (the reload it asks for is one)."""
    came, _Noted.came = _Noted.came, False
    return came
