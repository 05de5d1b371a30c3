"""The ``event_loop`` setting: uvloop by default (a dependency), asyncio's loop on request."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from executor.cli.serve import event_loop_factory
from executor.errors import ConfigError


def test_auto_and_uvloop_run_on_uvloop() -> None:
    for choice in ("auto", "uvloop"):
        factory = event_loop_factory(choice)
        assert factory is not None
        with asyncio.Runner(loop_factory=factory) as runner:
            assert isinstance(runner.get_loop(), uvloop.Loop)


def test_asyncio_keeps_asyncios_own_loop() -> None:
    assert event_loop_factory("asyncio") is None


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import of it raises ImportError
    assert event_loop_factory("auto") is None
    with pytest.raises(ConfigError, match="event_loop: uvloop does not import here"):
        event_loop_factory("uvloop")
