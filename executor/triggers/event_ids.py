"""The event ids the trigger store remembers (a repeat is ignored), bounded by age and count.

Every event published with an ``event_id`` leaves a row in ``seen_events`` (the store's
``sighting``; a fleet's group, group_reads.py), so that a publisher that resends an
event it is not sure was applied (a call that timed out, its own outage) gets it
answered as a repeat. Such a resend comes within hours; kept for ever, the rows grew
with every event published (1M events made ``triggers.db`` 78 MB, all of which start-up's
``quick_check`` reads). So an id is remembered for ``event_id_retention_hours`` after
its event was applied, then forgotten: a repeat after that is a new event.

The row holds the id's ``key`` (16 bytes of its SHA-256), not its text: an id of the
allowed 1024 characters took ~6 KB of ``triggers.db`` as text (the table's row and the
unique index's entry each in overflow pages), 60 GB at the default ``max_count`` (probe
111); keyed, any id takes ~90 bytes, with its event's fingerprint (event_id_reuse.py: a
repeat of the id for another event is refused). Nothing reads an id back from here: the
journal and the firings keep the events they name whole.

The pruning runs at start and every ``PRUNE_EVERY_S`` off the event path: on a thread,
in batches of ``PRUNE_BATCH`` rows, each a transaction of its own, with a pause three
times as long as the batch took before the next one. On SQLite the event loop shares the
store's one connection and lock (timers, a firing done), and the events' group commit
does too: a batch holds them as long as it takes, and the pause lets them in between
(Python's locks are not fair: a thread that lets go and takes the lock again at once
starves the others) and lets the log's checkpoints keep up. Measured on the 2-core dev
machine, an engine started over 1M expired uuid ids (a 124 MB ``triggers.db``) while
events were published: batches of 1,000 took 8 ms (p99 19 ms), all 1M went in 41 s,
the loop's longest wait for the store was 28 ms and a PublishEvent's 21 ms, and the
``-wal`` stayed under 13 MB. With a pause only as long as the batch, the prune took 24 s
but the ``-wal`` grew to 451 MB (the checkpoints could not restart it) and the loop
waited up to 241 ms (with batches of 5,000 too, 128 ms). A fleet's replicas
prune the shared table alike, each skipping the rows another is deleting (``FOR UPDATE
SKIP LOCKED``).

The age alone does not bound the table: one callback's ``qb.workblock`` over a
100,000-frame job of the embedded farm is 100,000 events, each with its id, and a
callback that loops so made ~15,000 ids a second, kept 72 h (probe 75: ~25 GB of
``triggers.db`` an hour over four slots). So the store also keeps at most
``max_count`` ids: after the age, each prune forgets the oldest ids past that many, in
the same batches, with a WARNING (a resend of one of them would now be applied again)
and a count in the engine's stats (``cbexec_event_ids_forgotten_early_total``). Which
are past it: on SQLite, the rows more than ``max_count`` below the largest rowid (rowids
go up with every insert and the ids go oldest first, so this is the count, read from
two ends of the table's b-tree; a gap left by the age's prune only makes it keep
fewer); on PostgreSQL, the ids seen no later than the ``max_count + 1``-th newest, ids
seen at the same instant as it included, counted ``_COUNT_STEP`` index entries a
statement on a snapshot connection that waits for no lock, and only while PostgreSQL's
own estimate of the rows (``pg_class.reltuples``) is unknown or at least half of
``max_count``: 10.1M ids took 1.9-2.4 s to count. Between prunes the table may pass
``max_count`` by a minute of ids.

The embedded farm's own ids are kept as long as any other. Their resends mostly come
within seconds (forwarder.py), but the events sent before a stop go again at the next
start, however long the executor was down, and a call answered UNAVAILABLE after its
commit (a fleet's connection lost at COMMIT) is retried for as long as the store stays
away: a shorter retention would have to count from those, per replica in a fleet, where
it is counted from ``seen_at``. The count bounds the table without that.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from executor.errors import UnavailableError
from executor.sql import Db, PgDb, row_lock

if TYPE_CHECKING:
    from executor.triggers.store import TriggerStore

logger = logging.getLogger(__name__)

_sha256: Final = hashlib.sha256

# Created with the table on SQLite; a fleet's PostgreSQL gets it at ``cbexec store migrate``.
SCHEMA: Final = """
CREATE INDEX IF NOT EXISTS seen_events_by_age ON seen_events (seen_at);
"""

# The bytes of an id's key: the first 16 of its SHA-256. Two different ids of the 10M
# remembered share a key with a chance of about 1 in 10^23 (the birthday bound over
# 2^128), so a repeat is still told exactly; a collision made on purpose would take
# ~2^64 hashes and only make its maker's own second event a repeat.
KEY_BYTES: Final = 16
# ``key`` in PostgreSQL's SQL, of a text column (the migration's): the same bytes, as the
# store holds the executor's UTF-8 (migrations.py takes no other encoding but SQL_ASCII,
# which keeps the bytes as sent).
PG_KEY_SQL: Final = f"substring(sha256(convert_to({{column}}, 'UTF8')) FROM 1 FOR {KEY_BYTES})"
# About what an id takes of the store whatever its length (its row and two index entries,
# the key's and the age's), as the README says: measured on the 2-core dev machine over
# 1M ids, 81 bytes of triggers.db; over 500,000, 146 bytes of PostgreSQL's table and
# indexes; with its event's 8-byte fingerprint (event_id_reuse.py), over 500,000, 90 and
# 152 bytes. With the text as the key it was 122 bytes for a uuid and 6.1 KB (SQLite) /
# 3.6 KB (PostgreSQL) for an id of the allowed 1024 characters (overflow pages, the
# text twice). An event that fired callbacks also keeps what it fired with its key
# (decided_firings.py), as many bytes as its firings' names (and, when one was refused
# or runs as a shadow, each one's refusal).
SQLITE_BYTES_PER_ID: Final = 90
PG_BYTES_PER_ID: Final = 155

# A store that kept the ids' text (before 2026-12-06) keeps their keys instead from its
# first start on this version (SQLite) or ``cbexec store migrate``'s step 12
# (PostgreSQL); the rowids (SQLite's order of the ids, which the count's prune reads),
# ages and what each fired are kept.
_SQLITE_REKEY: Final = """
CREATE TABLE seen_events_keyed (
    id_key BLOB PRIMARY KEY,
    seen_at REAL NOT NULL,
    fired_json TEXT NOT NULL DEFAULT '',
    fingerprint BLOB,
    fired_verdicts_json TEXT NOT NULL DEFAULT ''
);
INSERT OR IGNORE INTO seen_events_keyed (rowid, id_key, seen_at, fired_json)
    SELECT rowid, cbexec_id_key(CAST(event_id AS BLOB)), seen_at, fired_json FROM seen_events;
DROP TABLE seen_events;
ALTER TABLE seen_events_keyed RENAME TO seen_events;
"""
# In place on PostgreSQL (a new table would lose the grants the executor's role was
# given on this one); nothing to do for a table made with the keys (step 1 of this
# version). The text column stays, empty, for the replicas of earlier versions still
# running until they are restarted (migrations.py: the steps only add): their inserts
# name the id's text, from which a trigger makes its key (only for a row without one:
# the WHEN costs this version's inserts no call), so a repeat between an old and a new
# replica is still found, on the key. An old replica then reads back (a resend's
# firings, by the text's index of the rows that have it) and prunes only the rows it
# wrote; the new ones prune them all.
PG_REKEY: Final = f"""
DO $$ BEGIN
IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
    AND table_name = 'seen_events' AND column_name = 'event_id') THEN
  ALTER TABLE seen_events ADD COLUMN id_key BYTEA;
  ALTER TABLE seen_events DROP CONSTRAINT seen_events_pkey;
  ALTER TABLE seen_events ALTER COLUMN event_id DROP NOT NULL;
  UPDATE seen_events SET id_key = {PG_KEY_SQL.format(column="event_id")}, event_id = NULL;
  ALTER TABLE seen_events ADD PRIMARY KEY (id_key);
  CREATE INDEX seen_events_text ON seen_events (event_id) WHERE event_id IS NOT NULL;
  CREATE OR REPLACE FUNCTION seen_events_key() RETURNS trigger LANGUAGE plpgsql AS $f$
  BEGIN
    NEW.id_key := {PG_KEY_SQL.format(column="NEW.event_id")};
    RETURN NEW;
  END $f$;
  CREATE TRIGGER seen_events_key BEFORE INSERT ON seen_events FOR EACH ROW
    WHEN (NEW.id_key IS NULL) EXECUTE FUNCTION seen_events_key();
END IF;
END $$;
"""  # noqa: S608 - our own SQL


def key(event_id: str) -> bytes:
    """What the store keeps of an event id: the first ``KEY_BYTES`` of the SHA-256 of its UTF-8.

    A fixed size whatever the id's length: the ids' text as the key took ~6 KB each for
    ids of the allowed 1024 characters (overflow pages, the text in the table and again
    in its unique index), ~60 GB at the default ``event_id_max_count`` (probe 111).
    """
    return _sha256(event_id.encode("utf-8", "surrogatepass")).digest()[:KEY_BYTES]


def _key_of_bytes(utf8: bytes) -> bytes:
    return _sha256(utf8).digest()[:KEY_BYTES]


def rekey_sqlite(db: sqlite3.Connection) -> int:
    """Key a ``seen_events`` that holds the ids' text by ``key`` instead; how many ids it kept.

    One transaction: a crash part-way leaves the old table as it was. Once, at the first
    start after the upgrade: 9.4 s over 1M uuid ids on the 2-core dev machine.
    """
    columns = {row[1] for row in db.execute("PRAGMA table_info(seen_events)")}
    if "event_id" not in columns:
        return 0
    db.create_function("cbexec_id_key", 1, _key_of_bytes, deterministic=True)
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SQLITE_REKEY.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(SCHEMA)
        (kept,) = db.execute("SELECT count(*) FROM seen_events").fetchone()
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return int(kept)


# How long an id is remembered unless told (``event_id_retention_hours``): a publisher's
# resend after an outage of a day or two still finds it.
DEFAULT_RETENTION_S: Final = 72 * 3600.0
# The most ids remembered unless told (``event_id_max_count``): about 0.9 GB of
# triggers.db (``SQLITE_BYTES_PER_ID`` each), ~46 h of a steady 60 events/s, the 72 h of
# 38 events/s.
DEFAULT_MAX_COUNT: Final = 10_000_000
# Index entries PostgreSQL counts per statement to find the ids past the most kept:
# ~0.1 s each (measured: 1M in 70-110 ms on the 2-core dev machine).
_COUNT_STEP: Final = 1_000_000
# How often the engine prunes (as it prunes the journal, ``EventApplier._prune``).
PRUNE_EVERY_S: Final = 60.0
# Rows deleted per transaction: a few ms of the store's lock.
PRUNE_BATCH: Final = 1_000
# The pause after a batch, as a multiple of the time it took (at least _MIN_PAUSE_S): the
# store's other writers, and the log's checkpoints, get the rest of the time.
_PAUSE_PER_BATCH_TIME: Final = 3.0
_MIN_PAUSE_S: Final = 0.001


def prune_batch(db: Db, cutoff: float, limit: int) -> int:
    """Forget at most ``limit`` ids seen before ``cutoff`` (Unix seconds); how many went."""
    cursor = db.execute(
        "DELETE FROM seen_events WHERE id_key IN (SELECT id_key FROM seen_events"  # noqa: S608 - a clause of ours
        f" WHERE seen_at < ? LIMIT ?{row_lock(db, skip_locked=True)})",
        (cutoff, limit),
    )
    return int(cursor.rowcount)


def past_max_count(db: Db, max_count: int, *, step: int = _COUNT_STEP) -> float | None:
    """Where the ids past the newest ``max_count`` end (``forget_batch``'s ``mark``); None: none are.

    SQLite: the largest rowid to go; PostgreSQL: the latest ``seen_at`` to go (counted
    ``step`` index entries a statement).
    """
    if isinstance(db, PgDb):
        return _pg_past_max_count(db, max_count, step)
    # Two subqueries: SQLite reads a lone min() or max() off the b-tree's end, both in
    # one SELECT by a scan of the table.
    row = db.execute(
        "SELECT (SELECT min(rowid) FROM seen_events), (SELECT max(rowid) FROM seen_events)"
    ).fetchone()
    if row[0] is None or row[1] - max_count < row[0]:
        return None
    return float(row[1] - max_count)


def _pg_past_max_count(db: Db, max_count: int, step: int) -> float | None:
    """The ``seen_at`` of the ``max_count + 1``-th newest id, counting ``step`` at a time.

    Each step counts the ids seen in [its end, the step before's end): one statement
    well within the store's answer deadline however large ``max_count`` is.
    """
    estimate = db.execute(
        "SELECT reltuples FROM pg_class WHERE oid = 'seen_events'::regclass"
    ).fetchone()[0]
    if 0 <= estimate < max_count / 2:  # -1: never analyzed, count
        return None
    counted, before = 0, float("inf")
    while True:
        row = db.execute(
            "WITH s AS (SELECT seen_at FROM seen_events WHERE seen_at < ?"
            " ORDER BY seen_at DESC LIMIT ?), e AS (SELECT min(seen_at) AS at FROM s)"
            " SELECT e.at, (SELECT count(*) FROM s WHERE s.seen_at > e.at)"
            " + (SELECT count(*) FROM seen_events WHERE seen_at = e.at) FROM e",
            (before, step),
        ).fetchone()
        if row[0] is None:
            return None
        if counted + row[1] > max_count:
            found = db.execute(
                "SELECT seen_at FROM seen_events WHERE seen_at < ? ORDER BY seen_at DESC"
                " OFFSET ? LIMIT 1",
                (before, max_count - counted),
            ).fetchone()
            return float(found[0])
        counted, before = counted + row[1], float(row[0])


def forget_batch(db: Db, mark: float, limit: int) -> int:
    """Forget at most ``limit`` of the ids up to ``mark`` (``past_max_count``); how many went."""
    if isinstance(db, PgDb):
        cursor = db.execute(
            "DELETE FROM seen_events WHERE id_key IN (SELECT id_key FROM seen_events"
            " WHERE seen_at <= ? LIMIT ? FOR UPDATE SKIP LOCKED)",
            (mark, limit),
        )
    else:
        cursor = db.execute(
            "DELETE FROM seen_events WHERE rowid IN"
            " (SELECT rowid FROM seen_events WHERE rowid <= ? LIMIT ?)",
            (int(mark), limit),
        )
    return int(cursor.rowcount)


class EventIdPruner:
    """Forgets the ids seen more than ``retention_s`` ago, then the oldest past ``max_count``.

    Batch by batch, off the event loop; ``forgotten_early`` is told how many ids went for
    the count before their age.
    """

    def __init__(
        self,
        store: TriggerStore,
        retention_s: float,
        clock: Callable[[], float],
        *,
        max_count: int = DEFAULT_MAX_COUNT,
        forgotten_early: Callable[[int], None] = lambda n: None,
        batch: int = PRUNE_BATCH,
    ) -> None:
        self._store = store
        self._retention_s = retention_s
        self._clock = clock
        self._max_count = max_count
        self._forgotten_early = forgotten_early
        self._batch = batch
        # Set by ``stop``: the thread ends after the batch it is in, the task at once.
        self._stopping = threading.Event()
        self._woken = asyncio.Event()

    def prune(self) -> int:
        """Every id past the retention, then past ``max_count`` (blocks); how many went."""
        cutoff = self._clock() - self._retention_s
        total = self._in_batches(lambda db: prune_batch(db, cutoff, self._batch))
        if total:
            logger.debug("forgot %d event ids seen before %.0f", total, cutoff)
        if self._stopping.is_set():
            return total
        with self._store.snapshot() as db:  # PostgreSQL's read may take a second: no lock
            mark = past_max_count(db, self._max_count)
        if mark is None:
            return total
        early = self._in_batches(lambda db: forget_batch(db, mark, self._batch))
        if early:
            self._forgotten_early(early)
            with self._store.snapshot() as db:
                oldest = db.execute("SELECT min(seen_at) FROM seen_events").fetchone()[0]
            kept = "none" if oldest is None else _age(self._clock() - oldest)
            logger.warning(
                "event ids: forgot the %d oldest before their event_id_retention_hours: the"
                " store keeps at most event_id_max_count (%d); a resend of one of them now is"
                " applied again (the oldest id kept was seen %s)",
                early,
                self._max_count,
                kept,
            )
        return total + early

    def _in_batches(self, batch: Callable[[Db], int]) -> int:
        """``batch`` a transaction at a time until it forgets fewer than a batch; how many went."""
        total = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._store.transaction() as db:
                gone = batch(db)
            total += gone
            if gone < self._batch:
                break
            # Let the events' transactions and the loop have the store in between.
            took = time.monotonic() - started
            self._stopping.wait(max(_MIN_PAUSE_S, _PAUSE_PER_BATCH_TIME * took))
        return total

    async def run(self, every_s: float = PRUNE_EVERY_S) -> None:
        """Prune now and every ``every_s`` until ``stop``; a store that refuses waits a period."""
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(self.prune)
            except UnavailableError as err:  # a full disk, PostgreSQL restarting: next period
                logger.warning("event ids: pruning failed: %s; trying again in %.0fs", err, every_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every_s):
                    await self._woken.wait()

    def stop(self) -> None:
        """End ``run`` (on the loop): at once while it waits, after its batch while it prunes.

        Await the task rather than cancel it: a cancelled ``to_thread`` leaves its thread
        running, which could still be writing when the store closes.
        """
        self._stopping.set()
        self._woken.set()


def _age(seconds: float) -> str:
    if seconds < 7200:
        return f"{max(0.0, seconds) / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
