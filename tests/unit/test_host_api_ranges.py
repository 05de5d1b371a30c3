"""Work-target expansion shared by every language: exact names win, numeric ranges expand."""

from __future__ import annotations

from typing import Any

import pytest

from executor.errors import HostCallError
from executor.host_api import _target, expand_work_names

pytestmark = pytest.mark.unit

AGENDA = ["-2", "-1", "0", "1", "2", "3", "10", "1-10", "Initialize"]


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("3", ["3"]),
        ("1-10", ["1-10"]),  # an item literally named like the range (a chunk) wins
        ("2-3", ["2", "3"]),
        ("-2--1", ["-2", "-1"]),
        ("3,1", ["3", "1"]),
        ("Initialize,0-1", ["Initialize", "0", "1"]),
        ("3-2", ["2", "3"]),
        ("2-5", ["2", "3"]),  # a range selects those of its frames that exist
    ],
)
def test_expansion(spec: str, names: list[str]) -> None:
    assert expand_work_names(spec, AGENDA) == names


@pytest.mark.parametrize("spec", ["99", "render", "50-60"])
def test_unknown_items_are_no_such_work(spec: str) -> None:
    with pytest.raises(HostCallError) as err:
        expand_work_names(spec, AGENDA)
    assert err.value.kind == "NoSuchWork"


def test_repeated_and_overlapping_ranges_select_each_item_once_in_order() -> None:
    agenda = [str(n) for n in range(1, 201)]
    # A callback's spec: 30,000 parts over 200 frames is one pass, not 6 million steps.
    spec = ",".join(["150-200", *(["1-200"] * 30_000), "7"])
    assert expand_work_names(spec, agenda) == [*agenda[149:], *agenda[:149]]


@pytest.mark.parametrize(
    ("args", "kwargs", "target"),
    [
        ([1234], {}, "1234"),
        (["1234:5"], {}, "1234:5"),
        ([[12, 13]], {}, "12, 13"),
        (["-pgrp", 1234], {}, "-pgrp, 1234"),
        ([], {"pgrp": 1234}, "pgrp=1234"),
        ([], {}, ""),
    ],
)
def test_an_action_target_is_the_call_as_the_proto_documents_it(
    args: list[Any], kwargs: dict[str, Any], target: str
) -> None:
    # Action.target's documented forms (executor.proto); the doc once said "pgrp 1234".
    assert _target(args, kwargs) == target
