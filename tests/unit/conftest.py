"""Fixtures of the unit tests: trigger engines on the test's own database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest

from tests.helpers.trigger_engines import Engines, engine_at, engines_made


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[Engines]:
    """Make engines on one database (a second one is the first after a restart); closed after."""
    async with engines_made(partial(engine_at, tmp_path)) as make:
        yield make
