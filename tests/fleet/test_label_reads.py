"""On PostgreSQL too, an event's near misses and a registration's labels are index lookups.

Whether a job of its pgrp holds a label atom's label is read in the partial index
``jobs_label`` (``label != ''`` spelled out, which the planner does not infer from
``= a.label``): without it the planner read every registered job (a merge or hash anti
join over a scan of ``jobs``) or, before ``ANALYZE``, the whole pgrp once per atom. What
each read costs is counted in the rows and index entries of ``jobs`` it read, in the
transaction's own statistics (``pg_stat_get_xact_tuples_returned``), with the planner's
statistics fresh (``ANALYZE``), as a running store's are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest

from executor.model import Event
from executor.sql import Db
from executor.triggers import event_id_reuse, group_reads, near_misses
from executor.triggers.decide import MAX_NEAR_MISSES
from executor.triggers.engine import TriggerEngine
from executor.triggers.evaluate import event_keys
from executor.triggers.store import TriggerStore
from tests.helpers.trigger_engines import LIMITS, Recorder, job

pytestmark = pytest.mark.service

# The chained pipelines' first job id and length; unrelated jobs take the ids below.
FIRST: Final = 100_000
CHAIN: Final = 200
UNRELATED: Final = 1000
# What one event's lookup may read of ``jobs``: an index entry per atom of its pgrp, and
# a few (its job's, and one for the atom of the other pgrp naming its label).
BOUND: Final = CHAIN + 10

_READ: Final = (
    "SELECT pg_stat_get_xact_tuples_returned('jobs'::regclass) + coalesce((SELECT"
    " sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index"
    " WHERE indrelid = 'jobs'::regclass), 0)"
)


@pytest.fixture(scope="module")
def store(pg_url: str) -> Iterator[TriggerStore]:
    """Two pgrps of the same chained labels, and jobs elsewhere; the planner's statistics fresh."""
    engine = TriggerEngine(TriggerStore(pg_url), Recorder(), limits=LIMITS)
    try:
        for job_id in range(FIRST, FIRST + CHAIN):
            before = f"L{job_id - 1}" if job_id > FIRST else "self"
            for pgrp, own_id in ((7, job_id), (8, job_id + CHAIN)):
                engine.register_job(
                    job(own_id, (f"complete-work-{before}-5", "x"), label=f"L{job_id}", pgrp=pgrp)
                )
        for job_id in range(1, UNRELATED + 1):
            engine.register_job(job(job_id, pgrp=job_id))
        with engine.store.outside_transaction() as db:
            db.execute("ANALYZE")
    finally:
        engine.store.close()
    opened = TriggerStore(pg_url)
    try:
        yield opened
    finally:
        opened.close()


def jobs_read(store: TriggerStore, read: Callable[[Db], Any]) -> tuple[int, Any]:
    """The rows and index entries of ``jobs`` that ``read`` read, and what it returned."""
    with store.transaction() as db:
        before = int(db.execute(_READ).fetchone()[0])
        found = read(db)
        return int(db.execute(_READ).fetchone()[0]) - before, found


EVENT: Final = Event("complete", "work", FIRST + 10, work_name="5")
KEYS: Final = event_keys(EVENT, None)


def test_a_groups_near_miss_reads_are_index_lookups(store: TriggerStore) -> None:
    parts = (KEYS[0].type, sorted({k.name for k in KEYS}), sorted({k.extra for k in KEYS}))

    read, found = jobs_read(
        store,
        lambda db: group_reads.sightings(
            db, [EVENT], [parts], MAX_NEAR_MISSES, [event_id_reuse.fingerprint(EVENT)]
        ),
    )

    assert read <= BOUND
    ((sighting),) = found
    assert (sighting.near, sighting.near_elsewhere) == ([], [])


def test_an_events_near_miss_reads_are_index_lookups(store: TriggerStore) -> None:
    near = near_misses.in_pgrp_subquery(KEYS, "j.pgrp", MAX_NEAR_MISSES)

    read, found = jobs_read(store, lambda db: TriggerStore.sighting(db, "", EVENT.job_id, near))

    assert read <= BOUND
    assert found.also == []


@pytest.mark.parametrize("elsewhere", [False, True], ids=["in_pgrp", "elsewhere"])
def test_a_near_miss_lookup_of_its_own_is_index_lookups(
    store: TriggerStore, elsewhere: bool
) -> None:
    def lookup(db: Db) -> list[near_misses.AtomRef]:
        if elsewhere:
            return near_misses.unresolved_elsewhere(db, KEYS, f"L{FIRST + 10}", 7, 10)
        return near_misses.unresolved_in_pgrp(db, KEYS, 7, 10)

    read, found = jobs_read(store, lookup)

    assert read <= BOUND
    assert found == []


def test_a_registrations_label_reads_are_index_lookups(store: TriggerStore) -> None:
    read, found = jobs_read(
        store, lambda db: TriggerStore.labels_among(db, 7, [f"L{FIRST + 3}", "nobody"])
    )

    assert read <= 2
    assert found == {f"L{FIRST + 3}": FIRST + 3}
