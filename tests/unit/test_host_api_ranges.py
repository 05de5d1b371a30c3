"""Work-target expansion shared by every language: exact names win, numeric ranges expand."""

from __future__ import annotations

from typing import Any

import pytest

from executor.errors import HostCallError
from executor.host_api import HostApi, _target, expand_work_names
from supervisor_client.reference import ReferenceSupervisor
from tests.helpers.supervisor_port import ReferencePort, invocation_for

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
        # A list acts on the frames that exist: a range with none among them was NoSuchWork
        # for the whole list, and frame 3 was left alone.
        ("3,50-60", ["3"]),
        ("50-60,2-5,70-80", ["2", "3"]),
    ],
)
def test_expansion(spec: str, names: list[str]) -> None:
    assert expand_work_names(spec, AGENDA) == names


@pytest.mark.parametrize("spec", ["99", "render", "50-60"])
def test_unknown_items_are_no_such_work(spec: str) -> None:
    with pytest.raises(HostCallError) as err:
        expand_work_names(spec, AGENDA)
    assert err.value.kind == "NoSuchWork"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("50-60", "no work items in range '50-60'"),
        ("50-60,70-80", "no work items in ranges '50-60', '70-80'"),
        (
            "50-51,52-53,54-55,56-57,58-59",
            "no work items in ranges '50-51', '52-53', '54-55' and 2 more",
        ),
        ("3,99", "no work item '99'"),  # a name, not a range: it must be in the agenda
    ],
)
def test_a_spec_that_selects_nothing_says_which_ranges(spec: str, message: str) -> None:
    with pytest.raises(HostCallError) as err:
        expand_work_names(spec, AGENDA)
    assert (err.value.kind, err.value.message) == ("NoSuchWork", message)


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_work_list_acts_on_the_frames_that_exist(language: str) -> None:
    with ReferenceSupervisor() as sup:
        (job,) = sup.submit([{"name": "a", "user": "alice", "agenda": ["1", "2", "3", "4", "5"]}])
        host = HostApi(ReferencePort(sup), invocation_for(job, "", language=language))
        assert await host.call("workblock", [f"{job['id']}:3,7-9"], {}) == 1
        statuses = [w["status"] for w in sup.job(job["id"])["agenda"]]
    assert statuses == ["pending", "pending", "blocked", "pending", "pending"]


@pytest.mark.parametrize(
    ("agenda", "spec", "names"),
    [
        # Probe 99: the whole spec names an item, as a chunk's name wins over its range.
        (["5,6", "5", "6"], "5,6", ["5,6"]),
        ([" 5", "5"], " 5", [" 5"]),
        (["3-4,9", "3", "4", "9"], "3-4,9", ["3-4,9"]),
        (["5", "6"], "5,6", ["5", "6"]),  # no item so named: a list, as before
        (["5"], " 5", ["5"]),
    ],
)
def test_a_spec_that_is_an_items_whole_name_is_that_item(
    agenda: list[str], spec: str, names: list[str]
) -> None:
    assert expand_work_names(spec, agenda) == names


@pytest.mark.parametrize("language", ["python", "perl"])
@pytest.mark.parametrize("item", ["5,6", " 5", "3-4,9"])
async def test_the_triggering_items_name_acts_on_that_item(language: str, item: str) -> None:
    # qb.workfail(qb.jobid() + ':' + qb.workid()), as the qube fail-work-self acts.
    with ReferenceSupervisor() as sup:
        agenda = [item, "3", "4", "5", "6", "9"]
        (job,) = sup.submit([{"name": "a", "user": "alice", "agenda": agenda}])
        invocation = invocation_for(job, "", language=language, work_name=item)
        host = HostApi(ReferencePort(sup), invocation)
        assert await host.call("workfail", [f"{job['id']}:{item}"], {}) == 1
        statuses = {w["name"]: w["status"] for w in sup.job(job["id"])["agenda"]}
    assert statuses.pop(item) == "failed"
    assert set(statuses.values()) == {"pending"}


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
