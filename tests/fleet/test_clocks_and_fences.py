"""A fleet's leases in the database's clock, and an Execute's result fenced by its claim (probe 114).

A replica whose clock is behind wrote leases already run out for the others: its own
firings were taken over as it decided them. A replica stalled past its Execute claim's
lease committed its stale run's result over the resend's.
"""

from __future__ import annotations

import asyncio
import json
import time

import psycopg
import pytest

from executor import errors
from executor.model import Event
from executor.runs.invocation_ids import FleetIds
from executor.runs.outbox import Outbox
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import PendingFiring, StoredCallback
from tests.fleet.test_fleet_ids import CountingConnection, claims_and_results
from tests.fleet.test_store import RecordingReceiver

pytestmark = pytest.mark.service

LEASE_S = 1.0
BEHIND_S = 20.0


def queued_firing(pg_url: str, invocation_id: str, batch: str) -> None:
    """A firing row as a group writes one, not yet claimed (``own_batch`` claims it)."""
    callback = StoredCallback(1, 1, 1, "done-job", "python", "pass", "u", 0, 1, (False,), False, "")
    event = Event(name="done", type="done", job_id=1)
    firing = PendingFiring(invocation_id, callback, event, batch, 1, "")
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(
            "INSERT INTO firings (invocation_id, callback_rowid, event_json, decided_at, batch,"
            " snapshot_json) VALUES (%s, 1, %s, 0, %s, %s)",
            (invocation_id, json.dumps(event.as_dict()), batch, firing.snapshot()),
        )


def test_a_lease_written_by_a_replica_whose_clock_is_behind_lasts_its_real_length(
    pg_url: str,
) -> None:
    behind = TriggerStore(pg_url, lease_s=LEASE_S, clock=lambda: time.time() - BEHIND_S)
    right = TriggerStore(pg_url, lease_s=LEASE_S)
    try:
        queued_firing(pg_url, "behind-1", "behind-batch")
        with behind.outside_transaction() as db:
            TriggerStore.own_batch(db, "behind-batch", behind.owner, behind.lease_until())
        # Its lease was written 20 s in the past for the others: taken over at once.
        assert right.claim_expired() == []
        assert behind.renew_leases() == 1
        assert right.claim_expired() == []
        # Not renewed, it runs out in the database's time, whatever either clock says.
        taken = eventually_claimed(right, timeout_s=LEASE_S * 4)
        assert [firing.invocation_id for firing in taken] == ["behind-1"]
    finally:
        behind.close()
        right.close()


def eventually_claimed(store: TriggerStore, timeout_s: float) -> list[PendingFiring]:
    give_up = time.monotonic() + timeout_s
    while time.monotonic() < give_up:
        taken = store.claim_expired()
        if taken:
            return taken
        time.sleep(0.05)
    return []


async def test_a_delivery_claim_written_by_a_replica_whose_clock_is_behind_is_not_taken_over(
    pg_url: str,
) -> None:
    # Not delivering (as if stalled), the replica behind holds its result for 10 s.
    behind = Outbox(pg_url, RecordingReceiver(), lease_s=10, clock=lambda: time.time() - BEHIND_S)
    receiver = RecordingReceiver()
    right = Outbox(pg_url, receiver, lease_s=10)
    try:
        await behind.commit("behind-delivers", b"r", None, None)
        right.start()
        await asyncio.sleep(1.0)
        assert "behind-delivers" not in [key for key, _ in receiver.sent]
    finally:
        await right.close()
        await behind.close()


async def test_an_executes_result_is_not_committed_once_its_claim_was_taken_over(
    pg_url: str,
) -> None:
    stalled_db, resend_db = CountingConnection(pg_url), CountingConnection(pg_url)
    stalled = FleetIds(stalled_db, lambda _: None, owner="stalled", lease_s=LEASE_S)
    resend = FleetIds(resend_db, lambda _: None, owner="resend", lease_s=LEASE_S)
    outbox = Outbox(pg_url, RecordingReceiver())
    keys = ["taken-over", "kept"]
    try:
        for key in keys:
            assert stalled.claim(key).claimed
        # The stalled replica's lease ran out; the caller's resend claimed the id and ran.
        await asyncio.sleep(LEASE_S * 1.2)
        assert resend.claim("taken-over").claimed
        await outbox.commit(
            "taken-over", b"resend", None, None, resend.release_alongside("taken-over")
        )
        resend.released("taken-over")
        # The stalled run ends, with another run that kept its claim, in one commit.
        outcomes = await asyncio.gather(
            *(
                outbox.commit(key, b"stale", None, None, stalled.release_alongside(key))
                for key in keys
            ),
            return_exceptions=True,
        )
        with psycopg.connect(pg_url, autocommit=True) as db:
            payloads: dict[str, bytes] = dict(
                db.execute(
                    "SELECT key, payload FROM outbox WHERE key = ANY(%s)", (keys,)
                ).fetchall()
            )
        assert payloads == {"taken-over": b"resend", "kept": b"stale"}
        assert isinstance(outcomes[0], errors.TakenOverError)
        assert outcomes[1] is None
        assert claims_and_results(pg_url, keys)[0] == []
        # Alone in its commit (one statement), the same.
        assert stalled.claim("alone").claimed
        await asyncio.sleep(LEASE_S * 1.2)
        assert resend.claim("alone").claimed
        with pytest.raises(errors.ExecutorError) as taken:
            await outbox.commit("alone", b"stale", None, None, stalled.release_alongside("alone"))
        assert isinstance(taken.value, errors.TakenOverError)
        assert claims_and_results(pg_url, ["alone"]) == (["alone"], [])
    finally:
        stalled_db.close()
        resend_db.close()
        await outbox.close()
