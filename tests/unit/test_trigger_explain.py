"""Plain-English explanations of triggers."""

from __future__ import annotations

import pytest

from executor.model import Event
from executor.triggers.evaluate import JobPlace
from executor.triggers.explain import (
    compact_names,
    describe_atom,
    explain,
    near_miss_reason,
    outside_agenda_reason,
)
from executor.triggers.nodes import Atom
from executor.triggers.parser import parse

pytestmark = pytest.mark.unit

JOBD = "(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5"


def atom(text: str) -> Atom:
    parsed = parse(text)
    assert isinstance(parsed, Atom)
    return parsed


def test_the_jobd_example_reads_as_documented() -> None:
    lines = explain(parse(JOBD)).splitlines()
    assert lines[0] == (
        "fires when EITHER (work item '5' of the job labelled 'ribgen' completes AND "
        "work item '5' of the job labelled 'render' completes) OR "
        "work item '5' of the job labelled 'composite' completes"
    )
    assert lines[1:5] == [
        "atoms, by latch slot:",
        "  [0] complete-work-ribgen-5  ->  work item '5' of the job labelled 'ribgen' completes",
        "  [1] complete-work-render-5  ->  work item '5' of the job labelled 'render' completes",
        (
            "  [2] complete-work-composite-5  ->  "
            "work item '5' of the job labelled 'composite' completes"
        ),
    ]
    assert lines[5].startswith("note: edge-triggered.")
    assert "never seen again" in lines[5]
    assert lines[6].startswith("note: && remembers events")
    assert len(lines) == 7


@pytest.mark.parametrize(
    ("trigger", "noted"),
    [
        ("complete-job-self", False),
        ("complete-job-self || done-job-7", False),
        ("complete-job-self && done-job-7", True),
        ("complete-job-self || (done-job-7 && done-job-8)", True),
    ],
)
def test_the_and_note_comes_with_an_and_only(trigger: str, noted: bool) -> None:
    lines = explain(parse(trigger)).splitlines()
    assert any(line.startswith("note: && remembers") for line in lines) is noted
    assert any(line.startswith("note: edge-triggered.") for line in lines)


def test_an_or_inside_an_and_is_parenthesised_with_either() -> None:
    first = explain(parse("complete-job-self && (done-job-7 || killed-job-parent)")).splitlines()[0]
    assert first == (
        "fires when this job completes AND "
        "(EITHER job 7 is done (completes, fails or is killed) OR the parent job is killed)"
    )


def test_a_plain_chain_of_ands() -> None:
    first = explain(parse("complete-job-self && complete-job-parent")).splitlines()[0]
    assert first == "fires when this job completes AND the parent job completes"


@pytest.mark.parametrize(
    ("trigger", "phrase"),
    [
        ("complete-job-self", "this job completes"),
        ("running-job-19294", "job 19294 starts running"),
        ("done-job-hello", "the job labelled 'hello' is done (completes, fails or is killed)"),
        ("submit-job-self", "this job is submitted"),
        ("killed-job-self", "this job is killed"),
        ("blocked-job-self", "this job is blocked"),
        ("failed-job-self", "this job fails"),
        ("waiting-job-self", "this job is set to waiting"),
        ("assigned-job-self", "this job is assigned to a host"),
        ("removed-job-self", "this job is removed"),
        ("modified-job-self", "this job is modified"),
        ("complete-subjob-self-2", "instance 2 of this job completes"),
        ("timeout-subjob-self-*", "any instance (subjob) of this job times out"),
        ("failed-work-self-*", "any work item of this job fails"),
        ("complete-work-self-1-10", "work item '1-10' of this job completes"),
        ("running-host-self-node01", "host 'node01' starts running (host event seen by this job)"),
        ("running-host-self-*", "any host starts running (host event seen by this job)"),
        (
            "dummy-time-self-0",
            "the clock reaches 2000-01-01 05:00:00 UTC (Qube time 0) (timer of this job)",
        ),
        (
            "dummy-repeat-self-86400-60",
            (
                "the clock reaches 2000-01-02 05:00:00 UTC (Qube time 86400) and every 60 s after "
                "(timer of this job)"
            ),
        ),
        (
            "globaltime-10000",
            "the clock reaches 2000-01-01 07:46:40 UTC (Qube time 10000) (global timer)",
        ),
        ("global", "a global event (nothing fires it on its own)"),
        (
            "complete-work-ribgen-{work}",
            "the same work item of the job labelled 'ribgen' completes",
        ),
    ],
)
def test_describe_atom(trigger: str, phrase: str) -> None:
    assert describe_atom(atom(trigger)) == phrase


def test_warnings_and_the_wildcard_note_are_shown() -> None:
    text = explain(parse("failed-job-self-* || done-work-self-*"))
    assert "  [0] failed-job-self  ->  this job fails" in text
    assert "      warning: job events take no extra: '-*' is ignored" in text
    assert text.endswith("note: a '*' atom latches once, on any item, not once per item.")


def test_every_atom_gets_its_slot() -> None:
    text = explain(parse("done-job-1 || done-job-2 && (done-job-3 || done-job-4)"))
    for slot in range(4):
        assert f"  [{slot}] done-job-{slot + 1}  ->  job {slot + 1} is done" in text


def test_a_per_work_trigger_says_it_is_one_callback_per_item() -> None:
    text = explain(parse("complete-work-ribgen-{work} && complete-work-render-{work}"))
    assert text.splitlines()[0] == (
        "fires when the same work item of the job labelled 'ribgen' completes AND "
        "the same work item of the job labelled 'render' completes"
    )
    assert text.endswith("runs with qb.workid() set to the item.")


@pytest.mark.parametrize(
    ("names", "text"),
    [
        ([], "none"),
        (["3", "1", "2", "5", "7", "8"], "1-3,5,7-8"),
        (["-2", "-1", "0", "4"], "-2-0,4"),
        (["Initialize", "1-10"], "Initialize,1-10"),
        ([str(n) for n in range(0, 40, 2)], "0,2,4,6,8,10,12,14,16,18,20,22,... (20 in all)"),
        # Probe 176: padded frames made a range naming items no agenda holds ('1-2').
        (["001", "002"], "001,002"),
        (["1", "01", "2", "0003"], "1,01,2,0003"),
        (["-0", "1"], "-0,1"),
        (["1", "9" * 5000], f"1,{'9' * 5000}"),  # no int() of 4,300 digits and more
    ],
)
def test_work_names_are_compact(names: list[str], text: str) -> None:
    assert compact_names(names) == text


def test_a_near_miss_in_the_same_pgrp_names_the_labels_there() -> None:
    reason = near_miss_reason(
        atom("complete-work-ribgn-*"),
        JobPlace(15, pgrp=3, label="comp"),
        ["ribgen", "render", "comp"],
        Event("complete", "work", 12, work_name="5"),
        JobPlace(12, pgrp=3, label="ribgen"),
    )
    assert reason == (
        "label 'ribgn' names no job in pgrp 3 (labels there: comp, render, ribgen); "
        "this event was job 12 'ribgen' in pgrp 3"
    )


def test_a_near_miss_across_pgrps_names_both_pgrps() -> None:
    reason = near_miss_reason(
        atom("complete-job-ribgen"),
        JobPlace(15, pgrp=3, label="comp"),
        ["comp"],
        Event("complete", "job", 40),
        JobPlace(40, pgrp=7, label="ribgen"),
    )
    assert (
        reason == "label 'ribgen' names no job in pgrp 3; this event was job 40 'ribgen' in pgrp 7"
    )


def test_an_item_outside_the_agenda() -> None:
    assert outside_agenda_reason("9", 12, ["1", "2", "3"]) == (
        "work '9' is not in the agenda of job 12 (1-3): {work} stands for its items only"
    )


def test_a_stored_time_atom_of_another_context_still_reads_as_the_owners_timer() -> None:
    parsed = parse("dummy-time-parent-100", stored=True)
    assert isinstance(parsed, Atom)
    assert parsed.context == "parent"
    assert describe_atom(parsed) == (
        "the clock reaches 2000-01-01 05:01:40 UTC (Qube time 100) (timer of this job)"
    )
