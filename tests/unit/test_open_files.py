"""The open-file limit's start-up refusal: what it tells an admin to do."""

from __future__ import annotations

import pytest

from executor.open_files import start_problem

pytestmark = pytest.mark.unit


def test_a_limit_that_fits_some_slots_names_how_many() -> None:
    problem = start_problem(1024, 300)
    assert problem is not None
    assert problem.endswith("or lower max_concurrent (at most 120 start under this limit)")


def test_a_limit_that_fits_no_slot_does_not_suggest_max_concurrent_0() -> None:
    # Probe 159: "at most 0 start" under ulimit -n 70; 0 is the default (2 per core).
    problem = start_problem(70, 2)
    assert problem is not None
    assert "at most 0" not in problem
    assert problem.endswith("(not even max_concurrent = 1 starts under it: that needs ~72)")
    assert start_problem(72, 1) is None
