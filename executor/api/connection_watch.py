"""How many connections the gRPC port holds: a WARNING when they fill ``max_connections``, and a gauge.

gRPC closes a connection past ``max_connections`` as it comes and says nothing (its C
core logs no refusal), and it counts a connection from accept, before any handshake:
256 TCP connections that never sent a byte shut every other client out for a minute and
left no trace in the log (probe 105). The kernel knows which sockets are ours and on
that port (``/proc/self/fd``, and the network namespace's TCP sockets), so a look every
few seconds, on a worker thread, tells when the port is full and which addresses hold
it: what a firewall rule needs. A port found full at a look refuses the next connection;
fullness between two looks goes unseen, as a connection refused then does.

The sockets on the port are asked of the kernel's socket diagnostics (netlink
``sock_diag``, as ``ss`` does) with a filter on the local port, so a look costs the
port's connections, not the host's: ``/proc/self/net/tcp`` lists every TCP socket of the
namespace, and on a host holding 10,000 connections elsewhere its text took ~0.1 s to
make and ~0.3 s of Python (holding the GIL) to read at every look. The table is read
only where the kernel has no socket diagnostics.

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
import struct
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
DIAGNOSIS_TIMEOUT_S: Final = 2.0


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
    try:
        sockets = _diagnosed(port)
    except OSError:  # no socket diagnostics in this kernel, or refused here
        sockets = _listed(port)
    return {(address, remote_port) for address, remote_port, inode in sockets if inode in inodes}


# Netlink's socket diagnostics (linux/netlink.h, sock_diag.h, inet_diag.h).
_NETLINK_SOCK_DIAG: Final = 4
_SOCK_DIAG_BY_FAMILY: Final = 20
_NLM_F_REQUEST_DUMP: Final = 0x1 | 0x300
_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_INET_DIAG_REQ_BYTECODE: Final = 1
_INET_DIAG_BC_S_GE: Final = 2
_INET_DIAG_BC_S_LE: Final = 3
_TCP_LISTEN: Final = 10
_NLMSG_HEADER = struct.Struct("=IHHII")
# inet_diag_req_v2: family, protocol, extensions, pad, states, then the socket id (zeros).
_REQUEST = struct.Struct("=BBBxI48x")
_ATTRIBUTE_HEADER = struct.Struct("=HH")
# inet_diag_msg: family, state, timer, retrans; the id's ports (big-endian) and addresses;
# the interface and cookie; expires, rqueue, wqueue, uid; the inode.
_MESSAGE = struct.Struct("=BBxx2H16s16s12x16xI")


def _port_filter(port: int) -> bytes:
    """Bytecode keeping the sockets whose local port is ``port`` (``ss``'s ``sport = :port``).

    Each comparison is an op (code, where to go if true, where if false) and a second
    op whose ``no`` holds the port; going past the program's end rejects the socket.
    """
    at_least = struct.pack("=BBH", _INET_DIAG_BC_S_GE, 8, 20) + struct.pack("=BBH", 0, 0, port)
    at_most = struct.pack("=BBH", _INET_DIAG_BC_S_LE, 8, 12) + struct.pack("=BBH", 0, 0, port)
    return at_least + at_most


def _diagnosed(port: int) -> Iterator[tuple[str, str, str]]:
    """(remote address, remote port, inode) of each TCP socket on local ``port`` but listeners."""
    states = 0xFFF & ~(1 << _TCP_LISTEN)
    bytecode = _port_filter(port)
    attribute = _ATTRIBUTE_HEADER.pack(
        _ATTRIBUTE_HEADER.size + len(bytecode), _INET_DIAG_REQ_BYTECODE
    )
    found: list[tuple[str, str, str]] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as diag:
        diag.settimeout(DIAGNOSIS_TIMEOUT_S)  # a kernel that never ends its dump: /proc's table
        for family in (socket.AF_INET, socket.AF_INET6):
            body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, states) + attribute + bytecode
            header = _NLMSG_HEADER.pack(
                _NLMSG_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, family, 0
            )
            diag.sendall(header + body)
            found.extend(_replies(diag, family))
    return iter(found)


def _replies(diag: socket.socket, family: int) -> Iterator[tuple[str, str, str]]:
    """One dump's sockets, read until its end (an error reply is raised as ``OSError``)."""
    while True:
        data = diag.recv(65536)
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
            if kind == _NLMSG_DONE:
                return
            if kind == _NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + _NLMSG_HEADER.size)
                raise OSError(-code, f"socket diagnostics: {os.strerror(-code)}")
            fields = _MESSAGE.unpack_from(data, offset + _NLMSG_HEADER.size)
            _, _, _, remote_port, _, remote, inode = fields
            yield _peer(family, remote), f"{socket.ntohs(remote_port):04X}", str(inode)
            offset += (length + 3) & ~3
        if not data:
            raise OSError("socket diagnostics: the dump ended without its end")


def _peer(family: int, address: bytes) -> str:
    """A diagnosed socket's remote address as text (an IPv4-mapped one as IPv4)."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, address[:4])
    text = socket.inet_ntop(socket.AF_INET6, address)
    return text.removeprefix("::ffff:") if "." in text else text


def _listed(port: int) -> Iterator[tuple[str, str, str]]:
    """The same as ``_diagnosed``, from ``/proc/self/net/tcp{,6}``: every socket of the namespace."""
    needle = f":{port:04X} "
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines, None)  # the header
                for line in lines:
                    if needle not in line:  # neither end on the port: most lines, cheaply
                        continue
                    fields = line.split()
                    local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                    if state == LISTEN or int(local.rsplit(":", 1)[1], 16) != port:
                        continue
                    address, remote_port = remote.rsplit(":", 1)
                    yield _address(address), remote_port, inode
        except FileNotFoundError:  # no IPv6 in this kernel
            continue


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
