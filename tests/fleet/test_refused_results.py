"""A fleet's PostgreSQL that refuses a result's row for a reason of its own, not an outage.

A privilege taken from the executor's role, a trigger or a constraint an admin added:
the result was lost for good, the caller was told FAILED_PRECONDITION or INTERNAL, and
the replica stayed SERVING, so each later Execute ran its callback and lost its result
too (probe 80). Now the result is owed as for an outage, the replica runs nothing until
the store takes a result's row again (its probe tries one), and the owed result then
reaches the supervisor.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import psycopg
import pytest

from supervisor_client import ExecutorClient, RetryableError
from tests.fleet.harness import fleet
from tests.helpers.health import NOT_SERVING, SERVING, health_status
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

REFUSE = """
CREATE OR REPLACE FUNCTION refuse_results() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'results are refused by an admin''s trigger'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_results BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_results();
"""


async def _health_is(channel: grpc.aio.Channel, status: int) -> bool:
    try:
        return await health_status(channel) == status
    except grpc.aio.AioRpcError:
        return False


async def test_a_result_the_store_refuses_is_owed_and_nothing_runs_until_it_takes_one(
    tmp_path: Path, pg_url: str
) -> None:
    async with fleet(tmp_path, pg_url, replicas=1) as group:
        channel = group.channel(group.address(0))
        (job,) = group.endpoint.store.submit([{"name": "refused", "user": "alice"}])
        async with ExecutorClient(group.address(0)) as client:
            await client.execute_callback(language="python", code="pass", job=job)
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute(REFUSE)
            try:
                with pytest.raises(RetryableError) as owed:
                    await client.execute_callback(
                        language="python", code="print('ran')", job=job, invocation_id="owed-1"
                    )
                assert owed.value.code == grpc.StatusCode.UNAVAILABLE
                assert "the PostgreSQL store refused a write" in owed.value.details
                assert "results are refused by an admin's trigger" in owed.value.details
                assert "once the storage takes it" in owed.value.details
                assert await eventually(lambda: _health_is(channel, NOT_SERVING), timeout_s=10)
                # The probe tries a result's row: answering SELECT 1 is not enough.
                assert not await eventually(
                    lambda: _health_is(channel, SERVING), timeout_s=3, interval_s=0.5
                )
                with pytest.raises(RetryableError) as refused:
                    await client.execute_callback(language="python", code="pass", job=job)
                assert "runs nothing" in refused.value.details
            finally:
                with psycopg.connect(pg_url, autocommit=True) as admin:
                    admin.execute("DROP TRIGGER IF EXISTS refuse_results ON outbox")
            assert await eventually(lambda: _health_is(channel, SERVING), timeout_s=15)
            assert await eventually(lambda: group.counting.applied["owed-1"] == 1, timeout_s=15)
            await client.execute_callback(language="python", code="pass", job=job)
