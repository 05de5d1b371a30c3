"""Counts in an admin's words: one of a thing in the singular (probe 78)."""

from __future__ import annotations

import pytest

from executor.plurals import counted, counted_are
from executor.runs.outbox_space import over_bound

pytestmark = pytest.mark.unit


def test_counted_says_one_in_the_singular_and_the_rest_in_the_plural() -> None:
    assert [counted(n, "job") for n in (0, 1, 2)] == ["0 jobs", "1 job", "2 jobs"]
    assert counted(1, "child", "children") == "1 child"
    assert counted(3, "child", "children") == "3 children"
    assert counted_are(1, "run") == "1 run is" and counted_are(2, "run") == "2 runs are"


def test_the_outbox_bound_says_one_result_in_the_singular() -> None:
    assert over_bound(1, 1 << 20, 2 << 20) == (
        "the supervisor has not taken 1 result, and it takes 1.0 MiB of outbox.db"
        " (outbox_max_bytes = 2.0 MiB): the executor runs nothing until it takes it"
        " (fired callbacks wait)"
    )
    assert over_bound(3, 1 << 20, 2 << 20).startswith(
        "the supervisor has not taken 3 results, and they take 1.0 MiB"
    )
