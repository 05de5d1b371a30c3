"""Trigger semantics: event matching, latch evaluation, index keys and clock atoms."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest

from executor.model import Event
from executor.triggers.evaluate import (
    atom_matches,
    evaluate,
    index_key,
    index_keys,
    next_fire,
    qube_to_unix,
    time_due,
    unix_to_qube,
)
from executor.triggers.nodes import QB_TIME_EPOCH_OFFSET, Atom, Expr, atoms
from executor.triggers.parser import parse

pytestmark = pytest.mark.unit

OWNER = 100
PARENT = 50
JOBS_BY_LABEL = {"ribgen": 101, "render": 102, "composite": 103, "sibling": 104}


def resolve(context: str) -> int | None:
    """The engine's job in miniature: self=100, parent=50, labels from a table, ids as is."""
    if context == "self":
        return OWNER
    if context == "parent":
        return PARENT
    if context.isdigit():
        return int(context)
    return JOBS_BY_LABEL.get(context)


def atom(text: str) -> Atom:
    parsed = parse(text)
    assert isinstance(parsed, Atom)
    return parsed


def job_event(name: str, job_id: int = OWNER) -> Event:
    return Event(name, "job", job_id)


def work_event(name: str, work: str, job_id: int = OWNER) -> Event:
    return Event(name, "work", job_id, work_name=work)


def subjob_event(name: str, subjob: int, job_id: int = OWNER) -> Event:
    return Event(name, "subjob", job_id, subjob_id=subjob)


# -- matching ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "event", "matches"),
    [
        ("complete-job-self", job_event("complete"), True),
        ("complete-job-self", job_event("failed"), False),
        ("complete-job-self", job_event("done"), False),
        ("complete-job-self", job_event("complete", PARENT), False),
        ("complete-job-parent", job_event("complete", PARENT), True),
        ("running-job-19294", job_event("running", 19294), True),
        ("running-job-019294", job_event("running", 19294), True),
        ("running-job-sibling", job_event("running", 104), True),
        ("running-job-nosuchlabel", job_event("running", 104), False),
        ("done-job-self", job_event("complete"), True),
        ("done-job-self", job_event("failed"), True),
        ("done-job-self", job_event("killed"), True),
        ("done-job-self", job_event("done"), True),
        ("done-job-self", job_event("running"), False),
        ("done-job-self", job_event("blocked"), False),
        ("failed-job-self-*", job_event("failed"), True),
        ("complete-job-self", work_event("complete", "5"), False),
        ("complete-work-self-*", job_event("complete"), False),
        ("failed-work-self-*", work_event("failed", "anything"), True),
        ("failed-work-self-*", work_event("complete", "1"), False),
        ("complete-work-render-5", work_event("complete", "5", 102), True),
        ("complete-work-render-5", work_event("complete", "05", 102), False),
        ("complete-work-render-5", work_event("complete", "6", 102), False),
        ("complete-work-render-5", work_event("complete", "5", 101), False),
        ("complete-work-self-1-10", work_event("complete", "1-10"), True),
        ("complete-work-self--5", work_event("complete", "-5"), True),
        ("complete-work-self-Initialize", work_event("complete", "initialize"), False),
        ("done-work-self-*", work_event("killed", "3"), True),
        ("complete-subjob-self-2", subjob_event("complete", 2), True),
        ("complete-subjob-self-2", subjob_event("complete", 3), False),
        ("done-subjob-self-5", subjob_event("failed", 5), True),
        ("timeout-subjob-self-*", subjob_event("timeout", 0), True),
        ("timeout-subjob-self-*", work_event("timeout", "0"), False),
        ("timeout-work-self-*", work_event("timeout", "0"), True),
        (
            "running-host-self-node01",
            Event("running", "host", OWNER, host="node01"),
            True,
        ),
        (
            "running-host-self-node01",
            Event("running", "host", OWNER, host="node02"),
            False,
        ),
        ("running-host-self-*", Event("running", "host", OWNER, host="node02"), True),
        ("dummy-time-self-5", Event("dummy", "time", OWNER), False),
        ("globaltime-5", Event("dummy", "globaltime", 0), False),
        ("global", Event("dummy", "global", 0), False),
    ],
)
def test_atom_matches(trigger: str, event: Event, matches: bool) -> None:
    assert atom_matches(atom(trigger), event, resolve) is matches


def test_an_unresolvable_context_matches_nothing() -> None:
    assert not atom_matches(atom("complete-job-parent"), job_event("complete", 0), lambda _: None)


def test_the_resolver_gets_the_context_as_written_canonically() -> None:
    seen: list[str] = []

    def spy(context: str) -> int | None:
        seen.append(context)
        return 7

    assert atom_matches(atom("complete-job-007"), job_event("complete", 7), spy)
    assert seen == ["7"]


@pytest.mark.parametrize(
    ("trigger", "key", "keys"),
    [
        ("complete-job-self", ("complete", "job"), [("complete", "job")]),
        (
            "done-work-self-*",
            ("done", "work"),
            [("complete", "work"), ("failed", "work"), ("killed", "work"), ("done", "work")],
        ),
        ("timeout-subjob-self-*", ("timeout", "subjob"), [("timeout", "subjob")]),
        ("globaltime-5", ("dummy", "globaltime"), [("dummy", "globaltime")]),
    ],
)
def test_index_keys(trigger: str, key: tuple[str, str], keys: list[tuple[str, str]]) -> None:
    assert index_key(atom(trigger)) == key
    assert index_keys(atom(trigger)) == keys
    assert all(type(part) is str for pair in index_keys(atom(trigger)) for part in pair)


# -- evaluation ----------------------------------------------------------------------------

# The compound worked examples of the spec (section 1.10), each with the truth function
# it must compute over its latch slots.
WORKED: list[tuple[str, Callable[[Sequence[bool]], bool]]] = [
    ("complete-job-self", lambda s: s[0]),
    ("complete-job-self && complete-job-parent", lambda s: s[0] and s[1]),
    ("running-job-sibling && done-job-self", lambda s: s[0] and s[1]),
    (
        "(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5",
        lambda s: (s[0] and s[1]) or s[2],
    ),
]


@pytest.mark.parametrize(("trigger", "truth"), WORKED)
def test_worked_examples_full_truth_table(
    trigger: str, truth: Callable[[Sequence[bool]], bool]
) -> None:
    expr = parse(trigger)
    count = len(atoms(expr))
    for latched in itertools.product([False, True], repeat=count):
        assert evaluate(expr, latched) is truth(latched), latched


@pytest.mark.parametrize(
    ("trigger", "latched", "fires"),
    [
        ("complete-job-self", [False], False),
        ("complete-job-self", [True], True),
        ("complete-job-self && complete-job-parent", [True, False], False),
        ("complete-job-self && complete-job-parent", [False, True], False),
        ("complete-job-self && complete-job-parent", [True, True], True),
        ("running-job-sibling && done-job-self", [True, False], False),
        ("running-job-sibling && done-job-self", [False, True], False),
        ("running-job-sibling && done-job-self", [True, True], True),
        (
            "(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5",
            [True, False, False],
            False,
        ),
        (
            "(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5",
            [False, True, False],
            False,
        ),
        (
            "(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5",
            [True, True, False],
            True,
        ),
        (
            "(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5",
            [False, False, True],
            True,
        ),
        ("done-job-1 || done-job-2 && done-job-3", [False, True, False], False),
        ("done-job-1 || done-job-2 && done-job-3", [True, False, False], True),
        ("(done-job-1 || done-job-2) && done-job-3", [True, False, False], False),
        ("(done-job-1 || done-job-2) && done-job-3", [False, True, True], True),
    ],
)
def test_evaluate_named_cases(trigger: str, latched: list[bool], fires: bool) -> None:
    assert evaluate(parse(trigger), latched) is fires


def test_evaluate_needs_one_latch_per_atom() -> None:
    with pytest.raises(ValueError, match="2 latches for a trigger with 3 atoms"):
        evaluate(parse("done-job-1 || done-job-2 || done-job-3"), [True, True])


def test_the_same_atom_twice_has_independent_slots() -> None:
    expr = parse("complete-job-self && (done-job-1 || complete-job-self)")
    assert not evaluate(expr, [False, False, True])
    assert evaluate(expr, [True, False, False]) is False
    assert evaluate(expr, [True, False, True]) is True


def latch_run(trigger: str, events: list[Event]) -> list[int]:
    """Feed events through match + latch + evaluate as the engine would; firing resets.

    Returns the indexes of the events at which the callback fired.
    """
    expr = parse(trigger)
    slots = atoms(expr)
    latched = [False] * len(slots)
    fired: list[int] = []
    for index, event in enumerate(events):
        hits = [slot for slot, a in enumerate(slots) if atom_matches(a, event, resolve)]
        if not hits:
            continue
        for slot in hits:
            latched[slot] = True
        if evaluate(expr, latched):
            fired.append(index)
            latched = [False] * len(slots)
    return fired


def test_jobd_example_remembers_events_that_happen_apart() -> None:
    trigger = "(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5"
    events = [
        work_event("complete", "5", 101),  # ribgen frame 5: one of two, no fire
        work_event("complete", "4", 102),  # render frame 4: wrong frame
        work_event("complete", "5", 102),  # render frame 5: both latched, fire
        work_event("complete", "5", 103),  # composite frame 5: fires alone
        work_event("complete", "5", 102),  # render again: latches reset, no fire
    ]
    assert latch_run(trigger, events) == [2, 3]


def test_sibling_example_needs_both_in_any_order() -> None:
    events = [job_event("complete"), job_event("running", 104)]
    assert latch_run("running-job-sibling && done-job-self", events) == [1]
    assert latch_run("running-job-sibling && done-job-self", events[:1]) == []


def test_an_unrelated_event_in_between_does_not_disturb_latches() -> None:
    events = [job_event("complete"), job_event("running"), job_event("complete", PARENT)]
    assert latch_run("complete-job-self && complete-job-parent", events) == [2]


# -- clock atoms ---------------------------------------------------------------------------

T0 = 800_000_000  # Qube time
U0 = T0 + QB_TIME_EPOCH_OFFSET  # the same moment in Unix time


def test_qube_time_conversions() -> None:
    assert QB_TIME_EPOCH_OFFSET == 946702800
    assert qube_to_unix(0) == 946702800
    assert unix_to_qube(946702800.9) == 0
    assert unix_to_qube(qube_to_unix(T0)) == T0


@pytest.mark.parametrize("trigger", [f"dummy-time-self-{T0}", f"globaltime-{T0}"])
def test_a_one_shot_time_fires_at_t_then_never(trigger: str) -> None:
    clock = atom(trigger)
    assert next_fire(clock, U0 - 100) == U0
    assert not time_due(clock, U0 - 1)
    assert time_due(clock, U0)
    assert time_due(clock, U0 + 1)
    assert next_fire(clock, U0 + 5, last_fired_unix=U0) is None
    assert not time_due(clock, U0 + 5, last_fired_unix=U0)


@pytest.mark.parametrize("trigger", [f"dummy-time-self-{T0}", f"globaltime-{T0}"])
def test_a_time_already_past_fires_at_once(trigger: str) -> None:
    now = U0 + 3600.5
    assert next_fire(atom(trigger), now) == now
    assert time_due(atom(trigger), now)


@pytest.mark.parametrize("trigger", [f"dummy-repeat-self-{T0}-60", f"globalrepeat-{T0}-60"])
def test_a_repeat_fires_at_t_then_every_interval(trigger: str) -> None:
    clock = atom(trigger)
    assert next_fire(clock, U0 - 10) == U0
    assert not time_due(clock, U0 - 10)
    assert next_fire(clock, U0, last_fired_unix=U0) == U0 + 60
    assert next_fire(clock, U0 + 60.2, last_fired_unix=U0 + 60.2) == U0 + 120
    assert not time_due(clock, U0 + 119, last_fired_unix=U0 + 60)
    assert time_due(clock, U0 + 120, last_fired_unix=U0 + 60)


@pytest.mark.parametrize("trigger", [f"dummy-repeat-self-{T0}-60", f"globalrepeat-{T0}-60"])
def test_a_repeat_past_its_start_fires_at_once_then_resumes_its_grid(trigger: str) -> None:
    clock = atom(trigger)
    now = U0 + 1000.0
    assert next_fire(clock, now) == now
    assert next_fire(clock, now, last_fired_unix=now) == U0 + 1020
    # Missed repeats (the engine was down for an hour) coalesce into one firing now.
    later = U0 + 5000.0
    assert next_fire(clock, later, last_fired_unix=U0 + 1020) == later
    assert next_fire(clock, later, last_fired_unix=later) == U0 + 5040


@pytest.mark.parametrize(
    "trigger", ["complete-job-self", "done-work-self-*", "global", "running-host-self-*"]
)
def test_non_clock_atoms_have_no_schedule(trigger: str) -> None:
    assert next_fire(atom(trigger), U0) is None
    assert not time_due(atom(trigger), U0)


def test_every_parsed_clock_atom_is_marked_timed() -> None:
    expr: Expr = parse("dummy-time-self-1 || globalrepeat-1-2 || global || done-job-self")
    assert [a.is_timed for a in atoms(expr)] == [True, True, False, False]
