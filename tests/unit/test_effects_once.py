"""Effects once: each (invocation_id, action_seq) applied once, numbered in order, mail named.

The reference supervisor applies each pair once, the host API numbers a run's effects in
order, and a mail's Message-ID names its run. A re-run of a callback with the same
invocation id (a fleet re-running a firing whose replica died) must not apply its
actions twice; these tests run the real ReferenceSupervisor (in-process, SQLite), the
real host API and the real qube interpreter.
"""

from __future__ import annotations

import email
import email.policy
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from executor.errors import HostCallError
from executor.host_api import MAX_ACTION_SEQ, HostApi
from executor.model import Outcome
from executor.runtimes.mail import MailSettings, message_id
from executor.runtimes.qube import QubeInterpreter
from executor.supervisor_link import ActionOutcome
from supervisor_client.reference import ActionResult, NoSuchWorkError, ReferenceSupervisor
from supervisor_client.reference.applied import PRUNE_EVERY_S
from supervisor_client.reference.errors import ActionConflictError
from tests.helpers.clock import Clock
from tests.helpers.supervisor_port import ReferencePort, invocation_for

pytestmark = pytest.mark.unit


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sup(clock: Clock) -> Iterator[ReferenceSupervisor]:
    with ReferenceSupervisor(":memory:", clock=clock) as supervisor:
        yield supervisor


def submit(sup: ReferenceSupervisor, **fields: Any) -> int:
    job = {
        "name": "comp",
        "user": "alice",
        "status": "pending",
        "cpus": 2,
        "agenda": [{"name": str(n), "status": "blocked"} for n in range(1, 4)],
        **fields,
    }
    (stored,) = sup.submit([job])
    return int(stored["id"])


def callback_lines(sup: ReferenceSupervisor, job_id: int, invocation_id: str) -> list[str]:
    """The job's history lines of verbs the run applied (not its result)."""
    return [
        line["text"]
        for line in sup.history(job_id)
        if line["invocation_id"] == invocation_id and " by " in line["text"]
    ]


# -- the reference supervisor --------------------------------------------------------------


def test_a_repeated_job_action_is_answered_as_before_and_not_applied_again(
    sup: ReferenceSupervisor,
) -> None:
    job_id = submit(sup)

    first = sup.job_action("block", job_id, "alice", invocation_id="run-1", action_seq=1)
    sup.job_action("unblock", job_id, "alice")  # an operator's, unnumbered: applied
    repeat = sup.job_action("block", job_id, "alice", invocation_id="run-1", action_seq=1)

    assert first.changed == 1 and first.message == f"job {job_id} pending -> blocked"
    assert repeat == first
    assert sup.job(job_id)["status"] == "pending"  # the repeat did not block it again
    assert len(callback_lines(sup, job_id, "run-1")) == 1
    assert sup.applied_action_count() == 1


def test_work_and_instance_actions_are_applied_once(sup: ReferenceSupervisor) -> None:
    job_id = submit(sup)
    work = sup.work_action("unblock", job_id, ["1", "2"], "alice", invocation_id="r", action_seq=1)
    sub = sup.subjob_action("block", job_id, [0], "alice", invocation_id="r", action_seq=2)
    sup.work_action("block", job_id, ["1", "2"], "alice")
    sup.subjob_action("unblock", job_id, [0], "alice")

    assert (
        sup.work_action("unblock", job_id, ["1", "2"], "alice", invocation_id="r", action_seq=1)
        == work
    )
    assert sup.subjob_action("block", job_id, [0], "alice", invocation_id="r", action_seq=2) == sub
    assert work.changed == 2 and sub.changed == 1
    assert {w["name"]: w["status"] for w in sup.job(job_id)["agenda"]}["1"] == "blocked"
    assert sup.job(job_id)["subjobs"][0]["status"] == "pending"
    assert len(callback_lines(sup, job_id, "r")) == 2


def test_the_same_position_of_another_run_is_another_action(sup: ReferenceSupervisor) -> None:
    job_id = submit(sup, status="blocked")
    sup.job_action("unblock", job_id, "alice", invocation_id="run-1", action_seq=1)
    sup.job_action("block", job_id, "alice", invocation_id="run-2", action_seq=1)
    sup.job_action("unblock", job_id, "alice", invocation_id="run-1", action_seq=2)

    assert sup.job(job_id)["status"] == "pending"
    assert sup.applied_action_count() == 3


def test_unnumbered_actions_are_applied_every_time(sup: ReferenceSupervisor) -> None:
    job_id = submit(sup)
    for _ in range(2):
        sup.job_action("block", job_id, "alice", invocation_id="old-executor", action_seq=0)
        sup.job_action("unblock", job_id, "alice", invocation_id="old-executor", action_seq=0)

    assert len(callback_lines(sup, job_id, "old-executor")) == 4
    assert sup.applied_action_count() == 0


def test_a_refusal_is_repeated_without_looking_again(sup: ReferenceSupervisor) -> None:
    job_id = submit(sup)
    with pytest.raises(NoSuchWorkError, match="no work item '9'") as first:
        sup.work_action("unblock", job_id, ["9"], "alice", invocation_id="r", action_seq=1)
    sup.work_action("unblock", job_id, ["1"], "alice")  # an operator's, unnumbered
    sup.work_action("block", job_id, ["1"], "alice")

    with pytest.raises(NoSuchWorkError) as repeat:
        sup.work_action("unblock", job_id, ["9"], "alice", invocation_id="r", action_seq=1)

    assert str(repeat.value) == str(first.value)
    assert sup.job(job_id)["agenda"][0]["status"] == "blocked"


def test_another_action_under_a_pair_is_refused_not_answered_as_the_first(
    sup: ReferenceSupervisor,
) -> None:
    # A kill -9 cut a run off after its action 1 (block job A); the id, unknown to the
    # executor's history, is then reused for another callback acting on job B.
    job_a, job_b = submit(sup), submit(sup)
    first = sup.job_action("block", job_a, "alice", invocation_id="r", action_seq=1)

    others: list[Callable[[], ActionResult]] = [
        lambda: sup.job_action("block", job_b, "alice", invocation_id="r", action_seq=1),
        lambda: sup.job_action("kill", job_a, "alice", invocation_id="r", action_seq=1),
        lambda: sup.work_action("block", job_a, ["1"], "alice", invocation_id="r", action_seq=1),
        lambda: sup.subjob_action("block", job_a, [0], "alice", invocation_id="r", action_seq=1),
    ]
    for other in others:
        with pytest.raises(ActionConflictError) as refused:
            other()
        assert "action_seq 1 of invocation 'r' was applied as 'block job" in str(refused.value)

    assert sup.job(job_b)["status"] == "pending" and sup.job(job_a)["status"] == "blocked"
    # The pair keeps its first answer: the same action (whoever acts) is still its repeat.
    assert sup.job_action("block", job_a, "bob", invocation_id="r", action_seq=1) == first
    assert sup.applied_action_count() == 1


def test_an_answer_kept_before_actions_were_compared_answers_any_request(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "supervisor.db"
    with ReferenceSupervisor(path, clock=clock) as sup:
        job_id = submit(sup)
    # The table as it was: no column naming the action.
    db = sqlite3.connect(path)
    with db:
        db.execute("DROP TABLE applied_actions")
        db.execute(
            "CREATE TABLE applied_actions (invocation_id TEXT NOT NULL,"
            " action_seq INTEGER NOT NULL, time REAL NOT NULL, request TEXT NOT NULL,"
            " changed INTEGER NOT NULL, message TEXT NOT NULL, error TEXT NOT NULL DEFAULT '',"
            " PRIMARY KEY (invocation_id, action_seq)) WITHOUT ROWID"
        )
        db.execute(
            "INSERT INTO applied_actions VALUES ('r', 1, ?, 'block job 1 as alice', 1, 'old', '')",
            (clock.now,),
        )
    db.close()
    with ReferenceSupervisor(path, clock=clock) as sup:
        with caplog.at_level(logging.WARNING, logger="supervisor_client.reference.applied"):
            repeat = sup.job_action("kill", job_id, "alice", invocation_id="r", action_seq=1)
        assert (repeat.changed, repeat.message) == (1, "old")
        assert sup.job(job_id)["status"] == "pending"
        assert "answered as the first time" in caplog.text and "'kill job" in caplog.text


def test_answers_survive_a_restart_and_expire_after_the_retention(
    tmp_path: Path, clock: Clock
) -> None:
    path = tmp_path / "supervisor.db"
    with ReferenceSupervisor(path, clock=clock, action_retention_s=1000) as first:
        job_id = submit(first)
        answer = first.job_action("block", job_id, "alice", invocation_id="r", action_seq=1)
        first.job_action("unblock", job_id, "alice")
    with ReferenceSupervisor(path, clock=clock, action_retention_s=1000) as second:
        assert (
            second.job_action("block", job_id, "alice", invocation_id="r", action_seq=1) == answer
        )
        assert second.job(job_id)["status"] == "pending"

        # A later answer, kept once the first has outlived the retention, prunes it.
        clock.now += max(1000, PRUNE_EVERY_S) + 1
        second.job_action("block", job_id, "alice", invocation_id="later", action_seq=1)
        assert second.applied_action_count() == 1
        second.job_action("unblock", job_id, "alice")
        second.job_action("block", job_id, "alice", invocation_id="r", action_seq=1)
        assert second.job(job_id)["status"] == "blocked"  # forgotten: applied as new


def test_the_retention_must_be_positive() -> None:
    with pytest.raises(ValueError, match="action_retention_s: expected seconds"):
        ReferenceSupervisor(action_retention_s=0)


# -- the host API numbers a run's effects ----------------------------------------------------


class RecordingPort(ReferencePort):
    """The reference port, recording the (invocation_id, action_seq) of every action."""

    def __init__(self, supervisor: ReferenceSupervisor) -> None:
        super().__init__(supervisor)
        self.keys: list[tuple[str, int]] = []

    async def job_action(
        self, verb: str, job_id: int, *, actor: str, invocation_id: str, action_seq: int
    ) -> ActionOutcome:
        self.keys.append((invocation_id, action_seq))
        return await super().job_action(
            verb, job_id, actor=actor, invocation_id=invocation_id, action_seq=action_seq
        )

    async def work_action(
        self,
        verb: str,
        job_id: int,
        work_names: list[str],
        *,
        actor: str,
        invocation_id: str,
        action_seq: int,
    ) -> ActionOutcome:
        self.keys.append((invocation_id, action_seq))
        return await super().work_action(
            verb,
            job_id,
            work_names,
            actor=actor,
            invocation_id=invocation_id,
            action_seq=action_seq,
        )

    async def subjob_action(
        self,
        verb: str,
        job_id: int,
        subjob_ids: list[int],
        *,
        actor: str,
        invocation_id: str,
        action_seq: int,
    ) -> ActionOutcome:
        self.keys.append((invocation_id, action_seq))
        return await super().subjob_action(
            verb,
            job_id,
            subjob_ids,
            actor=actor,
            invocation_id=invocation_id,
            action_seq=action_seq,
        )


async def test_every_action_request_takes_the_next_number_and_reads_take_none(
    sup: ReferenceSupervisor,
) -> None:
    job_id = submit(sup)
    other = submit(sup)
    port = RecordingPort(sup)
    invocation = invocation_for(sup.job(job_id), "", language="python")

    async def calls(host: HostApi) -> list[Any]:
        return [
            await host.call("jobinfo", [], {}),
            await host.call("unblock", [[job_id, other]], {}),  # two requests
            await host.call("jobstatus", [job_id], {}),
            await host.call("workblock", [f"{job_id}:1", f"{job_id}:2-3"], {}),  # two
            await host.call("subjobkill", [f"{job_id}.0"], {}),
            await host.call("block", [job_id], {}),
        ]

    first = await calls(HostApi(port, invocation))
    keys = list(port.keys)
    port.keys.clear()
    # The same callback re-run with the same invocation id: the same numbers, the same answers.
    sup.job_action("unblock", job_id, "alice")
    repeat = await calls(HostApi(port, invocation))

    run = invocation.invocation_id
    assert keys == [(run, seq) for seq in range(1, 7)]
    assert port.keys == keys
    assert repeat[1:] == first[1:] and repeat[1:3] == [0, "pending"]
    assert sup.job(job_id)["status"] == "pending"  # the repeated block was not applied
    assert len(callback_lines(sup, job_id, run)) == 5


async def test_a_call_keeps_its_numbers_whatever_its_read_or_an_earlier_target_met(
    sup: ReferenceSupervisor,
) -> None:
    # Found by fault injection: a work verb whose read failed took no number, and a list
    # whose first target was refused none for the rest, so a re-run in which they went
    # through numbered every later action differently.
    job_id = submit(sup)
    port = RecordingPort(sup)
    invocation = invocation_for(sup.job(job_id), "", language="python")
    host = HostApi(port, invocation)

    with pytest.raises(HostCallError) as no_item:
        await host.call("workunblock", [f"{job_id}:9"], {})  # read: the job has no item 9
    with pytest.raises(HostCallError) as no_job:
        await host.call("unblock", [[99_999, job_id]], {})  # the first target is refused
    await host.call("block", [job_id], {})

    run = invocation.invocation_id
    assert (no_item.value.kind, no_job.value.kind) == ("NoSuchWork", "NoSuchJob")
    # The work verb is 1 though unsent, the list 2 and 3 though only 2 was sent.
    assert port.keys == [(run, 2), (run, 4)]
    assert host.next_action_seq() == 5


def test_numbers_past_what_action_seq_carries_are_refused_not_sent(
    sup: ReferenceSupervisor,
) -> None:
    invocation = invocation_for(sup.job(submit(sup)), "", language="python")
    host = HostApi(RecordingPort(sup), invocation)
    assert host.take_action_seqs(MAX_ACTION_SEQ - 1) == range(1, MAX_ACTION_SEQ)
    with pytest.raises(HostCallError, match=r"numbered up to 4294967295 \(action_seq\)"):
        host.take_action_seqs(2)
    assert host.next_action_seq() == MAX_ACTION_SEQ


# -- qube code strings and mail -------------------------------------------------------------


def mails(mail_dir: Path) -> list[email.message.EmailMessage]:
    found = []
    for path in sorted((mail_dir / "new").glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        found.append(message)
    return found


async def test_a_rerun_qube_callback_applies_once_and_mails_with_the_same_message_id(
    sup: ReferenceSupervisor, tmp_path: Path
) -> None:
    job_id = submit(sup)
    interpreter = QubeInterpreter(MailSettings(directory=tmp_path / "mail"))
    invocation = invocation_for(sup.job(job_id), "block-self\nmail-status")

    first = await interpreter.run(invocation, HostApi(ReferencePort(sup), invocation))
    sup.job_action("unblock", job_id, "alice")
    repeat = await interpreter.run(invocation, HostApi(ReferencePort(sup), invocation))

    assert first.outcome is repeat.outcome is Outcome.SUCCEEDED, (first.failure, repeat.failure)
    assert repeat.actions[0] == first.actions[0]
    assert sup.job(job_id)["status"] == "pending"
    assert len(callback_lines(sup, job_id, invocation.invocation_id)) == 1
    sent = mails(tmp_path / "mail")
    # The executor that sent it remembers the mail: the re-run's is that one mail. (One
    # re-run elsewhere, another replica, sends it again under the same Message-ID.)
    expected = f"<cbexec.{invocation.invocation_id}.2@localhost>"
    assert [m["Message-ID"] for m in sent] == [expected]


def test_a_message_id_names_the_run_and_its_position() -> None:
    uuid = "0b0d7c1e-53c6-4f0e-9a57-4c1c3f6b7a10"
    assert message_id(uuid, 3, "studio.example") == f"<cbexec.{uuid}.3@studio.example>"
    assert message_id(uuid, 3, "") == f"<cbexec.{uuid}.3@localhost>"
    assert message_id(uuid, 4, "x") != message_id(uuid, 3, "x")
    # An id a Message-ID cannot hold as is becomes its digest: still stable, still distinct.
    odd = message_id("job 12 <retry>@farm", 1, "x")
    assert odd == message_id("job 12 <retry>@farm", 1, "x")
    assert odd != message_id("job 12 <retry>@farm2", 1, "x")
    assert " " not in odd and odd.count("<") == 1 and odd.count("@") == 1
