"""The trigger engine's durable state: its connections, transactions and migration, and its pieces.

Everything that decides whether a callback fires lives here, and each event is applied
in one transaction: latching an atom, evaluating, counting and queueing the firing
commit together, with the journal's entries (journal.py), the known states (states.py)
and the registration checks (checks.py), whose tables share this database. So after
``kill -9`` a half-latched ``&&`` is still half-latched, its journal says which event
latched it, and a firing that was decided but not yet run is still queued (it runs
once at restart).

``TriggerStore`` ties the pieces together: it opens the SQLite file (migrating one from
an earlier version) or a fleet's PostgreSQL database, runs the transactions, and makes
the statements outside them (the queue restored, a firing done, a fleet's leases,
claims and versions). What a transaction does is in modules named for what they own,
functions of its connection that ``TriggerStore`` offers under its own name
(``TriggerStore.put_job(db, job)``): store_schema (the tables), store_rows (the rows
as the engine holds them), store_jobs (jobs, labels, registrations), store_callbacks
(callbacks, their atom index and latches), store_firings (the firing queue),
store_timers (clock atoms' timers) and store_sightings (an event's first read);
store_space is the file's bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from executor.errors import UnavailableError
from executor.fleet_clock import FleetClock
from executor.model import Event
from executor.runs.sqlite_checkpoints import BackgroundCheckpoints
from executor.sql import Db, NoCheckpoints, PgDb, is_postgres
from executor.storage import (
    LOOP_CHECKPOINT_BUSY_TIMEOUT_S,
    StorageHealth,
    open_database,
    reading,
    runs_nothing,
    wait_briefly_for_locks,
    writing,
)
from executor.triggers import (
    event_ids,
    store_callbacks,
    store_firings,
    store_jobs,
    store_sightings,
    store_space,
    store_timers,
)
from executor.triggers.evaluate import JobPlace, scope_label
from executor.triggers.snapshots import (
    POSTGRES_BEGIN,
    SQLITE_BEGIN,
    SnapshotReaders,
    sqlite_reader,
)
from executor.triggers.store_rows import PendingFiring, StoredCallback
from executor.triggers.store_schema import (
    ADDED_COLUMNS,
    FULL_SCHEMA,
    LABEL_INDEXES,
    SQLITE_REGISTRATION_COUNTER,
)

logger = logging.getLogger(__name__)


class TriggerStore:
    """The trigger engine's durable state: an SQLite file, or a fleet's PostgreSQL database.

    One connection guarded by a lock. On SQLite the engine is the only writer. On
    PostgreSQL (``path`` a ``postgresql://`` URL, its schema made by ``cbexec store
    migrate``) every replica of a fleet writes: an event's transaction locks the
    callback rows it reads (``matching_callbacks``; a group's, group_reads.py), so the two
    halves of an ``&&`` applied by two replicas at once serialize on the row and fire
    once; firings are claimed with a lease and an epoch (``claim_expired``,
    ``renew_leases``, ``claim_holds``, ``firing_done``).
    """

    def __init__(
        self,
        path: str,
        *,
        health: StorageHealth | None = None,
        lease_s: float = 15.0,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.RLock()
        self._path = path
        self._health = health
        # triggers_max_bytes: what a registration may take the file to (store_space.py);
        # None: no bound, as in a fleet (PostgreSQL is its DBA's to size).
        self._max_bytes = None if is_postgres(path) else max_bytes
        # Who this replica is in the firings' claims; fresh at each start, so a restarted
        # replica claims its own earlier firings like any other replica's.
        self.owner = uuid.uuid4().hex
        self.lease_s = lease_s
        # The leases' clock: the database's, in a fleet (``clock``: this replica's own).
        self.clock = FleetClock(clock)
        self._db: Db
        self._outside_db: Db
        self._checkpoints: BackgroundCheckpoints | NoCheckpoints
        if is_postgres(path):
            from executor.migrations import open_postgres

            self._db = open_postgres(path, application_name="cbexec-triggers")
            # Statements outside a transaction (the event loop's: a firing done, a
            # lease renewed) go through a connection of their own: the group thread's
            # transaction holds the first for several round trips.
            try:
                self._outside_db = open_postgres(path, application_name="cbexec-triggers-loop")
            except BaseException:
                self._db.close()
                raise
            self._outside_lock = threading.RLock()
            self._checkpoints = NoCheckpoints()
            try:
                self.clock.measure(self._outside_db)  # before any lease is written
            except BaseException:
                self._outside_db.close()
                self._db.close()
                raise

            def reader() -> Db:
                db = open_postgres(path, application_name="cbexec-triggers-reads")
                db.read_only = True  # the reads shared with the event path lock no rows
                return db

            self._snapshots = SnapshotReaders(reader, begin=POSTGRES_BEGIN)
            return
        sqlite = open_database(path)
        sqlite.row_factory = sqlite3.Row
        sqlite.execute("PRAGMA foreign_keys = ON")
        sqlite.executescript(FULL_SCHEMA + SQLITE_REGISTRATION_COUNTER)
        self._db = self._outside_db = sqlite
        self._outside_lock = self._lock
        self._migrate(sqlite)
        sqlite.executescript(LABEL_INDEXES)
        # Written through the one connection by the loop (timers, a firing done) and by
        # worker threads (events, registrations), each holding its lock, which the loop
        # may wait for: a lock held by another process is waited for briefly, then
        # refused as the storage's.
        wait_briefly_for_locks(sqlite)
        # A burst of events commits fast; the log's fsyncing checkpoints go to a thread.
        self._checkpoints = BackgroundCheckpoints(
            sqlite, path, busy_timeout_s=LOOP_CHECKPOINT_BUSY_TIMEOUT_S
        )
        self._snapshots = SnapshotReaders(sqlite_reader(path), begin=SQLITE_BEGIN)

    @property
    def fleet(self) -> bool:
        """Whether this store is a fleet's PostgreSQL database."""
        return isinstance(self._db, PgDb)

    def refuse_while_lost(self) -> None:
        """Raise UnavailableError while a database is lost (``StorageHealth.lost``).

        An event or registration applied then fires runs whose results, and the firings
        themselves, would be written into a file nothing reads again.
        """
        if self._health is not None and (lost := self._health.lost):
            raise UnavailableError(runs_nothing(lost))

    async def sound(self, at_most_s: float = 30.0) -> None:
        """Until the storage's health probe finds it takes writes again, or ``at_most_s``.

        What a retry waits for after the store refused a write: trying sooner would only
        wait for another's lock on the event loop, or fail again. At most that long: the
        health may be degraded by another database (a damaged history) for longer.
        """
        if self._health is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at_most_s):
                    await self._health.sound()

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Add the columns a database from an earlier version lacks; key its event ids."""
        for table, column, definition in ADDED_COLUMNS:
            present = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
                if (table, column) == ("atoms", "label"):
                    # Label atoms indexed before these columns: read them off the scope.
                    for rowid, scope in db.execute(
                        "SELECT rowid, scope FROM atoms WHERE scope LIKE 'label:%'"
                    ).fetchall():
                        pgrp, label = scope_label(scope) or (0, "")
                        db.execute(
                            "UPDATE atoms SET pgrp = ?, label = ? WHERE rowid = ?",
                            (pgrp, label, rowid),
                        )
        # Event ids kept as their text (before 2026-12-06): kept as their keys instead.
        rekeyed = event_ids.rekey_sqlite(db)
        if rekeyed:
            logger.info("event ids: the %d remembered are now kept as their keys", rekeyed)
        # Jobs registered before registrations were numbered: each its own number, as if
        # registered now (one transaction, so a crash half-way leaves no number twice).
        unnumbered = db.execute("SELECT job_id FROM jobs WHERE registration = 0").fetchall()
        if unnumbered:
            db.execute("BEGIN IMMEDIATE")
            for (job_id,) in unnumbered:
                db.execute(
                    "UPDATE jobs SET registration = ? WHERE job_id = ?",
                    (self.next_registration(db), job_id),
                )
            db.execute("COMMIT")

    def close(self) -> None:
        self._snapshots.close()
        with self._lock, self._outside_lock:
            self._checkpoints.close()
            if self._outside_db is not self._db:
                self._outside_db.close()
            self._db.close()

    @contextmanager
    def outside_transaction(self) -> Iterator[Db]:
        """The connection for statements outside a transaction, holding its lock.

        On SQLite it is the transactions' own (statements make no round trips); in a
        fleet, a second one, so that a read never waits for a transaction to commit. A
        damaged page a read meets is a DataLossError naming the file (``reading``).
        """
        with self._outside_lock, reading(self._path):
            yield self._outside_db

    @contextmanager
    def snapshot(self) -> Iterator[Db]:
        """A read-only connection of its own, one committed state, for long reads off the loop.

        It neither takes nor waits for the locks of the other connections (snapshots.py):
        for reads that may take seconds (``why`` of a big job), made on a worker thread. A
        damaged page a read meets is a DataLossError naming the file (``reading``).
        """
        with reading(self._path), self._snapshots.snapshot() as db:
            yield db

    @contextmanager
    def transaction(self) -> Iterator[Db]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error), holding the lock.

        A failure of the storage (disk full, ...) is a StorageError naming the file; on
        PostgreSQL a lost connection is StoreUnavailable and a lost deadlock
        StoreConflict (run the transaction again: ``retrying``).
        """
        try:
            with self._lock, writing(self._path, self._health):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:  # SQLite may have rolled back already
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                self._checkpoints.committed()
        finally:
            # Outside the lock, which the loop's statements take: a worker thread whose
            # transaction took the log past its bound (a commit, or a refused registration's
            # pages spilled into it) waits for it to be copied and emptied.
            self._checkpoints.settle()

    def wait_for_checkpoints(self) -> None:
        """Until the log's checkpoint running now (if any) has finished (tests, tools)."""
        self._checkpoints.wait()

    @contextmanager
    def within_bound(self, db: Db, job_id: int) -> Iterator[None]:
        """What the block writes for a registration of ``job_id`` keeps to ``triggers_max_bytes``.

        Inside the registration's transaction; raises StoreFullError (which rolls it
        back) when the block took the file's pages in use past the bound (store_space.py).
        """
        if self._max_bytes is None:
            yield
            return
        new_job = self.registration_in(db, job_id) is None
        before = store_space.bytes_in_use(db)
        yield
        store_space.check_room(db, before, self._max_bytes, job_id, new_job=new_job)

    def room(self) -> store_space.Room | None:
        """The file's pages in use, its bound and its jobs now; None without a bound (a fleet)."""
        if self._max_bytes is None:
            return None
        with self.outside_transaction() as db:
            in_use = store_space.bytes_in_use(db)
            return store_space.Room(in_use, self._max_bytes, self.count_jobs_in(db))

    # -- jobs and callbacks -----------------------------------------------------------

    def job(self, job_id: int) -> dict[str, Any] | None:
        """The job as registered, whole: parsing a big one holds the GIL (``heads``)."""
        with self.outside_transaction() as db:
            row = db.execute("SELECT job_json FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return json.loads(row["job_json"]) if row else None

    def place(self, job_id: int) -> JobPlace | None:
        """A registered job's pgrp and label, from their columns.

        An event's lookup never reads the job's JSON, whose agenda may hold thousands of
        items.
        """
        with self.outside_transaction() as db:
            return self.place_in(db, job_id)

    def label_owner(self, pgrp: int, label: str) -> int | None:
        with self.outside_transaction() as db:
            row = db.execute(
                # ``label != ''``: the partial index jobs_label, not a scan of every job.
                "SELECT job_id FROM jobs WHERE pgrp = ? AND label = ? AND label != ''",
                (pgrp, label),
            ).fetchone()
        return int(row["job_id"]) if row else None

    def callbacks_of(self, job_id: int) -> list[StoredCallback]:
        with self.outside_transaction() as db:
            return self.callbacks_in(db, job_id)

    def labels_in(self, pgrp: int) -> dict[str, int]:
        """Label -> job id of every labelled job registered in ``pgrp``."""
        with self.outside_transaction() as db:
            return self.labels_of(db, pgrp)

    def count_callbacks(self) -> int:
        with self.outside_transaction() as db:
            return int(db.execute("SELECT count(*) FROM callbacks").fetchone()[0])

    def count_firings(self) -> int:
        """Firings decided and not yet run to their end (in a fleet, every replica's)."""
        with self.outside_transaction() as db:
            return int(db.execute("SELECT count(*) FROM firings").fetchone()[0])

    def holds_firing(self, invocation_id: str) -> bool:
        """Whether a firing decided and not yet run to its end has this invocation id."""
        with self.outside_transaction() as db:
            row = db.execute(
                "SELECT 1 FROM firings WHERE invocation_id = ?", (invocation_id,)
            ).fetchone()
        return row is not None

    def count_jobs(self) -> int:
        with self.outside_transaction() as db:
            return self.count_jobs_in(db)

    # -- firings and timers ---------------------------------------------------------

    def pending_firings(self) -> list[PendingFiring]:
        """The firings decided and not yet run, in decision order, as they were decided.

        In a fleet: the ones whose replica's lease has run out, claimed (``claim_expired``).

        A queue from before snapshots names its callback's row only: it runs with that
        row, whose count was taken when it was decided; when the row is gone too (its
        job was removed or re-registered) nothing says what to run, and the firing
        leaves the queue with a warning instead of staying in it for ever.
        """
        if self.fleet:
            return self.claim_expired(limit=10_000)
        with self.outside_transaction() as db:
            rows = db.execute(
                "SELECT f.invocation_id, f.event_json, f.batch, f.snapshot_json, c.* "
                "FROM firings f LEFT JOIN callbacks c ON c.rowid = f.callback_rowid "
                "ORDER BY f.seq"
            ).fetchall()
        firings: list[PendingFiring] = []
        for row in rows:
            if row["snapshot_json"]:
                firings.append(PendingFiring.restored(row))
            elif row["job_id"] is not None:
                callback = StoredCallback.from_row(row)
                event = Event.from_dict(json.loads(row["event_json"]))
                firings.append(
                    PendingFiring(
                        row["invocation_id"],
                        callback,
                        event,
                        row["batch"],
                        callback.count,
                        event.work_name,
                    )
                )
            else:
                logger.warning(
                    "firing %s has lost its callback (queued before snapshots); dropped",
                    row["invocation_id"],
                )
                self.firing_done(row["invocation_id"])
        return firings

    def claim_holds(self, invocation_id: str, epoch: int) -> bool:
        """Whether this replica's claim on a firing (its owner, ``epoch``) still holds.

        Fencing of a fired run's result: a replica whose lease ran out while it ran the
        firing (it stalled, or lost PostgreSQL for a while) finds it claimed by another
        under a higher epoch, or already done by it; that replica's run is the firing's.
        """
        with self.outside_transaction() as db, writing(self._path, self._health):
            row = db.execute(
                "SELECT 1 FROM firings WHERE invocation_id = ? AND owner = ? AND epoch = ?",
                (invocation_id, self.owner, epoch),
            ).fetchone()
        return row is not None

    def firing_done(self, invocation_id: str, epoch: int = 0) -> bool:
        """The firing leaves the queue; False when (in a fleet) its claim no longer holds.

        Fencing: a replica whose lease ran out (it stalled, or lost PostgreSQL for a
        while) finds its firing claimed by another, under a higher epoch; its late "done"
        changes nothing, and the other replica's run is the one that completes it.
        """
        with self.outside_transaction() as db, writing(self._path, self._health):
            if self.fleet:
                cursor = db.execute(
                    "DELETE FROM firings WHERE invocation_id = ? AND owner = ? AND epoch = ?",
                    (invocation_id, self.owner, epoch),
                )
            else:
                cursor = db.execute("DELETE FROM firings WHERE invocation_id = ?", (invocation_id,))
            self._checkpoints.committed()
        return bool(cursor.rowcount)

    # -- what every replica of a fleet must reload ---------------------------------------

    def fleet_version(self, name: str) -> int:
        """The version of ``name`` (e.g. "universal") the fleet is at; 0 before any bump."""
        with self.outside_transaction() as db:
            row = db.execute(
                "SELECT version FROM fleet_versions WHERE name = ?", (name,)
            ).fetchone()
        return int(row[0]) if row else 0

    def bump_fleet_version(self, name: str) -> int:
        """Tell every replica to reload ``name``; the new version."""
        with self.outside_transaction() as db, writing(self._path, self._health):
            row = db.execute(
                "INSERT INTO fleet_versions (name, version) VALUES (?, 1) ON CONFLICT (name)"
                " DO UPDATE SET version = fleet_versions.version + 1 RETURNING version",
                (name,),
            ).fetchone()
        return int(row[0])

    # -- a fleet's claims ---------------------------------------------------------------

    def lease_until(self) -> float:
        """When a lease taken now runs out, in the database's clock (``clock``)."""
        return self.clock.now() + self.lease_s

    def renew_leases(self) -> int:
        """Extend the lease of every firing this replica holds; how many it holds.

        The clock's offset from the database's is measured again here, once a minute.
        """
        with self.outside_transaction() as db:
            if self.fleet:
                self.clock.measure_if_due(db)
            cursor = db.execute(
                "UPDATE firings SET lease_until = ? WHERE owner = ?",
                (self.lease_until(), self.owner),
            )
        return int(cursor.rowcount)

    def claim_expired(self, limit: int = 100) -> list[PendingFiring]:
        """Claim firings whose lease ran out (their replica died), in decision order.

        ``FOR UPDATE SKIP LOCKED``: replicas claiming at once take different rows. Each
        claim raises the row's epoch, which fences off the replica that held it before.
        """
        now = self.clock.now()
        with self.outside_transaction() as db:
            rows = db.execute(
                "UPDATE firings SET owner = ?, lease_until = ?, epoch = epoch + 1 WHERE seq IN"
                " (SELECT seq FROM firings WHERE lease_until < ? AND owner != ? ORDER BY seq"
                " LIMIT ? FOR UPDATE SKIP LOCKED)"
                " RETURNING seq, invocation_id, event_json, batch, snapshot_json, epoch",
                (self.owner, now + self.lease_s, now, self.owner, limit),
            ).fetchall()
        ordered = sorted(rows, key=lambda r: int(r["seq"]))
        return [PendingFiring.restored(row, int(row["epoch"])) for row in ordered]

    def next_timer_due(self) -> float | None:
        with self.outside_transaction() as db:
            row = db.execute("SELECT min(due) FROM timers").fetchone()
        return float(row[0]) if row and row[0] is not None else None

    # -- in the caller's connection: the modules' functions under the store's name ----

    # Jobs, labels and registrations (store_jobs.py).
    place_in = staticmethod(store_jobs.place_in)
    callbacks_to_register = staticmethod(store_jobs.callbacks_to_register)
    submissions_take_turns = staticmethod(store_jobs.submissions_take_turns)
    count_jobs_in = staticmethod(store_jobs.count_jobs_in)
    heads_in = staticmethod(store_jobs.heads_in)
    head_in = staticmethod(store_jobs.head_in)
    job_in = staticmethod(store_jobs.job_in)
    labels_of = staticmethod(store_jobs.labels_of)
    labels_among = staticmethod(store_jobs.labels_among)
    put_job = staticmethod(store_jobs.put_job)
    next_registration = staticmethod(store_jobs.next_registration)
    registration_in = staticmethod(store_jobs.registration_in)
    remove_job = staticmethod(store_jobs.remove_job)
    forget_job = staticmethod(store_jobs.forget_job)
    # Callbacks, their atom index, latches and counts (store_callbacks.py).
    callbacks_in = staticmethod(store_callbacks.callbacks_in)
    callbacks_page = staticmethod(store_callbacks.callbacks_page)
    universal_lines_of = staticmethod(store_callbacks.universal_lines_of)
    delete_callbacks = staticmethod(store_callbacks.delete_callbacks)
    unindex_callbacks = staticmethod(store_callbacks.unindex_callbacks)
    set_callback_ids_aside = staticmethod(store_callbacks.set_callback_ids_aside)
    put_callback = staticmethod(store_callbacks.put_callback)
    rewrite_callback = staticmethod(store_callbacks.rewrite_callback)
    matching_callbacks = staticmethod(store_callbacks.matching_callbacks)
    level_atoms_naming = staticmethod(store_callbacks.level_atoms_naming)
    load_callbacks = staticmethod(store_callbacks.load_callbacks)
    save_state = staticmethod(store_callbacks.save_state)
    save_count = staticmethod(store_callbacks.save_count)
    # The firing queue (store_firings.py).
    queue_firing = staticmethod(store_firings.queue_firing)
    own_batch = staticmethod(store_firings.own_batch)
    unfinished_firing = staticmethod(store_firings.unfinished_firing)
    # Clock atoms' timers (store_timers.py).
    replace_timers = staticmethod(store_timers.replace_timers)
    due_timers = staticmethod(store_timers.due_timers)
    universal_clocks = staticmethod(store_timers.universal_clocks)
    universal_repeats_stopped = staticmethod(store_timers.universal_repeats_stopped)
    drop_timers_of = staticmethod(store_timers.drop_timers_of)
    timer_slots = staticmethod(store_timers.timer_slots)
    timers_of = staticmethod(store_timers.timers_of)
    add_timer = staticmethod(store_timers.add_timer)
    drop_timers = staticmethod(store_timers.drop_timers)
    reschedule_timer = staticmethod(store_timers.reschedule_timer)
    # An event's first read (store_sightings.py).
    sighting = staticmethod(store_sightings.sighting)
    first_sighting = staticmethod(store_sightings.first_sighting)
