"""Fixtures of the hostile suite: an arena on both launch paths, or on the warm one only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.hostile.harness import Arena


@pytest.fixture
def arena(stack: Stack, tmp_path: Path) -> Arena:
    """For the process-escape cases: runs on the zygote and on the cold launcher."""
    return Arena(stack, tmp_path)


@pytest.fixture
def arena_warm(stack_warm: Stack, tmp_path: Path) -> Arena:
    """For cases that are not about how children start."""
    return Arena(stack_warm, tmp_path)


@pytest.fixture(params=["python", "perl"])
def language(request: pytest.FixtureRequest) -> str:
    return str(request.param)
