"""Where a client finds its executors: one address, a list of them, or a DNS name.

- ``"host:port"`` (or any other target gRPC takes, such as ``"unix:/path"``): one
  executor, through gRPC's default policy (pick_first), exactly as before.
- A list: ``"10.0.0.1:50051,10.0.0.2:50051"`` (comma-separated), or a sequence of such
  strings, becomes gRPC's static target ``"ipv4:10.0.0.1:50051,10.0.0.2:50051"``
  (``"ipv6:[fd00::1]:50051,..."`` for IPv6). gRPC's ``ipv4:``/``ipv6:`` targets hold IP
  addresses only, each with its port, all of one family: a host name in a list is
  refused with a message naming the DNS form.
- ``"dns:///name:port"`` (or ``"dns://server/name:port"``): every A/AAAA record of the
  name, re-resolved by gRPC as executors come and go. An ``"ipv4:..."``/``"ipv6:..."``
  target given as is counts as a list.

A list and a DNS name are a fleet: the channel balances calls round-robin over every
executor (``loadBalancingConfig: round_robin``) and checks each one's health
(``healthCheckConfig``: the standard health service, for ``CallbackExecutorService``,
which an executor answers SERVING while it is up and NOT_SERVING from the start of a
stop, while its storage cannot record results or while every slot is held by a killed
process that has not ended), so an executor that is gone or not
serving gets no calls while another is. gRPC's C core does the health checking itself:
the service config is all a client needs.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from supervisor_client.qbcallback.v1 import executor_pb2

__all__ = ["FLEET_SERVICE_CONFIG", "HEALTH_SERVICE", "Target", "check_address", "resolve_target"]

#: The service whose health a fleet channel watches (the executor answers for each).
HEALTH_SERVICE: Final = executor_pb2.DESCRIPTOR.services_by_name[
    "CallbackExecutorService"
].full_name
#: The service config of a fleet channel: round-robin over every executor, healthy ones only.
FLEET_SERVICE_CONFIG: Final = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": HEALTH_SERVICE},
    }
)
_FLEET_SCHEMES: Final = ("dns:", "ipv4:", "ipv6:")


@dataclass(frozen=True, slots=True)
class Target:
    """The gRPC target for some addresses, and the service config a fleet needs."""

    target: str
    # FLEET_SERVICE_CONFIG for a list or a DNS name; None for one plain address.
    service_config: str | None = None
    # A list's entries as gRPC writes its peers' addresses ("10.0.0.1:50051",
    # "[fd00::1]:50051"); empty for one address and for a DNS name.
    listed: tuple[str, ...] = ()

    @property
    def authority(self) -> str | None:
        """The ``:authority`` of a list's calls: its first entry (None: gRPC's own).

        gRPC's default is the whole list, which past about 8 KiB of text exceeds an
        executor's metadata limit and has every call refused.
        """
        return self.listed[0] if self.listed else None

    @property
    def is_fleet(self) -> bool:
        return self.service_config is not None


def _check_port(address: str, port: str) -> None:
    # gRPC would quietly take port 99999 as 34463 (modulo 65536), -1 as 65535, and an
    # empty one as 443: a typo must not become a retry against some other port.
    if not port:
        raise ValueError(f"address {address!r}: nothing after ':'; expected a port 1 to 65535")
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"address {address!r}: port {port!r} is not a number 1 to 65535")
    if not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r}: port {int(port)} is out of range (1 to 65535)")


# A host name as a resolver takes it (RFC 1123 letters, digits, '-', '.', and '_' some
# sites use); anything else (a space, a '/', a second scheme) no resolver ever finds.
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# "name://": a URL scheme, which gRPC takes for part of a DNS name if it is not its own.
_URL_SCHEME: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def check_address(address: str) -> None:
    """ValueError, naming ``address``, for one address gRPC could never connect to.

    Taken: ``host:port`` (a host name, an IPv4 address or a bracketed IPv6 one, and a
    port 1 to 65535), ``dns:[//server/]name:port``, ``unix:/path``,
    ``unix-abstract:name``, ``vsock:cid:port``, and ``ipv4:``/``ipv6:`` lists. gRPC would
    take most of the rest (``http://host:port``, ``a b:1``, port 0) for a name to
    resolve, and retry it for ever. A port is required: gRPC would dial 443 without one,
    which no executor listens on, so a forgotten port would end as UNAVAILABLE.
    """
    if address.startswith(("unix:", "unix-abstract:", "vsock:")):
        if not address.partition(":")[2]:
            raise ValueError(f"address {address!r}: nothing after the scheme")
        return
    if address.startswith(("ipv4:", "ipv6:")):
        _static_entries(address)
        return
    hostport = address
    if address.startswith("dns:"):
        hostport = address.removeprefix("dns:")
        if hostport.startswith("//"):  # dns:///name:port, dns://server/name:port
            hostport = hostport[2:].partition("/")[2]
    elif scheme := _URL_SCHEME.match(address):
        raise ValueError(
            f"address {address!r}: gRPC has no {scheme.group(1)!r} scheme; expected "
            "host:port, dns:///name:port or unix:/path"
        )
    form = "dns:///NAME:PORT" if address.startswith("dns:") else "host:port"
    _check_host_and_port(address, hostport, form)


def _check_host_and_port(address: str, hostport: str, form: str) -> None:
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"address {address!r}: [{host}] is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise ValueError(f"address {address!r} needs a port: [IPv6]:PORT")
        _check_port(address, rest[1:])
        return
    if hostport.count(":") > 1:  # a bare IPv6 address: '::1:5' is not port 5 (gRPC: 443)
        raise ValueError(f"address {address!r}: write an IPv6 address in brackets, [IPv6]:PORT")
    host, sep, port = hostport.rpartition(":")
    if not sep:
        raise ValueError(f"address {address!r} needs a port: {form}")
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"address {address!r}: {host!r} is not a host name or an IP address")
    _check_port(address, port)


def _ip_and_port(address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """``"1.2.3.4:5"`` or ``"[::1]:5"`` as an IP address and port; ValueError otherwise."""
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
    else:
        host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"address {address!r} needs a port: IP:PORT, or [IPv6]:PORT")
    _check_port(address, port)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"address {address!r} in a list is not an IP address: a list takes IP:PORT "
            "entries (gRPC's ipv4:/ipv6: targets); name a fleet by a host name as one DNS "
            "name with a record per executor, dns:///NAME:PORT"
        ) from None
    if isinstance(ip, ipaddress.IPv6Address) and not address.startswith("["):
        raise ValueError(f"address {address!r}: write an IPv6 address in brackets, [IPv6]:PORT")
    return ip, int(port)


def _static_entries(target: str) -> tuple[str, ...]:
    """An ``ipv4:``/``ipv6:`` list's entries; ValueError for one gRPC could never connect to.

    gRPC's C core refuses such a target only when it makes the channel (a log line, and
    UNKNOWN for the call), and dials port 0: each entry is checked as a list's is.
    """
    scheme, _, listed = target.partition(":")
    version = 4 if scheme == "ipv4" else 6
    entries = []
    for part in listed.split(","):
        ip, port = _ip_and_port(part)
        if ip.version != version:
            raise ValueError(
                f"address {part!r} in {target!r} is not an IPv{version} address, as the "
                f"{scheme}: form takes"
            )
        entries.append(f"{ip}:{port}" if version == 4 else f"[{ip}]:{port}")
    return tuple(entries)


# What a list is wrongly written with instead of commas: spaces (a shell's habit, or a
# file's lines), ';' or '|'. None of them belongs in a host:port address.
_OTHER_SEPARATOR: Final = re.compile(r"\s+|;|\|")
# Schemes whose rest is a path or a name of any characters: a space there is no list.
_ANY_TEXT_SCHEMES: Final = ("unix:", "unix-abstract:", "vsock:")


def _check_separators(part: str) -> None:
    """ValueError for addresses separated by something other than commas.

    Only when what comes before the separator is an address: ``a b:1`` is one host
    name that is none, and said so by check_address.
    """
    separator = _OTHER_SEPARATOR.search(part)
    if separator is None or part.startswith(_ANY_TEXT_SCHEMES):
        return
    try:
        check_address(part[: separator.start()])
    except ValueError:
        return
    written = "spaces" if set(separator.group()) == {" "} else repr(separator.group())
    raise ValueError(
        f"address {part!r}: separate a list's addresses with commas, not {written}: IP:PORT,IP:PORT"
    )


def _given(addresses: object) -> list[str]:
    """The addresses as a list; TypeError for what is neither a str nor a sequence of them."""
    if isinstance(addresses, str):
        given = [addresses]
    elif isinstance(addresses, Sequence) and not isinstance(addresses, bytes | bytearray):
        given = list(addresses)
    else:
        raise TypeError(
            "expected an address as a str (host:port, or a list IP:PORT,IP:PORT) or a "
            f"sequence of str, got {type(addresses).__name__}"
        )
    for item in given:
        if not isinstance(item, str):
            raise TypeError(f"expected each address as a str, got {type(item).__name__}")
    return [item.strip() for item in given if item.strip()]


def _is_fleet_target(text: str) -> bool:
    """An ipv4:/ipv6: list (commas belong to it), or one dns: name."""
    return text.startswith(("ipv4:", "ipv6:")) or (text.startswith("dns:") and "," not in text)


def resolve_target(addresses: str | Sequence[str]) -> Target:
    """The gRPC target (and fleet service config) for one address, a list, or a DNS name.

    ``addresses``: a string, possibly a comma-separated list, or a sequence of them (a
    repeated command-line flag). Raises ValueError naming the bad entry.
    """
    given = _given(addresses)
    for item in given:
        for part in item.split(","):
            _check_separators(part.strip())
    if len(given) == 1 and _is_fleet_target(given[0]):
        check_address(given[0])
        # A gRPC fleet target, as is.
        if given[0].startswith("dns:"):
            return Target(given[0], FLEET_SERVICE_CONFIG)
        return Target(given[0], FLEET_SERVICE_CONFIG, _static_entries(given[0]))
    parts = [part.strip() for item in given for part in item.split(",") if part.strip()]
    if not parts:
        raise ValueError("no executor address given")
    if len(parts) == 1:
        check_address(parts[0])
        return Target(parts[0])
    for part in parts:
        if ":/" in part or part.startswith(_FLEET_SCHEMES):
            raise ValueError(
                f"{part!r} cannot be part of a list: a list takes IP:PORT entries only"
            )
    parsed = [_ip_and_port(part) for part in parts]
    families = {ip.version for ip, _ in parsed}
    if len(families) > 1:
        raise ValueError(
            "an address list must be all IPv4 or all IPv6 (gRPC's ipv4:/ipv6: targets); "
            "name a mixed fleet by one DNS name, dns:///NAME:PORT"
        )
    if families == {4}:
        listed = tuple(f"{ip}:{port}" for ip, port in parsed)
        return Target(f"ipv4:{','.join(listed)}", FLEET_SERVICE_CONFIG, listed)
    listed = tuple(f"[{ip}]:{port}" for ip, port in parsed)
    return Target(f"ipv6:{','.join(listed)}", FLEET_SERVICE_CONFIG, listed)
