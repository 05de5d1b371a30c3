"""The gRPC port's connection watch: its sockets found, addresses read right, the WARNING once a minute at most."""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from executor.api import connection_watch
from executor.api.connection_watch import WARN_EVERY_S, ConnectionWatch, _address, connections

pytestmark = pytest.mark.unit


def test_proc_addresses_are_read_in_host_byte_order() -> None:
    assert _address("0100007F") == "127.0.0.1"
    assert _address("0000000000000000FFFF00000100007F") == "127.0.0.1"  # IPv4-mapped
    assert _address("000080FE00000000FF005702FEB3A1E4") == "fe80::257:ff:e4a1:b3fe"


@pytest.fixture
def sockets() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def _listening(stack: ExitStack, host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = stack.enter_context(socket.socket(family))
    server.bind((host, 0))
    server.listen(16)
    return server


def _accepted(stack: ExitStack, server: socket.socket) -> tuple[str, str]:
    """A connection to ``server``, accepted: (its client's address, port as /proc writes it)."""
    client = stack.enter_context(socket.create_connection(server.getsockname()[:2]))
    stack.enter_context(server.accept()[0])
    address, port = client.getsockname()[:2]
    return address, f"{port:04X}"


def _port(server: socket.socket) -> int:
    return int(server.getsockname()[1])


def test_a_look_finds_the_connections_accepted_on_its_port_only(sockets: ExitStack) -> None:
    """Not the listener, not the clients' ends, not another port's: by the kernel's diagnostics."""
    ours, other = _listening(sockets, "127.0.0.1"), _listening(sockets, "127.0.0.1")
    expected = {_accepted(sockets, ours) for _ in range(3)}
    _accepted(sockets, other)
    assert connections(_port(ours)) == expected
    assert connections(_port(other)) != expected and len(connections(_port(other))) == 1
    ours6 = _listening(sockets, "::1")
    assert connections(_port(ours6)) == set()
    accepted6 = _accepted(sockets, ours6)
    assert connections(_port(ours6)) == {accepted6}


def test_without_socket_diagnostics_the_tcp_tables_say_the_same(
    sockets: ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, ours6 = _listening(sockets, "127.0.0.1"), _listening(sockets, "::1")
    for server in (ours, ours, ours6):
        _accepted(sockets, server)
    diagnosed = connections(_port(ours)), connections(_port(ours6))

    def refused(port: int) -> Iterator[tuple[str, str, str]]:
        raise PermissionError(13, "netlink refused")

    monkeypatch.setattr(connection_watch, "_diagnosed", refused)
    assert (connections(_port(ours)), connections(_port(ours6))) == diagnosed
    assert len(diagnosed[0]) == 2 and len(diagnosed[1]) == 1


def test_a_full_port_is_warned_of_once_a_minute_naming_who_holds_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = ConnectionWatch(port=50051, limit=3, interval_s=1.0)
    with caplog.at_level(logging.WARNING, logger="executor.api.connection_watch"):
        watch.note(Counter({"10.0.0.9": 2}), now=0.0)
        assert watch.open_now == 2 and not caplog.records
        watch.note(Counter({"10.0.0.9": 2, "10.0.0.7": 1}), now=1.0)
        watch.note(Counter({"10.0.0.9": 3}), now=1.0 + WARN_EVERY_S / 2)
        watch.note(Counter({"10.0.0.9": 3}), now=1.0 + WARN_EVERY_S)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "port 50051 holds 3 connections, its max_connections" in messages[0]
    assert "most from 10.0.0.9: 2, 10.0.0.7: 1" in messages[0]
    assert [m.name for m in watch.collect()] == [
        "cbexec_grpc_connections",
        "cbexec_grpc_connections_limit",
    ]


def test_a_look_finding_a_connection_gone_says_so_even_as_another_came() -> None:
    fewer: list[int] = []
    watch = ConnectionWatch(port=50051, limit=9, on_fewer=lambda: fewer.append(1))
    a, b, c = ("10.0.0.9", "C350"), ("10.0.0.9", "C351"), ("10.0.0.7", "C350")
    for found in ({a}, {a, b}, {a, b}, {a, c}, {c}, set(), set(), {b}):
        watch.look(found, now=0.0)
    assert len(fewer) == 3  # b as c came, a, then c
    assert watch.open_now == 1
