"""Fixtures of the unit tests: trigger engines on the test's own database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from executor.triggers.engine import TriggerEngine
from tests.helpers.trigger_engines import Engines, Recorder, engine_at


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[Engines]:
    """Make engines on one database (a second one is the first after a restart); closed after."""
    made: list[TriggerEngine] = []

    def make(recorder: Recorder, *, start: bool = True, **kwargs: Any) -> TriggerEngine:
        engine = engine_at(tmp_path, recorder, **kwargs)
        if start:
            engine.start()
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.close()
