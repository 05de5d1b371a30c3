"""The side port's Host check (DNS rebinding): what counts as one of its own names."""

from __future__ import annotations

import pytest

from executor.web.host_check import HostCheck, bind_name

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:50052",
        "LOCALHOST.:1",
        "127.0.0.1",
        "127.0.0.1:50052",
        "10.20.30.40:80",
        "[::1]",
        "[::1]:50052",
        "[2001:db8::7]:8080",
        "dash.studio.example:50052",
        "",  # empty, as for a target without an authority
    ],
)
def test_its_own_names_and_any_address_are_answered(host: str) -> None:
    assert HostCheck(["dash.studio.example"]).allows(host)


@pytest.mark.parametrize(
    "host",
    [
        "evil.test",
        "evil.test:50052",
        "localhost.evil.test",
        "127.0.0.1.evil.test",
        "dash.studio.example.evil.test",
        "x.dash.studio.example",
        "::1",  # an IPv6 address without its brackets
        "[::1",
        "[::1]x",
        "[evil.test]:1",
        "localhost:port",
        "localhost:1:2",
    ],
)
def test_another_name_or_a_malformed_host_is_refused(host: str) -> None:
    assert not HostCheck(["dash.studio.example"]).allows(host)


def test_twice_is_refused_and_none_answered_and_off_answers_all() -> None:
    check = HostCheck()
    assert not check.allows("localhost", repeated=True)
    assert check.allows(None)  # an HTTP/1.0 request: no browser sends none
    for off in (HostCheck.anything(), HostCheck(["*"]), HostCheck(required=False)):
        assert off.allows("evil.test") and off.allows("evil.test", repeated=True)


def test_http_bind_s_name_is_one_of_its_own() -> None:
    assert bind_name("dash.studio.example:50052") == ["dash.studio.example"]
    assert bind_name("127.0.0.1:50052") == bind_name("[::1]:1") == bind_name(":1") == []
