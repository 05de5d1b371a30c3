"""How many connections the gRPC port holds: a WARNING when they fill ``max_connections``, and a gauge.

gRPC closes a connection past ``max_connections`` as it comes and says nothing (its C
core logs no refusal), and it counts a connection from accept, before any handshake:
256 TCP connections that never sent a byte shut every other client out for a minute and
left no trace in the log (probe 105). The kernel knows which sockets are ours and on
that port (``/proc/self/fd`` and ``/proc/self/net/tcp{,6}``), so a look every few
seconds, on a worker thread, tells when the port is full and which addresses hold it:
what a firewall rule needs. A port found full at a look refuses the next connection;
fullness between two looks goes unseen, as a connection refused then does.

A look that finds a connection of the one before gone calls ``on_fewer``: what the
connections gone held (requests sent in part, which no call ever took, so no call's end
gives their memory back) is then free to be given back to the system.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# A look costs a readlink per descriptor and a read of the namespace's TCP table.
LOOK_EVERY_S: Final = 2.0
WARN_EVERY_S: Final = 60.0
LISTEN: Final = "0A"  # /proc/net/tcp's st of a listening socket
SHOWN_PEERS: Final = 5


def _own_socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _address(hex_address: str) -> str:
    """/proc/net/tcp's address (host byte order, 32 bits at a time) as text."""
    raw = bytes.fromhex(hex_address)
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(ordered) == 4:
        return socket.inet_ntop(socket.AF_INET, ordered)
    text = socket.inet_ntop(socket.AF_INET6, ordered)
    return text.removeprefix("::ffff:") if "." in text else text


def connections(port: int) -> set[tuple[str, str]]:
    """This process's connections on local ``port`` (accepted ones): (address, its port) each."""
    inodes = _own_socket_inodes()
    found: set[tuple[str, str]] = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)  # the header
                for line in lines:
                    fields = line.split()
                    local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                    if state == LISTEN or inode not in inodes:
                        continue
                    if int(local.rsplit(":", 1)[1], 16) == port:
                        address, remote_port = remote.rsplit(":", 1)
                        found.add((_address(address), remote_port))
        except FileNotFoundError:  # no IPv6 in this kernel
            continue
    return found


class ConnectionWatch(Collector):
    """Looks at the gRPC port's connections every ``interval_s``; a Prometheus collector of them."""

    def __init__(
        self,
        port: int,
        limit: int,
        interval_s: float = LOOK_EVERY_S,
        on_fewer: Callable[[], None] | None = None,
    ) -> None:
        self.port = port
        self.limit = limit
        self.interval_s = interval_s
        self.open_now = 0  # at the last look; read whole by a scrape's thread
        self._warned_at = -math.inf
        self._on_fewer = on_fewer
        self._seen: set[tuple[str, str]] = set()  # at the last look

    def look(self, found: set[tuple[str, str]], now: float) -> None:
        """Take one look's connections: ``on_fewer`` when one seen before has gone, then ``note``."""
        if self._seen - found and self._on_fewer is not None:
            self._on_fewer()  # by which: one closed as another opened is one gone
        self._seen = found
        self.note(Counter(address for address, _ in found), now)

    def note(self, found: Counter[str], now: float) -> None:
        """Take one look's count; a WARNING when the port is full, once a minute at most."""
        self.open_now = sum(found.values())
        if self.open_now < self.limit:
            return
        if now - self._warned_at < WARN_EVERY_S:
            return
        self._warned_at = now
        shown = ", ".join(f"{peer}: {n}" for peer, n in found.most_common(SHOWN_PEERS))
        logger.warning(
            "the gRPC port %d holds %d connections, its max_connections: further ones are"
            " closed as they come (clients see UNAVAILABLE) until some end; most from %s"
            " (a peer that keeps connections open can hold every place: limit connections"
            " per address in a firewall or proxy, see Connections in the README)",
            self.port,
            self.open_now,
            shown,
        )

    async def watch_forever(self) -> None:
        """Look until cancelled; stop at the first look that fails (no /proc), saying so."""
        while True:
            try:
                found = await asyncio.to_thread(connections, self.port)
            except OSError as err:
                logger.info("gRPC connections not watched: %s", err)
                return
            self.look(found, time.monotonic())
            await asyncio.sleep(self.interval_s)

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "cbexec_grpc_connections",
            "Connections the gRPC port held at the last look (every few seconds).",
            value=self.open_now,
        )
        yield GaugeMetricFamily(
            "cbexec_grpc_connections_limit",
            "Connections the gRPC port takes at once (max_connections).",
            value=self.limit,
        )
