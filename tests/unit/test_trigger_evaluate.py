"""Trigger semantics as the engine runs them: match keys, latching, clock atoms."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest

from executor.model import Event
from executor.triggers.evaluate import (
    AtomKey,
    JobPlace,
    Step,
    atom_key,
    clock_event,
    evaluate,
    event_keys,
    happened,
    latch,
    next_fire,
    qube_to_unix,
    residual,
    spent,
    state_after,
    step,
    work_targets,
)
from executor.triggers.nodes import (
    QB_TIME_EPOCH_OFFSET,
    Atom,
    Expr,
    atoms,
    render,
    substitute_all,
)
from executor.triggers.parser import parse

pytestmark = pytest.mark.unit

OWNER = 100
PARENT = 50
PGRP = 1
# The registered jobs, as the engine's store knows them: the owner and its labelled siblings.
PLACES = {
    job.job_id: job
    for job in [
        JobPlace(OWNER, pid=PARENT, pgrp=PGRP),
        JobPlace(101, pgrp=PGRP, label="ribgen"),
        JobPlace(102, pgrp=PGRP, label="render"),
        JobPlace(103, pgrp=PGRP, label="composite"),
        JobPlace(104, pgrp=PGRP, label="sibling"),
        JobPlace(201, pgrp=2, label="render"),
    ]
}


def atom(text: str) -> Atom:
    parsed = parse(text)
    assert isinstance(parsed, Atom)
    return parsed


def matches(trigger: str, event: Event, owner: JobPlace = PLACES[OWNER]) -> bool:
    """What the engine's index lookup decides: the atom's key is among the event's keys."""
    key = atom_key(atom(trigger), owner)
    return key is not None and key in event_keys(event, PLACES.get(event.job_id))


def job_event(name: str, job_id: int = OWNER) -> Event:
    return Event(name, "job", job_id)


def work_event(name: str, work: str, job_id: int = OWNER) -> Event:
    return Event(name, "work", job_id, work_name=work)


def subjob_event(name: str, subjob: int, job_id: int = OWNER) -> Event:
    return Event(name, "subjob", job_id, subjob_id=subjob)


# -- matching ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "event", "matched"),
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
        ("complete-work-render-5", work_event("complete", "5", 201), False),  # another pgrp
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
        ("complete-subjob-self-02", subjob_event("complete", 2), True),
        ("complete-subjob-self-2", subjob_event("complete", 3), False),
        ("done-subjob-self-5", subjob_event("failed", 5), True),
        ("timeout-subjob-self-*", subjob_event("timeout", 0), True),
        ("timeout-subjob-self-*", work_event("timeout", "0"), False),
        ("timeout-work-self-*", work_event("timeout", "0"), True),
        ("running-host-self-node01", Event("running", "host", OWNER, host="node01"), True),
        ("running-host-self-node01", Event("running", "host", OWNER, host="node02"), False),
        ("running-host-self-*", Event("running", "host", OWNER, host="node02"), True),
        ("dummy-time-self-5", Event("dummy", "time", OWNER, extra="5"), False),
        ("globaltime-5", Event("dummy", "globaltime", 0, extra="5"), False),
        ("global", Event("dummy", "global", 0), False),
    ],
)
def test_matching(trigger: str, event: Event, matched: bool) -> None:
    assert matches(trigger, event) is matched


def test_a_parent_context_of_a_job_without_a_parent_matches_nothing() -> None:
    assert atom_key(atom("complete-job-parent"), JobPlace(OWNER)) is None


def test_a_label_names_whichever_job_holds_it_when_the_event_happens() -> None:
    # The callback was registered before any job held the label: it is keyed by the label.
    key = atom_key(atom("complete-job-later"), PLACES[OWNER])
    assert key == AtomKey("complete", "job", "label:1:later", "")
    assert key not in event_keys(job_event("complete", 300), None)
    assert key in event_keys(job_event("complete", 300), JobPlace(300, pgrp=PGRP, label="later"))


@pytest.mark.parametrize(
    ("trigger", "key"),
    [
        ("complete-job-self", AtomKey("complete", "job", "job:100", "")),
        ("complete-job-007", AtomKey("complete", "job", "job:7", "")),
        ("failed-job-parent", AtomKey("failed", "job", "job:50", "")),
        ("done-work-self-*", AtomKey("done", "work", "job:100", "*")),
        ("timeout-subjob-render-3", AtomKey("timeout", "subjob", "label:1:render", "3")),
        ("running-host-self-node01", AtomKey("running", "host", "job:100", "node01")),
        ("dummy-repeat-self-5-60", None),
        ("globaltime-5", None),
        ("global", None),
    ],
)
def test_atom_key(trigger: str, key: AtomKey | None) -> None:
    found = atom_key(atom(trigger), PLACES[OWNER])
    assert found == key
    if found is not None:  # SQLite gets plain strings, never the nodes' enums
        assert {type(part) for part in (found.name, found.type, found.scope, found.extra)} == {str}


def test_event_keys_expand_done_and_look_up_item_wildcard_and_placeholder() -> None:
    keys = event_keys(work_event("failed", "7", 102), PLACES[102])
    assert keys == [
        AtomKey(name, "work", scope, extra)
        for name in ("failed", "done")
        for scope in ("job:102", "label:1:render")
        for extra in ("7", "*", "{work}")
    ]
    assert event_keys(subjob_event("failed", 2, 102), None) == [
        AtomKey(name, "subjob", "job:102", extra)
        for name in ("failed", "done")
        for extra in ("2", "*")
    ]
    assert event_keys(job_event("running", 5), None) == [AtomKey("running", "job", "job:5", "")]


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
    """Feed events through the engine's steps: match keys, then ``latch``.

    Returns the indexes of the events at which the callback fired.
    """
    expr = parse(trigger)
    keys = [atom_key(a, PLACES[OWNER]) for a in atoms(expr)]
    latched: tuple[bool, ...] = (False,) * len(keys)
    fired: list[int] = []
    for index, event in enumerate(events):
        looked_up = event_keys(event, PLACES.get(event.job_id))
        hits = [slot for slot, key in enumerate(keys) if key in looked_up]
        if hits:
            fires, latched = latch(expr, latched, hits)
            if fires:
                fired.append(index)
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


def test_latch_sets_the_matched_slots_and_a_firing_resets_them_all() -> None:
    expr = parse("complete-job-1 && complete-job-2 && complete-job-3")
    assert latch(expr, [False, False, False], [1]) == (False, (False, True, False))
    assert latch(expr, [True, False, False], [1]) == (False, (True, True, False))
    assert latch(expr, [True, True, False], [2]) == (True, (False, False, False))


@pytest.mark.parametrize(
    ("count", "maximum", "is_spent"),
    [(0, 0, False), (99, 0, False), (1, 2, False), (2, 2, True), (3, 2, True)],
)
def test_spent_after_maximum_firings_and_never_when_unlimited(
    count: int, maximum: int, is_spent: bool
) -> None:
    assert spent(count, maximum) is is_spent


# -- clock atoms ---------------------------------------------------------------------------

T0 = 800_000_000  # Qube time
U0 = T0 + QB_TIME_EPOCH_OFFSET  # the same moment in Unix time


def test_qube_time_conversion() -> None:
    assert QB_TIME_EPOCH_OFFSET == 946702800
    assert qube_to_unix(0) == 946702800
    assert qube_to_unix(T0) == U0


@pytest.mark.parametrize("trigger", [f"dummy-time-self-{T0}", f"globaltime-{T0}"])
def test_a_one_shot_time_fires_at_t_then_never(trigger: str) -> None:
    clock = atom(trigger)
    assert next_fire(clock, U0 - 100) == U0
    assert next_fire(clock, U0 - 1) == U0
    assert next_fire(clock, U0 + 5, last_fired_unix=U0) is None


@pytest.mark.parametrize("trigger", [f"dummy-time-self-{T0}", f"globaltime-{T0}"])
def test_a_time_already_past_fires_at_once(trigger: str) -> None:
    now = U0 + 3600.5
    assert next_fire(atom(trigger), now) == now


@pytest.mark.parametrize("trigger", [f"dummy-repeat-self-{T0}-60", f"globalrepeat-{T0}-60"])
def test_a_repeat_fires_at_t_then_every_interval(trigger: str) -> None:
    clock = atom(trigger)
    assert next_fire(clock, U0 - 10) == U0
    assert next_fire(clock, U0, last_fired_unix=U0) == U0 + 60
    assert next_fire(clock, U0 + 60.2, last_fired_unix=U0 + 60.2) == U0 + 120
    assert next_fire(clock, U0 + 119, last_fired_unix=U0 + 60) == U0 + 120
    assert next_fire(clock, U0 + 120, last_fired_unix=U0 + 60) == U0 + 120


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


def test_every_parsed_clock_atom_is_marked_timed() -> None:
    expr: Expr = parse("dummy-time-self-1 || globalrepeat-1-2 || global || done-job-self")
    assert [a.is_timed for a in atoms(expr)] == [True, True, False, False]


@pytest.mark.parametrize(
    ("trigger", "event"),
    [
        (f"dummy-time-self-{T0}", Event("dummy", "time", OWNER, extra=str(T0))),
        (f"dummy-repeat-self-{T0}-60", Event("dummy", "repeat", OWNER, extra=f"{T0}-60")),
        (f"globaltime-{T0}", Event("dummy", "globaltime", OWNER, extra=str(T0))),
    ],
)
def test_clock_event_names_the_atom_and_its_time(trigger: str, event: Event) -> None:
    assert clock_event(atom(trigger), OWNER) == event
    assert clock_event(atom(trigger), OWNER).item == event.extra  # what qb.event() shows


def test_only_clock_atoms_have_a_clock_event() -> None:
    with pytest.raises(ValueError, match="job atoms are not fired by a clock"):
        clock_event(atom("complete-job-self"), OWNER)


# -- one step, and what is still open ------------------------------------------------------

JOBD = "(complete-work-ribgen-5 && complete-work-render-5) || complete-work-composite-5"


def test_a_step_says_what_latched_what_was_latched_and_whether_it_fired() -> None:
    expr = parse(JOBD)
    first = step(expr, [False, False, False], [0], count=0, maximum=0)
    assert first == Step(False, (True, False, False), newly=(0,), already=())
    again = step(expr, first.latches, [0], count=0, maximum=0)
    assert again == Step(False, (True, False, False), newly=(), already=(0,))
    fired = step(expr, again.latches, [1], count=0, maximum=0)
    assert fired == Step(True, (False, False, False), newly=(1,), already=())


def test_a_spent_step_changes_nothing() -> None:
    moved = step(
        parse("complete-job-1 && complete-job-2"), [True, False], [0, 1], count=2, maximum=2
    )
    assert moved == Step(False, (True, False), newly=(), already=(0,), spent=True)


@pytest.mark.parametrize(
    ("latched", "rest", "open_slots"),
    [
        ([False, False, False], render(parse(JOBD)), (0, 1, 2)),
        ([True, False, False], "complete-work-render-5 || complete-work-composite-5", (1, 2)),
        ([False, True, False], "complete-work-ribgen-5 || complete-work-composite-5", (0, 2)),
        ([True, True, False], None, ()),
        ([False, False, True], None, ()),
    ],
)
def test_residual_is_what_the_trigger_still_waits_for(
    latched: list[bool], rest: str | None, open_slots: tuple[int, ...]
) -> None:
    found, slots = residual(parse(JOBD), latched)
    assert (None if found is None else render(found)) == rest
    assert slots == open_slots


def test_residual_of_an_and_keeps_only_the_open_terms() -> None:
    expr = parse("complete-job-1 && (done-job-2 || done-job-3) && complete-job-4")
    found, slots = residual(expr, [True, False, True, False])
    assert found is not None and render(found) == "complete-job-4"
    assert slots == (3,)
    found, slots = residual(expr, [False, False, False, True])
    assert found is not None and render(found) == "complete-job-1 && (done-job-2 || done-job-3)"


# -- per work item ({work}) ---------------------------------------------------------------

PER_FRAME = "complete-work-ribgen-{work} && complete-work-render-{work}"


def test_a_work_event_looks_up_the_placeholder_and_matches_per_work_atoms() -> None:
    assert matches("complete-work-ribgen-{work}", work_event("complete", "5", 101))
    assert not matches("complete-work-ribgen-{work}", work_event("complete", "5", 102))
    assert not matches("complete-work-ribgen-{work}", job_event("complete", 101))


def test_a_per_work_atom_latches_for_the_events_item_only() -> None:
    targets, outside = work_targets(parse(PER_FRAME), [0], "5", ["1", "5", "9"], agenda_known=True)
    assert (targets, outside) == ({"5": (0,)}, ())


def test_an_item_outside_a_known_agenda_is_a_near_miss_and_latches_nothing() -> None:
    targets, outside = work_targets(parse(PER_FRAME), [0], "7", [], agenda_known=True)
    assert (targets, outside) == ({}, (0,))


def test_without_an_agenda_any_item_an_event_names_is_the_callbacks() -> None:
    targets, outside = work_targets(parse(PER_FRAME), [1], "7", ["7"], agenda_known=False)
    assert (targets, outside) == ({"7": (1,)}, ())


def test_an_atom_without_the_placeholder_latches_in_every_items_vector() -> None:
    expr = parse("complete-work-ribgen-{work} && complete-job-setup")
    targets, _ = work_targets(expr, [1], "", ["1", "2", "3"], agenda_known=True)
    assert targets == {"1": (1,), "2": (1,), "3": (1,)}
    both, _ = work_targets(
        parse("complete-work-self-{work} && done-work-self-*"),
        [0, 1],
        "2",
        ["1", "2"],
        agenda_known=True,
    )
    assert both == {"1": (1,), "2": (0, 1)}


def test_per_work_items_step_like_separate_callbacks_would() -> None:
    """The frame-by-frame example: each item's vector is the vector of its own callback."""
    expr = parse(PER_FRAME)
    vectors: dict[str, tuple[bool, ...]] = dict.fromkeys(("1", "2", "3"), (False, False))
    fired: list[str] = []
    events = [("ribgen", "1"), ("render", "2"), ("render", "1"), ("ribgen", "2"), ("ribgen", "3")]
    labels = {"ribgen": 0, "render": 1}
    for label, item in events:
        targets, _ = work_targets(expr, [labels[label]], item, list(vectors), agenda_known=True)
        for target, slots in targets.items():
            moved = step(substitute_all(expr, target), vectors[target], slots, count=0, maximum=0)
            vectors[target] = moved.latches
            if moved.fires:
                fired.append(target)
    assert fired == ["1", "2"]
    assert vectors == {"1": (False, False), "2": (False, False), "3": (True, False)}


# -- level mode -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trigger", "states", "already"),
    [
        ("complete-job-10", ["complete"], True),
        ("complete-job-10", ["running"], False),
        ("complete-job-10", [], False),
        ("done-job-10", ["killed"], True),
        ("done-job-10", ["failed"], True),
        ("done-job-10", ["pending"], False),
        ("running-job-10", ["running"], True),
        ("running-job-10", ["complete"], False),  # the state now, not every state it passed
        ("complete-work-10-*", ["pending", "complete"], True),
        ("submit-job-10", ["blocked"], True),
        ("submit-job-10", [], False),
        ("modified-job-10", ["modified"], False),
        ("timeout-work-10-1", ["timeout"], False),
        ("running-host-10-node1", ["running"], False),
        ("dummy-time-self-5", ["complete"], False),
    ],
)
def test_level_mode_latches_what_the_known_states_show_has_happened(
    trigger: str, states: list[str], already: bool
) -> None:
    assert happened(atom(trigger), states) is already


@pytest.mark.parametrize(
    ("event", "state"),
    [
        (job_event("complete"), "complete"),
        (work_event("running", "1"), "running"),
        (job_event("blocked"), "blocked"),
        (job_event("submit"), None),
        (job_event("modified"), None),
        (work_event("timeout", "1"), None),
        (job_event("removed"), None),
    ],
)
def test_the_state_an_event_leaves_its_object_in(event: Event, state: str | None) -> None:
    assert state_after(event) == state
