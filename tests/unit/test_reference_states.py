"""Qube's state tables: statuses, events, verb transitions (§5.2) and permission bits (§6)."""

from __future__ import annotations

import pytest

from supervisor_client.qbcallback.v1 import supervisor_pb2
from supervisor_client.reference import states
from supervisor_client.reference.states import Status

pytestmark = pytest.mark.unit

ALL = list(Status)


def test_terminal_states_are_exactly_those_with_a_code_below_0x100() -> None:
    for status in Status:
        assert states.is_terminal(status) == (states.STATUS_CODES[status] < 0x100), status
    assert {"complete", "failed", "killed"} == states.TERMINAL
    assert set(Status) == states.TERMINAL | states.NON_TERMINAL
    assert not states.TERMINAL & states.NON_TERMINAL


@pytest.mark.parametrize(
    ("status", "event"),
    [
        ("complete", "complete"),
        ("failed", "failed"),
        ("killed", "killed"),
        ("blocked", "blocked"),
        ("running", "running"),
        ("waiting", "waiting"),
        ("pending", None),
        ("suspended", None),
    ],
)
def test_event_name_of_each_new_state(status: str, event: str | None) -> None:
    assert states.event_name(status) == event


@pytest.mark.parametrize("new", ALL)
@pytest.mark.parametrize("old", ALL)
def test_a_move_fires_its_new_states_event_but_a_resume_fires_none(old: str, new: str) -> None:
    resume = (old, new) == ("suspended", "running")
    assert states.move_event(old, new) == (None if resume else states.event_name(new))
    if resume:  # the trigger engine learns of it by a registration again
        assert states.needs_registering_again(old, new)


def test_done_is_never_an_event_name_of_a_state() -> None:
    assert "done" not in {states.event_name(status) for status in Status}


def test_job_and_work_verbs_match_the_contract_enums() -> None:
    job_enum = supervisor_pb2.JobVerb.DESCRIPTOR.values_by_name
    work_enum = supervisor_pb2.WorkVerb.DESCRIPTOR.values_by_name
    job_verbs = {name.removeprefix("JOB_VERB_").lower() for name in job_enum}
    work_verbs = {name.removeprefix("WORK_VERB_").lower() for name in work_enum}
    assert set(states.JOB_RULES) == job_verbs - {"unspecified"}
    assert set(states.WORK_RULES) == work_verbs - {"unspecified"}
    assert set(states.SUBJOB_RULES) == set(states.JOB_RULES) - {"remove"}


# (verb, statuses it moves, new status) — qube-callbacks.md §5.2 as the brief reads it.
JOB_TABLE = [
    ("unblock", {"blocked"}, "pending"),
    ("block", {"pending", "running", "waiting", "suspended"}, "blocked"),
    ("kill", {"pending", "blocked", "running", "waiting", "suspended"}, "killed"),
    ("retry", {"complete", "failed", "killed"}, "pending"),
    ("requeue", {"complete", "failed", "killed"}, "blocked"),
    ("preempt", {"running"}, "pending"),
    ("interrupt", {"running"}, "pending"),
    ("migrate", {"running"}, "pending"),
    ("suspend", {"running"}, "suspended"),
    ("resume", {"suspended"}, "running"),
    ("complete", {"pending", "blocked", "running", "waiting", "suspended"}, "complete"),
    # Qube's fail is "force failed": a complete job too (a check of its last frame).
    ("fail", {"pending", "blocked", "running", "waiting", "suspended", "complete"}, "failed"),
]

WORK_TABLE = [
    ("unblock", {"blocked"}, "pending"),
    ("block", {"pending"}, "blocked"),
    ("kill", {"pending", "running", "suspended"}, "killed"),
    ("retry", {"failed", "killed", "complete"}, "pending"),
    ("requeue", {"failed", "killed", "complete"}, "blocked"),
    ("complete", {"pending", "blocked", "running", "waiting", "suspended"}, "complete"),
    ("fail", {"pending", "blocked", "running", "waiting", "suspended"}, "failed"),
]


@pytest.mark.parametrize(("verb", "moves", "target"), JOB_TABLE, ids=[t[0] for t in JOB_TABLE])
def test_job_verb_moves_exactly_its_source_states(verb: str, moves: set[str], target: str) -> None:
    rule = states.job_rule(verb)
    assert rule.target == target
    assert {status for status in ALL if rule.applies(status)} == moves


@pytest.mark.parametrize(("verb", "moves", "target"), WORK_TABLE, ids=[t[0] for t in WORK_TABLE])
def test_work_verb_moves_exactly_its_source_states(verb: str, moves: set[str], target: str) -> None:
    rule = states.work_rule(verb)
    assert rule.target == target
    assert {status for status in ALL if rule.applies(status)} == moves


def test_remove_applies_to_every_job_and_has_no_target() -> None:
    rule = states.job_rule("remove")
    assert rule.target is None
    assert all(rule.applies(status) for status in ALL)


def test_job_verbs_carry_their_work_along() -> None:
    ended_again = {"complete": "pending", "failed": "pending", "killed": "pending"}
    assert dict(states.job_rule("retry").work_moves) == ended_again
    assert dict(states.job_rule("requeue").work_moves) == ended_again
    # Every verb that takes the job out of running stops its running (or paused) frames:
    # a frame left running under such a job could never be reported, so never end.
    stopped = {
        "kill": "killed",
        "fail": "failed",
        "complete": "complete",
        "block": "pending",
        "interrupt": "pending",
        "migrate": "pending",
    }
    for verb, target in stopped.items():
        assert dict(states.job_rule(verb).work_moves) == {
            "running": target,
            "suspended": target,
        }, verb
        assert not states.job_rule(verb).passive
    assert dict(states.job_rule("suspend").work_moves) == {"running": "suspended"}
    assert dict(states.job_rule("resume").work_moves) == {"suspended": "running"}
    # §5.2: preempt lets the running frame finish; the store waits for it (passive).
    assert states.job_rule("preempt").passive
    for verb in ("preempt", "unblock"):
        assert not states.job_rule(verb).work_moves, verb


def test_instance_verbs_move_only_the_frame_the_instance_runs() -> None:
    assert dict(states.subjob_rule("kill").work_moves) == {
        "running": "killed",
        "suspended": "killed",
    }
    assert dict(states.subjob_rule("fail").work_moves) == {
        "running": "failed",
        "suspended": "failed",
    }
    assert not states.subjob_rule("retry").work_moves  # never re-runs its ended frames


def test_an_ended_instance_is_not_ended_again() -> None:
    # fail applies to a complete job, whose instances stay complete.
    fail = states.subjob_rule("fail")
    assert {status for status in ALL if fail.applies(status)} == states.NON_TERMINAL
    assert fail.refusal("instance 3.0", "complete") == (
        "instance 3.0 is complete; fail applies to instances that have not ended"
    )
    assert states.job_rule("fail").refusal("job 3", "killed") == (
        "job 3 is killed; fail applies to jobs that have not ended and complete jobs"
    )
    for verb, rule in states.JOB_RULES.items():
        if verb != "remove":
            assert states.subjob_rule(verb).sources == states.instances_moved_from(rule), verb


def test_refusal_says_why_a_verb_does_not_apply() -> None:
    unblock = states.job_rule("unblock")
    assert unblock.refusal("job 12", "blocked") is None
    assert (
        unblock.refusal("job 12", "pending") == "job 12 is pending; unblock applies to blocked jobs"
    )
    assert states.job_rule("block").refusal("job 12", "blocked") == "job 12 is already blocked"
    assert states.subjob_rule("resume").refusal("instance 3.0", "pending") == (
        "instance 3.0 is pending; resume applies to suspended instances"
    )


@pytest.mark.parametrize("lookup", [states.job_rule, states.work_rule, states.subjob_rule])
def test_unknown_verb_is_a_value_error_listing_the_known_ones(lookup: object) -> None:
    with pytest.raises(ValueError, match=r"unknown \w+ verb 'explode'; expected one of .*unblock"):
        lookup("explode")  # type: ignore[operator]


def test_remove_is_no_instance_verb() -> None:
    with pytest.raises(ValueError, match="unknown subjob verb 'remove'"):
        states.subjob_rule("remove")


def test_default_security_is_every_non_admin_right_but_bump_and_global_callbacks() -> None:
    bits = states.PERMISSION_BITS
    expected = sum(v for n, v in bits.items() if v <= bits["reset"]) - bits["bump"]
    expected += bits["lock_host"] - bits["submit_global_callback"]
    assert states.DEFAULT_SECURITY == expected == 136314867


def test_every_verb_has_a_permission_bit() -> None:
    assert set(states.JOB_RULES) <= set(states.PERMISSION_BITS)


@pytest.mark.parametrize(
    ("actor", "owner", "mask", "allowed"),
    [
        ("alice", "alice", states.DEFAULT_SECURITY, True),
        ("alice", "alice", states.DEFAULT_SECURITY & ~2048, False),
        ("alice", "bob", states.DEFAULT_SECURITY, False),
        ("root", "bob", 0, True),
        ("", "", states.DEFAULT_SECURITY, False),
    ],
    ids=["owner", "owner-without-bit", "other-user", "admin", "anonymous"],
)
def test_permits(actor: str, owner: str, mask: int, allowed: bool) -> None:
    assert states.permits(actor, owner, "unblock", mask=mask, admins={"root"}) is allowed


@pytest.mark.parametrize(
    ("current", "work", "revived", "derived"),
    [
        ("running", ["complete", "complete"], False, "complete"),
        ("running", ["complete", "failed", "killed"], False, "failed"),
        ("running", ["complete", "killed"], False, "killed"),
        ("running", ["complete", "pending"], False, "running"),
        ("blocked", ["complete", "running"], False, "blocked"),
        ("complete", ["complete", "pending"], True, "pending"),  # a frame retried
        # A frame of an ended job blocked or unblocked (a dependency's release): it stays.
        ("killed", ["killed", "pending", "blocked"], False, "killed"),
        ("failed", ["failed", "pending"], False, "failed"),
        ("complete", ["complete", "blocked"], False, "complete"),
        ("pending", [], False, "pending"),
    ],
)
def test_job_status_derived_from_its_agenda(
    current: str, work: list[str], revived: bool, derived: str
) -> None:
    assert states.derive_job_status(current, work, revived=revived) == derived
