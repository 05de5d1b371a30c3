"""Execute's invocation-id checks in a fleet: another replica's firings and runs count too.

They are asked of the shared store in one statement (``executor.runs.invocation_ids``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from executor.migrations import open_postgres
from executor.model import CallbackSpec, Invocation, Limits, Outcome, RunResult
from executor.runs import run_notes
from executor.runs.invocation_ids import PRUNE_EVERY_RENEWALS, FleetIds, IdGate
from executor.runs.outbox import Outbox
from executor.runs.outbox_fences import Alongside
from executor.storage import StoreRefused
from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.client import build_execute_request
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.fleet.harness import LEASE_S, fleet, two_replicas
from tests.fleet.test_store import RecordingReceiver
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service


async def test_an_id_another_replica_used_is_refused_for_another_run_and_kept_for_a_retry(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_replicas(tmp_path, pg_url) as (first, second):
        job = {"id": 72_000, "name": "ids", "user": "fleet"}
        ran = await first.execute_callback(
            language="python", code="print('one')", job=job, invocation_id="fleet-id-1"
        )
        assert ran.outcome == executor_pb2.OUTCOME_SUCCEEDED

        # A retry of the same callback at the other replica runs again.
        again = await second.execute_callback(
            language="python", code="print('one')", job=job, invocation_id="fleet-id-1"
        )
        assert again.outcome == executor_pb2.OUTCOME_SUCCEEDED

        # Another job's run under that id is refused, whichever replica is asked.
        for client in (first, second):
            with pytest.raises(ExecutorRpcError) as refused:
                await client.execute_callback(
                    language="python",
                    code="print('two')",
                    job={**job, "id": 72_001},
                    invocation_id="fleet-id-1",
                )
            assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
            assert "already recorded for another run" in refused.value.details


def in_progress(invocation_id: str) -> str:
    """What a single executor answers an Execute whose id a run still in progress has."""
    return (
        f"a run with invocation_id {invocation_id!r} is still in progress; retry once it has ended"
    )


async def test_an_id_running_at_another_replica_is_refused_as_in_progress_until_it_has_ended(
    tmp_path: Path, pg_url: str
) -> None:
    # Before, both ran: the second callback's qb.unblock was answered from the first one's
    # action (same invocation id, same position) and never applied, and the history could
    # keep the run whose effect was dropped (probe 71).
    invocation_id = "fleet-in-progress"
    code = "print(qb.unblock(qb.jobid()))"
    async with (
        fleet(tmp_path, pg_url, replicas=2) as group,
        ExecutorClient(group.address(0)) as first,
        ExecutorClient(group.address(1)) as second,
    ):
        farm = group.endpoint.store
        mine, other = farm.submit(
            [{"name": n, "user": "fleet", "status": "blocked"} for n in ("mine", "other")]
        )
        # The first run waits for its unblock's answer until the test lets it go on.
        first_may_end = group.counting.hold_answer(invocation_id, 1)
        running = asyncio.create_task(
            first.execute_callback(
                language="python",
                code=code,
                job={"id": mine["id"], "user": "fleet"},
                invocation_id=invocation_id,
            )
        )
        try:
            assert await eventually(lambda: group.counting.actions[invocation_id] == 1)
            # A resend of the same run, and another job's run, as one executor answers both.
            for job in (mine, other):
                with pytest.raises(ExecutorRpcError) as refused:
                    await second.execute_callback(
                        language="python",
                        code=code,
                        job={"id": job["id"], "user": "fleet"},
                        invocation_id=invocation_id,
                    )
                assert refused.value.code == grpc.StatusCode.UNAVAILABLE
                assert refused.value.details == in_progress(invocation_id)
            # A run longer than a lease keeps its claim: its replica renews it.
            with psycopg.connect(pg_url, autocommit=True) as db:
                row = db.execute(
                    "SELECT lease_until FROM execute_claims WHERE invocation_id = %s",
                    (invocation_id,),
                ).fetchone()
            assert row is not None
            assert await eventually(lambda: time.time() > row[0] + 0.5, timeout_s=LEASE_S * 2)
            with pytest.raises(ExecutorRpcError) as refused:
                await second.execute_callback(
                    language="python",
                    code=code,
                    job={"id": other["id"], "user": "fleet"},
                    invocation_id=invocation_id,
                )
            assert refused.value.details == in_progress(invocation_id)
        finally:
            first_may_end.set()
        ran = await running
        assert (ran.outcome, ran.stdout) == (executor_pb2.OUTCOME_SUCCEEDED, "1\n")

        # Ended: another job's run is ALREADY_EXISTS, and that refusal holds the id for
        # nothing: a resend at the other replica runs at once.
        with pytest.raises(ExecutorRpcError) as refused:
            await second.execute_callback(
                language="python",
                code=code,
                job={"id": other["id"], "user": "fleet"},
                invocation_id=invocation_id,
            )
        assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
        again = await first.execute_callback(
            language="python",
            code=code,
            job={"id": mine["id"], "user": "fleet"},
            invocation_id=invocation_id,
        )
        assert again.outcome == executor_pb2.OUTCOME_SUCCEEDED
        assert farm.job(int(other["id"]))["status"] == "blocked"
        kept = await first.get_run(invocation_id)  # it ran there: read after its own writes
        assert kept.job_id == int(mine["id"])


async def test_the_id_of_a_run_at_a_replica_that_died_is_free_once_its_lease_has_run_out(
    tmp_path: Path, pg_url: str
) -> None:
    invocation_id = "fleet-dead-claim"
    code = "print(qb.unblock(qb.jobid()))"
    async with fleet(tmp_path, pg_url, replicas=2) as group:
        (job,) = group.endpoint.store.submit([{"name": "j", "user": "fleet", "status": "blocked"}])
        never = group.counting.hold_answer(invocation_id, 1)
        async with ExecutorClient(group.address(0)) as first:
            running = asyncio.create_task(
                first.execute_callback(
                    language="python",
                    code=code,
                    job={"id": job["id"], "user": "fleet"},
                    invocation_id=invocation_id,
                )
            )
            assert await eventually(lambda: group.counting.actions[invocation_id] == 1)
            await group.kill(0)
            with pytest.raises(ExecutorRpcError):
                await running
        never.set()
        refusals: set[str] = set()
        async with ExecutorClient(group.address(1)) as second:

            async def resent() -> executor_pb2.ExecuteResponse | None:
                try:
                    return await second.execute_callback(
                        language="python",
                        code=code,
                        job={"id": job["id"], "user": "fleet"},
                        invocation_id=invocation_id,
                    )
                except ExecutorRpcError as err:  # until the dead replica's lease runs out
                    refusals.add(err.details)
                    return None

            ran = await eventually(resent, timeout_s=30, interval_s=0.2)
        assert ran is not None, refusals
        assert ran.outcome == executor_pb2.OUTCOME_SUCCEEDED
        assert refusals <= {in_progress(invocation_id)}


async def test_the_id_of_a_firing_running_at_another_replica_is_refused(
    tmp_path: Path, pg_url: str
) -> None:
    async with two_replicas(tmp_path, pg_url) as (first, second):
        await first.register_job(
            {
                "id": 72_100,
                "name": "slow",
                "user": "fleet",
                "callbacks": [
                    {
                        "triggers": "complete-job-self",
                        "language": "python",
                        "code": "import time; time.sleep(4)",
                    }
                ],
            }
        )
        reply = await first.publish_event(
            name="complete", type="job", job_id=72_100, event_id="slow-72100"
        )
        (firing,) = reply.fired

        with pytest.raises(ExecutorRpcError) as refused:
            await second.execute_callback(
                language="python",
                code="print('intruder')",
                job={"id": 72_100, "name": "slow", "user": "fleet"},
                invocation_id=firing.invocation_id,
            )
        assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert "is a fired callback's, which has not run to its end yet" in refused.value.details


async def test_the_id_of_a_run_fired_at_another_replica_is_refused_once_it_has_ended(
    tmp_path: Path, pg_url: str
) -> None:
    # Before, an Execute matching the ended fired run's job, callback id, language and
    # triggers was taken for its repeat, and replaced its record with its own code's.
    async with two_replicas(tmp_path, pg_url) as (first, second):
        await first.register_job(
            {
                "id": 72_200,
                "name": "done",
                "user": "fleet",
                "callbacks": [
                    {"triggers": "complete-job-self", "language": "python", "code": "print(1)"}
                ],
            }
        )
        reply = await first.publish_event(
            name="complete", type="job", job_id=72_200, event_id="done-72200", wait=True
        )
        (firing,) = reply.fired

        async def recorded() -> bool:  # the history is written just after the answer
            runs = await second.list_runs(executor_pb2.ListRunsRequest(job_id=72_200))
            return firing.invocation_id in {run.invocation_id for run in runs.runs}

        assert await eventually(recorded)
        request = build_execute_request(
            language=firing.language,
            code="print('intruder')",
            job={"id": 72_200, "name": "done", "user": "fleet"},
            invocation_id=firing.invocation_id,
        )
        request.callback.id = firing.callback_id
        request.callback.triggers = firing.triggers

        for client in (second, first):
            with pytest.raises(ExecutorRpcError) as refused:
                await client.execute(request)
            assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
            assert f"{firing.invocation_id!r} is a fired callback's run (job 72200, " in (
                refused.value.details
            )
        kept = await second.get_run(firing.invocation_id)
        assert kept.result.stdout == "1\n"


async def test_a_nul_in_a_key_looked_up_is_invalid_not_internal(
    tmp_path: Path, pg_url: str
) -> None:
    # PostgreSQL's text cannot hold U+0000: a lookup by such a key failed INTERNAL there.
    nul = "holds a NUL character (U+0000), which no stored text may hold"
    async with two_replicas(tmp_path, pg_url) as (first, _):
        await first.register_job({"id": 72_300, "name": "keys", "user": "fleet"})
        calls = {
            f"invocation_id {nul}": first.get_run("run-\x00"),
            f"invocation_ids[1] {nul}": first.retry_dead_letters(["ok", "x\x00"]),
            f"work_name {nul}": first.explain_callbacks(72_300, work_name="w\x00"),
        }
        for expected, call in calls.items():
            with pytest.raises(ExecutorRpcError) as refused:
                await call
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details
            assert refused.value.details == expected


async def test_a_fired_run_ended_at_another_replica_and_not_in_the_history_yet_is_refused(
    tmp_path: Path, pg_url: str
) -> None:
    # Its firing is done and its history record is written a moment after: for that
    # moment only its outbox row (and the notes it keeps) named it, and an Execute at
    # another replica ran under its id, replacing its result (probe 64).
    invocation_id = "fired-in-the-gap"
    fired = Invocation(
        invocation_id=invocation_id,
        callback=CallbackSpec(code="", language="python", triggers="complete-job-self", id=1),
        job={"id": 72_400},
        limits=Limits(30.0, 30.0, 1 << 30, 1 << 20, 64, 1 << 20),
        source="job",
    )
    notes = run_notes.encode(fired, RunResult(invocation_id, Outcome.SUCCEEDED), time.time())
    async with two_replicas(tmp_path, pg_url) as (first, _):
        with psycopg.connect(pg_url, autocommit=True) as db:
            db.execute(
                "INSERT INTO outbox (key, payload, created_at, ended_at, notes)"
                " VALUES (%s, %s, %s, %s, %s)",
                (invocation_id, b"reported", time.time(), time.time(), notes),
            )
        request = build_execute_request(
            language="python",
            code="print('intruder')",
            job={"id": 72_400, "name": "gap", "user": "fleet"},
            invocation_id=invocation_id,
        )
        request.callback.id = 1
        request.callback.triggers = "complete-job-self"
        with pytest.raises(ExecutorRpcError) as refused:
            await first.execute(request)
        assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert f"{invocation_id!r} is a fired callback's run (job 72400, " in refused.value.details


class CountingConnection:
    """FleetIds' connection, a real one, recording each statement it is given."""

    def __init__(self, pg_url: str) -> None:
        self.db = open_postgres(pg_url, application_name="test-fleet-ids")
        self.statements: list[str] = []

    @contextlib.contextmanager
    def __call__(self) -> Iterator[CountingConnection]:
        yield self

    def execute(self, sql: str, parameters: Sequence[object] = ()) -> Any:
        self.statements.append(sql)
        return self.db.execute(sql, parameters)

    def executemany(self, sql: str, parameters: Iterable[Any]) -> Any:
        self.statements.append(sql)
        return self.db.executemany(sql, parameters)

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def close(self) -> None:
        self.db.close()


def claims_and_results(pg_url: str, keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Which of ``keys`` the shared store has claims on, and results for."""
    with psycopg.connect(pg_url, autocommit=True) as db:
        claims = db.execute(
            "SELECT invocation_id FROM execute_claims WHERE invocation_id = ANY(%s) ORDER BY 1",
            (list(keys),),
        ).fetchall()
        results = db.execute(
            "SELECT key FROM outbox WHERE key = ANY(%s) ORDER BY 1", (list(keys),)
        ).fetchall()
    return [row[0] for row in claims], [row[0] for row in results]


async def test_an_executes_claim_is_given_back_in_the_statement_that_commits_its_result(
    pg_url: str,
) -> None:
    # The release was a round trip of its own after the result's commit, before the answer:
    # each Execute naming an id waited for PostgreSQL three times, not twice.
    connection = CountingConnection(pg_url)
    ids = FleetIds(connection, lambda _: None, owner="replica-a", lease_s=60)
    outbox = Outbox(pg_url, RecordingReceiver())
    keys = ("alone", "together-1", "together-2")
    try:
        for invocation_id in keys:
            assert ids.claim(invocation_id).claimed
        assert claims_and_results(pg_url, keys) == (list(keys), [])

        await outbox.commit("alone", b"r", None, None, ids.release_alongside("alone"))
        # Ending in one turn of the loop, two runs share a transaction, and so do their claims.
        await asyncio.gather(
            *(
                outbox.commit(key, b"r", None, None, ids.release_alongside(key))
                for key in ("together-1", "together-2")
            )
        )
        assert claims_and_results(pg_url, keys) == ([], list(keys))
        connection.statements.clear()
        for invocation_id in keys:
            ids.released(invocation_id)
            ids.release(invocation_id)
        assert connection.statements == []  # nothing left to give back
        # Released, the ids are no longer this replica's: a claim after is a claim anew.
        assert ids.release_alongside("alone") is None
        assert ids.claim("alone").claimed
    finally:
        connection.db.close()
        await outbox.close()


async def test_a_result_whose_alongside_statement_fails_is_not_committed(pg_url: str) -> None:
    outbox = Outbox(pg_url, RecordingReceiver())
    try:
        failing = Alongside("DELETE FROM no_such_table WHERE invocation_id = ? RETURNING 1", ("x",))
        with pytest.raises(StoreRefused, match='relation "no_such_table" does not exist;'):
            await outbox.commit("not-alone", b"r", None, None, failing)
        assert claims_and_results(pg_url, ["not-alone"]) == ([], [])
        # The claim a refused commit did not give back is given back by the call, on its own.
        connection = CountingConnection(pg_url)
        ids = FleetIds(connection, lambda _: None, owner="replica-a", lease_s=60)
        try:
            assert ids.claim("kept").claimed
            ids.release("kept")
            assert claims_and_results(pg_url, ["kept"]) == ([], [])
        finally:
            connection.db.close()
    finally:
        await outbox.close()


class ClaimUnread(CountingConnection):
    """Runs the claim's statement, then fails reading its row (as a row not UTF-8 did)."""

    def execute(self, sql: str, parameters: Sequence[object] = ()) -> Any:
        answer = super().execute(sql, parameters)
        if sql.startswith("WITH claim AS"):
            raise UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "the row could not be read")
        return answer


def test_a_claim_whose_row_cannot_be_read_is_given_back(pg_url: str) -> None:
    # It stayed in execute_claims, neither renewed nor given back (probe 80).
    connection = ClaimUnread(pg_url)
    ids = FleetIds(connection, lambda _: None, owner="replica-a", lease_s=60)
    try:
        with pytest.raises(UnicodeDecodeError):
            ids.claim("unread")
        assert claims_and_results(pg_url, ["unread"]) == ([], [])
    finally:
        connection.db.close()


def test_claims_long_past_their_lease_are_deleted_by_any_replica(pg_url: str) -> None:
    # A replica killed mid-run, or a release that met an outage: left for good (probe 80).
    connection = CountingConnection(pg_url)
    ids = FleetIds(connection, lambda _: None, owner="replica-b", lease_s=60, clock=time.time)
    now = time.time()
    try:
        connection.db.execute(
            "INSERT INTO execute_claims VALUES (?, 'dead', ?), (?, 'stalled', ?)",
            ("long-dead", now - 3600, "lately", now - 30),
        )
        assert ids.claim("mine").claimed
        for _ in range(PRUNE_EVERY_RENEWALS):
            ids._renew()
        claims = claims_and_results(pg_url, ["long-dead", "lately", "mine"])[0]
        assert claims == ["lately", "mine"]  # a lease just run out may be a slow clock's
    finally:
        connection.db.close()


@contextlib.contextmanager
def ids_with_ahead(
    pg_url: str, clock: Any = time.time
) -> Iterator[tuple[FleetIds, CountingConnection]]:
    """FleetIds as a replica makes them: the loop's connection, and one for claims sent ahead."""
    connection = CountingConnection(pg_url)
    ahead = open_postgres(pg_url, application_name="test-claims-ahead")
    try:
        yield (
            FleetIds(
                connection, lambda _: None, owner="replica-a", lease_s=60, clock=clock, ahead=ahead
            ),
            connection,
        )
    finally:
        ahead.close()
        connection.db.close()


def test_a_claim_sent_ahead_is_taken_as_the_claim_and_only_one_is_ahead_at_a_time(
    pg_url: str,
) -> None:
    with ids_with_ahead(pg_url) as (ids, connection):
        assert ids.claim_ahead("first")
        # The connection of its own is taken: claimed when asked.
        assert not ids.claim_ahead("second")
        assert claims_and_results(pg_url, ["first", "second"])[0] == ["first"]

        assert ids.claim("second").claimed
        assert [s[:13] for s in connection.statements] == ["WITH claim AS"]
        first = ids.claim("first", ahead=True)
        assert first.claimed and not first.running
        assert len(connection.statements) == 1  # its answer came on the other connection
        ids.release("first")
        ids.release("second")
        assert claims_and_results(pg_url, ["first", "second"]) == ([], [])


def test_a_claim_sent_ahead_sees_another_replicas_claim(pg_url: str) -> None:
    others = CountingConnection(pg_url)
    try:
        other = FleetIds(others, lambda _: None, owner="replica-b", lease_s=60)
        assert other.claim("contested").claimed
        with ids_with_ahead(pg_url) as (ids, _):
            assert ids.claim_ahead("contested")
            use = ids.claim("contested", ahead=True)
            assert use.running and not use.claimed
    finally:
        others.close()


def test_a_claim_sent_ahead_whose_call_never_asks_for_it_is_given_back(pg_url: str) -> None:
    # A call refused before its run (at capacity, say) never opens its gate.
    with ids_with_ahead(pg_url) as (ids, _):
        assert ids.claim_ahead("refused")
        ids.drop_ahead("refused")
        assert claims_and_results(pg_url, ["refused"]) == ([], [])
        assert ids.claim_ahead("next")  # the connection is free again
        assert claims_and_results(pg_url, ["next"])[0] == ["next"]
        ids.drop_ahead("next")


def test_a_claim_sent_ahead_too_long_ago_is_made_again(pg_url: str) -> None:
    # Its lease may have run out while its run waited for a slot, and another replica
    # claimed the id meanwhile: an answer older than a renewal period is not trusted.
    now = [time.time()]
    with ids_with_ahead(pg_url, clock=lambda: now[0]) as (ids, connection):
        assert ids.claim_ahead("waited")
        now[0] += 60 / 3 + 1
        assert ids.claim("waited", ahead=True).claimed
        assert [s[:13] for s in connection.statements] == ["WITH claim AS"]
        ids.release("waited")


def test_a_claim_sent_ahead_whose_connection_is_lost_is_made_again(pg_url: str) -> None:
    with ids_with_ahead(pg_url) as (ids, connection):
        with psycopg.connect(pg_url) as admin:
            # The claim waits for this uncommitted row's lock, unanswered, until...
            admin.execute("INSERT INTO execute_claims VALUES ('lost', 'replica-a', 0)")
            assert ids.claim_ahead("lost")
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'test-claims-ahead'"
            )  # ... its connection is lost
            admin.rollback()
        use = ids.claim("lost", ahead=True)
        assert use.claimed  # on the loop's connection
        assert [s[:13] for s in connection.statements] == ["WITH claim AS"]
        ids.release("lost")
        # The connection of its own is made again meanwhile, never waited for: until it
        # is there, a claim is made on the loop's connection, as its gate opens.
        deadline = time.monotonic() + 10
        while not ids.claim_ahead("after") and time.monotonic() < deadline:
            time.sleep(0.05)
        sent = len(connection.statements)
        assert ids.claim("after", ahead=True).claimed
        assert len(connection.statements) == sent  # the claim came ahead
        ids.release("after")


def test_a_call_refused_before_its_gate_leaves_the_claim_sent_ahead_for_another_call_alone(
    pg_url: str,
) -> None:
    # The second call under an id, refused by the dispatcher (a run of the id in progress
    # here), gave back the first call's claim sent ahead: the other replica's calls then
    # took the id, and every call was refused with nothing run (probe 90).
    def invocation() -> Invocation:
        return Invocation(
            invocation_id="twice",
            callback=CallbackSpec(language="python", code="pass"),
            job={"id": 1},
            limits=Limits(30.0, 30.0, 1 << 30, 1 << 20, 64, 1 << 20),
        )

    with ids_with_ahead(pg_url) as (ids, _):
        first = IdGate(ids, invocation())
        second = IdGate(ids, invocation())
        second.release()  # refused before its gate opened
        assert claims_and_results(pg_url, ["twice"])[0] == ["twice"]
        first()
        assert claims_and_results(pg_url, ["twice"])[0] == ["twice"]
        first.release()
        assert claims_and_results(pg_url, ["twice"]) == ([], [])


def test_a_claim_sent_ahead_whose_row_cannot_be_read_is_given_back(pg_url: str) -> None:
    # As a claim made on the loop's connection is (probe 80): not left to its lease.
    with ids_with_ahead(pg_url) as (ids, _):
        assert ids.claim_ahead("unread-ahead")
        ahead = ids._ahead_db
        assert ahead is not None
        taken = ahead.take_sent_row

        def unreadable() -> Any:
            taken()
            raise UnicodeDecodeError("utf-8", b"\xe9", 0, 1, "the row could not be read")

        ahead.take_sent_row = unreadable  # type: ignore[method-assign]
        with pytest.raises(UnicodeDecodeError):
            ids.claim("unread-ahead", ahead=True)
        assert claims_and_results(pg_url, ["unread-ahead"]) == ([], [])
