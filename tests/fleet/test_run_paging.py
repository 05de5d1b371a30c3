"""Paging through a fleet's run history in PostgreSQL: the SQLite checks, and across replicas."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from executor.migrations import migrate
from executor.runs.history import RunHistory
from executor.runs.paging import RunFilters, decode_page_token, encode_page_token
from supervisor_client import ExecutorRpcError
from tests.fleet.harness import two_replicas
from tests.helpers.postgres import PostgresServer
from tests.unit.test_run_paging import CHECKS, record

pytestmark = pytest.mark.service

_databases = itertools.count()


@pytest.fixture
def pg_history_url(postgres: PostgresServer) -> str:
    """A migrated database of this test's own: the checks count on an empty history."""
    url = postgres.create_database(f"paging_{next(_databases)}")
    migrate(url)
    return url


@pytest.fixture
def replica_histories(pg_history_url: str) -> Iterator[tuple[RunHistory, RunHistory]]:
    """Two replicas' histories of one fleet (each its own connection, as each replica has)."""
    first = RunHistory(pg_history_url, retention_days=1e6, max_runs=1000)
    second = RunHistory(pg_history_url, retention_days=1e6, max_runs=1000)
    yield first, second
    first.close()
    second.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_postgresql_history_pages(
    replica_histories: tuple[RunHistory, RunHistory], check: Callable[[RunHistory], None]
) -> None:
    check(replica_histories[0])


def test_a_page_token_of_one_replica_pages_on_at_another(
    replica_histories: tuple[RunHistory, RunHistory],
) -> None:
    """Both replicas record, with ties in start time; pages alternate between them.

    The tie-breaker is the row id PostgreSQL's one sequence gives, whichever replica
    wrote the row: each reads every row with the same key, so no page repeats or skips.
    """
    first, second = replica_histories
    for n in range(12):
        record(first if n % 2 else second, f"r-{n}", 100.0 + n // 3)  # three per start time
    filters = RunFilters()
    everything = [run.invocation_id for run in first.list_runs(limit=100)]
    assert everything == [run.invocation_id for run in second.list_runs(limit=100)]
    listed, token, turn = [], "", itertools.cycle([first, second])
    while True:
        history = next(turn)
        after = decode_page_token(token, filters) if token else None
        page = history.list_page(filters, limit=2, after=after)
        listed += [run.invocation_id for run in page.runs]
        token = encode_page_token(page.next, filters) if page.next else ""
        if not token:
            break
    assert listed == everything and len(set(listed)) == 12


async def test_list_runs_pages_across_a_fleets_replicas(
    tmp_path: Path, pg_history_url: str
) -> None:
    """ListRuns over gRPC: a first page from one replica, the rest from the other."""
    writer = RunHistory(pg_history_url, retention_days=1e6, max_runs=1000)
    recent = time.time() - 60  # within the replicas' retention, which they prune to at start
    try:
        for n in range(5):
            record(writer, f"grpc-{n}", recent + n, job_id=4242)
        record(writer, "other-job", recent + 2.5, job_id=4343)
    finally:
        writer.close()
    async with two_replicas(tmp_path, pg_history_url) as (first, second):
        page = await first.list_runs(job_id=4242, limit=2)
        listed = [run.invocation_id for run in page.runs]
        while page.next_page_token:
            page = await second.list_runs(job_id=4242, limit=2, page_token=page.next_page_token)
            listed += [run.invocation_id for run in page.runs]
        assert listed == [f"grpc-{n}" for n in range(4, -1, -1)]

        token = (await first.list_runs(job_id=4242, limit=2)).next_page_token
        with pytest.raises(ExecutorRpcError) as refused:
            await second.list_runs(job_id=4343, limit=2, page_token=token)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token was made for other filters (job_id 4242)" in refused.value.details
        with pytest.raises(ExecutorRpcError) as refused:
            await second.list_runs(page_token="not-a-token")
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "is not a ListRuns page token" in refused.value.details
