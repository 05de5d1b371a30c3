"""The embedded reference supervisor, served on a private Unix socket, never on the public port.

The SupervisorService trusts the ``actor`` it is told; on the public port any client, a
callback with network access included, could claim to be root. The socket is 0600
whatever the umask (``private_socket``), in the data dir, which the hardened tier hides
from callbacks. The executor reaches it over gRPC like any site's supervisor, and its
transitions reach the executor's TriggerService through ``EventForwarder``, as any
scheduler's would; their events wait in supervisor.db until the executor has them, so a
stop or a crash loses none.

The results reported to it are kept as long as the history keeps the run
(``history_retention_days``), at most the last ``MAX_RESULTS`` (fewer when
``history_max_runs`` is smaller), and within ``history_max_bytes`` of payload: nothing
reads them but its own check for a resent report, and kept like the history they would
make supervisor.db as large as runs.db, too large to check whole at every start. Each
holds the run's report, its output cut to the supervisor's message limit (4 MiB by
default), so without the byte bound 1,000 of them could take 4 GiB. The bound is never
below ``max_message_bytes``, what one batch of reports carries on the wire, so the last
batch is kept and a resend of it is known as one (unless JSON's escapes of its output
make it larger stored than sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import grpc

from executor import sqlite_shm
from executor.api import private_socket
from executor.api.server_start import start_whole
from executor.api.supervisor import SUPERVISOR_CHANNEL_OPTIONS
from executor.data_dir_lock import SUPERVISOR_SOCKET
from executor.errors import ConfigError
from executor.runs.sqlite_checkpoints import BackgroundCheckpoints
from executor.sql import is_postgres
from executor.storage import (
    LOOP_BUSY_TIMEOUT_S,
    LOOP_CHECKPOINT_BUSY_TIMEOUT_S,
    StorageError,
    StorageHealth,
    open_database,
    unusable,
    write_refusal,
    writing,
)
from supervisor_client.reference import ReferenceSupervisor, add_reference_supervisor
from supervisor_client.reference.forwarder import EventForwarder
from supervisor_client.reference.store_thread import StoreThread

# The most results supervisor.db keeps (see the module doc): far more than one resent
# batch of reports (64), and a few MB of typical results.
MAX_RESULTS: Final = 1000
DAY_S: Final = 86400.0


def shared_store_warnings(store: str) -> list[str]:
    """The WARNING for the embedded supervisor over a fleet's shared store, if that is so.

    Each replica's embedded supervisor is a farm of its own (its own supervisor.db), so
    two replicas' farms give out the same job ids, and in the one trigger store a job
    registered by one replaces the other's.
    """
    if not is_postgres(store):
        return []
    return [
        "the embedded reference supervisor (no supervisor set) over a shared PostgreSQL "
        "store: each replica on this store runs a farm of its own, whose job ids collide "
        "with the other replicas' in the shared trigger store (one farm's job replaces "
        "another's); give a fleet of more than one replica the studio's supervisor "
        '(supervisor = "HOST:PORT")'
    ]


class Firings(Protocol):
    """The trigger engine's queue of decided firings, as ``settle`` waits for it."""

    @property
    def idle(self) -> bool:
        """Whether no firing is queued or running now."""
        ...

    async def wait_idle(self) -> None:
        """Until no firing is queued or running."""
        ...


@dataclass
class EmbeddedSupervisor:
    """The reference supervisor, its private server and the executor's channel to it."""

    reference: ReferenceSupervisor
    server: grpc.aio.Server
    channel: grpc.aio.Channel
    socket: private_socket.PrivateSocket
    database: Path  # supervisor.db
    # The thread every call of the reference's runs on: the Supervisor service's, the farm's.
    store_thread: StoreThread = field(default_factory=StoreThread)
    forwarder: EventForwarder | None = None
    _forwarding: asyncio.Task[None] | None = field(default=None, repr=False)
    # Set by forward_to: the farm is served a moment before, and its events wait till then.
    _forwarding_begun: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def write_refusal(self) -> str:
        """Why supervisor.db takes no write now, as its actions are answered UNAVAILABLE; "" if it takes one.

        Its reads go on while another process holds its write lock (a backup, an admin's
        ``sqlite3``): the supervisor is back for the actions only once a write is taken.
        """
        refusal = await asyncio.to_thread(write_refusal, self.database)
        return "" if refusal is None else str(refusal)

    def forward_to(self, executor_channel: grpc.aio.Channel) -> EventForwarder:
        """Start sending every transition to the executor's TriggerService."""
        self.forwarder = EventForwarder(self.reference, executor_channel)
        self._forwarding = asyncio.create_task(self.forwarder.run())
        self._forwarding_begun.set()
        return self.forwarder

    async def settle(self, firings: Firings) -> None:
        """Until no event waits to be forwarded and no firing to run, both at once.

        The events of a job waiting for the trigger store's room are not waited for: that
        job is not registered, so none of them can fire anything yet (``EventForwarder``).

        Each feeds the other: a forwarded event fires callbacks, and a callback's qb call
        is a transition with its own event. The forwarder alone is not enough: the
        firings decided before a stop or a crash are in the engine's queue, while the
        events that fired them were acknowledged and left supervisor.db. Each firing's
        result is committed before it leaves the queue (Recorder), and the history is
        flushed before a read, so ``cbexec runs`` then shows every run.
        """
        while True:
            await self._forwarding_begun.wait()
            if self.forwarder is not None:
                await self.forwarder.drain()
            await firings.wait_idle()
            if firings.idle and not self._unsent():
                return

    def settled_now(self, firings: Firings) -> bool:
        """Whether ``settle`` would return at once: its end state, read without waiting."""
        return self._forwarding_begun.is_set() and firings.idle and not self._unsent()

    def _unsent(self) -> bool:
        """Whether an event waits to be forwarded, but for those waiting for room."""
        if self.forwarder is not None:
            return self.forwarder.has_unsent_events()
        return self.reference.has_unsent_events()

    def waits_for_room(self) -> str:
        """Which jobs' events wait for the trigger store's room (the forwarder's words), or ""."""
        return "" if self.forwarder is None else self.forwarder.waits_for_room()

    async def registered(self, job_ids: list[int]) -> None:
        """Until the farm's just-submitted jobs are registered with the trigger engine."""
        if self.forwarder is not None:
            await asyncio.shield(self.forwarder.register_now(job_ids))

    async def stop_forwarding(self) -> None:
        """Stop sending transitions; those not yet acknowledged are sent at the next start."""
        if self._forwarding is not None:
            self._forwarding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._forwarding
            self._forwarding = None

    async def close(self, grace_s: float) -> None:
        """Stop serving and close the database."""
        await self.stop_forwarding()
        await self.channel.close()
        await self.server.stop(grace_s)
        self.socket.remove()
        self.store_thread.close()
        self.reference.close()


async def start(
    data_dir: Path,
    *,
    max_message_bytes: int,
    history_retention_days: float,
    history_max_runs: int,
    history_max_bytes: int,
    health: StorageHealth | None = None,
) -> EmbeddedSupervisor:
    """Open ``<data_dir>/supervisor.db`` and serve it on ``<data_dir>/supervisor.sock``.

    It takes messages as large as the executor sends (``max_message_bytes``), and keeps
    results within the history's bounds (see the module doc). A file that is not a
    database is a ConfigError naming it; it is left untouched. Later, a storage failure
    (a full disk) is a ``StorageError`` naming the file, as for the executor's own
    databases: UNAVAILABLE to the farm's and the supervisor's callers, noted in
    ``health``; the change it met is rolled back whole.
    """
    path = data_dir / "supervisor.db"
    open_database(path).close()  # damage refused as for the executor's own databases
    try:
        reference = ReferenceSupervisor(
            str(path),
            event_outbox=True,
            result_retention_s=history_retention_days * DAY_S,
            max_results=min(history_max_runs, MAX_RESULTS),
            max_result_bytes=max(history_max_bytes, max_message_bytes),
            storage_errors=functools.partial(writing, path, health),
            # Every call runs on the one store thread, each behind the last: a lock held by
            # another process is waited for briefly, then answered UNAVAILABLE
            # (``DatabaseLocked``). Our checkpoint's TRUNCATE holds it a few ms, waited for
            # as each write transaction takes the lock at its BEGIN (``together``).
            busy_timeout_s=LOOP_BUSY_TIMEOUT_S,
            # As the executor's own databases: off the loop, the log cut back to 4 MiB
            # when it restarts (SQLite's own kept its peak: 15.6 MB for 25 minutes).
            checkpoints=functools.partial(
                BackgroundCheckpoints, busy_timeout_s=LOOP_CHECKPOINT_BUSY_TIMEOUT_S
            ),
            connect=sqlite_shm.connect,
        )
    except sqlite3.Error as err:  # damage, or the storage under it: the refusal says which
        raise ConfigError(unusable(path, err)) from err
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes)])
    store_thread = StoreThread()
    add_reference_supervisor(server, reference, (StorageError,), store_thread)
    try:
        # 0600 whatever the umask, and never reachable before (private_socket).
        bound = private_socket.listen(server, data_dir / SUPERVISOR_SOCKET, "supervisor socket")
    except BaseException:
        reference.close()
        raise
    channel = grpc.aio.insecure_channel(bound.address, options=list(SUPERVISOR_CHANNEL_OPTIONS))
    embedded = EmbeddedSupervisor(reference, server, channel, bound, path, store_thread)
    try:
        await start_whole(server)
    except BaseException:
        await embedded.close(0)  # a stop (a Ctrl-C) during start-up: the server started whole
        raise
    return embedded
