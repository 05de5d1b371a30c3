"""The channel to a remote supervisor: its TLS and token from Settings, a plaintext link's warning, failures told.

Job reads, ``qb`` actions and results (with the callbacks' output) cross this link.
``supervisor_tls_ca`` turns TLS on (the supervisor's certificate must chain to it);
``supervisor_tls_cert`` + ``supervisor_tls_key`` add a client certificate (mutual TLS);
``supervisor_token`` goes on every call as ``authorization: Bearer <token>``, the
metadata the executor's own clients send it (``supervisor_client.credentials``). The
files are loaded by the listening port's loader (``security.load_key_pair``,
``security.load_ca``), so a bad one stops start-up with the same words, naming the
``supervisor_*`` setting.

A failed handshake reaches gRPC Python only as UNAVAILABLE text ("Socket closed" for a
plaintext link to a TLS port, the words of a supervisor that is down): the channel's
interceptor puts what it means, and the setting to look at, before that text, so the
callback's ``qb`` error, the outbox's log and the hold's WARNING all say it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Final

import grpc

from executor.api import security
from executor.api.supervisor import SUPERVISOR_CHANNEL_OPTIONS
from executor.config import Settings
from executor.config_checks import GRPC_TARGET_SCHEMES
from executor.errors import ConfigError
from supervisor_client.credentials import open_channel

# Targets that never leave the host (a Unix socket; vsock is the VM's link to its host).
_LOCAL_SCHEMES: Final = ("unix:", "unix-abstract:", "vsock:")


@dataclass(frozen=True, slots=True)
class LinkMaterial:
    """What the channel carries: PEM bytes as gRPC takes them, and the token."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    token: str | None = None


def link_material(settings: Settings) -> LinkMaterial:
    """The link's files loaded and checked; ConfigError with one line per problem otherwise.

    The CA is checked whether the key pair is or not, so both problems are said at once.
    """
    problems: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.supervisor_tls_ca:
        try:
            security.load_ca(context, "supervisor_tls_ca", settings.supervisor_tls_ca)
        except ConfigError as err:
            problems.append(str(err))
    if settings.supervisor_tls_cert and settings.supervisor_tls_key:
        try:
            security.load_key_pair(
                context,
                ("supervisor_tls_cert", settings.supervisor_tls_cert),
                ("supervisor_tls_key", settings.supervisor_tls_key),
            )
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("\n".join(problems))

    def pem(setting: str) -> bytes | None:
        value: str = getattr(settings, setting)
        return security.read_pem(setting, value) if value else None

    return LinkMaterial(
        root_certificates=pem("supervisor_tls_ca"),
        private_key=pem("supervisor_tls_key"),
        certificate_chain=pem("supervisor_tls_cert"),
        token=settings.supervisor_token.strip() or None,
    )


def open_supervisor_channel(settings: Settings) -> grpc.aio.Channel:
    """The channel to ``settings.supervisor`` with the link's TLS and token (ConfigError as above)."""
    material = link_material(settings)
    return open_channel(
        settings.supervisor,
        root_certificates=material.root_certificates,
        private_key=material.private_key,
        certificate_chain=material.certificate_chain,
        token=material.token,
        options=SUPERVISOR_CHANNEL_OPTIONS,
        interceptors=[
            LinkFailures(tls=bool(settings.supervisor_tls_ca), token=material.token is not None)
        ],
    )


def describe(settings: Settings) -> str:
    """One line for the log and ``--check-config``: the address, its transport and token."""
    if not settings.supervisor:
        return "embedded"
    transport = (
        "mutual TLS"
        if settings.supervisor_tls_cert
        else "TLS"
        if settings.supervisor_tls_ca
        else "plaintext"
    )
    token = "token sent" if settings.supervisor_token.strip() else "no token"
    return f"{settings.supervisor}, {transport}, {token}"


def link_warnings(settings: Settings) -> list[str]:
    """A warning when the link leaves this host in plaintext with no token, as ``bind``'s.

    Said at start-up and by ``--check-config``, never refused: a site may guard the link
    by other means (a VPN, a private network).
    """
    address = settings.supervisor
    if not address or settings.supervisor_tls_ca or settings.supervisor_token.strip():
        return []
    if all(security.is_loopback(host) for host in _hosts(address)):
        return []
    return [
        f"supervisor {address} is reached in plaintext with no token: job data, qb actions "
        "and results (with the callbacks' output) cross the network in clear, and whoever "
        "answers at that address is taken for the supervisor; set supervisor_tls_ca (and "
        "supervisor_token, supervisor_tls_cert/supervisor_tls_key as the supervisor asks)"
    ]


def _hosts(address: str) -> list[str]:
    """The host:port entries a gRPC target dials ("unix:..." gives a local one)."""
    if address.startswith(_LOCAL_SCHEMES):
        return ["unix:"]
    if address.startswith("dns:"):
        rest = address.removeprefix("dns:")
        # dns:///host:port, or dns://authority/host:port (the authority is the resolver).
        return [rest[2:].partition("/")[2] if rest.startswith("//") else rest]
    if address.startswith(GRPC_TARGET_SCHEMES):
        address = address.partition(":")[2]  # ipv4:a:p,b:p and ipv6:[a]:p
    return address.split(",")


def what_failed(code: grpc.StatusCode, details: str, *, tls: bool, token: bool) -> str:
    """What a link failure means and which setting to look at; "" when gRPC's text says enough."""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        if token:
            return "the supervisor refused the executor's credentials: check supervisor_token"
        return "the supervisor requires credentials: set supervisor_token"
    if code != grpc.StatusCode.UNAVAILABLE:
        return ""
    text = details.lower()
    if "handshake failed" in text:
        if "wrong_version_number" in text:
            reason = "it does not answer in TLS (a plaintext port?)"
        elif "certificate_verify_failed" in text:
            reason = (
                "its certificate does not verify against supervisor_tls_ca (signed by "
                "another CA, expired or not yet valid)"
            )
        else:
            reason = "see gRPC's words"
        return f"the TLS handshake with the supervisor failed: {reason}"
    if "hostname verification" in text:
        return (
            "the TLS handshake with the supervisor failed: its certificate does not name "
            "the host in the supervisor setting"
        )
    closed = "socket closed" in text or "connection reset" in text
    if not closed or "failed to connect" not in text:
        return ""
    if tls:
        return (
            "the supervisor closed the connection in its TLS handshake: if it requires a "
            "client certificate, set supervisor_tls_cert and supervisor_tls_key (one its "
            "client CA signed)"
        )
    return (
        "the supervisor closed the connection before any answer: if it serves TLS, "
        "set supervisor_tls_ca"
    )


class LinkFailures(grpc.aio.UnaryUnaryClientInterceptor):
    """Puts ``what_failed``'s words before a failed call's details (every supervisor call is unary)."""

    def __init__(self, *, tls: bool, token: bool) -> None:
        self._tls = tls
        self._token = token

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        call = await continuation(client_call_details, request)
        try:
            return await call
        except grpc.aio.AioRpcError as err:
            said = what_failed(err.code(), err.details() or "", tls=self._tls, token=self._token)
            if not said:
                raise
            raise grpc.aio.AioRpcError(
                err.code(),
                err.initial_metadata(),
                err.trailing_metadata(),
                f"{said} ({err.details()})",
                err.debug_error_string(),
            ) from err
