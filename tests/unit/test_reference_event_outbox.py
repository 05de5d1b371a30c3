"""The reference supervisor's events kept until forwarded: written with their change, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor_client.reference import ReferenceSupervisor, Transition
from supervisor_client.reference.forwarder import EventForwarder
from supervisor_client.reference.states import REGISTER_AGAIN

pytestmark = pytest.mark.unit


def kept(sup: ReferenceSupervisor) -> list[tuple[str, str, int, str]]:
    return [
        (e.transition.name, e.transition.type, e.transition.job_id, e.transition.work_name)
        for e in sup.unsent_events()
    ]


def test_each_transition_is_kept_with_its_change_in_order(tmp_path: Path) -> None:
    heard: list[Transition] = []
    path = tmp_path / "supervisor.db"
    with ReferenceSupervisor(path, event_outbox=True, listeners=[heard.append]) as sup:
        (job,) = sup.submit([{"name": "a", "user": "alice", "agenda": ["1"]}])
        sup.start_work(job["id"], "1")
        sup.complete_work(job["id"], "1")
        assert [e.transition for e in sup.unsent_events()] == heard
        ids = [e.event_id for e in sup.unsent_events()]

    with ReferenceSupervisor(path, event_outbox=True) as reopened:
        # A crash or stop loses none, and each keeps its id: a resend is a duplicate.
        assert [e.event_id for e in reopened.unsent_events()] == ids
        assert len(set(ids)) == len(ids)
        assert kept(reopened)[0] == ("submit", "job", 1, "")
        assert ("complete", "work", 1, "1") in kept(reopened)
        assert reopened.has_unsent_events()
        reopened.remove_events([event.seq for event in reopened.unsent_events(limit=2)])
        assert [e.event_id for e in reopened.unsent_events()] == ids[2:]


def test_a_change_that_fails_keeps_no_event() -> None:
    with ReferenceSupervisor(event_outbox=True) as sup:
        (job,) = sup.submit([{"name": "a", "user": "alice", "agenda": ["1"]}])
        sup.remove_events([event.seq for event in sup.unsent_events()])
        with pytest.raises(ValueError, match="only running work ends"):
            sup.complete_work(job["id"], "1")
        assert not sup.has_unsent_events()


def test_without_the_outbox_nothing_is_kept_and_no_forwarder_takes_it() -> None:
    with ReferenceSupervisor() as sup:
        sup.submit([{"name": "a", "user": "alice"}])
        assert sup.unsent_events() == []
        assert not sup.has_unsent_events()
        with pytest.raises(ValueError, match="event_outbox=True"):
            EventForwarder(sup, channel=None)  # type: ignore[arg-type]  # refused before use


def test_a_move_without_an_event_has_the_job_registered_again_once() -> None:
    # Before, a retry left nothing in the outbox: the trigger engine kept the job complete.
    heard: list[Transition] = []
    with ReferenceSupervisor(event_outbox=True, listeners=[heard.append]) as sup:
        (job,) = sup.submit([{"name": "a", "user": "alice", "agenda": ["1", "2"]}])
        sup.job_action("block", job["id"], "alice")
        sup.job_action("unblock", job["id"], "alice")
        assert REGISTER_AGAIN not in [name for name, *_ in kept(sup)]  # unblocking: not again
        for name in ("1", "2"):
            sup.start_work(job["id"], name)
            sup.complete_work(job["id"], name)
        sup.remove_events([event.seq for event in sup.unsent_events()])
        heard.clear()

        sup.job_action("retry", job["id"], "alice")  # the job, its frames and its instance

        assert kept(sup) == [(REGISTER_AGAIN, "job", job["id"], "")]
        assert heard == []  # not an event: listeners hear none


def test_events_are_read_job_by_job_each_jobs_oldest_first() -> None:
    # Read oldest first across all jobs, a verb on a big job held every other job's
    # events back until the last of its own was sent (probe 68).
    frames = [str(n) for n in range(1, 11)]
    with ReferenceSupervisor(event_outbox=True) as sup:
        big, small = sup.submit(
            [{"name": "big", "user": "alice", "agenda": frames}, {"name": "small", "user": "bob"}]
        )
        sup.remove_events([event.seq for event in sup.unsent_events()])
        sup.work_action("block", big["id"], frames, "alice")
        sup.job_action("block", small["id"], "bob")
        everything = sup.unsent_events(limit=100)
        bigs = [e for e in everything if e.transition.job_id == big["id"]]
        smalls = [e for e in everything if e.transition.job_id == small["id"]]
        assert len(bigs) == 10 and smalls and everything == bigs + smalls
        # All of it fits in one turn: as kept, oldest first.
        assert sup.unsent_events_in_turn(0, 100).events == everything

        first = sup.unsent_events_in_turn(0, 4)
        assert first.events == bigs[:4]  # the big job's oldest: it fills the turn
        assert first.last_job == big["id"]
        sup.remove_events([event.seq for event in first.events])  # forwarded
        # The next turn begins after the big job: the small one's, then the big one's next.
        second = sup.unsent_events_in_turn(first.last_job, 4 + len(smalls))
        assert second.events == bigs[4:8] + smalls  # oldest first
        assert second.last_job == big["id"]

        sup.remove_events([event.seq for event in second.events])
        third = sup.unsent_events_in_turn(second.last_job, 100)
        assert third.events == bigs[8:]
        assert third.last_job == big["id"]


def test_the_jobs_left_out_are_passed_over_and_not_waited_for() -> None:
    # A job waiting for the trigger store's room (forwarder.py): the others' events go on.
    with ReferenceSupervisor(event_outbox=True) as sup:
        held, other = sup.submit(
            [{"name": "held", "user": "alice", "agenda": ["1"]}, {"name": "o", "user": "bob"}]
        )
        sup.start_work(held["id"], "1")
        turn = sup.unsent_events_in_turn(0, 100, left_out=[held["id"]])
        assert {e.transition.job_id for e in turn.events} == {other["id"]}
        assert turn.last_job == other["id"]
        sup.remove_events([event.seq for event in turn.events])
        assert sup.unsent_events_in_turn(0, 100, left_out=[held["id"]]).events == []
        assert not sup.has_unsent_events(left_out=[held["id"]])
        assert sup.has_unsent_events()
        assert sup.unsent_events_in_turn(0, 100).events[0].transition.name == "submit"
