"""What the executor says of its certificates' dates, names and CA, beyond OpenSSL's loading.

OpenSSL loads an expired certificate, one for another host, or a client CA that is no CA
without a word; clients then failed every call ``certificate has expired`` (probe 115).
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest

from executor.api import certificate_checks
from executor.config import Settings
from tests.helpers.static_pki import CA_CERT, LEAF_CERT, LEAF_KEY

pytestmark = pytest.mark.unit

UTC = datetime.UTC
BEGIN = datetime.datetime(2026, 12, 6, 15, 27, 20, tzinfo=UTC)
END = datetime.datetime(2126, 11, 12, 15, 27, 20, tzinfo=UTC)


def test_the_dates_names_and_ca_flag_are_read() -> None:
    leaf, ca = certificate_checks.read_certificates(LEAF_CERT + CA_CERT)
    assert (leaf.not_before, leaf.not_after) == (BEGIN, END)  # UTCTime, then GeneralizedTime
    assert leaf.dns_names == ("localhost", "*.farm.example")
    assert leaf.ip_addresses == (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
    assert (leaf.is_ca, ca.is_ca) == (False, True)
    assert ca.dns_names == () and ca.ip_addresses == ()


def test_what_is_not_der_is_an_error_not_a_guess() -> None:
    bad = b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="not a DER certificate"):
        certificate_checks.read_certificates(bad)


def settings(tmp_path: Path, bind: str = "127.0.0.1:50051", client_ca: bytes = b"") -> Settings:
    (tmp_path / "leaf.pem").write_bytes(LEAF_CERT)
    (tmp_path / "leaf.key").write_bytes(LEAF_KEY)
    ca = ""
    if client_ca:
        (tmp_path / "ca.pem").write_bytes(client_ca)
        ca = str(tmp_path / "ca.pem")
    return Settings(
        bind=bind,
        tls_cert=str(tmp_path / "leaf.pem"),
        tls_key=str(tmp_path / "leaf.key"),
        tls_client_ca=ca,
    )


@pytest.mark.parametrize(
    ("now", "warning"),
    [
        (BEGIN - datetime.timedelta(days=2), "is not valid before 2026-12-06 15:27:20 UTC"),
        (END + datetime.timedelta(seconds=1), "expired on 2126-11-12 15:27:20 UTC"),
        (END - datetime.timedelta(days=3, hours=1), "expires in 3 days, on 2126-11-12"),
    ],
)
def test_a_server_certificate_out_of_its_dates_or_near_its_end_is_warned_of(
    tmp_path: Path, now: datetime.datetime, warning: str
) -> None:
    said = certificate_checks.warnings(settings(tmp_path), now)
    assert len(said) == 1 and said[0].startswith(f"tls_cert: {tmp_path / 'leaf.pem'} "), said
    assert warning in said[0]


def test_a_certificate_in_its_dates_for_the_bind_host_is_not_warned_of(tmp_path: Path) -> None:
    now = BEGIN + datetime.timedelta(days=30)
    for bind in ("127.0.0.1:1", "[::1]:1", "localhost:1", "node7.farm.example:1", "0.0.0.0:1"):
        assert certificate_checks.warnings(settings(tmp_path, bind), now) == [], bind
    assert certificate_checks.warnings(Settings(), now) == []  # plaintext


@pytest.mark.parametrize("bind", ["10.0.0.5:50051", "render.example:50051", "a.b.farm.example:1"])
def test_a_certificate_that_does_not_name_the_bind_host_is_warned_of(
    tmp_path: Path, bind: str
) -> None:
    said = certificate_checks.warnings(settings(tmp_path, bind), BEGIN)
    host = bind.rpartition(":")[0]
    assert len(said) == 1 and f"does not name {host}" in said[0], said
    assert "localhost, *.farm.example, 127.0.0.1, ::1" in said[0]


def test_a_client_ca_that_is_no_ca_or_expired_is_warned_of(tmp_path: Path) -> None:
    said = certificate_checks.warnings(settings(tmp_path, client_ca=LEAF_CERT), BEGIN)
    assert said == [
        f"tls_client_ca: {tmp_path / 'ca.pem'}: certificate 1 (CN=executor) is no CA"
        " (basicConstraints CA:FALSE or none): it signs no client certificate"
    ], said
    late = END + datetime.timedelta(days=1)
    said = certificate_checks.warnings(settings(tmp_path, client_ca=CA_CERT), late)
    assert any(s.startswith("tls_client_ca: ") and "expired on 2126-11-12" in s for s in said)
