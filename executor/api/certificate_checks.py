"""What the executor's certificates say that loading them does not check: dates, names, CA.

OpenSSL loads an expired or not-yet-valid certificate, one for another host, and a
client CA that is no CA without a word; every client then fails its handshake
(``certificate has expired``, ``Hostname Verification Check failed``). Start-up and
``--check-config`` warn of these instead (never refuse: the clock may be wrong, or the
clients dial a name the executor cannot know).

The fields come from a small DER reader here, not from a dependency: the standard
library's only decoder, ``ssl._ssl._test_decode_cert``, is private (a test helper that
may change without notice), and the few fields needed (validity, subject CN,
subjectAltName, basicConstraints) sit at fixed places of RFC 5280's structure. The
files were loaded by OpenSSL first (``security.tls_context``), so what this reader
cannot read is its own limit, and it then says nothing.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from executor.config import Settings

#: A certificate that ends sooner than this is warned of: time to renew and restart.
RENEW_WITHIN: Final = datetime.timedelta(days=14)

_PEM: Final = re.compile(rb"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)
_SUBJECT_ALT_NAME: Final = bytes.fromhex("551d11")  # 2.5.29.17
_BASIC_CONSTRAINTS: Final = bytes.fromhex("551d13")  # 2.5.29.19
_COMMON_NAME: Final = bytes.fromhex("550403")  # 2.5.4.3

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """The fields of one certificate the warnings look at."""

    common_name: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IpAddress, ...]
    is_ca: bool


def read_certificates(pem: bytes) -> list[CertificateFacts]:
    """Every ``CERTIFICATE`` block of a PEM file, in order; ValueError for one that is not DER."""
    found = []
    for number, block in enumerate(_PEM.findall(pem), 1):
        try:
            found.append(_read(base64.b64decode(block)))
        except (ValueError, IndexError, binascii.Error) as err:
            raise ValueError(f"certificate {number}: not a DER certificate ({err})") from err
    return found


def warnings(settings: Settings, now: datetime.datetime) -> list[str]:
    """What clients will refuse of the TLS settings at ``now``; nothing for plaintext."""
    if not settings.tls_cert:
        return []
    said = []
    path = Path(settings.tls_cert).expanduser()
    server = _certificates(path)
    if server:
        leaf = server[0]  # a chain file starts with the server's own certificate
        said += [f"tls_cert: {path} {problem}" for problem in _date_problems(leaf, now, "clients")]
        if problem := _name_problem(leaf, settings.bind):
            said.append(f"tls_cert: {path} {problem}")
    if settings.tls_client_ca:
        path = Path(settings.tls_client_ca).expanduser()
        for number, ca in enumerate(_certificates(path), 1):
            which = f"tls_client_ca: {path}: certificate {number} (CN={ca.common_name})"
            if not ca.is_ca:
                said.append(
                    f"{which} is no CA (basicConstraints CA:FALSE or none): "
                    "it signs no client certificate"
                )
            said += [f"{which} {p}" for p in _date_problems(ca, now, "client certificates")]
    return said


def describe(settings: Settings) -> list[str]:
    """A line on the server certificate: its dates and names (``serve --check-tls``)."""
    path = Path(settings.tls_cert).expanduser()
    server = _certificates(path) if settings.tls_cert else []
    if not server:
        return []
    leaf = server[0]
    return [
        f"tls_cert: {path}, valid from {_when(leaf.not_before)} to {_when(leaf.not_after)}, "
        f"for {_names(leaf) or f'CN={leaf.common_name}'}"
    ]


def _certificates(path: Path) -> list[CertificateFacts]:
    try:
        return read_certificates(path.read_bytes())
    except (OSError, ValueError):
        return []  # loading it already passed (or named the problem): our reader's limit


def _date_problems(facts: CertificateFacts, now: datetime.datetime, who: str) -> list[str]:
    if now < facts.not_before:
        return [f"is not valid before {_when(facts.not_before)}: {who} refuse it until then"]
    if now > facts.not_after:
        return [f"expired on {_when(facts.not_after)}: {who} refuse it; renew it and restart"]
    left = facts.not_after - now
    if left < RENEW_WITHIN:
        soon = "within a day" if left.days == 0 else f"in {left.days} days"
        return [f"expires {soon}, on {_when(facts.not_after)}: renew it and restart before then"]
    return []


def _name_problem(facts: CertificateFacts, bind: str) -> str | None:
    """Why a client dialling ``bind``'s host refuses the certificate, if it does."""
    host = bind.rpartition(":")[0].strip("[]")
    if bind.startswith("unix") or host in ("", "0.0.0.0", "::"):  # noqa: S104 - recognised
        return None  # every address: which one clients dial is theirs to know
    if not facts.dns_names and not facts.ip_addresses:
        return None  # names only its CN: whether that is taken depends on the client
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        named = any(_dns_match(pattern, host) for pattern in facts.dns_names)
    else:
        named = address in facts.ip_addresses
    if named:
        return None
    return (
        f"does not name {host} (it names {_names(facts)}): clients that dial {bind} refuse "
        "it (Hostname Verification Check failed)"
    )


def _dns_match(pattern: str, host: str) -> bool:
    """RFC 6125 matching: a ``*`` stands for the whole left-most label, no more."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        first, _, rest = host.partition(".")
        return bool(first) and rest == pattern[2:]
    return pattern == host


def _names(facts: CertificateFacts) -> str:
    return ", ".join([*facts.dns_names, *map(str, facts.ip_addresses)])


def _when(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


# The DER reader: (tag, start, end) of each element, the contents between start and end.
_Element = tuple[int, int, int]


def _element(data: bytes, at: int) -> _Element:
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4:
            raise ValueError("bad length")
        length = int.from_bytes(data[at : at + size], "big")
        at += size
    if at + length > len(data):
        raise ValueError("truncated")
    return tag, at, at + length


def _children(data: bytes, parent: _Element) -> list[_Element]:
    found, at = [], parent[1]
    while at < parent[2]:
        child = _element(data, at)
        found.append(child)
        at = child[2]
    return found


def _read(der: bytes) -> CertificateFacts:
    """The facts of one DER certificate, by RFC 5280's layout.

    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version, serial, signature,
    issuer, validity, subject, subjectPublicKeyInfo, [1], [2], [3] extensions }, ... }.
    """
    certificate = _element(der, 0)
    tbs = _children(der, certificate)[0]
    fields = _children(der, tbs)
    if fields[0][0] == 0xA0:  # the explicit version; absent means v1
        fields = fields[1:]
    validity, subject = fields[3], fields[4]
    not_before, not_after = (_time(der, t) for t in _children(der, validity))
    dns: list[str] = []
    ips: list[IpAddress] = []
    is_ca = False
    for field in fields[6:]:
        if field[0] != 0xA3:
            continue
        for extension in _children(der, _children(der, field)[0]):
            parts = _children(der, extension)
            oid, value = der[parts[0][1] : parts[0][2]], parts[-1]
            inner = _element(der, value[1])  # the OCTET STRING holds the value's DER
            if oid == _SUBJECT_ALT_NAME:
                for tag, start, end in _children(der, inner):
                    if tag == 0x82:  # dNSName
                        dns.append(der[start:end].decode("ascii"))
                    elif tag == 0x87:  # iPAddress
                        ips.append(ipaddress.ip_address(der[start:end]))
            elif oid == _BASIC_CONSTRAINTS:
                flags = _children(der, inner)
                is_ca = bool(flags) and flags[0][0] == 0x01 and der[flags[0][1]] != 0
    return CertificateFacts(
        _common_name(der, subject), not_before, not_after, tuple(dns), tuple(ips), is_ca
    )


def _time(der: bytes, element: _Element) -> datetime.datetime:
    tag, start, end = element
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError(f"time of tag {tag:#x}")
    moment = datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ")
    return moment.replace(tzinfo=datetime.UTC)


def _common_name(der: bytes, subject: _Element) -> str:
    for relative in _children(der, subject):
        for pair in _children(der, relative):
            oid, value = _children(der, pair)
            if der[oid[1] : oid[2]] == _COMMON_NAME:
                raw = der[value[1] : value[2]]
                return raw.decode("utf-16-be" if value[0] == 0x1E else "utf-8", "replace")
    return ""
