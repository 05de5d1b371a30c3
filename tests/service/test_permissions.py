"""Permissions: every qb action carries the callback's owner, and the supervisor applies Qube's mask.

The owner is the callback's ``user``, else the job's. Non-admins may act on their own
jobs with the verbs ``supervisor_default_security`` grants; admins ("root", "admin") on
any job. A refused action raises ``qb.PermissionDenied`` in the callback (``qb::Error``
of kind PermissionDenied in Perl), changes nothing, and is recorded with ok=false.
"""

from __future__ import annotations

from typing import Any

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from supervisor_client.reference.states import DEFAULT_SECURITY, PERMISSION_BITS
from tests.conftest import Stack

pytestmark = [pytest.mark.service, pytest.mark.timeout(60)]

Outcome = executor_pb2.Outcome


def _blocked_job(stack: Stack, user: str) -> int:
    (job,) = stack.supervisor.submit(
        [
            {
                "name": f"{user}-job",
                "user": user,
                "status": "blocked",
                "agenda": [{"name": str(n), "status": "blocked"} for n in range(1, 4)],
            }
        ]
    )
    return int(job["id"])


@pytest.fixture
def alice_job(stack_warm: Stack) -> int:
    return _blocked_job(stack_warm, "alice")


@pytest.fixture
def bob_job(stack_warm: Stack) -> int:
    return _blocked_job(stack_warm, "bob")


async def run(
    stack: Stack, job_id: int, code: str, *, owner: str = "", language: str = "python"
) -> executor_pb2.ExecuteResponse:
    return await stack.client.execute_callback(
        language=language,
        code=code,
        job=stack.supervisor.job(job_id),
        owner=owner,
        limits={"wall_seconds": 20},
    )


def _state(stack: Stack, job_id: int) -> tuple[str, list[str]]:
    job: dict[str, Any] = stack.supervisor.job(job_id)
    return job["status"], [w["status"] for w in job["agenda"]]


async def test_owner_may_unblock_their_own_job(stack_warm: Stack, alice_job: int) -> None:
    response = await run(stack_warm, alice_job, "print(qb.unblock(qb.jobid()))", owner="alice")

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    assert response.stdout.strip() == "1"
    assert stack_warm.supervisor.job(alice_job)["status"] == "pending"
    (action,) = response.actions
    assert (action.verb, action.target, action.ok) == ("unblock", str(alice_job), True)
    # The supervisor saw who acted.
    assert any(
        "unblock by alice" in entry["text"] for entry in stack_warm.supervisor.history(alice_job)
    )


async def test_acting_on_someone_elses_job_raises_permission_denied(
    stack_warm: Stack, alice_job: int, bob_job: int
) -> None:
    before = _state(stack_warm, bob_job)
    code = (
        "try:\n"
        f"    qb.unblock({bob_job})\n"
        "    print('unblocked')\n"
        "except qb.PermissionDenied as err:\n"
        "    print(type(err).__name__, isinstance(err, qb.QbError), err)\n"
    )
    response = await run(stack_warm, alice_job, code, owner="alice")

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    kind, is_qb_error, message = response.stdout.strip().split(" ", 2)
    assert (kind, is_qb_error) == ("PermissionDenied", "True")
    assert message == f"alice may not unblock job {bob_job} owned by bob"
    assert _state(stack_warm, bob_job) == before
    (action,) = response.actions
    assert (action.verb, action.target, action.ok) == ("unblock", str(bob_job), False)
    assert "PermissionDenied" in action.message and "alice may not unblock" in action.message


async def test_uncaught_permission_denied_fails_the_callback(
    stack_warm: Stack, alice_job: int, bob_job: int
) -> None:
    response = await run(stack_warm, alice_job, f"qb.kill({bob_job})", owner="alice")

    assert response.outcome == Outcome.OUTCOME_FAILED
    assert response.failure.exception_type == "PermissionDenied"
    assert f"alice may not kill job {bob_job} owned by bob" in response.failure.message
    assert stack_warm.supervisor.job(bob_job)["status"] == "blocked"
    assert [a.ok for a in response.actions] == [False]


@pytest.mark.parametrize(
    "call",
    [
        "qb.block({bob})",
        "qb.kill({bob})",
        "qb.remove({bob})",
        "qb.complete({bob})",
        "qb.retry({bob})",
        "qb.suspend({bob})",
        "qb.fail([{bob}])",
        "qb.workunblock('{bob}:1')",
        "qb.workcomplete('{bob}:1-3')",
        "qb.workkill(['{bob}:2'])",
        # The Python qb module binds no subjob verbs (Perl's does); the host API has them.
        "qb._call('subjobkill', '{bob}')",
    ],
)
async def test_every_verb_on_someone_elses_job_is_refused(
    stack_warm: Stack, alice_job: int, bob_job: int, call: str
) -> None:
    before = _state(stack_warm, bob_job)
    code = (
        "try:\n"
        f"    {call.format(bob=bob_job)}\n"
        "    print('allowed')\n"
        "except qb.PermissionDenied as err:\n"
        "    print('denied', err)\n"
    )
    response = await run(stack_warm, alice_job, code, owner="alice")

    assert response.stdout.startswith("denied alice may not"), (
        response.stdout + response.failure.message
    )
    assert _state(stack_warm, bob_job) == before
    assert response.actions and not response.actions[-1].ok


async def test_a_list_with_a_foreign_job_leaves_the_foreign_job_alone(
    stack_warm: Stack, alice_job: int, bob_job: int
) -> None:
    code = (
        "try:\n"
        f"    qb.unblock([{alice_job}, {bob_job}])\n"
        "except qb.PermissionDenied as err:\n"
        "    print('denied', err)\n"
    )
    response = await run(stack_warm, alice_job, code, owner="alice")

    assert response.stdout.startswith("denied"), response.stdout
    assert stack_warm.supervisor.job(bob_job)["status"] == "blocked"
    assert not response.actions[-1].ok


@pytest.mark.parametrize("admin", ["root", "admin"])
async def test_an_admins_callback_may_act_on_any_job(
    stack_warm: Stack, alice_job: int, bob_job: int, admin: str
) -> None:
    code = f"print(qb.unblock({bob_job}), qb.workunblock('{alice_job}:2'))"
    response = await run(stack_warm, alice_job, code, owner=admin)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    assert response.stdout.split() == ["1", "1"]
    assert stack_warm.supervisor.job(bob_job)["status"] == "pending"
    assert _state(stack_warm, alice_job)[1] == ["blocked", "pending", "blocked"]
    assert all(action.ok for action in response.actions)
    assert any(f"unblock by {admin}" in e["text"] for e in stack_warm.supervisor.history(bob_job))


async def test_without_a_callback_user_the_jobs_owner_acts(
    stack_warm: Stack, alice_job: int, bob_job: int
) -> None:
    on_alices = await run(
        stack_warm,
        alice_job,
        f"try:\n    qb.unblock({bob_job})\nexcept qb.PermissionDenied as err:\n    print(err)",
    )
    on_bobs = await run(stack_warm, bob_job, "print(qb.unblock(qb.jobid()), qb.callback()['user'])")

    assert on_alices.stdout.strip() == f"alice may not unblock job {bob_job} owned by bob"
    assert on_bobs.stdout.split() == ["1", "bob"]
    assert stack_warm.supervisor.job(bob_job)["status"] == "pending"


async def test_a_callback_owned_by_someone_else_may_not_act_on_the_job_it_is_attached_to(
    stack_warm: Stack, bob_job: int
) -> None:
    # alice's callback on bob's job: the owner is alice, so bob's job is out of reach.
    response = await run(stack_warm, bob_job, "qb.unblock(qb.jobid())", owner="alice")

    assert response.outcome == Outcome.OUTCOME_FAILED
    assert response.failure.exception_type == "PermissionDenied"
    assert stack_warm.supervisor.job(bob_job)["status"] == "blocked"


async def test_perl_gets_a_permission_denied_error(
    stack_warm: Stack, alice_job: int, bob_job: int
) -> None:
    code = (
        f'eval {{ qb::unblock({bob_job}); 1 }} and print "allowed\\n";\n'
        "print ref($@), ' ', $@->kind, ' ', $@->message, \"\\n\" if $@;\n"
    )
    response = await run(stack_warm, alice_job, code, owner="alice", language="perl")

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message + response.stderr
    assert response.stdout.strip() == (
        f"qb::Error PermissionDenied alice may not unblock job {bob_job} owned by bob"
    )
    assert stack_warm.supervisor.job(bob_job)["status"] == "blocked"
    assert [a.ok for a in response.actions] == [False]


async def test_qube_code_strings_act_as_the_callback_owner_too(
    stack_warm: Stack, bob_job: int
) -> None:
    denied = await run(stack_warm, bob_job, "unblock-self", owner="alice", language="qube")
    allowed = await run(stack_warm, bob_job, "unblock-self", owner="bob", language="qube")

    assert denied.outcome == Outcome.OUTCOME_FAILED
    assert "alice may not unblock" in denied.failure.message
    assert [a.ok for a in denied.actions] == [False]
    assert allowed.outcome == Outcome.OUTCOME_SUCCEEDED, allowed.failure.message
    assert stack_warm.supervisor.job(bob_job)["status"] == "pending"


async def test_the_security_mask_limits_what_owners_may_do(
    stack_warm: Stack, alice_job: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A site whose supervisor_default_security leaves out "unblock": owners may not unblock
    # even their own jobs; admins still may.
    monkeypatch.setattr(
        stack_warm.supervisor, "_security", DEFAULT_SECURITY & ~PERMISSION_BITS["unblock"]
    )

    owner = await run(stack_warm, alice_job, "qb.unblock(qb.jobid())", owner="alice")
    block_ok = await run(stack_warm, alice_job, "print(qb.block(qb.jobid()))", owner="alice")
    admin = await run(stack_warm, alice_job, "print(qb.unblock(qb.jobid()))", owner="admin")

    assert owner.outcome == Outcome.OUTCOME_FAILED
    assert owner.failure.exception_type == "PermissionDenied"
    assert "alice may not unblock" in owner.failure.message
    assert block_ok.outcome == Outcome.OUTCOME_SUCCEEDED, block_ok.failure.message
    assert admin.outcome == Outcome.OUTCOME_SUCCEEDED, admin.failure.message
    assert stack_warm.supervisor.job(alice_job)["status"] == "pending"
