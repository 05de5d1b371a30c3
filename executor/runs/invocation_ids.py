"""Whether a caller's invocation id is taken already: by a firing, a recorded run, or a run in progress.

``Execute`` asks before it runs a callback under an id its caller chose (``IdGate``,
which the dispatcher opens just before the callback's code may run): a firing decided
and not yet run to its end has it (the engine made it), or the history records (or is
writing) a run under it, and whether the engine made that one (``RunIdentity.fired``).
A single executor answers from memory and a local file, and its dispatcher refuses an
id one of its runs has (``Dispatcher._admit``). A fleet's answers are in the shared
store, and a run in progress at another replica is in neither the firings nor the
history: so ``FleetIds`` also claims the id there for this run (table
``execute_claims``, under a lease this replica renews), in the one statement that asks
the rest, and gives it back in the statement that commits the run's result, which
commits it only while the claim is still this replica's (``Recorder``; on its own once
the run was refused, or its result was not committed).
Two replicas asked at once cannot both claim it: the second is answered as one executor
answers a run's id in progress.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Final, NamedTuple, Protocol

from executor import lease_renewal
from executor.dispatcher import firings_id, in_progress
from executor.errors import AlreadyExistsError, DataLossError, UnavailableError
from executor.model import Invocation
from executor.runs import run_notes
from executor.runs.history import RunIdentity
from executor.runs.outbox_fences import Alongside
from executor.sql import Db, PgDb, StoreLockTimeout, first_row

logger = logging.getLogger(__name__)

# A fleet's Execute runs in progress, by invocation id (made by ``cbexec store migrate``).
# ``lease_until``: the database's clock (``FleetClock``), as the firings' leases are.
CLAIMS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS execute_claims (
    invocation_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL
);
"""

# One round trip: this run's claim on the id (taken where none holds it, or where the
# claim's replica let its lease run out, or is this one), whether another replica's run
# held it as the statement began, whether a firing holds it, the run the history has
# under it, and where it has none yet, the notes its outbox row keeps until it has: a
# run another replica ended a moment ago is in neither the firings nor the history
# (probe 64). A claim given back between the statement's start and its insert was a run
# ending: its record is newer than what the statement reads, so the id counts as in
# progress still (``running``), and the claim just taken is given back.
_QUERY: Final = (
    "WITH claim AS (INSERT INTO execute_claims (invocation_id, owner, lease_until)"
    " VALUES (?, ?, ?) ON CONFLICT (invocation_id) DO UPDATE"
    " SET owner = excluded.owner, lease_until = excluded.lease_until"
    " WHERE execute_claims.lease_until < ? OR execute_claims.owner = excluded.owner"
    " RETURNING 1)"
    " SELECT EXISTS (SELECT 1 FROM claim) AS claimed,"
    " EXISTS (SELECT 1 FROM execute_claims WHERE invocation_id = ? AND owner != ?"
    " AND lease_until >= ?) AS running,"
    " EXISTS (SELECT 1 FROM firings WHERE invocation_id = ?) AS firing,"
    " runs.job_id, runs.callback_id, runs.language, runs.triggers, runs.source, runs.fired,"
    " CASE WHEN runs.job_id IS NULL THEN (SELECT notes FROM outbox WHERE key = ?) END AS notes"
    " FROM (SELECT 1) AS one LEFT JOIN runs ON runs.invocation_id = ?"
)
_RELEASE: Final = "DELETE FROM execute_claims WHERE invocation_id = ? AND owner = ?"
# Claims whose lease ran out this long ago (or 10 leases, if longer) are deleted, every
# PRUNE_EVERY_RENEWALS renewals.
PRUNE_AFTER_S: Final = 600.0
PRUNE_EVERY_RENEWALS: Final = 30
_PRUNE: Final = "DELETE FROM execute_claims WHERE lease_until < ?"
_RENEW: Final = (
    "UPDATE execute_claims SET lease_until = ? WHERE owner = ? AND invocation_id = ANY(?)"
)


class IdUse(NamedTuple):
    """What an invocation id names already."""

    firing: bool  # a firing not yet run to its end holds it
    recorded: RunIdentity | None  # whose run the history records, or is writing (fired or not)
    running: bool = False  # a run in progress at another replica of a fleet holds it
    claimed: bool = False  # this call claimed it: ``release`` it once its run has ended


class InvocationIds(Protocol):
    """What Execute asks of a caller's invocation id, and gives back after its run."""

    def claim_ahead(self, invocation_id: str) -> bool:
        """Start ``claim``'s work now where it can be (a fleet's round trip), as a call arrives.

        True when it did: that call's ``claim`` (``ahead=True``) or ``drop_ahead``, and
        no other call's, takes what was started.
        """
        ...

    def claim(self, invocation_id: str, *, ahead: bool = False) -> IdUse:
        """What the id names already; in a fleet, claimed for this run where nothing does."""
        ...

    def release(self, invocation_id: str) -> None:
        """Give back a claim ``claim`` took (``IdUse.claimed``)."""
        ...

    def drop_ahead(self, invocation_id: str) -> None:
        """The call whose ``claim_ahead`` was True will not ``claim``: undo what it started."""
        ...


class IdGate:
    """An Execute's checks of the id its caller chose, made once, as late as they can be.

    The dispatcher opens it (its ``gate``) just before the callback's code may run, and
    before it records a run that never started: a refused id is never run nor recorded.
    For a child, that is right after its start frame: the child reads it and compiles
    the code meanwhile, then waits for the executor's go, so a fleet's claim (a round
    trip to the shared store, on the loop) costs the call only what the child's own
    preparation does not hide. Raises AlreadyExistsError (the id is another run's) or
    UnavailableError (a run of it is in progress, or the store cannot answer), and the
    same error if opened again. In a fleet the claim is also sent ahead, as the call
    arrives, and its answer taken when the gate opens: the executor's own work up to the
    start frame hides more of the round trip. ``release`` gives back what it claimed,
    once the run has ended or was refused.
    """

    def __init__(self, ids: InvocationIds, invocation: Invocation) -> None:
        self._ids = ids
        self._invocation = invocation
        self._use: IdUse | None = None
        self._refused: Exception | None = None
        # Whether this call's claim was sent ahead: only this call may take its answer
        # (another call under the same id, refused meanwhile, would give this one's back).
        self._ahead = ids.claim_ahead(invocation.invocation_id)

    def __call__(self) -> None:
        if self._refused is not None:
            raise self._refused
        if self._use is not None:
            return
        invocation_id = self._invocation.invocation_id
        try:
            ahead, self._ahead = self._ahead, False
            self._use = use = self._ids.claim(invocation_id, ahead=ahead)
            _refuse_another_runs_id(self._invocation, use)
            if use.running:  # at another replica; one here the dispatcher refuses alike
                raise UnavailableError(in_progress(invocation_id))
        except Exception as err:
            self._refused = err
            raise

    def release(self) -> None:
        if self._ahead:  # never opened
            self._ahead = False
            self._ids.drop_ahead(self._invocation.invocation_id)
        elif self._use is not None and self._use.claimed:
            self._ids.release(self._invocation.invocation_id)


def _refuse_another_runs_id(invocation: Invocation, use: IdUse) -> None:
    """AlreadyExistsError when the id is a fired run's, or recorded for another run.

    A repeat of an Execute's run of the same callback (``RunIdentity``: its code is no
    part of it) is a retry: it runs again and replaces the record (proto
    ExecuteRequest.invocation_id). A fired run's record stays, as does another
    identity's: the supervisor keeps the first result under the id, and so does the
    history.
    """
    invocation_id = invocation.invocation_id
    firing, recorded = use.firing, use.recorded
    if firing:
        # Never a retry: the engine made the id. Run first, this call would take the
        # fired callback's place at the supervisor, its actions counted as repeats.
        raise AlreadyExistsError(firings_id(invocation_id))
    if recorded is not None and recorded.fired:
        # Never a retry either, once it has ended: the engine made the id, and a
        # "repeat" would replace the fired run's result with its own code's.
        raise AlreadyExistsError(
            f"invocation_id {invocation_id!r} is a fired callback's run"
            f" ({recorded.describe()}); an Execute cannot repeat it; choose a new"
            " invocation_id"
        )
    if recorded is not None and recorded != RunIdentity.of(invocation):
        raise AlreadyExistsError(
            f"invocation_id {invocation.invocation_id!r} is already recorded for another "
            f"run ({recorded.describe()}); a repeat must name the same job and callback "
            "(id, language, triggers), else choose a new invocation_id"
        )


class LocalIds:
    """A single executor's: its firing queue (in memory) first, then its history."""

    def __init__(
        self,
        holds_firing: Callable[[str], bool],
        recorded: Callable[[str], RunIdentity | None],
    ) -> None:
        self._holds_firing = holds_firing
        self._recorded = recorded

    def claim_ahead(self, invocation_id: str) -> bool:
        return False  # nothing here is a round trip

    def claim(self, invocation_id: str, *, ahead: bool = False) -> IdUse:
        # Never claimed here: the dispatcher refuses an id one of its runs has.
        if self._holds_firing(invocation_id):
            return IdUse(True, None)
        return IdUse(False, self._recorded(invocation_id))

    def release(self, invocation_id: str) -> None:
        return None

    def drop_ahead(self, invocation_id: str) -> None:
        return None


class FleetIds:
    """A fleet's: one statement on the shared store, which also claims the id.

    Made on ``connection``, the trigger store's connection for statements outside a
    transaction (``TriggerStore.outside_transaction``): the event loop's, which never
    waits for a group's transaction or the history's writes. ``pending``: the runs this
    replica is still writing to the history (``Recorder.pending``), looked at first.
    ``owner`` names this replica in the claims (the trigger store's own), and a claim
    lasts ``lease_s`` unless renewed (``renew_forever``): a dead replica's runs hold
    their ids that long. ``ahead``: a connection of its own, which nothing else uses,
    for one claim at a time sent as its call arrives (``claim_ahead``); a claim that
    finds it taken is made when its gate opens, on ``connection``.
    """

    def __init__(
        self,
        connection: Callable[[], AbstractContextManager[Db]],
        pending: Callable[[str], RunIdentity | None],
        *,
        owner: str,
        lease_s: float,
        clock: Callable[[], float] = time.time,
        ahead: PgDb | None = None,
    ) -> None:
        self._connection = connection
        self._pending = pending
        self._owner = owner
        self._lease_s = lease_s
        self._clock = clock
        self._ahead_db = ahead
        # The id whose claim was sent ahead on ``ahead`` and not yet taken, and when.
        self._ahead: tuple[str, float] | None = None
        # The ids this replica's calls hold a claim on: another call here under one of
        # them neither claims it (the dispatcher refuses it) nor gives it back.
        self._held: set[str] = set()
        # Held ids whose claim their run's result commit gave back, until ``release``.
        self._given_back: set[str] = set()
        self._renewals = 0

    def _parameters(self, invocation_id: str, now: float) -> tuple[object, ...]:
        return (
            (invocation_id, self._owner, now + self._lease_s, now)
            + (invocation_id, self._owner, now)
            + (invocation_id,) * 3
        )

    def claim_ahead(self, invocation_id: str) -> bool:
        """Send the claim now, on the connection of its own, if it is free."""
        if self._ahead_db is None or self._ahead is not None:
            return False
        now = self._clock()
        if not self._ahead_db.send_prepared(_QUERY, self._parameters(invocation_id, now)):
            return False
        self._ahead = (invocation_id, now)
        return True

    def _taken_ahead(self, invocation_id: str) -> dict[str, Any] | None:
        """The answer of the claim sent ahead for the id; None: none to trust.

        An answer that did not come (the store lost meanwhile), or that came more than a
        renewal period ago (its lease may have run out, and another replica claimed the
        id since), is no answer: the claim is made again. Made again by this replica,
        it takes back its own claim, if the first one was taken.
        """
        if self._ahead is None or self._ahead[0] != invocation_id or self._ahead_db is None:
            raise RuntimeError(f"no claim on {invocation_id!r} was sent ahead")
        sent_at, self._ahead = self._ahead[1], None
        try:
            row = self._ahead_db.take_sent_row()
        except StoreLockTimeout:
            raise  # it took nothing, and made again it would wait out the same lock
        except UnavailableError:
            return None
        except BaseException:
            self._give_back_unread(invocation_id)
            raise
        return row if self._clock() - sent_at < self._lease_s / 3 else None

    def claim(self, invocation_id: str, *, ahead: bool = False) -> IdUse:
        row = self._taken_ahead(invocation_id) if ahead else None
        if row is None:
            row = self._claimed_now(invocation_id)
        claimed = bool(row["claimed"]) and invocation_id not in self._held
        if claimed:
            self._held.add(invocation_id)
        recorded = self._pending(invocation_id)
        if recorded is None and row["job_id"] is not None:
            recorded = RunIdentity(
                row["job_id"],
                row["callback_id"],
                row["language"].lower(),
                row["triggers"],
                row["source"],
                bool(row["fired"]),
            )
        if recorded is None and row["notes"] is not None:
            recorded = _noted(row["notes"])
        running = bool(row["running"]) or not row["claimed"]
        return IdUse(bool(row["firing"]), recorded, running, claimed)

    def _claimed_now(self, invocation_id: str) -> Any:
        try:
            with self._connection() as db:
                return first_row(db, _QUERY, self._parameters(invocation_id, self._clock()))
        except StoreLockTimeout:
            raise  # cancelled before it took anything: a give-back would wait the lock out too
        except BaseException:
            self._give_back_unread(invocation_id)
            raise

    def _give_back_unread(self, invocation_id: str) -> None:
        """Give back a claim whose answer could not be read: it may have been taken.

        Else its lease ends it; not when a call here holds the id.
        """
        if invocation_id not in self._held:
            with contextlib.suppress(Exception), self._connection() as db:
                db.execute(_RELEASE, (invocation_id, self._owner))

    def drop_ahead(self, invocation_id: str) -> None:
        """The call whose claim was sent ahead never asked for it: taken, and given back."""
        if self._ahead is None or self._ahead[0] != invocation_id or self._ahead_db is None:
            raise RuntimeError(f"no claim on {invocation_id!r} was sent ahead")
        self._ahead = None
        try:
            row = self._ahead_db.take_sent_row()
        except UnavailableError as err:
            logger.warning(
                "the claim on invocation_id %r is left to end with its lease (%.0f s): %s",
                invocation_id,
                self._lease_s,
                err,
            )
            return
        if row is not None and row["claimed"] and invocation_id not in self._held:
            self._held.add(invocation_id)
            self.release(invocation_id)

    def release_alongside(self, invocation_id: str) -> Alongside | None:
        """The statement giving back this replica's claim on the id; None: it holds none.

        A fence: the result is committed only if it gives the claim back. A claim gone
        (this replica stalled past its lease, and another one's run of the id took it
        over) leaves the result out: that run's is the id's (probe 114).
        """
        if invocation_id not in self._held:
            return None
        return Alongside(f"{_RELEASE} RETURNING 1", (invocation_id, self._owner))

    def released(self, invocation_id: str) -> None:
        """``release_alongside``'s statement was committed: ``release`` only forgets it."""
        if invocation_id in self._held:
            self._held.discard(invocation_id)  # no longer renewed
            self._given_back.add(invocation_id)

    def release(self, invocation_id: str) -> None:
        """Give the claim back; one the store cannot take back now ends with its lease."""
        if invocation_id in self._given_back:  # with its run's result (``released``)
            self._given_back.discard(invocation_id)
            return
        self._held.discard(invocation_id)  # no longer renewed
        try:
            with self._connection() as db:
                db.execute(_RELEASE, (invocation_id, self._owner))
        except (UnavailableError, DataLossError) as err:
            logger.warning(
                "the claim on invocation_id %r is left to end with its lease (%.0f s): %s",
                invocation_id,
                self._lease_s,
                err,
            )

    async def renew_forever(self) -> None:
        """Renew the leases of this replica's claims, every third of a lease."""
        await lease_renewal.renew_forever(
            self._renew, lease_s=self._lease_s, what="Execute claims", logger=logger
        )

    def _renew(self) -> None:
        now = self._clock()
        with self._connection() as db:
            if self._held:
                db.execute(_RENEW, (now + self._lease_s, self._owner, sorted(self._held)))
            self._renewals += 1
            if self._renewals % PRUNE_EVERY_RENEWALS == 0:
                # A dead replica's claims, and those a release that met an outage left:
                # long past their lease, held by nobody (a live holder renews its own).
                db.execute(_PRUNE, (now - max(PRUNE_AFTER_S, 10 * self._lease_s),))


def _noted(notes: str) -> RunIdentity | None:
    """Whose run an outbox row's notes describe; None for notes that cannot be read."""
    try:
        return RunIdentity.of(run_notes.decode(notes).invocation)
    except (ValueError, KeyError, TypeError):
        return None  # a damaged row: delivery sets it aside, and it names no run
