"""ReferenceSupervisor: Qube-style jobs, work and instances on SQLite, with events and history.

An embedded stand-in for a Qube supervisor, good enough for the executor's tests and
demos: there are no workers, so tests and the farm (farm.py: simulated workers, an
operator's commands) drive work with ``start_work``/``complete_work``.
Every state change becomes a ``Transition`` (the event a real supervisor would publish),
delivered to listeners after the change is committed, outside the lock. With
``event_outbox``, its event is also kept in the database, in the change's own
transaction, until a forwarder has delivered it (event_outbox.py).

Reported results are kept per invocation id; ``result_retention_s``, ``max_results``
and ``max_result_bytes`` bound them (retention.py). The job history lines they add stay.

A numbered action (``invocation_id`` + ``action_seq``, from a callback's run) is applied
once: its answer is kept in the same transaction (applied.py), and a repeat is answered
from there without applying again; another action under the pair is refused
(ActionConflictError).

One process owns the database file; inside it, one re-entrant lock serialises every use
of the single connection, so the store is safe to call from any thread.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Protocol

from supervisor_client.reference.applied import (
    DEFAULT_RETENTION_S,
    REMEMBERED_ERRORS,
    ActionKey,
    Answer,
    AppliedActions,
    describe,
)
from supervisor_client.reference.dependency import check_not_itself
from supervisor_client.reference.errors import (
    NoSuchJobError,
    NoSuchWorkError,
    PermissionDeniedError,
    SubmitError,
)
from supervisor_client.reference.event_outbox import EventOutbox, Turn, UnsentEvent
from supervisor_client.reference.given_job import parse_given_job
from supervisor_client.reference.qube_time import TIME_FIELDS, shown
from supervisor_client.reference.retention import PAYLOAD_BYTES, ResultRetention, compact
from supervisor_client.reference.states import (
    DEFAULT_SECURITY,
    NON_TERMINAL,
    REGISTER_AGAIN,
    TERMINAL,
    Status,
    Transition,
    VerbRule,
    derive_job_status,
    instances_moved_from,
    is_terminal,
    job_rule,
    move_event,
    needs_registering_again,
    permits,
    subjob_rule,
    work_rule,
)
from supervisor_client.reference.submission import (
    MAX_ID,
    JobCheck,
    LabelHolders,
    LanguageCheck,
    NewJob,
    TriggerCheck,
    parse_submission,
)

logger = logging.getLogger(__name__)

Listener = Callable[[Transition], None]

DEFAULT_ADMINS: Final = frozenset({"root", "admin"})
# Names in one ``IN`` list: well under SQLite's bound on a statement's parameters
# (999 before SQLite 3.32).
_NAMES_PER_QUERY: Final = 500
#: How a history line names what a verb bringing an instance back did to it.
_DONE: Final = {"retry": "retried", "requeue": "requeued"}

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL, label TEXT NOT NULL, pgrp INTEGER NOT NULL, pid INTEGER NOT NULL,
    status TEXT NOT NULL, user TEXT NOT NULL, priority INTEGER NOT NULL,
    prototype TEXT NOT NULL, cpus INTEGER NOT NULL, mailaddress TEXT NOT NULL,
    timesubmit INTEGER NOT NULL, timestart INTEGER NOT NULL DEFAULT 0,
    timecomplete INTEGER NOT NULL DEFAULT 0, extra TEXT NOT NULL DEFAULT '{}',
    preempted INTEGER NOT NULL DEFAULT 0,
    -- 1 when the supervisor gave the label (qube<N>): a resubmitted dict gets a fresh one.
    label_assigned INTEGER NOT NULL DEFAULT 0,
    -- How often a job without an agenda was started: the attempt its worker reports.
    starts INTEGER NOT NULL DEFAULT 0,
    UNIQUE (pgrp, label)
);
CREATE TABLE IF NOT EXISTS work (
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position INTEGER NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL,
    subid INTEGER NOT NULL DEFAULT -1, host TEXT NOT NULL DEFAULT '',
    count INTEGER NOT NULL DEFAULT 0, resultpackage TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, name)
);
CREATE TABLE IF NOT EXISTS subjobs (
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    id INTEGER NOT NULL, status TEXT NOT NULL, host TEXT NOT NULL DEFAULT '',
    preempted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, id)
);
CREATE TABLE IF NOT EXISTS callbacks (
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    id INTEGER NOT NULL, triggers TEXT NOT NULL, language TEXT NOT NULL, code TEXT NOT NULL,
    user TEXT NOT NULL, count INTEGER NOT NULL DEFAULT 0, maximum INTEGER NOT NULL DEFAULT 0,
    mode TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, id)
);
-- History and results outlive their job: a callback may remove its own job. A result
-- for a job id never given out (job_known 0) is kept apart: no history line, and not
-- among the results of the job that later gets the id.
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, time REAL NOT NULL,
    text TEXT NOT NULL, invocation_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS history_by_job ON history (job_id, seq);
-- Which statuses a job's agenda holds, a step each (_agenda_statuses).
CREATE INDEX IF NOT EXISTS work_by_status ON work (job_id, status, position);
CREATE TABLE IF NOT EXISTS results (
    invocation_id TEXT PRIMARY KEY, job_id INTEGER NOT NULL, time REAL NOT NULL,
    payload TEXT NOT NULL, job_known INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS results_by_job ON results (job_id);
CREATE INDEX IF NOT EXISTS results_by_time ON results (time);
"""


def _as_seconds(value: object) -> float:
    """A stored or reported ``ended_at`` as a number; absent or malformed is 0 (the earliest)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def _ended_at(payload: Mapping[str, Any]) -> float:
    return _as_seconds(payload.get("ended_at"))


_JOB_COLUMNS: Final = (
    "id",
    "name",
    "label",
    "pgrp",
    "pid",
    "status",
    "user",
    "priority",
    "prototype",
    "cpus",
    "mailaddress",
    "timesubmit",
    "timestart",
    "timecomplete",
)


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What a verb did: how many objects changed state, and a sentence saying so."""

    changed: int
    message: str


@dataclass(slots=True)
class _Changes:
    """What one transaction did, kept until commit: events to deliver, history to write."""

    transitions: list[Transition] = field(default_factory=list)
    history: list[tuple[int, str, str]] = field(default_factory=list)
    # Jobs to register again once the change's events are sent (states.REGISTER_AGAIN).
    register_again: dict[int, None] = field(default_factory=dict)
    # Jobs with an item brought back from an ended status (a retry): an ended job runs again.
    revived: set[int] = field(default_factory=set)

    def note(self, job_id: int, text: str, invocation_id: str = "") -> None:
        self.history.append((job_id, text, invocation_id))

    def moved(self, job_id: int, old: str, new: str) -> None:
        """Note a state change of the job or one of its items or instances."""
        if needs_registering_again(old, new):
            self.register_again[job_id] = None

    def outbox(self) -> list[Transition]:
        """What the forwarder sends, in order: the events, then the registrations again."""
        again = [Transition(REGISTER_AGAIN, "job", job_id) for job_id in self.register_again]
        return [*self.transitions, *again]


def _held_elsewhere(
    labels_held: LabelHolders | None, pgrps: Iterable[int], farm_has: Callable[[int], bool]
) -> Callable[[int, str, int], int | None]:
    """(pgrp, label, job id) -> the job another scheduler registered holding it, or None.

    A holder above the job's own id is another scheduler's: the farm gives its ids in
    order, never twice. One at or below it is the farm's registration, or one it
    replaces (this submission registers its jobs in order, and the farm's registration
    under an id replaces one made by hand under it), or a job the farm removed, whose
    label goes when that event reaches the engine. Unless the farm has that job now:
    a label its own job holds there is refused before this (``taken``), so the engine's
    job of that id is one registered by hand over the farm's.
    """
    held = {pgrp: dict(labels_held(pgrp)) if labels_held else {} for pgrp in set(pgrps)}

    def holder(pgrp: int, label: str, job_id: int) -> int | None:
        found = held[pgrp].get(label)
        if found is None or (found <= job_id and not farm_has(found)):
            return None
        return found

    return holder


def _origin(invocation_id: str) -> str:
    """The history tag of a verb: Qube logs callback actions apart from users' own."""
    return "[callback]" if invocation_id else "[user]"


def _names(job_id: int, names: Sequence[str], limit: int = 10) -> str:
    shown = ",".join(names[:limit])
    more = f",… ({len(names)} items)" if len(names) > limit else ""
    return f"work {job_id}:{shown}{more}"


class Checkpoints(Protocol):
    """Takes a WAL database's checkpoints off its writer (the executor's ``BackgroundCheckpoints``)."""

    def committed(self) -> None: ...

    def close(self) -> None: ...


class ReferenceSupervisor:
    """Qube job state on SQLite: submission, jobinfo, verbs, work lifecycle, results.

    Args:
        path: the database file, or ":memory:".
        admins: users who may act on any job.
        default_security: Qube's supervisor_default_security mask, applied to every
            non-admin acting on their own job (there are no per-user grants).
        listeners: called with each Transition after its change is committed.
        clock: Unix time source, replaceable for deterministic tests.
        action_retention_s: how long the answer to a numbered action is kept to answer
            a repeat (applied.py): seconds, a finite number more than 0.
        event_outbox: keep each transition's event in the database, written in the
            transaction of its change, until ``remove_events`` (what a forwarder that must
            survive a stop or a crash reads: event_outbox.py).
        result_retention_s: results stored longer ago than this are pruned (at open,
            and every 50 results); None keeps them.
        max_results: at most this many results are kept, the oldest pruned first;
            None keeps them all.
        max_result_bytes: the kept results' payloads take at most this many bytes, the
            oldest pruned first but never the newest; None: no bound.
        storage_errors: wraps every use of the database after the open, a failed
            commit included: the embedding process's translation of a storage failure (a
            full disk, an I/O error) into its own error (the executor's
            ``storage.writing``, UNAVAILABLE naming the file). By default SQLite's errors
            pass as they are.
        busy_timeout_s: after the open (which waits SQLite's usual 5 s), how long a
            write waits for another connection's lock before it fails with "database is
            locked"; a process that calls it on its event loop keeps this short.
        checkpoints: given the connection and the path once open, what takes the
            log's checkpoints (told of each commit, closed before the connection):
            the executor's thread, which also keeps the log near 4 MiB. None: SQLite's
            own, on the committing thread, the log keeping its largest size.
        connect: opens the connection, as ``sqlite3.connect`` does (the default): the
            executor's refuses each statement while the database's ``-shm`` cannot be
            written, which a write to SQLite's mapping of it would meet as SIGBUS.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        admins: Collection[str] = DEFAULT_ADMINS,
        default_security: int = DEFAULT_SECURITY,
        listeners: Iterable[Listener] = (),
        clock: Callable[[], float] = time.time,
        action_retention_s: float = DEFAULT_RETENTION_S,
        event_outbox: bool = False,
        result_retention_s: float | None = None,
        max_results: int | None = None,
        max_result_bytes: int | None = None,
        storage_errors: Callable[[], AbstractContextManager[None]] = nullcontext,
        busy_timeout_s: float = 5.0,
        checkpoints: Callable[[sqlite3.Connection, str], Checkpoints] | None = None,
        connect: Callable[..., sqlite3.Connection] = sqlite3.connect,
    ) -> None:
        self._admins = frozenset(admins)
        self._checkpoints: Checkpoints | None = None
        self._storage_errors = storage_errors
        self._security = default_security
        self._listeners = list(listeners)
        self._outbox_listeners: list[Callable[[], None]] = []
        self._clock = clock
        self._lock = threading.RLock()
        # The changes of the transaction open on the thread holding ``_lock`` (together()).
        self._open_changes: _Changes | None = None
        self._db = connect(path, timeout=5.0, check_same_thread=False)
        try:
            self._open(
                path,
                action_retention_s,
                event_outbox,
                result_retention_s,
                max_results,
                max_result_bytes,
            )
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if checkpoints is not None:
                self._checkpoints = checkpoints(self._db, str(path))
        except BaseException:
            self._db.close()
            raise

    def _open(
        self,
        path: str | os.PathLike[str],
        action_retention_s: float,
        event_outbox: bool,
        result_retention_s: float | None,
        max_results: int | None,
        max_result_bytes: int | None,
    ) -> None:
        """Make or upgrade the schema; prune the results past their bounds."""
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys = ON")
        # WAL + NORMAL: crash-safe for the process without an fsync per verb (the default
        # rollback journal fsyncs twice per commit, in the caller's event loop).
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(callbacks)")}
        if "mode" not in columns:  # a database from before the trigger engine's modes
            self._db.execute("ALTER TABLE callbacks ADD COLUMN mode TEXT NOT NULL DEFAULT ''")
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "preempted" not in columns:  # a database from before the passive preempt
            self._db.execute("ALTER TABLE jobs ADD COLUMN preempted INTEGER NOT NULL DEFAULT 0")
        if "label_assigned" not in columns:  # from before labels given were told apart
            self._db.execute(
                "ALTER TABLE jobs ADD COLUMN label_assigned INTEGER NOT NULL DEFAULT 0"
            )
            # The supervisor's form: a submitter rarely writes it, and it was then refused.
            self._db.execute(
                "UPDATE jobs SET label_assigned = 1 WHERE label GLOB 'qube[0-9]*'"
                " AND substr(label, 5) NOT GLOB '*[^0-9]*'"
            )
        if "starts" not in columns:  # from before a job's starts were its attempts
            self._db.execute("ALTER TABLE jobs ADD COLUMN starts INTEGER NOT NULL DEFAULT 0")
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(subjobs)")}
        if "preempted" not in columns:  # a database from before the passive instance preempt
            self._db.execute("ALTER TABLE subjobs ADD COLUMN preempted INTEGER NOT NULL DEFAULT 0")
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(results)")}
        if "job_known" not in columns:  # a database from before results were kept apart
            self._db.execute("ALTER TABLE results ADD COLUMN job_known INTEGER NOT NULL DEFAULT 1")
        indexed = [row["name"] for row in self._db.execute("PRAGMA index_info(work_by_status)")]
        if "position" not in indexed:  # from before take_work sought its next item in it
            self._db.executescript(
                "DROP INDEX work_by_status;"
                " CREATE INDEX work_by_status ON work (job_id, status, position);"
            )
        self._applied = AppliedActions(self._db, action_retention_s)
        self._events = EventOutbox(self._db) if event_outbox else None
        self._retention = ResultRetention(
            self._db,
            retention_s=result_retention_s,
            max_results=max_results,
            max_bytes=max_result_bytes,
        )
        with self._db:
            pruned = self._retention.prune(self._clock())
        if pruned:
            logger.info("%s: pruned %d results past their retention", path, pruned)
            compact(self._db, str(path))

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the database connection; the store is unusable afterwards."""
        with self._lock:
            if self._checkpoints is not None:
                self._checkpoints.close()
            self._db.close()

    def __enter__(self) -> ReferenceSupervisor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- events not yet forwarded (with ``event_outbox``) --------------------------------

    @property
    def keeps_events(self) -> bool:
        """Whether transitions' events are kept until removed (``event_outbox``)."""
        return self._events is not None

    def unsent_events(self, limit: int = 100) -> list[UnsentEvent]:
        """Up to ``limit`` kept events, oldest first; none without ``event_outbox``."""
        if self._events is None:
            return []
        with self._using_db():
            return self._events.oldest(limit)

    def unsent_events_in_turn(
        self, after_job: int, limit: int, left_out: Collection[int] = ()
    ) -> Turn:
        """Up to ``limit`` kept events, job by job from the job after ``after_job`` (round-robin).

        Each job's come oldest first, none of the jobs ``left_out``; see
        ``EventOutbox.in_turn``. None without ``event_outbox``.
        """
        if self._events is None:
            return Turn([], after_job)
        with self._using_db():
            return self._events.in_turn(after_job, limit, left_out)

    def has_unsent_events(self, left_out: Collection[int] = ()) -> bool:
        """Whether any kept event of a job not in ``left_out`` waits to be removed."""
        if self._events is None:
            return False
        with self._using_db():
            return self._events.waiting(left_out)

    def remove_events(self, seqs: list[int]) -> None:
        """Forget kept events, in one transaction: they were delivered (or refused for good)."""
        if self._events is None:
            return
        with self._using_db(), self._db:
            self._events.remove(seqs)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with every later Transition, after the listeners given so far."""
        with self._lock:
            self._listeners.append(listener)

    def add_outbox_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after each commit that kept rows to forward (``event_outbox``).

        Those are the events listeners hear, and the registrations a change without an
        event asks for (states.REGISTER_AGAIN), which listeners do not hear.
        """
        with self._lock:
            self._outbox_listeners.append(listener)

    @contextmanager
    def _using_db(self) -> Iterator[None]:
        """Hold the connection; a storage failure meanwhile is raised as ``storage_errors`` says."""
        with self._lock, self._storage_errors():
            yield

    @contextmanager
    def together(self) -> Iterator[None]:
        """Make the changes inside one transaction: all committed at its end, or none.

        What a farm's worker reports for many frames at once: a failure part-way (a
        full disk) leaves no frame changed, and the commit is one instead of one per
        frame. Other threads' changes wait until it ends. Inside another ``together`` it
        is a part of that one, undone alone when it fails (a savepoint).
        """
        with self._lock:
            part = self._open_changes is not None  # this thread's transaction is open
            with self._transaction():
                if not part:
                    # Begun now: a savepoint opening a transaction would commit it at its release.
                    # IMMEDIATE, the write lock taken here, waiting ``busy_timeout_s`` for it:
                    # a transaction that reads and then writes (a worker's take) is refused at
                    # once, unwaited, when another connection holds the lock at its first write
                    # (the checkpoint's TRUNCATE, a few ms; probe 127).
                    self._db.execute("BEGIN IMMEDIATE")
                yield

    @contextmanager
    def _part_of(self, changes: _Changes) -> Iterator[_Changes]:
        """A change inside an open transaction: undone alone when it fails (a savepoint).

        It notes what it did apart, joined to ``changes`` once it succeeds: a change
        returns its own transitions, not a copy of every one before it in the
        transaction (which made a change of n frames cost n squared).
        """
        own = _Changes()
        self._db.execute("SAVEPOINT change")
        self._open_changes = own  # the changes of a part of it are its own (a together in one)
        try:
            yield own
        except BaseException:
            self._db.execute("ROLLBACK TO change")
            self._db.execute("RELEASE change")
            raise
        finally:
            self._open_changes = changes
        self._db.execute("RELEASE change")
        changes.transitions.extend(own.transitions)
        changes.history.extend(own.history)
        changes.register_again.update(own.register_again)

    @contextmanager
    def _transaction(self) -> Iterator[_Changes]:
        """Run a change atomically; deliver its transitions once it is committed.

        A listener that raises is logged and skipped: the change is already committed,
        so failing the caller's verb would misreport what happened. A change that fails,
        its commit included, is rolled back whole: its state, history lines and kept
        events together, and no listener hears of it. Inside ``together`` a change joins
        that transaction: a failed one is undone alone (a savepoint), and a failure that
        leaves ``together`` rolls back the whole of it.
        """
        with self._using_db():
            if self._open_changes is not None:  # this thread's, in together()
                with self._part_of(self._open_changes) as changes:
                    yield changes
                return
            changes = self._open_changes = _Changes()
            try:
                with self._db:
                    yield changes
                    now = self._clock()
                    self._db.executemany(
                        "INSERT INTO history (job_id, time, text, invocation_id)"
                        " VALUES (?, ?, ?, ?)",
                        [(job_id, now, text, inv) for job_id, text, inv in changes.history],
                    )
                    kept: list[Transition] = []
                    if self._events is not None:
                        kept = changes.outbox()
                        self._events.add(kept)
                if self._checkpoints is not None:
                    self._checkpoints.committed()
            finally:
                self._open_changes = None
            listeners = tuple(self._listeners)
            wake = tuple(self._outbox_listeners) if kept else ()
        for on_kept in wake:
            try:
                on_kept()
            except Exception:
                logger.exception("outbox listener %r failed", on_kept)
        for transition in changes.transitions:
            for listener in listeners:
                try:
                    listener(transition)
                except Exception:
                    logger.exception("listener %r failed on %s", listener, transition)

    # -- submission ---------------------------------------------------------------------

    def submit(
        self,
        jobs: Sequence[Mapping[str, Any]],
        *,
        check_trigger: TriggerCheck | None = None,
        check_language: LanguageCheck | None = None,
        check_job: JobCheck | None = None,
        labels_held: LabelHolders | None = None,
    ) -> list[dict[str, Any]]:
        """Store Qube job dicts; all or nothing. Returns the stored jobs, in order.

        Jobs join one new pgrp led by the first job that does not name an existing
        ``pgrp``; that job's id is the pgrp id. Raises SubmitError naming the problem
        (duplicate label or work name, unknown pgrp, malformed field, and, with
        ``check_trigger`` and ``check_language``, a callback's trigger or language they
        refuse, with ``check_job`` a job as stored that it refuses, and with
        ``labels_held`` a label given a job that another scheduler's job holds there).
        """
        parsed = parse_submission(jobs, check_trigger, check_language)
        with self._transaction() as changes:
            ids = self._insert_jobs(changes, parsed, labels_held)
            if check_job is not None:
                self._check_stored(ids, check_job)
            return [self._job_dict(self._job_row(i), include_callbacks=False) for i in ids]

    def _insert_jobs(
        self, changes: _Changes, jobs: Sequence[NewJob], labels_held: LabelHolders | None
    ) -> list[int]:
        first_id = self._last_job_id() + 1
        leader = next((first_id + i for i, job in enumerate(jobs) if job.fields.pgrp is None), 0)
        pgrps = [job.fields.pgrp or leader for job in jobs]
        labels = self._assign_labels(jobs, pgrps, first_id, labels_held)
        now = int(self._clock())
        for offset, (job, pgrp, (label, assigned)) in enumerate(
            zip(jobs, pgrps, labels, strict=True)
        ):
            job_id = first_id + offset
            check_not_itself(f"job {offset + 1} of the submission", job.waits_for, job_id, label)
            self._db.execute(
                "INSERT INTO jobs (id, name, label, label_assigned, pgrp, pid, status, user,"
                " priority, prototype, cpus, mailaddress, timesubmit, extra) VALUES (:id, :name,"
                " :label, :label_assigned, :pgrp, :pid, :status, :user, :priority, :prototype,"
                " :cpus, :mailaddress, :timesubmit, :extra)",
                {
                    **asdict(job.fields),
                    "id": job_id,
                    "label": label,
                    "label_assigned": assigned,
                    "pgrp": pgrp,
                    "status": job.status,
                    "timesubmit": now,
                },
            )
            self._db.executemany(
                "INSERT INTO work (job_id, position, name, status) VALUES (?, ?, ?, ?)",
                [(job_id, pos, work.name, work.status) for pos, work in enumerate(job.agenda)],
            )
            self._db.executemany(
                "INSERT INTO subjobs (job_id, id, status) VALUES (?, ?, ?)",
                [(job_id, subid, job.status) for subid in range(job.fields.cpus)],
            )
            self._db.executemany(
                "INSERT INTO callbacks (job_id, id, triggers, language, code, user, maximum, mode)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        job_id,
                        n,
                        cb.triggers,
                        cb.language,
                        cb.code,
                        cb.user or job.fields.user,
                        cb.maximum,
                        cb.mode,
                    )
                    for n, cb in enumerate(job.callbacks, start=1)
                ],
            )
            changes.transitions.append(Transition("submit", "job", job_id))
            changes.note(
                job_id, f"[job] submitted by {job.fields.user} into pgrp {pgrp} as {label!r}"
            )
        return [first_id + offset for offset in range(len(jobs))]

    def _check_stored(self, ids: Sequence[int], check_job: JobCheck) -> None:
        """Ask ``check_job`` of each job as stored; SubmitError, before the commit, for one it refuses."""
        for number, job_id in enumerate(ids, start=1):
            job = self._job_dict(self._job_row(job_id), include_callbacks=True)
            problem = check_job(job)
            if problem is not None:
                raise SubmitError(f"job {number} of the submission: {problem}")

    def _assign_labels(
        self,
        jobs: Sequence[NewJob],
        pgrps: Sequence[int],
        first_id: int,
        labels_held: LabelHolders | None,
    ) -> list[tuple[str, bool]]:
        """Check explicit labels are unique per pgrp, then give the rest ``qube<N>``.

        Each job's label, and whether the supervisor gave it. N starts at the job's
        position in its pgrp and skips labels already taken, so an explicit "qube1" later
        in the submission is never given away. A label a job of the pgrp holds as given by
        the supervisor is an assigned field of a resubmitted jobinfo dict, as its ``id``
        is: the job gets a fresh one.

        ``labels_held`` (the trigger engine's labels) counts only where its holder's id
        is another scheduler's (``_held_elsewhere``).
        """
        ids = range(first_id, first_id + len(jobs))
        elsewhere = _held_elsewhere(labels_held, pgrps, self._has_job)
        taken: dict[int, set[str]] = {}
        assigned: dict[int, set[str]] = {}
        # Who holds each explicit label, for the refusal: an existing job, or a job of this
        # submission (a new pgrp has no id to name yet: the refused submission gets none).
        holders: dict[int, dict[str, str]] = {}
        for n, (job, pgrp) in enumerate(zip(jobs, pgrps, strict=True), start=1):
            if pgrp not in taken:
                rows = self._db.execute(
                    "SELECT id, label, label_assigned FROM jobs WHERE pgrp = ?", (pgrp,)
                ).fetchall()
                holders[pgrp] = {row["label"]: f"job {row['id']} (pgrp {pgrp})" for row in rows}
                taken[pgrp] = set(holders[pgrp])
                assigned[pgrp] = {row["label"] for row in rows if row["label_assigned"]}
                if job.fields.pgrp is not None and not taken[pgrp]:
                    raise SubmitError(f"job {n} of the submission: pgrp {pgrp} does not exist")
        given = [
            None if job.fields.label in assigned[pgrp] else job.fields.label
            for job, pgrp in zip(jobs, pgrps, strict=True)
        ]
        # Labels are unique per pgrp, so the existing ones also count the existing jobs.
        positions = {pgrp: len(labels) for pgrp, labels in taken.items()}
        for n, (label, pgrp) in enumerate(zip(given, pgrps, strict=True), start=1):
            if label is None:
                continue
            if label in taken[pgrp]:
                raise SubmitError(
                    f"job {n} of the submission: label {label!r} is taken by "
                    f"{holders[pgrp][label]}; a label names one job of its process group"
                )
            holder = elsewhere(pgrp, label, ids[n - 1])
            if holder is not None:
                raise SubmitError(
                    f"job {n} of the submission: label {label!r} in pgrp {pgrp} is held by "
                    f"job {holder}, registered with the trigger engine through RegisterJob, "
                    "not by the farm; a label names one job of its process group: give this "
                    "job another label, or none (the farm gives it one)"
                )
            taken[pgrp].add(label)
            holders[pgrp][label] = f"job {n} of the submission"
        labels = []
        for label, pgrp, job_id in zip(given, pgrps, ids, strict=True):
            if label is not None:
                labels.append((label, False))
            else:
                n = positions[pgrp]
                while f"qube{n}" in taken[pgrp] or elsewhere(pgrp, f"qube{n}", job_id):
                    n += 1
                taken[pgrp].add(f"qube{n}")
                labels.append((f"qube{n}", True))
            positions[pgrp] += 1
        return labels

    def hold_as_given(
        self,
        job: Mapping[str, Any],
        *,
        check_trigger: TriggerCheck | None = None,
        check_language: LanguageCheck | None = None,
    ) -> dict[str, Any]:
        """Hold one job dict as it is given, in place of any job held under its id.

        What ``cbexec run --embedded`` tries a callback in: unlike ``submit``, the job
        keeps its id, its statuses, where its frames ran, their attempts and result
        packages, and its callbacks' ids and counts (given_job.py). Nothing happened to
        the job here, so it causes no event and is not registered with the trigger
        engine (which would fire its callbacks). Returns the job with its callbacks.
        Raises SubmitError naming a malformed field (checked as ``submit`` checks it),
        or a label another job of its process group holds.
        """
        given = parse_given_job(
            job,
            now=int(self._clock()),
            check_trigger=check_trigger,
            check_language=check_language,
        )
        job_id, fields = given.id, given.fields
        with self._transaction() as changes:
            holder = self._db.execute(
                "SELECT id FROM jobs WHERE pgrp = ? AND label = ? AND id != ?",
                (given.pgrp, given.label, job_id),
            ).fetchone()
            if holder is not None:
                raise SubmitError(
                    f"job {job_id}: label {given.label!r} is taken by job {holder['id']} "
                    f"(pgrp {given.pgrp}); a label names one job of its process group"
                )
            replaced = self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
            self._db.execute(
                "INSERT INTO jobs (id, name, label, pgrp, pid, status, user, priority, prototype,"
                " cpus, mailaddress, timesubmit, timestart, timecomplete, extra) VALUES"
                " (:id, :name, :label, :pgrp, :pid, :status, :user, :priority, :prototype,"
                " :cpus, :mailaddress, :timesubmit, :timestart, :timecomplete, :extra)",
                {
                    **asdict(fields),
                    "id": job_id,
                    "label": given.label,
                    "pgrp": given.pgrp,
                    "status": given.status,
                    "timesubmit": given.timesubmit,
                    "timestart": given.timestart,
                    "timecomplete": given.timecomplete,
                },
            )
            self._db.executemany(
                "INSERT INTO work (job_id, position, name, status, subid, host, count,"
                " resultpackage) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (job_id, pos, w.name, w.status, w.subid, w.host, w.count, w.resultpackage)
                    for pos, w in enumerate(given.agenda)
                ],
            )
            self._db.executemany(
                "INSERT INTO subjobs (job_id, id, status, host) VALUES (?, ?, ?, ?)",
                [(job_id, sub.id, sub.status, sub.host) for sub in given.instances],
            )
            self._db.executemany(
                "INSERT INTO callbacks (job_id, id, triggers, language, code, user, count,"
                " maximum, mode) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        job_id,
                        cb.id,
                        cb.callback.triggers,
                        cb.callback.language,
                        cb.callback.code,
                        cb.callback.user or fields.user,
                        cb.count,
                        cb.callback.maximum,
                        cb.callback.mode,
                    )
                    for cb in given.callbacks
                ],
            )
            instead = " in place of the job held under its id" if replaced else ""
            changes.note(job_id, f"[job] held as given{instead}, status {given.status}")
        return self.job(job_id, include_callbacks=True)

    # -- reading ------------------------------------------------------------------------

    def job(
        self,
        job_id: int,
        *,
        include_callbacks: bool = False,
        work_names: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """The Qube job dict of one job. Raises NoSuchJobError.

        ``work_names``: None for the whole agenda; else only the items so named, in
        agenda order (none for an empty collection; a name the job lacks is left out).
        A big job's read that needs one item, or none, then reads only that.
        """
        with self._using_db():
            return self._job_dict(
                self._job_row(job_id), include_callbacks=include_callbacks, work_names=work_names
            )

    def jobs_in_pgrp(
        self,
        pgrp: int,
        *,
        include_callbacks: bool = False,
        work_names: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every job of a process group, by id; empty for an unknown pgrp.

        ``work_names``: as for ``job``, for each job.
        """
        if not 0 <= pgrp <= MAX_ID:
            return []
        with self._using_db():
            rows = self._db.execute("SELECT * FROM jobs WHERE pgrp = ? ORDER BY id", (pgrp,))
            return [
                self._job_dict(row, include_callbacks=include_callbacks, work_names=work_names)
                for row in rows.fetchall()
            ]

    def jobs(
        self, *, statuses: Collection[str] = (), work_names: Collection[str] | None = None
    ) -> list[dict[str, Any]]:
        """Every job (only those in ``statuses`` when given), by id, without callbacks.

        ``work_names``: as for ``job`` (``()``: no items, each job's row and instances).
        """
        query, args = "SELECT * FROM jobs", list(statuses)
        if args:
            query += f" WHERE status IN ({', '.join('?' * len(args))})"
        with self._using_db():
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
            return [
                self._job_dict(row, include_callbacks=False, work_names=work_names) for row in rows
            ]

    def job_ids(self) -> list[int]:
        """The ids of every job, ascending."""
        with self._using_db():
            return [row[0] for row in self._db.execute("SELECT id FROM jobs ORDER BY id")]

    def job_statuses(self, job_ids: Sequence[int] | None = None) -> dict[int, str]:
        """Each job's status by id, every job's (by id) when ``job_ids`` is None; one statement.

        A job that does not exist is left out. The ids go to SQLite as one JSON array, so
        thousands of them are one statement, not one each: the farm's WaitJobs reads
        them on the executor's event loop, every pass of its wait.
        """
        with self._using_db():
            if job_ids is None:
                rows = self._db.execute("SELECT id, status FROM jobs ORDER BY id")
            else:
                rows = self._db.execute(
                    "SELECT id, status FROM jobs WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(list(job_ids)),),
                )
            return {int(row[0]): str(row[1]) for row in rows}

    def unended_job(self, job_ids: Sequence[int] | None = None) -> int | None:
        """A job of ``job_ids`` (of every job when None) that has not ended; None if none has.

        One statement that stops at the first such job, without reading the others.
        """
        ended = sorted(TERMINAL)
        query = f"SELECT id FROM jobs WHERE status NOT IN ({', '.join('?' * len(ended))})"  # noqa: S608 - ? marks
        args: list[Any] = list(ended)
        if job_ids is not None:
            query += " AND id IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(list(job_ids)))
        with self._using_db():
            row = self._db.execute(query + " LIMIT 1", args).fetchone()
        return None if row is None else int(row[0])

    def unknown_job(self, job_ids: Sequence[int]) -> int | None:
        """The first of ``job_ids`` with neither a job nor a history line; None if none.

        One statement over them all (index seeks per id, in SQLite, not Python). An id
        above SQLite's integers is never a job's: check ids against ``MAX_ID`` first.
        """
        with self._using_db():
            row = self._db.execute(
                "SELECT asked.value FROM json_each(?) AS asked"
                " WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = asked.value)"
                " AND NOT EXISTS (SELECT 1 FROM history WHERE job_id = asked.value)"
                " ORDER BY asked.key LIMIT 1",
                (json.dumps(list(job_ids)),),
            ).fetchone()
        return None if row is None else int(row[0])

    def preempted_job_ids(self) -> set[int]:
        """Jobs preempted while work ran: they take no new work until it has ended."""
        with self._using_db():
            return {row[0] for row in self._db.execute("SELECT id FROM jobs WHERE preempted")}

    def find_by_label(self, pgrp: int, label: str) -> dict[str, Any] | None:
        """The job labelled ``label`` in ``pgrp`` (how trigger contexts name siblings)."""
        with self._using_db():
            row = self._db.execute(
                "SELECT * FROM jobs WHERE pgrp = ? AND label = ?", (pgrp, label)
            ).fetchone()
            return None if row is None else self._job_dict(row, include_callbacks=False)

    def history(self, job_id: int) -> list[dict[str, Any]]:
        """The job's history lines, oldest first; kept after the job is removed."""
        if not 0 <= job_id <= MAX_ID:
            return []
        with self._using_db():
            rows = self._db.execute(
                "SELECT job_id, time, text, invocation_id FROM history WHERE job_id = ?"
                " ORDER BY seq",
                (job_id,),
            )
            return [dict(row) for row in rows.fetchall()]

    def agenda_names(self, job_id: int) -> list[str]:
        """The names of the job's work items in agenda order; raises NoSuchJobError.

        One column: what a range is expanded over, or an error names as the agenda,
        without making every item a dict (a 100,000-item job's took over a second).
        """
        with self._using_db():
            self._job_row(job_id)
            rows = self._db.execute(
                "SELECT name FROM work WHERE job_id = ? ORDER BY position", (job_id,)
            )
            return [row[0] for row in rows]

    def has_work_items(self, job_id: int, names: Collection[str]) -> bool:
        """Whether the job has an item of every name, looking up only those; NoSuchJobError."""
        wanted = list(dict.fromkeys(names))
        with self._using_db():
            self._job_row(job_id)
            found = sum(int(row[0]) for row in self._work_named(job_id, wanted, "count(*)"))
        return found == len(wanted)

    def next_pending(self, job_id: int) -> tuple[str, int] | None:
        """The job's first pending item in agenda order, (name, times started); None if none.

        A seek in ``work_by_status`` (job, status, position): what a worker takes next,
        without reading the agenda (a 100,000-item job's took over a second).
        """
        with self._using_db():
            row = self._db.execute(
                "SELECT name, count FROM work WHERE job_id = ? AND status = ?"
                " ORDER BY position LIMIT 1",
                (job_id, Status.PENDING),
            ).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    def has_agenda(self, job_id: int) -> bool:
        """Whether the job has work items at all."""
        with self._using_db():
            row = self._db.execute("SELECT 1 FROM work WHERE job_id = ? LIMIT 1", (job_id,))
            return row.fetchone() is not None

    def preempted_instances(self, job_id: int) -> set[int]:
        """The job's instances preempted while running work: they take no new work."""
        with self._using_db():
            rows = self._db.execute(
                "SELECT id FROM subjobs WHERE job_id = ? AND preempted", (job_id,)
            )
            return {row[0] for row in rows}

    def busy_instances(self, job_id: int) -> set[int]:
        """The job's instances running one of its items (none for an unknown job)."""
        with self._using_db():
            return self._busy_instances(job_id)

    def running_work_by_instance(self, job_id: int) -> dict[int, list[str]]:
        """The job's running items by the instance running each, in agenda order."""
        with self._using_db():
            return self._running_work_by_instance(job_id)

    def _running_work_by_instance(self, job_id: int) -> dict[int, list[str]]:
        """``running_work_by_instance``, inside a transaction already held."""
        rows = self._db.execute(
            "SELECT subid, name FROM work WHERE job_id = ? AND status = ? ORDER BY position",
            (job_id, Status.RUNNING),
        )
        running: dict[int, list[str]] = {}
        for subid, name in rows:
            running.setdefault(subid, []).append(name)
        return running

    def _busy_instances(self, job_id: int) -> set[int]:
        # A seek in ``work_by_status``: the running items, not the whole agenda.
        rows = self._db.execute(
            "SELECT DISTINCT subid FROM work WHERE job_id = ? AND status = ?",
            (job_id, Status.RUNNING),
        )
        return {row[0] for row in rows}

    def _job_row(self, job_id: int) -> sqlite3.Row:
        if not 0 <= job_id <= MAX_ID:  # a wire uint64 beyond SQLite's integers: no such job
            raise NoSuchJobError(f"no job {job_id}")
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NoSuchJobError(f"no job {job_id}")
        return row  # type: ignore[no-any-return]  # sqlite3 types fetchone() as Any

    def _work_rows(self, job_id: int) -> list[sqlite3.Row]:
        return self._db.execute(
            "SELECT * FROM work WHERE job_id = ? ORDER BY position", (job_id,)
        ).fetchall()

    def _named_work_rows(self, job_id: int, names: Collection[str]) -> list[sqlite3.Row]:
        """The job's items among ``names``, each once, in agenda order (by its primary key)."""
        rows = self._work_named(job_id, list(dict.fromkeys(names)), "*")
        return sorted(rows, key=lambda work: work["position"])

    def _work_named(self, job_id: int, names: list[str], what: str) -> list[sqlite3.Row]:
        """``SELECT what`` of the job's items named, ``_NAMES_PER_QUERY`` names a statement.

        One row per statement for an aggregate ``what`` such as ``count(*)``.
        """
        rows: list[sqlite3.Row] = []
        for start in range(0, len(names), _NAMES_PER_QUERY):
            part = names[start : start + _NAMES_PER_QUERY]
            marks = ", ".join("?" * len(part))
            rows += self._db.execute(
                f"SELECT {what} FROM work WHERE job_id = ? AND name IN ({marks})",  # noqa: S608 - ours, ? marks
                (job_id, *part),
            ).fetchall()
        return rows

    def _job_dict(
        self,
        row: sqlite3.Row,
        *,
        include_callbacks: bool,
        work_names: Collection[str] | None = None,
    ) -> dict[str, Any]:
        job_id = row["id"]
        job: dict[str, Any] = {name: row[name] for name in _JOB_COLUMNS}
        job.update((name, shown(row[name])) for name in TIME_FIELDS)
        job["agenda"] = [
            {
                "name": w["name"],
                "status": w["status"],
                "subid": w["subid"],
                "host": w["host"],
                "count": w["count"],
                # Most frames have none: "{}" is not parsed 20,000 times for a big job.
                "resultpackage": {}
                if w["resultpackage"] == "{}"
                else json.loads(w["resultpackage"]),
            }
            for w in (
                self._work_rows(job_id)
                if work_names is None
                else self._named_work_rows(job_id, work_names)
            )
        ]
        job["subjobs"] = [
            dict(sub)
            for sub in self._db.execute(
                "SELECT id, status, host FROM subjobs WHERE job_id = ? ORDER BY id", (job_id,)
            )
        ]
        if include_callbacks:
            job["callbacks"] = [
                {key: value for key, value in dict(cb).items() if key != "mode" or value}
                for cb in self._db.execute(
                    "SELECT id, triggers, language, code, user, count, maximum, mode"
                    " FROM callbacks WHERE job_id = ? ORDER BY id",
                    (job_id,),
                )
            ]
        job.update(json.loads(row["extra"]))
        return job

    # -- state changes (inside a transaction) ------------------------------------------

    def _set_job_status(
        self, changes: _Changes, job_id: int, new: str, instances_from: Collection[str] = ()
    ) -> None:
        """Move the job to ``new``, stamping times; its instances in ``instances_from`` follow.

        timestart is set the first time the job runs; timecomplete when it ends, and it
        is cleared again when a retry brings the job back. Any change of status ends a
        preempt still waiting for the job's running work (job_action).
        """
        now = int(self._clock())
        old = self._job_row(job_id)["status"]
        changes.moved(job_id, old, new)
        self._db.execute(
            "UPDATE jobs SET status = ?, preempted = 0,"
            " timestart = CASE WHEN ? AND timestart = 0 THEN ? ELSE timestart END,"
            " timecomplete = CASE WHEN ? THEN ? ELSE 0 END WHERE id = ?",
            (new, new == Status.RUNNING, now, is_terminal(new), now, job_id),
        )
        self._emit(changes, old, new, "job", job_id)
        rows = self._db.execute(
            "SELECT id, status, host FROM subjobs WHERE job_id = ? ORDER BY id", (job_id,)
        ).fetchall()
        for sub in rows:
            if sub["status"] in instances_from and sub["status"] != new:
                self._set_subjob_status(changes, job_id, sub["id"], new, sub["host"])

    def _set_subjob_status(
        self, changes: _Changes, job_id: int, subid: int, new: str, host: str
    ) -> None:
        old = self._db.execute(
            "SELECT status FROM subjobs WHERE job_id = ? AND id = ?", (job_id, subid)
        ).fetchone()
        before = old["status"] if old else new
        changes.moved(job_id, before, new)
        # Any change of its status ends a preempt waiting for its running work.
        self._db.execute(
            "UPDATE subjobs SET status = ?, host = ?, preempted = 0 WHERE job_id = ? AND id = ?",
            (new, host, job_id, subid),
        )
        self._emit(changes, before, new, "subjob", job_id, subjob_id=subid, host=host)

    def _set_work_status(self, changes: _Changes, job_id: int, work: sqlite3.Row, new: str) -> None:
        """Move a work item to ``new``; its event names the instance that last took it.

        As Qube's work item ``subid``: a callback fired by the event sees it as
        ``qb.subid()`` and ``*-subjob-self`` acts on it (-1, none, if the item never ran).
        """
        changes.moved(job_id, work["status"], new)
        if is_terminal(work["status"]) and not is_terminal(new):
            changes.revived.add(job_id)
        self._db.execute(
            "UPDATE work SET status = ? WHERE job_id = ? AND name = ?", (new, job_id, work["name"])
        )
        self._emit(
            changes,
            work["status"],
            new,
            "work",
            job_id,
            work_name=work["name"],
            subjob_id=work["subid"],
            host=work["host"],
        )

    @staticmethod
    def _emit(changes: _Changes, old: str, new: str, kind: str, job_id: int, **where: Any) -> None:
        name = move_event(old, new)
        if name is not None:
            changes.transitions.append(Transition(name, kind, job_id, **where))

    def _derive_job_status(self, changes: _Changes, job_id: int) -> None:
        """After work changed: let the agenda decide the job's status (states.derive_job_status).

        A preempted job (still running) then releases the instances its ended work
        leaves idle, and goes pending once none of its work runs. A running job none of
        whose instances runs (or is paused) any more, as instance verbs and an instance's
        preempt leave it, goes pending too, as the job-level interrupt leaves it: its next
        dispatch is a new start, and fires ``running-job`` again.
        """
        self._release_preempted_instances(changes, job_id)
        job = self._job_row(job_id)
        current = job["status"]
        new = derive_job_status(
            current, self._agenda_statuses(job_id), revived=job_id in changes.revived
        )
        if new != current:
            instances_from = NON_TERMINAL if is_terminal(new) else TERMINAL
            self._set_job_status(changes, job_id, new, instances_from)
            changes.note(job_id, f"[job] {current} -> {new} (from its agenda)")
        elif job["preempted"]:
            self._release_preempted(changes, job_id)
        elif current == Status.RUNNING and not self._instance_runs(job_id):
            self._set_job_status(changes, job_id, Status.PENDING)
            changes.note(job_id, "[job] running -> pending (none of its instances runs)")

    def _instance_runs(self, job_id: int) -> bool:
        """Whether an instance of the job is running or paused (suspended): one row's seek."""
        row = self._db.execute(
            "SELECT 1 FROM subjobs WHERE job_id = ? AND status IN (?, ?) LIMIT 1",
            (job_id, Status.RUNNING, Status.SUSPENDED),
        ).fetchone()
        return row is not None

    def _agenda_statuses(self, job_id: int) -> list[str]:
        """Which statuses a job's agenda holds: all the job status rule asks.

        A skip scan of ``work_by_status``, a seek per status held: a change to one frame
        of a 20,000-frame job does not read 20,000 rows (a farm completing them all, one
        by one, would read 400 million).
        """
        rows = self._db.execute(
            "WITH RECURSIVE held(status) AS ("
            " SELECT min(status) FROM work WHERE job_id = ?1"
            " UNION ALL SELECT (SELECT min(status) FROM work WHERE job_id = ?1"
            " AND status > held.status) FROM held WHERE held.status IS NOT NULL)"
            " SELECT status FROM held WHERE status IS NOT NULL",
            (job_id,),
        )
        return [row[0] for row in rows]

    def _agenda_ended(self, job_id: int) -> bool:
        """Whether the job has an agenda and every frame of it has ended."""
        held = self._agenda_statuses(job_id)
        return bool(held) and all(is_terminal(status) for status in held)

    def _release_preempted(self, changes: _Changes, job_id: int) -> None:
        """A preempted job's instances with no running item go pending; the job too, once none runs."""
        busy = self._busy_instances(job_id)
        if not busy:
            self._set_job_status(changes, job_id, Status.PENDING, (Status.RUNNING,))
            changes.note(job_id, "[job] running -> pending (preempted: its running work ended)")
            return
        rows = self._db.execute(
            "SELECT id, host FROM subjobs WHERE job_id = ? AND status = ? ORDER BY id",
            (job_id, Status.RUNNING),
        ).fetchall()
        for sub in rows:
            if sub["id"] not in busy:
                self._set_subjob_status(changes, job_id, sub["id"], Status.PENDING, sub["host"])
                changes.note(job_id, f"[job] instance {job_id}.{sub['id']} released (preempted)")

    def _release_preempted_instances(self, changes: _Changes, job_id: int) -> None:
        """Preempted instances whose running work has ended go pending (subjob_action)."""
        rows = self._db.execute(
            "SELECT id, host FROM subjobs WHERE job_id = ? AND preempted ORDER BY id", (job_id,)
        ).fetchall()
        if not rows:
            return
        busy = self._busy_instances(job_id)
        for sub in rows:
            if sub["id"] not in busy:
                self._set_subjob_status(changes, job_id, sub["id"], Status.PENDING, sub["host"])
                changes.note(
                    job_id,
                    f"[job] instance {job_id}.{sub['id']} running -> pending (preempted: its "
                    "running work ended)",
                )

    def _authorize(self, actor: str, job: sqlite3.Row, verb: str) -> None:
        if not permits(actor, job["user"], verb, mask=self._security, admins=self._admins):
            who = actor or "an anonymous caller"
            raise PermissionDeniedError(
                f"{who} may not {verb} job {job['id']} owned by {job['user']}"
            )

    # -- verbs ------------------------------------------------------------------------

    def _once(
        self,
        key: ActionKey | None,
        action: str,
        actor: str,
        apply: Callable[[_Changes], ActionResult],
    ) -> ActionResult:
        """Apply a verb in one transaction; a numbered one only the first time (applied.py).

        ``action`` names the verb and its targets (``describe``); a numbered request under
        a pair applied for another action raises ActionConflictError, and keeps nothing.
        """
        if key is None:
            with self._transaction() as changes:
                return apply(changes)
        request = describe(action, "as", actor)
        try:
            with self._transaction() as changes:
                earlier = self._applied.find(key, request, action)
                if earlier is None:
                    result = apply(changes)
                    answer = Answer(request, result.changed, result.message, action=action)
                    self._applied.remember(key, answer, self._clock())
                    return result
                repeat = earlier  # answered after the (empty) transaction, outside the lock
        except tuple(REMEMBERED_ERRORS.values()) as err:
            # Refused: its transaction rolled back; a repeat is refused the same way.
            with self._using_db(), self._db:
                refusal = Answer(request, 0, str(err), type(err).__name__, action)
                self._applied.remember(key, refusal, self._clock())
            raise
        logger.info(
            "action %d of invocation %s repeated: answered as the first time, not applied again",
            key.action_seq,
            key.invocation_id,
        )
        repeat.raise_error()
        return ActionResult(repeat.changed, repeat.message)

    def applied_action_count(self) -> int:
        """How many numbered actions' answers are kept (applied.py)."""
        with self._using_db():
            return self._applied.count()

    def job_action(
        self, verb: str, job_id: int, actor: str, *, invocation_id: str = "", action_seq: int = 0
    ) -> ActionResult:
        """Apply a job verb (qube-callbacks.md §5.2) on behalf of ``actor``.

        A verb that does not apply to the job's state changes nothing and says why
        (``changed=0``); it is not an error. Raises ValueError for an unknown verb,
        NoSuchJobError, PermissionDeniedError. A numbered action (``action_seq`` > 0)
        that was answered before is answered the same way and not applied again.

        preempt (a passive rule) on a job with running work only marks it: the job stays
        running and takes no new work; as each running item ends its instance is
        released, and once none runs the job goes pending (``_derive_job_status``).
        """
        rule = job_rule(verb)

        def apply(changes: _Changes) -> ActionResult:
            job = self._job_row(job_id)
            self._authorize(actor, job, verb)
            old = job["status"]
            refusal = rule.refusal(f"job {job_id}", old)
            running = [w["name"] for w in self._work_rows(job_id) if w["status"] == Status.RUNNING]
            if refusal is None and rule.passive and job["preempted"]:
                refusal = f"job {job_id} is already preempted: it goes {rule.target} once " + (
                    f"{_names(job_id, running)} ends"
                )
            if refusal is not None:
                result = ActionResult(0, refusal)
            elif rule.passive and running:
                self._db.execute("UPDATE jobs SET preempted = 1 WHERE id = ?", (job_id,))
                result = ActionResult(
                    1,
                    f"job {job_id} preempted: it stays {old} until {_names(job_id, running)} "
                    f"ends, then goes {rule.target}; it takes no new work",
                )
            elif rule.target is None:
                self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                changes.transitions.append(Transition("removed", "job", job_id))
                result = ActionResult(1, f"job {job_id} removed")
            else:
                self._set_job_status(changes, job_id, rule.target, instances_moved_from(rule))
                moved = 0
                for work in self._work_rows(job_id):
                    follows = rule.work_moves.get(work["status"])
                    if follows is not None:
                        self._set_work_status(changes, job_id, work, follows)
                        moved += 1
                items = "work item" if moved == 1 else "work items"
                suffix = f" ({moved} {items} moved with it)" if moved else ""
                result = ActionResult(1, f"job {job_id} {old} -> {rule.target}{suffix}")
            line = f"{_origin(invocation_id)} {verb} by {actor}: {result.message}"
            changes.note(job_id, line, invocation_id)
            return result

        action = describe(verb, "job", job_id)
        return self._once(ActionKey.of(invocation_id, action_seq), action, actor, apply)

    def work_action(
        self,
        verb: str,
        job_id: int,
        work_names: Sequence[str],
        actor: str,
        *,
        invocation_id: str = "",
        action_seq: int = 0,
    ) -> ActionResult:
        """Apply a work verb to the named items (exact names; ranges are the caller's job).

        Items the verb does not apply to are left alone and listed in the message; the
        job's status is then derived from its agenda. Raises ValueError (unknown verb,
        no names), NoSuchJobError, NoSuchWorkError naming every unknown item,
        PermissionDeniedError (the bit of the same-named job verb). Numbered actions
        are applied once, as ``job_action``'s.
        """
        rule = work_rule(verb)
        names = list(dict.fromkeys(str(name) for name in work_names))
        if not names:
            raise ValueError(f"work {verb} needs at least one work name")

        def apply(changes: _Changes) -> ActionResult:
            job = self._job_row(job_id)
            self._authorize(actor, job, verb)
            items = {work["name"]: work for work in self._named_work_rows(job_id, names)}
            unknown = [name for name in names if name not in items]
            if unknown:
                listed = ", ".join(map(repr, unknown))
                raise NoSuchWorkError(f"job {job_id} has no work item {listed}")
            moved: list[str] = []
            refused: dict[str, list[str]] = {}
            for name in names:
                status = items[name]["status"]
                if rule.applies(status) and rule.target is not None:
                    self._set_work_status(changes, job_id, items[name], rule.target)
                    moved.append(name)
                else:
                    refused.setdefault(status, []).append(name)
            parts = [f"{_names(job_id, moved)} -> {rule.target}"] if moved else []
            parts += [
                str(rule.refusal(_names(job_id, group), status))
                for status, group in refused.items()
            ]
            result = ActionResult(len(moved), "; ".join(parts))
            changes.note(  # before what it causes: the job's status from its agenda
                job_id,
                f"{_origin(invocation_id)} work{verb} by {actor}: {result.message}",
                invocation_id,
            )
            if moved:
                self._derive_job_status(changes, job_id)
            return result

        action = describe(f"work{verb}", f"{job_id}:{','.join(names)}")
        return self._once(ActionKey.of(invocation_id, action_seq), action, actor, apply)

    def subjob_action(
        self,
        verb: str,
        job_id: int,
        subjob_ids: Sequence[int],
        actor: str,
        *,
        invocation_id: str = "",
        action_seq: int = 0,
    ) -> ActionResult:
        """Apply a job verb to instances (all of them when ``subjob_ids`` is empty).

        Instances follow the job's state rules; remove does not apply to them
        (ValueError). The frame a changed instance is running follows it as the job
        verb's running frames would (states.SUBJOB_RULES); the job's status is then
        derived from its agenda, and a job that has not ended ends once none of its
        instances can run any more (``_end_with_instances``). Raises NoSuchJobError for
        an unknown job or instance, PermissionDeniedError. Numbered actions are applied
        once, as ``job_action``'s.

        An instance brought back from an ended status (retry, requeue) in a job that has
        ended reopens the job (pending), as a retried frame does; when the job has no frame
        left to run (every one ended), the instance is left alone and the answer says so.
        """
        rule = subjob_rule(verb)

        def apply(changes: _Changes) -> ActionResult:
            job = self._job_row(job_id)
            self._authorize(actor, job, verb)
            rows = self._db.execute(
                "SELECT id, status, host, preempted FROM subjobs WHERE job_id = ? ORDER BY id",
                (job_id,),
            ).fetchall()
            instances = {sub["id"]: sub for sub in rows}
            running = self._running_work_by_instance(job_id) if rule.passive else {}
            wanted = list(dict.fromkeys(subjob_ids)) or list(instances)
            unknown = [str(subid) for subid in wanted if subid not in instances]
            if unknown:
                raise NoSuchJobError(f"job {job_id} has no instance {', '.join(unknown)}")
            messages: list[str] = []
            changed = 0
            reopens = is_terminal(job["status"]) and not is_terminal(str(rule.target))
            nothing_to_run = reopens and self._agenda_ended(job_id)
            revived: list[int] = []
            for subid in wanted:
                sub = instances[subid]
                refusal = rule.refusal(f"instance {job_id}.{subid}", sub["status"])
                its_work = _names(job_id, running.get(subid, []))
                if refusal is None and reopens and is_terminal(sub["status"]):
                    if nothing_to_run:
                        refusal = (
                            f"instance {job_id}.{subid} is {sub['status']} and its job {job_id} "
                            f"is {job['status']} with no frame left to run: retry the job, or "
                            "one of its frames"
                        )
                    else:
                        revived.append(subid)
                if refusal is None and rule.passive and sub["preempted"]:
                    refusal = (
                        f"instance {job_id}.{subid} is already preempted: it goes "
                        f"{rule.target} once {its_work} ends"
                    )
                if refusal is None and rule.passive and subid in running:
                    # Qube's preempt: pending once the current agenda item completes.
                    self._db.execute(
                        "UPDATE subjobs SET preempted = 1 WHERE job_id = ? AND id = ?",
                        (job_id, subid),
                    )
                    changed += 1
                    messages.append(
                        f"instance {job_id}.{subid} preempted: it stays {sub['status']} until "
                        f"{its_work} ends, then goes {rule.target}; it takes no new work"
                    )
                elif refusal is None and rule.target is not None:
                    self._set_subjob_status(changes, job_id, subid, rule.target, sub["host"])
                    changed += 1
                    message = f"instance {job_id}.{subid} {sub['status']} -> {rule.target}"
                    messages.append(
                        message + self._move_instance_work(changes, job_id, subid, rule)
                    )
                else:
                    messages.append(str(refusal))
            result = ActionResult(changed, "; ".join(messages))
            changes.note(  # before what it causes: the job's status from its instances
                job_id,
                f"{_origin(invocation_id)} subjob{verb} by {actor}: {result.message}",
                invocation_id,
            )
            if revived:
                self._set_job_status(changes, job_id, Status.PENDING)
                listed = ", ".join(f"{job_id}.{subid}" for subid in revived)
                changes.note(
                    job_id,
                    f"[job] {job['status']} -> pending (instance {listed} {_DONE.get(verb, verb)})",
                )
            if changed:
                self._derive_job_status(changes, job_id)
                self._end_with_instances(changes, job_id)
            return result

        instances = f"{job_id}.{','.join(map(str, subjob_ids)) or 'all'}"
        action = describe(f"subjob{verb}", instances)
        return self._once(ActionKey.of(invocation_id, action_seq), action, actor, apply)

    def _move_instance_work(
        self, changes: _Changes, job_id: int, subid: int, rule: VerbRule
    ) -> str:
        """Move the frame instance ``subid`` is running as ``rule`` says; " (work ...)" or ""."""
        moved = []
        for work in self._work_rows(job_id):
            follows = rule.work_moves.get(work["status"])
            if work["subid"] == subid and follows is not None:
                self._set_work_status(changes, job_id, work, follows)
                moved.append(f"work {job_id}:{work['name']} {work['status']} -> {follows}")
        return f" ({', '.join(moved)})" if moved else ""

    def _end_with_instances(self, changes: _Changes, job_id: int) -> None:
        """A job that has not ended, all of whose instances have, ends with them.

        No frame is dispatched to an ended instance, so such a job could never run nor
        end again: it takes the status its instances imply (failed if one failed, else
        killed if one was killed, else complete; states.derive_job_status), as a job
        killed or failed as a whole does. Its pending frames stay pending.
        """
        job = self._job_row(job_id)
        if is_terminal(job["status"]):
            return
        rows = self._db.execute("SELECT status FROM subjobs WHERE job_id = ?", (job_id,))
        instances = [row["status"] for row in rows]
        if not all(is_terminal(status) for status in instances):
            return
        new = derive_job_status(job["status"], instances)
        self._set_job_status(changes, job_id, new)
        changes.note(job_id, f"[job] {job['status']} -> {new} (every instance has ended)")

    # -- work lifecycle: what workers would do, driven by tests and demos --------------

    def start_work(
        self, job_id: int, name: str, host: str = "localhost", subid: int = 0
    ) -> list[Transition]:
        """A worker takes a pending item: the item, its instance and a pending job run.

        Raises NoSuchJobError/NoSuchWorkError, or ValueError when the job or item is not
        in a state a real supervisor would dispatch (the job pending or running, the item
        pending). Returns the transitions it caused.
        """
        with self._transaction() as changes:
            job = self._job_row(job_id)
            work = self._work_row(job_id, name)
            if job["status"] not in (Status.PENDING, Status.RUNNING):
                raise ValueError(
                    f"job {job_id} is {job['status']}; work starts in pending or running jobs"
                )
            if work["status"] != Status.PENDING:
                raise ValueError(
                    f"work {job_id}:{name} is {work['status']}; only pending work starts"
                )
            if job["preempted"]:
                raise ValueError(
                    f"job {job_id} is preempted: it takes no new work until its running work "
                    "has ended and it is pending again"
                )
            sub = self._db.execute(
                "SELECT status, preempted FROM subjobs WHERE job_id = ? AND id = ?",
                (job_id, subid),
            ).fetchone()
            if sub is None:
                raise NoSuchJobError(f"job {job_id} has no instance {subid}")
            if sub["preempted"]:
                raise ValueError(
                    f"instance {job_id}.{subid} is preempted: it takes no new work until its "
                    "running work has ended and it is pending again"
                )
            if sub["status"] not in (Status.PENDING, Status.RUNNING):
                raise ValueError(
                    f"instance {job_id}.{subid} is {sub['status']}; work runs only on pending "
                    "or running instances"
                )
            if job["status"] == Status.PENDING:
                self._set_job_status(changes, job_id, Status.RUNNING)
            if sub["status"] == Status.PENDING:
                self._set_subjob_status(changes, job_id, subid, Status.RUNNING, host)
            self._db.execute(
                "UPDATE work SET subid = ?, host = ?, count = count + 1"
                " WHERE job_id = ? AND name = ?",
                (subid, host, job_id, name),
            )
            self._set_work_status(changes, job_id, self._work_row(job_id, name), Status.RUNNING)
            changes.note(job_id, f"[work] {name} running on {host} (instance {job_id}.{subid})")
            return list(changes.transitions)

    def complete_work(
        self, job_id: int, name: str, resultpackage: Mapping[str, Any] | None = None
    ) -> list[Transition]:
        """A running item completes, keeping the worker's result package (e.g. outputPaths)."""
        return self._end_work(job_id, name, Status.COMPLETE, resultpackage)

    def fail_work(self, job_id: int, name: str) -> list[Transition]:
        """A running item fails."""
        return self._end_work(job_id, name, Status.FAILED, None)

    def _end_work(
        self, job_id: int, name: str, new: str, resultpackage: Mapping[str, Any] | None
    ) -> list[Transition]:
        package = json.dumps(dict(resultpackage or {}), allow_nan=False)
        with self._transaction() as changes:
            self._job_row(job_id)
            work = self._work_row(job_id, name)
            if work["status"] != Status.RUNNING:
                raise ValueError(
                    f"work {job_id}:{name} is {work['status']}; only running work ends"
                )
            self._db.execute(
                "UPDATE work SET resultpackage = ? WHERE job_id = ? AND name = ?",
                (package, job_id, name),
            )
            self._set_work_status(changes, job_id, work, new)
            changes.note(job_id, f"[work] {name} {new}")
            self._derive_job_status(changes, job_id)
            return list(changes.transitions)

    def _work_row(self, job_id: int, name: str) -> sqlite3.Row:
        row = self._db.execute(
            "SELECT * FROM work WHERE job_id = ? AND name = ?", (job_id, name)
        ).fetchone()
        if row is None:
            raise NoSuchWorkError(f"job {job_id} has no work item {name!r}")
        return row  # type: ignore[no-any-return]  # sqlite3 types fetchone() as Any

    def job_starts(self, job_id: int) -> int:
        """How often a job without an agenda was started: its running attempt's number."""
        with self._using_db():
            return int(self._job_row(job_id)["starts"])

    def start_job(self, job_id: int, host: str = "localhost") -> list[Transition]:
        """A job without an agenda starts: it and its pending instances run on ``host``."""
        return self._drive_job(job_id, Status.PENDING, Status.RUNNING, host)

    def complete_job(self, job_id: int) -> list[Transition]:
        """A running job without an agenda completes, with its unfinished instances."""
        return self._drive_job(job_id, Status.RUNNING, Status.COMPLETE, None)

    def fail_job(self, job_id: int) -> list[Transition]:
        """A running job without an agenda fails, with its unfinished instances."""
        return self._drive_job(job_id, Status.RUNNING, Status.FAILED, None)

    def _drive_job(
        self, job_id: int, expected: str, new: str, host: str | None
    ) -> list[Transition]:
        with self._transaction() as changes:
            job = self._job_row(job_id)
            if self._work_rows(job_id):
                raise ValueError(f"job {job_id} has an agenda; drive its work items instead")
            if job["status"] != expected:
                raise ValueError(f"job {job_id} is {job['status']}; expected {expected}")
            if host is not None:
                self._db.execute(
                    "UPDATE subjobs SET host = ? WHERE job_id = ? AND status = ?",
                    (host, job_id, Status.PENDING),
                )
            if new == Status.RUNNING:
                self._db.execute("UPDATE jobs SET starts = starts + 1 WHERE id = ?", (job_id,))
            instances_from = NON_TERMINAL if is_terminal(new) else (Status.PENDING,)
            self._set_job_status(changes, job_id, new, instances_from)
            changes.note(job_id, f"[job] {expected} -> {new}" + (f" on {host}" if host else ""))
            return list(changes.transitions)

    # -- results ----------------------------------------------------------------------

    def report_result(self, invocation_id: str, job_id: int, payload: Mapping[str, Any]) -> bool:
        """Store one run's result; returns True when nothing changed (see ``report_results``).

        The job need not exist any more: a callback may have removed its own job. A
        result for a job id this store never gave out (an Execute for a job it does not
        have) is stored apart: it gets no history line and is not among ``results`` of
        the job that later gets that id, which it is not about.
        """
        (duplicate,) = self.report_results([(invocation_id, job_id, payload)])
        return duplicate

    def report_results(self, reports: Sequence[tuple[str, int, Mapping[str, Any]]]) -> list[bool]:
        """Store several runs' results in one transaction, all or none (ValueError).

        ``reports`` are ``(invocation_id, job_id, payload)``; returns, for each, whether
        nothing changed. A result is kept per ``invocation_id``: one whose payload's
        ``ended_at`` (Unix seconds; absent is 0) is later than the stored one's is another
        run of it, the last, and replaces it; the same report again, or an earlier run's,
        changes nothing (``duplicate``).
        """
        rows = []
        for invocation_id, job_id, payload in reports:
            if not invocation_id:
                raise ValueError("a result needs an invocation_id")
            if not 0 <= job_id <= MAX_ID:
                raise ValueError(f"job_id {job_id} is out of range (0 to {MAX_ID})")
            ended = payload.get("ended_at")
            if isinstance(ended, float) and not math.isfinite(ended):
                spelled = "NaN" if math.isnan(ended) else f"{'-' if ended < 0 else ''}Infinity"
                raise ValueError(
                    f"ended_at: {spelled} is not a time; Unix seconds must be a finite number"
                )
            try:
                text = json.dumps(dict(payload), allow_nan=False)
            except (TypeError, ValueError) as err:
                raise ValueError(f"result payload is not JSON: {err}") from err
            outcome = str(payload.get("outcome", "no outcome"))
            rows.append(
                (invocation_id, job_id, outcome, _ended_at(payload), text, payload.get("callback"))
            )
        duplicates = []
        with self._transaction() as changes:
            last_id = self._last_job_id()
            inserted = 0
            # The payloads' bytes this adds (json.dumps writes ASCII: a character, a byte).
            new_bytes = 0
            for invocation_id, job_id, outcome, ended_at, text, callback in rows:
                known = 0 < job_id <= last_id  # ids are never reused: one a job had
                stored = self._db.execute(
                    "SELECT json_extract(payload, '$.outcome'), json_extract(payload, '$.ended_at'),"  # noqa: S608 - our expression
                    f" {PAYLOAD_BYTES}, job_id, job_known FROM results WHERE invocation_id = ?",
                    (invocation_id,),
                ).fetchone()
                line = f"[callback] result of invocation {invocation_id}: {outcome}"
                if stored is None:
                    self._db.execute(
                        "INSERT INTO results (invocation_id, job_id, time, payload, job_known)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (invocation_id, job_id, self._clock(), text, int(known)),
                    )
                    inserted += 1
                    new_bytes += len(text)
                elif ended_at > _as_seconds(stored[1]):
                    self._db.execute(
                        "UPDATE results SET job_id = ?, time = ?, payload = ?, job_known = ?"
                        " WHERE invocation_id = ?",
                        (job_id, self._clock(), text, int(known), invocation_id),
                    )
                    if stored[3] == job_id and stored[4]:
                        line += f" (a later run; replaces {stored[0] or 'no outcome'})"
                    else:  # a caller's reuse of the id: this job had no result of it
                        apart = "" if stored[4] else ", a job this supervisor never had"
                        line += f" (a later run; first reported for job {stored[3]}{apart})"
                    new_bytes += len(text) - int(stored[2])
                else:
                    duplicates.append(True)
                    continue
                if known:
                    changes.note(job_id, line, invocation_id)
                    self._count_run(job_id, callback)
                else:
                    logger.info(
                        "result of invocation %s is for job %d, which this supervisor never "
                        "had: kept apart from any later job %d",
                        invocation_id,
                        job_id,
                        job_id,
                    )
                duplicates.append(False)
            self._retention.added(inserted, self._clock(), new_bytes)
        return duplicates

    def _has_job(self, job_id: int) -> bool:
        return self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def _last_job_id(self) -> int:
        """The highest job id given out so far (AUTOINCREMENT keeps it after a removal)."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
        return int(row["seq"]) if row else 0

    def _count_run(self, job_id: int, callback: Any) -> None:
        """Keep a job callback's ``count`` (runs so far) from the runs reported of it.

        The trigger engine counts firings; a report carries the count of its run. Only a
        report naming the job's own callback (same id and trigger) moves it, never down.
        """
        if not isinstance(callback, Mapping):
            return
        try:
            callback_id, count = int(callback.get("id") or 0), int(callback.get("count") or 0)
        except (TypeError, ValueError):
            return
        if callback_id and count:
            self._db.execute(
                "UPDATE callbacks SET count = max(count, ?)"
                " WHERE job_id = ? AND id = ? AND triggers = ?",
                (count, job_id, callback_id, str(callback.get("triggers") or "")),
            )

    def results(self, job_id: int | None = None) -> list[dict[str, Any]]:
        """Stored results (``invocation_id, job_id, time, payload, job_known``), oldest first.

        With ``job_id``: that job's, without the results kept apart (``job_known`` False).
        """
        query = "SELECT * FROM results"
        args: tuple[int, ...] = ()
        if job_id is not None:
            query, args = query + " WHERE job_id = ? AND job_known = 1", (job_id,)
        with self._using_db():
            rows = self._db.execute(query + " ORDER BY time, rowid", args).fetchall()
        return [self._result_dict(row) for row in rows]

    def result(self, invocation_id: str) -> dict[str, Any] | None:
        """One stored result, or None."""
        with self._using_db():
            row = self._db.execute(
                "SELECT * FROM results WHERE invocation_id = ?", (invocation_id,)
            ).fetchone()
        return None if row is None else self._result_dict(row)

    @staticmethod
    def _result_dict(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "invocation_id": row["invocation_id"],
            "job_id": row["job_id"],
            "time": row["time"],
            "payload": json.loads(row["payload"]),
            "job_known": bool(row["job_known"]),
        }
