"""Outbox on real SQLite, delivering to a real ReferenceSupervisor (its idempotent report_result).

The receiver below is the reference supervisor's store called in-process, with a switch
that makes it unreachable and one that loses the acknowledgement after applying — the
two failures the outbox exists for. No sockets here; tests/service/test_reporting.py
does the same over gRPC with real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import sqlite3
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import cast

import pytest

from executor.runs.outbox import Backoff, Outbox
from executor.runs.outbox_transport import DeliveryError
from executor.storage import DatabaseLocked, StorageHealth
from supervisor_client.reference import ReferenceSupervisor
from tests.helpers.sqlite_memory import sqlite_memory_used
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.unit

FAST = Backoff(first_s=0.01, cap_s=0.05)


class ReferenceReceiver:
    """Delivers to ReferenceSupervisor.report_result, or fails the way a network does."""

    def __init__(self, supervisor: ReferenceSupervisor) -> None:
        self.supervisor = supervisor
        self.down = False
        self.lose_next_ack = False
        self.refuse: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.order: list[str] = []

    async def deliver(self, key: str, payload: bytes) -> bool:
        await asyncio.sleep(0)
        self.calls[key] += 1
        if self.down:
            raise DeliveryError("UNAVAILABLE: connection refused", retryable=True, unreachable=True)
        if key in self.refuse:
            raise DeliveryError("INVALID_ARGUMENT: bad result", retryable=False)
        duplicate = self.supervisor.report_result(key, 1, json.loads(payload))
        if not duplicate:
            self.order.append(key)
        if self.lose_next_ack:
            self.lose_next_ack = False
            raise DeliveryError("UNAVAILABLE: connection reset", retryable=True, unreachable=True)
        return duplicate


class BatchReceiver(ReferenceReceiver):
    """Also takes batches, all or nothing (ReferenceSupervisor.report_results)."""

    def __init__(
        self, supervisor: ReferenceSupervisor, *, takes_batches: bool = True, delay_s: float = 0
    ) -> None:
        super().__init__(supervisor)
        self.takes_batches = takes_batches
        self.delay_s = delay_s  # one exchange's round trip
        self.batch_calls = 0
        self.batches: list[list[str]] = []

    async def deliver_many(self, messages: list[tuple[str, bytes]]) -> list[bool] | None:
        await asyncio.sleep(self.delay_s)
        self.batch_calls += 1
        if not self.takes_batches:
            return None
        if self.down:
            raise DeliveryError("UNAVAILABLE: connection refused", retryable=True, unreachable=True)
        keys = [key for key, _ in messages]
        if self.refuse & set(keys):
            raise DeliveryError("INVALID_ARGUMENT: bad result", retryable=False)
        duplicates = self.supervisor.report_results(
            [(key, 1, json.loads(body)) for key, body in messages]
        )
        self.order += [
            key for key, duplicate in zip(keys, duplicates, strict=True) if not duplicate
        ]
        self.batches.append(keys)
        return duplicates


def payload(n: int) -> bytes:
    return json.dumps({"outcome": "OUTCOME_SUCCEEDED", "n": n}).encode()


@pytest.fixture
def receiver() -> ReferenceReceiver:
    return ReferenceReceiver(ReferenceSupervisor(":memory:"))


async def test_put_is_durable_before_delivery_starts(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", receiver)
    assert outbox.put("a", payload(1))
    assert not outbox.put("a", payload(1)), "the same message again adds nothing"
    assert outbox.put("b", payload(3))
    await outbox.close()  # never started: like a SIGKILL right after the commits
    reopened = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    assert reopened.pending() == 2
    reopened.start()
    assert await reopened.flush(5)
    assert receiver.order == ["a", "b"]
    stored = receiver.supervisor.result("a")
    assert stored is not None and stored["payload"]["n"] == 1
    await reopened.close()


async def test_commits_of_one_turn_share_a_transaction_and_each_caller_waits_for_it(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", receiver)
    statements: list[str] = []
    cast(sqlite3.Connection, outbox._table.db).set_trace_callback(statements.append)  # SQLite here
    keys = [f"k{n}" for n in range(10)]

    async def commit(n: int, key: str) -> int:
        await outbox.commit(key, payload(n))
        return outbox.pending()  # what is committed once this caller resumes

    seen = await asyncio.gather(*(commit(n, key) for n, key in enumerate([*keys, "k3"])))

    assert seen == [10] * 11, "every caller resumes after the shared commit, not before"
    assert statements.count("BEGIN") == statements.count("COMMIT") == 1
    await outbox.commit("k10", payload(10))  # a later turn: a commit of its own
    assert statements.count("COMMIT") == 1 and outbox.pending() == 11
    outbox.start()
    assert await outbox.flush(5)
    assert receiver.order == [*keys, "k10"], "the later message under k3 took its place"
    stored = receiver.supervisor.result("k3")
    assert stored is not None and stored["payload"]["n"] == 10
    await outbox.close()


async def test_a_failed_shared_commit_fails_each_of_its_callers_and_keeps_none(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", receiver)
    with sqlite3.connect(tmp_path / "outbox.db") as other:  # the store refuses every insert
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'no'); END"
        )

    results = await asyncio.gather(
        *(outbox.commit(f"k{n}", payload(n)) for n in range(3)), return_exceptions=True
    )

    assert all(isinstance(result, sqlite3.Error) for result in results), results
    assert outbox.pending() == 0
    with sqlite3.connect(tmp_path / "outbox.db") as other:
        other.execute("DROP TRIGGER refuse")
    await asyncio.gather(*(outbox.commit(f"k{n}", payload(n)) for n in range(3)))
    assert outbox.pending() == 3
    await outbox.close()


async def test_each_caller_of_a_failed_shared_commit_gets_an_error_of_its_own(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    # Probe 74: one error object raised in every caller gathered each caller's frames in its
    # traceback, and letting go of one caller's frames (the gRPC layer clears an abort's)
    # closed another that had caught it and was waiting to try again: its result was lost.
    outbox = Outbox(tmp_path / "outbox.db", receiver)
    with sqlite3.connect(tmp_path / "outbox.db") as other:
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    again = asyncio.Event()

    async def owed() -> str:
        with contextlib.suppress(sqlite3.Error):
            await outbox.commit("owed", payload(0))
        await again.wait()  # suspended, as a result waiting for the storage is
        return "tried again"

    waiting = asyncio.create_task(owed())
    with pytest.raises(sqlite3.Error) as refused:
        await outbox.commit("answered", payload(1))  # the same turn: one shared commit
    for _ in range(3):
        await asyncio.sleep(0)  # the other caller has met its error too and waits
    traceback.clear_frames(refused.value.__traceback__)
    again.set()

    assert await asyncio.wait_for(waiting, 2) == "tried again"
    assert waiting.exception() is None
    await outbox.close()


async def test_a_commit_meeting_another_processs_lock_is_refused_promptly_as_the_storage(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    # The commit runs on the event loop: SQLite's 5 s busy timeout there stalled every
    # request, and "database is locked" was an internal error, its result never reported.
    health = StorageHealth(tmp_path)
    outbox = Outbox(tmp_path / "outbox.db", receiver, health=health)
    holder = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a backup tool, an admin's sqlite3
    started = time.monotonic()
    with pytest.raises(DatabaseLocked):
        await outbox.commit("k", payload(1))
    assert time.monotonic() - started < 1.0
    assert "outbox.db: database is locked" in health.problem
    holder.execute("COMMIT")
    await outbox.commit("k", payload(1))
    assert outbox.pending() == 1
    holder.close()
    await outbox.close()


async def test_delivery_meeting_a_lock_waits_for_the_probe_not_on_the_loop(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    # Each mark that meets the lock waits for it on the event loop: tried at every
    # backoff, they stalled every request again and again for as long as the lock held.
    health = StorageHealth(tmp_path)
    prober = asyncio.get_running_loop().create_task(health.probe_forever())
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST, health=health)
    marks: list[str] = []
    cast(sqlite3.Connection, outbox._table.db).set_trace_callback(
        lambda sql: marks.append(sql) if "delivered_at" in sql and "UPDATE" in sql else None
    )
    for n in range(3):
        outbox.put(f"k{n}", payload(n))
    holder = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    outbox.start()
    assert await eventually(lambda: receiver.order == ["k0"])  # then its mark meets the lock
    await asyncio.sleep(1.0)  # twenty backoffs of delivery's
    assert len(marks) == 1, f"{len(marks)} marks tried while the lock held"
    assert receiver.order == ["k0"], "delivery waits for the lock to go"
    assert "database is locked" in health.problem
    holder.execute("COMMIT")
    assert await eventually(lambda: outbox.stats().delivered == 3, timeout_s=5)
    assert receiver.calls == Counter({"k0": 1, "k1": 1, "k2": 1})
    holder.close()
    await outbox.close()
    prober.cancel()
    await asyncio.gather(prober, return_exceptions=True)


async def test_delivers_in_order_and_drains(tmp_path: Path, receiver: ReferenceReceiver) -> None:
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    outbox.start()
    keys = [f"k{n:03}" for n in range(150)]
    for n, key in enumerate(keys):
        outbox.put(key, payload(n))
        if n % 40 == 0:
            await asyncio.sleep(0.01)
    assert await outbox.flush(10)
    assert outbox.pending() == 0
    assert receiver.order == keys
    assert set(receiver.calls.values()) == {1}
    stats = outbox.stats()
    assert (stats.pending, stats.dead, stats.duplicates_acknowledged) == (0, 0, 0)
    await outbox.close()


async def test_a_delivered_row_keeps_its_key_not_its_payload(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    # The last keep_delivered rows were kept whole: a thousand reports of up to the
    # supervisor's message size each, gigabytes nothing reads.
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    outbox.start()
    for n in range(5):
        outbox.put(f"k{n}", payload(n))
    assert await outbox.flush(10)
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        rows = db.execute("SELECT key, length(payload) FROM outbox ORDER BY seq").fetchall()
    assert rows == [(f"k{n}", 0) for n in range(5)]
    # The same message again is sent again (its payload is gone), and acknowledged as
    # the duplicate it is.
    assert outbox.put("k1", payload(1))
    assert await outbox.flush(10)
    assert receiver.calls["k1"] == 2 and len(receiver.supervisor.results()) == 5
    await outbox.close()


async def test_retries_while_down_then_delivers_everything_once(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    receiver.down = True
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    outbox.start()
    for n in range(20):
        outbox.put(f"k{n}", payload(n))
    assert await eventually(lambda: receiver.calls["k0"] >= 3), (
        "kept retrying the head of the queue"
    )
    assert outbox.pending() == 20
    assert receiver.calls["k1"] == 0, "never skipped ahead of an undelivered result"
    receiver.down = False
    assert await outbox.flush(5)
    assert receiver.order == [f"k{n}" for n in range(20)]
    assert len(receiver.supervisor.results()) == 20
    await outbox.close()


async def test_lost_acknowledgement_is_redelivered_and_applied_once(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    receiver.lose_next_ack = True
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    outbox.start()
    outbox.put("a", payload(1))
    outbox.put("b", payload(2))
    assert await outbox.flush(5)
    assert receiver.calls == Counter({"a": 2, "b": 1})
    assert [r["invocation_id"] for r in receiver.supervisor.results()] == ["a", "b"]
    assert outbox.stats().duplicates_acknowledged == 1
    await outbox.close()


def run_report(outcome: str, ended_at: float) -> bytes:
    return json.dumps({"outcome": outcome, "ended_at": ended_at}).encode()


async def test_a_later_runs_report_under_a_delivered_key_is_delivered_and_kept(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    # A caller's resend after DEADLINE_EXCEEDED: the first run's KILLED is delivered,
    # then the resend's SUCCEEDED comes under the same invocation id.
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    outbox.start()
    outbox.put("a", run_report("OUTCOME_KILLED", 1.0))
    assert await outbox.flush(5)

    assert outbox.put("a", run_report("OUTCOME_SUCCEEDED", 2.0))
    assert outbox.pending() == 1
    assert await outbox.flush(5)

    assert receiver.calls["a"] == 2
    stored = receiver.supervisor.result("a")
    assert stored is not None and stored["payload"]["outcome"] == "OUTCOME_SUCCEEDED"
    assert outbox.stats().duplicates_acknowledged == 0
    await outbox.close()


async def test_a_later_runs_report_put_while_the_first_is_on_its_way_is_still_delivered(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    sent, answer = asyncio.Event(), asyncio.Event()
    deliver = receiver.deliver

    async def slow_deliver(key: str, payload: bytes) -> bool:
        sent.set()
        await answer.wait()
        return await deliver(key, payload)

    receiver.deliver = slow_deliver  # type: ignore[method-assign]
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    outbox.start()
    outbox.put("a", run_report("OUTCOME_KILLED", 1.0))
    await asyncio.wait_for(sent.wait(), 5)
    outbox.put("a", run_report("OUTCOME_SUCCEEDED", 2.0))  # the first not acknowledged yet
    answer.set()

    assert await outbox.flush(5)
    assert receiver.calls["a"] == 2, "the first's acknowledgement did not mark the second"
    stored = receiver.supervisor.result("a")
    assert stored is not None and stored["payload"]["outcome"] == "OUTCOME_SUCCEEDED"
    await outbox.close()


async def test_an_earlier_runs_report_committed_late_never_replaces_a_later_ones(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    # An Execute's result refused by a full disk is committed once the disk takes it, by
    # when the caller's resend (a later run of the id) may have been committed already.
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    assert outbox.put("a", run_report("OUTCOME_SUCCEEDED", 20.0), ended_at=20.0)
    assert not outbox.put("a", run_report("OUTCOME_KILLED", 10.0), ended_at=10.0)
    # Two runs of one id committed in one turn (one group): the later one's is kept.
    await asyncio.gather(
        outbox.commit("b", run_report("OUTCOME_SUCCEEDED", 20.0), 20.0),
        outbox.commit("b", run_report("OUTCOME_KILLED", 10.0), 10.0),
    )
    outbox.start()
    assert await outbox.flush(5)
    assert not outbox.put("a", run_report("OUTCOME_FAILED", 15.0), ended_at=15.0)
    assert outbox.pending() == 0
    for key in ("a", "b"):
        stored = receiver.supervisor.result(key)
        assert stored is not None and stored["payload"]["outcome"] == "OUTCOME_SUCCEEDED"
        assert receiver.calls[key] == 1
    await outbox.close()


async def test_refused_result_is_set_aside_without_blocking_the_rest(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    receiver.refuse = {"bad"}
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    outbox.start()
    for key in ("a", "bad", "c"):
        outbox.put(key, payload(0))
    assert await outbox.flush(5)
    assert receiver.order == ["a", "c"]
    assert outbox.stats().dead == 1
    assert receiver.calls["bad"] == 1
    await outbox.close()


async def test_a_refusal_is_logged_on_one_line_with_its_control_characters_escaped(
    tmp_path: Path, receiver: ReferenceReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The supervisor's words may echo a job's text: they must not split or forge a log line."""
    refusal = "refused\n\x1b[2J\x1b[31mFAKE LINE \u202eevil"

    async def refusing(key: str, payload: bytes) -> bool:
        raise DeliveryError(refusal, retryable=False)

    receiver.deliver = refusing  # type: ignore[method-assign]  # this one receiver refuses all
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    outbox.start()
    outbox.put("bad", payload(0))
    await eventually(lambda: outbox.stats().dead == 1)
    (letter,) = outbox.dead_letters(10)
    await outbox.close()
    (line,) = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]
    assert line == (
        "outbox: bad set aside as a dead letter: refused: "
        "refused\\n\\x1b[2J\\x1b[31mFAKE LINE \\u202eevil"
    )
    assert letter.last_error == f"refused: {refusal}"  # kept as said: --json shows it JSON-escaped


@pytest.mark.parametrize(
    ("unreachable", "lines"),
    [
        # Answered: the batch's line, then each result's own backoff.
        (False, ["a batch of 2 was not delivered ({})", "delivery of a failed ({}); retrying"]),
        # Out of reach (a receiver without batches): each result's line (DEBUG), then the
        # outage's.
        (True, ["delivery of a failed ({})", "results cannot be delivered ({})"]),
    ],
)
async def test_a_failed_tries_words_are_logged_escaped_on_one_line(
    tmp_path: Path, unreachable: bool, lines: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A retried result's lines escape the supervisor's words, as the dead-letter line does.

    They were written raw: a newline forged a log line, an ESC reached the terminal.
    """
    words = "boom\n2026-12-05 22:00:00,000 ERROR executor.server [-] FORGED\x1b[2J"
    shown = "boom\\n2026-12-05 22:00:00,000 ERROR executor.server [-] FORGED\\x1b[2J"
    supervisor = ReferenceSupervisor(":memory:")
    receiver = ReferenceReceiver(supervisor) if unreachable else BatchReceiver(supervisor)

    async def failing(*_: object) -> bool:
        raise DeliveryError(words, retryable=True, unreachable=unreachable)

    # This one receiver fails every exchange, single or batched.
    receiver.deliver = failing  # type: ignore[method-assign, assignment]
    if isinstance(receiver, BatchReceiver):
        receiver.deliver_many = failing  # type: ignore[method-assign, assignment]
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST, min_refusing_s=30)
    caplog.set_level(logging.DEBUG, logger="executor.runs")
    outbox.start()
    outbox.put("a", payload(0))
    outbox.put("b", payload(1))
    wanted = [line.format(shown) for line in lines]

    def logged() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("executor.runs.outbox")]

    assert await eventually(lambda: all(any(w in line for line in logged()) for w in wanted))
    await outbox.close()
    assert not [line for line in logged() if "\n" in line or "\x1b" in line], logged()


class FailingReceiver(ReferenceReceiver):
    """Answers, but fails (INTERNAL) until told to stop."""

    failing = True

    async def deliver(self, key: str, payload: bytes) -> bool:
        if self.failing:
            self.calls[key] += 1
            raise DeliveryError("INTERNAL: the supervisor is being upgraded", retryable=True)
        return await super().deliver(key, payload)


async def test_a_short_spell_of_failures_sets_nothing_aside(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    failing = FailingReceiver(receiver.supervisor)
    outbox = Outbox(tmp_path / "outbox.db", failing, backoff=FAST, min_refusing_s=30)
    outbox.start()
    outbox.put("a", payload(0))
    assert await eventually(lambda: failing.calls["a"] >= 12)  # past max_attempts
    assert outbox.stats().dead == 0
    failing.failing = False
    assert await outbox.flush(5)
    assert failing.order == ["a"] and outbox.stats().dead == 0
    await outbox.close()


async def test_failures_spread_over_the_spell_set_a_result_aside(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    failing = FailingReceiver(receiver.supervisor)
    outbox = Outbox(tmp_path / "outbox.db", failing, backoff=FAST, min_refusing_s=0.3)
    outbox.start()
    outbox.put("a", payload(0))
    assert await eventually(lambda: outbox.stats().dead == 1)
    (letter,) = outbox.dead_letters()
    assert "failed " in letter.last_error and "INTERNAL" in letter.last_error
    assert failing.calls["a"] >= 8
    await outbox.close()


async def test_a_transport_bug_does_not_end_delivery(tmp_path: Path) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.seen: list[str] = []
            self.failed = False

        async def deliver(self, key: str, payload: bytes) -> bool:
            if not self.failed:
                self.failed = True
                raise RuntimeError("bug")
            self.seen.append(key)
            return False

    flaky = Flaky()
    outbox = Outbox(tmp_path / "outbox.db", flaky, backoff=FAST)
    outbox.start()
    outbox.put("a", b"x")
    assert await outbox.flush(5)
    assert flaky.seen == ["a"]
    await outbox.close()


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    backoff = Backoff(first_s=0.1, cap_s=1.0)
    rng = random.Random(7)
    for failures, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (30, 1.0)):
        delays = [backoff.delay(failures, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1, "jittered"


async def test_a_backlog_goes_in_batches(tmp_path: Path) -> None:
    receiver = BatchReceiver(ReferenceSupervisor(":memory:"))
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    keys = [f"k{n:03}" for n in range(150)]
    for n, key in enumerate(keys):
        outbox.put(key, payload(n))
    outbox.start()
    assert await outbox.flush(5)
    assert receiver.order == keys
    assert [len(batch) for batch in receiver.batches] == [64, 64, 22]
    assert not receiver.calls, "nothing went one by one"
    assert outbox.stats().pending == 0
    await outbox.close()


async def test_a_steady_stream_of_results_shares_exchanges(tmp_path: Path) -> None:
    """Results arriving while an exchange is under way gather for the next one.

    Each exchange takes longer than the time between two results: without a pause after
    a partial exchange, every exchange found one new result and sent it alone.
    """
    receiver = BatchReceiver(ReferenceSupervisor(":memory:"), delay_s=0.004)
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST, linger_s=0.02)
    outbox.start()
    keys = [f"k{n:03}" for n in range(60)]
    for n, key in enumerate(keys):
        outbox.put(key, payload(n))
        await asyncio.sleep(0.002)
    assert await outbox.flush(5)
    assert receiver.order == keys
    # Measured: ~25 exchanges without the pause, ~8 with it.
    assert len(receiver.batches) + sum(receiver.calls.values()) <= 12, receiver.batches
    await outbox.close()


async def test_a_backlog_cut_by_bytes_goes_without_pauses(tmp_path: Path) -> None:
    """An exchange full by its bytes leaves results waiting: the next goes at once."""
    receiver = BatchReceiver(ReferenceSupervisor(":memory:"))
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST, linger_s=0.3, batch_bytes=1000)
    big = [json.dumps({"outcome": "OUTCOME_SUCCEEDED", "out": "x" * 400, "n": n}) for n in range(8)]
    for n, body in enumerate(big):
        outbox.put(f"k{n}", body.encode())
    outbox.start()
    # Pausing after each of its exchanges (two results each) would take over a second.
    assert await outbox.flush(1.0)
    assert [len(batch) for batch in receiver.batches] == [2, 2, 2, 2]
    await outbox.close()


async def test_a_refused_batch_goes_one_by_one_and_only_the_bad_result_is_set_aside(
    tmp_path: Path,
) -> None:
    receiver = BatchReceiver(ReferenceSupervisor(":memory:"))
    receiver.refuse = {"bad"}
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    for key in ("a", "bad", "c"):
        outbox.put(key, payload(0))
    outbox.start()
    assert await outbox.flush(5)
    assert receiver.order == ["a", "c"]
    assert receiver.calls == Counter({"a": 1, "bad": 1, "c": 1})
    assert outbox.stats().dead == 1
    await outbox.close()


async def test_every_answered_refusal_counts_until_a_retry_queues_the_letter_afresh(
    tmp_path: Path,
) -> None:
    receiver = BatchReceiver(ReferenceSupervisor(":memory:"))
    receiver.refuse = {"bad"}
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    for key in ("a", "bad", "c"):
        outbox.put(key, payload(0))
    outbox.start()
    assert await outbox.flush(5)
    (letter,) = outbox.dead_letters()
    # Refused in the batch, then alone: two answers, both refusals.
    assert (letter.key, letter.attempts) == ("bad", 2)
    assert receiver.batch_calls == 1 and receiver.calls["bad"] == 1

    assert outbox.retry_dead(["bad"]) == 1
    assert await outbox.flush(5)
    (letter,) = outbox.dead_letters()
    # Queued again as new (RetryDeadLetters): refused once more, alone.
    assert (letter.key, letter.attempts) == ("bad", 1)
    assert receiver.calls["bad"] == 2 and outbox.stats().dead == 1
    await outbox.close()


async def test_a_receiver_that_takes_no_batches_has_refused_nothing_by_that(
    tmp_path: Path,
) -> None:
    receiver = BatchReceiver(ReferenceSupervisor(":memory:"), takes_batches=False)
    receiver.refuse = {"bad"}
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    for key in ("a", "bad"):
        outbox.put(key, payload(0))
    outbox.start()
    assert await outbox.flush(5)
    (letter,) = outbox.dead_letters()
    assert (letter.key, letter.attempts) == ("bad", 1)
    await outbox.close()


async def test_a_receiver_without_batches_is_asked_once_then_gets_results_one_by_one(
    tmp_path: Path,
) -> None:
    receiver = BatchReceiver(ReferenceSupervisor(":memory:"), takes_batches=False)
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    for n in range(5):
        outbox.put(f"k{n}", payload(n))
    outbox.start()
    assert await outbox.flush(5)
    for n in range(5, 10):
        outbox.put(f"k{n}", payload(n))
    assert await outbox.flush(5)
    assert receiver.order == [f"k{n}" for n in range(10)]
    assert receiver.batch_calls == 1
    await outbox.close()


async def test_batches_are_retried_while_the_receiver_is_down(tmp_path: Path) -> None:
    receiver = BatchReceiver(ReferenceSupervisor(":memory:"))
    receiver.down = True
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    for n in range(20):
        outbox.put(f"k{n}", payload(n))
    outbox.start()
    assert await eventually(lambda: receiver.batch_calls >= 3), "kept retrying the batch"
    assert outbox.pending() == 20 and not receiver.calls
    receiver.down = False
    assert await outbox.flush(5)
    assert receiver.order == [f"k{n}" for n in range(20)]
    await outbox.close()


async def test_retrying_many_named_dead_letters_is_a_few_statements_in_one_transaction(
    tmp_path: Path,
) -> None:
    """RetryDeadLetters runs on the event loop: not one UPDATE (and commit) per id named."""
    receiver = BatchReceiver(ReferenceSupervisor(":memory:"))
    receiver.refuse = {f"bad{n}" for n in range(4)}
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    for key in ("a", "bad0", "bad1", "bad2", "bad3"):
        outbox.put(key, payload(0))
    outbox.start()
    assert await outbox.flush(5)
    assert outbox.stats().dead == 4
    named = [f"x{n}" for n in range(990)] + ["bad1", "bad3"] * 5
    statements: list[str] = []
    cast(sqlite3.Connection, outbox._table.db).set_trace_callback(statements.append)  # SQLite here

    queued = outbox.retry_dead(named)

    cast(sqlite3.Connection, outbox._table.db).set_trace_callback(None)
    assert queued == 2  # each letter once, however often it is named
    updates = [s for s in statements if s.startswith("UPDATE outbox SET dead_at = NULL")]
    assert len(updates) == 2, len(updates)  # 992 distinct keys, 500 a statement
    assert statements.count("BEGIN") == statements.count("COMMIT") == 1
    assert await outbox.flush(5)
    assert sorted(letter.key for letter in outbox.dead_letters()) == [f"bad{n}" for n in range(4)]
    assert receiver.calls["bad1"] == receiver.calls["bad0"] + 1  # sent again, once
    await outbox.close()


async def test_a_large_report_is_not_kept_by_sqlite_once_put(
    tmp_path: Path, receiver: ReferenceReceiver
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", receiver)
    try:
        before = sqlite_memory_used()
        assert outbox.put("a", json.dumps({"stdout": "x" * (8 << 20)}).encode())
        assert sqlite_memory_used() - before < 4 << 20  # its page cache: 2 MiB
    finally:
        await outbox.close()


def _outbox_lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[str]:
    return [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("executor.runs.outbox") and r.levelno >= level
    ]


async def test_an_outage_is_logged_as_it_begins_and_as_it_ends_not_at_each_try(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Probe 137 F2: each retry logged an INFO and a WARNING saying the same thing.

    That was ~2,300 lines an hour for a supervisor away overnight; each try is DEBUG now.
    """
    receiver = BatchReceiver(ReferenceSupervisor(":memory:"))
    receiver.down = True
    caplog.set_level(logging.DEBUG, logger="executor.runs")
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    outbox.start()
    outbox.put("a", payload(0))
    outbox.put("b", payload(1))
    assert await eventually(lambda: receiver.batch_calls >= 15)
    failing = _outbox_lines(caplog)
    receiver.down = False
    assert await outbox.flush(5)
    await outbox.close()
    (began,) = failing
    assert began.startswith("WARNING outbox: results cannot be delivered (UNAVAILABLE: "), began
    assert "2 pending, retrying in " in began, began
    (ended,) = _outbox_lines(caplog)[1:]
    assert ended.startswith("INFO outbox: delivery resumed after "), ended
    assert ended.endswith("tries failed): 2 delivered, 0 pending"), ended
    tries = [line for line in _outbox_lines(caplog, logging.DEBUG) if "retrying in" in line]
    assert len(tries) >= 15 and all(line.startswith("DEBUG") for line in tries[1:]), tries[:3]


async def test_a_supervisor_that_answers_once_between_failures_does_not_restart_the_backoff(
    tmp_path: Path, receiver: ReferenceReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Probe 137 F2: each answer of a flapping supervisor restarted the backoff at its floor."""
    caplog.set_level(logging.DEBUG, logger="executor.runs")
    receiver.down = True
    outbox = Outbox(tmp_path / "outbox.db", receiver, backoff=FAST)
    outbox.start()
    outbox.put("a", payload(0))
    assert await eventually(lambda: receiver.calls["a"] >= 6)  # its backoff at the cap, 0.05 s
    receiver.down = False
    assert await outbox.flush(5)
    seen = len(caplog.records)
    receiver.down = True  # away again at once
    outbox.put("b", payload(1))
    assert await eventually(lambda: receiver.calls["b"] >= 2)
    await outbox.close()
    (after_the_answer, *_) = [
        float(found[1])
        for r in caplog.records[seen:]
        if (found := re.search(r"retrying in (\d+\.\d+)s", r.getMessage()))
    ]
    # From where it was (within [cap/2, cap]), not from the floor (at most first_s).
    assert after_the_answer >= FAST.cap_s / 2, after_the_answer
