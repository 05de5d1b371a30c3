"""The gRPC port's connection watch: /proc's addresses read right, the WARNING once a minute at most."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from executor.api.connection_watch import WARN_EVERY_S, ConnectionWatch, _address

pytestmark = pytest.mark.unit


def test_proc_addresses_are_read_in_host_byte_order() -> None:
    assert _address("0100007F") == "127.0.0.1"
    assert _address("0000000000000000FFFF00000100007F") == "127.0.0.1"  # IPv4-mapped
    assert _address("000080FE00000000FF005702FEB3A1E4") == "fe80::257:ff:e4a1:b3fe"


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
