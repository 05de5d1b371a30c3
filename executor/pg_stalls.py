"""What keeps a stalled PostgreSQL, or a stall of this process, from holding the executor.

The statements of the stores run on the event loop. The server's own time limits on
each session (``_stall_limits``: a lock waited for, a statement, a transaction left
idle; ``lock_waits`` shortens the first for a block) and, for a server that stops
answering at all, the watchdog that cuts the connection of a statement unanswered past
its deadline (``_Watchdog``) bound how long any one of them holds it.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from executor.pg_db import PgDb

# How long a statement of ours may go unanswered before its connection is cut on our
# side (``_Watchdog``): a PostgreSQL that stops answering without closing anything (a
# frozen host or VM, a SIGSTOP) keeps TCP alive, and its statement_timeout never runs.
ANSWER_DEADLINE_S: Final = 5.0
# After one statement went unanswered, every statement of this process fails at once for
# this long (then one asks again): each would otherwise hold the event loop for its own
# deadline, one after another, while the server stays frozen.
UNANSWERED_QUIET_S: Final = 10.0
# How often the watchdog looks at the statements in flight; a look this much later than
# asked for means the process itself was stalled (SIGSTOP, a paused VM, a swapping host),
# not the server: the statements then in flight get a fresh ANSWER_DEADLINE_S from it.
WATCH_TICK_S: Final = 0.25
LATE_TICK_S: Final = 1.0
# How long a statement waits for a row or table lock another session holds (PostgreSQL's
# lock_timeout), then ``StoreLockTimeout``: well under ANSWER_DEADLINE_S, so a lock wait
# always ends as the server's own lock timeout, never as a frozen server's cut connection
# (equal, the watchdog won the race at times, and the whole replica stopped for
# UNANSWERED_QUIET_S over one row an admin held; probe 110). It also bounds how long one
# such statement holds the event loop.
LOCK_TIMEOUT_S: Final = 2.0
# How long a session of ours may sit idle inside a transaction before the server ends it
# (PostgreSQL's idle_in_transaction_session_timeout), which lets its row locks go: a
# replica stopped mid-transaction (SIGSTOP, a paused VM) would otherwise hold them, and
# every other replica's events of those jobs, for as long as it stays stopped (probe
# 114). A transaction's statements follow one another without an await between them:
# the longest gap is Python work of one thread (a group of 500 events decided, a big
# job's explanation read between two statements), a second or two on a loaded box; this
# is a few times that, and under the default lease (15 s).
IDLE_IN_TRANSACTION_S: Final = 10.0


# A PostgreSQL that stops answering without closing the connection (a partition, a
# table an admin locked) must not hold the executor: its statements run on the event
# loop. A lost peer is found by TCP within ~10 s and no statement of ours runs 30 s,
# each then StoreUnavailable, as a dropped connection is; a lock waited for gives up
# after LOCK_TIMEOUT_S (StoreLockTimeout). ``cbexec store migrate`` makes its own
# connection, without them. A session left idle in its transaction is ended by the
# server after IDLE_IN_TRANSACTION_S.
def _stall_limits() -> dict[str, Any]:
    return {
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 10_000,
        "options": f"-c lock_timeout={round(LOCK_TIMEOUT_S * 1000)} -c statement_timeout=30000"
        f" -c idle_in_transaction_session_timeout={round(IDLE_IN_TRANSACTION_S * 1000)}",
    }


# How long the statements of this thread's transactions wait for a lock instead of
# LOCK_TIMEOUT_S (``lock_waits``); None: LOCK_TIMEOUT_S.
_lock_wait_s: ContextVar[float | None] = ContextVar("cbexec_lock_wait_s", default=None)


@contextmanager
def lock_waits(seconds: float) -> Iterator[None]:
    """The transactions begun in the block wait ``seconds`` at most for a lock (``SET LOCAL``).

    For work that has already waited out one lock timeout and only needs to know what is
    still locked (group_commit.py): each further wait would hold everything after it.
    """
    token = _lock_wait_s.set(seconds)
    try:
        yield
    finally:
        _lock_wait_s.reset(token)


class _Watchdog:
    """One thread that cuts the connection of any statement unanswered past its deadline.

    The statements run on the event loop, so an answer that never comes would hold the
    whole executor (health included). Shutting the socket down makes the waiting call
    fail at once, as a dropped connection does: ``StoreUnavailable``.

    The process's own stall is not the server's (probe 114): woken after one, the
    watchdog may look before the answer already waiting in the socket is read. So a look
    far later than asked for gives the statements in flight a fresh deadline, and a
    connection whose answer waits unread is not cut.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._watched: weakref.WeakSet[PgDb] = weakref.WeakSet()
        # When a statement was last cut off (monotonic); see UNANSWERED_QUIET_S.
        self.unanswered_at = float("-inf")
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._clock = clock
        self._looked_at = clock()
        # When the watchdog last looked late (the process was stalled): nothing in flight
        # then is cut before ANSWER_DEADLINE_S after it.
        self._stalled_until = float("-inf")

    def watch(self, db: PgDb) -> None:
        with self._lock:
            self._watched.add(db)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="cbexec-pg-watchdog", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_TICK_S)
            self.look()

    def look(self) -> list[PgDb]:
        """Cut the connections whose statements are overdue; those it cut."""
        now = self._clock()
        if now - self._looked_at > WATCH_TICK_S + LATE_TICK_S:
            self._stalled_until = now
        self._looked_at = now
        if now < self._stalled_until + ANSWER_DEADLINE_S:
            return []
        with self._lock:
            overdue = [db for db in self._watched if 0 < db.answer_due < now]
        cut = [db for db in overdue if not db.answer_waiting()]
        for db in cut:
            db.cut_off()
        return cut


_watchdog = _Watchdog()
