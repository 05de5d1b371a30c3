"""The supervisor link's plaintext warning and what a failed call's gRPC text is taken to mean."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from executor import config
from executor.api.supervisor_channel import describe, link_warnings, what_failed
from executor.config import Settings
from executor.secret_files import secret_files, secrets_in_config

pytestmark = pytest.mark.unit


def settings(supervisor: str, **link: str) -> Settings:
    return Settings(data_dir=Path("/nonexistent"), supervisor=supervisor).replace(**link)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:50060",
        "localhost:50060",
        "[::1]:50060",
        "unix:/run/supervisor.sock",
        "dns:///localhost:50060",
        "ipv4:127.0.0.1:1,127.0.0.2:2",
    ],
)
def test_a_link_on_this_host_is_not_warned_of(address: str) -> None:
    assert link_warnings(settings(address)) == []


@pytest.mark.parametrize(
    "address",
    [
        "192.0.2.10:50060",
        "supervisor.farm:50060",
        "dns:///supervisor.farm:50060",
        "dns://10.0.0.1/supervisor.farm:50060",
        "ipv4:127.0.0.1:1,192.0.2.10:2",
        "[2001:db8::1]:50060",
    ],
)
def test_a_plaintext_link_off_this_host_without_a_token_is_warned_of(address: str) -> None:
    (warning,) = link_warnings(settings(address))
    assert warning.startswith(f"supervisor {address} is reached in plaintext with no token: ")
    assert link_warnings(settings(address, supervisor_tls_ca="ca.pem")) == []
    assert link_warnings(settings(address, supervisor_token="t")) == []


def test_the_embedded_supervisor_has_no_link_to_warn_of() -> None:
    assert link_warnings(settings("")) == []
    assert describe(settings("")) == "embedded"


def test_describe_never_shows_the_token() -> None:
    described = describe(
        settings(
            "10.0.0.5:50060",
            supervisor_tls_ca="ca.pem",
            supervisor_tls_cert="c.pem",
            supervisor_tls_key="c.key",
            supervisor_token="hush",
        )
    )
    assert described == "10.0.0.5:50060, mutual TLS, token sent"
    assert describe(settings("10.0.0.5:50060")) == "10.0.0.5:50060, plaintext, no token"


CLOSED = (
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"
)


def test_what_a_closed_socket_on_connecting_means_depends_on_the_link() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert "set supervisor_tls_ca" in what_failed(unavailable, CLOSED, tls=False, token=False)
    assert "supervisor_tls_cert" in what_failed(unavailable, CLOSED, tls=True, token=False)
    # A connection that broke under a call says nothing of TLS.
    assert what_failed(unavailable, "Socket closed", tls=False, token=False) == ""
    refused = "failed to connect to all addresses; last error: UNKNOWN: Connection refused"
    assert what_failed(unavailable, refused, tls=False, token=False) == ""


def test_an_unauthenticated_answer_names_supervisor_token() -> None:
    code = grpc.StatusCode.UNAUTHENTICATED
    assert what_failed(code, "x", tls=False, token=False) == (
        "the supervisor requires credentials: set supervisor_token"
    )
    assert "check supervisor_token" in what_failed(code, "x", tls=False, token=True)
    assert what_failed(grpc.StatusCode.NOT_FOUND, "no job 7", tls=True, token=True) == ""


def test_the_link_key_and_token_are_secrets() -> None:
    linked = settings("10.0.0.5:50060", supervisor_tls_key="~/sup.key", supervisor_token="hush")
    assert ("supervisor_tls_key", str(Path("~/sup.key").expanduser())) in secret_files(linked)
    assert secrets_in_config({"supervisor_token": "hush"}) == ["supervisor_token"]
    shown = config.describe(linked)
    assert 'supervisor_token = "(set)"' in shown
    assert not any("hush" in line for line in shown)
    assert "hush" not in repr(linked)
