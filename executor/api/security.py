"""Endpoint security: TLS / mutual TLS from Settings paths, the listening port, the internal channel.

Defaults keep the executor on loopback in plaintext. ``tls_cert`` + ``tls_key`` turn on
TLS; ``tls_client_ca`` additionally requires a client certificate signed by that CA.
``auth_token`` requires ``authorization: Bearer <token>`` on every call except the
health service (``interceptors.TokenAuthInterceptor``).

A missing or unreadable file, a certificate or key OpenSSL cannot load, or a key that is
not the certificate's is a ``ConfigError`` naming the setting and the path, raised before
anything starts (gRPC itself would only log a vague handshake failure later, or fail to
add the port, which reads as a port problem).

The embedded supervisor's forwarder calls the executor's own TriggerService for every
transition. That internal channel carries the token; under TLS it goes through a Unix
socket in ``data_dir`` (mode 0700) instead, because the executor cannot be expected to
hold a client certificate for its own CA.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import grpc

from executor.api import private_socket
from executor.api.interceptors import TokenAuthInterceptor
from executor.api.private_socket import PrivateSocket
from executor.config import Settings
from executor.errors import ConfigError
from supervisor_client.client import MAX_ANSWER_BYTES
from supervisor_client.credentials import RECONNECT_OPTIONS, open_channel
from supervisor_client.tls_material import openssl_reason


def read_pem(setting: str, value: str) -> bytes:
    """The PEM file a setting names; ConfigError naming the setting and path otherwise."""
    path = Path(value).expanduser()
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{setting}: cannot read {path}: {err.strerror or err}") from err
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{setting}: {path} is not a PEM file")
    return data


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS settings loaded as a server context (the HTTP side port's); None for plaintext.

    Also the check that the files are usable at all: gRPC's own loader only says it
    could not add the port. ConfigError naming the setting and path for a certificate
    or key OpenSSL cannot read, a key that is not the certificate's, or a bad client CA.
    """
    if not settings.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_key_pair(context, ("tls_cert", settings.tls_cert), ("tls_key", settings.tls_key))
    if settings.tls_client_ca:
        load_ca(context, "tls_client_ca", settings.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_key_pair(context: ssl.SSLContext, cert: tuple[str, str], key: tuple[str, str]) -> None:
    """Load a certificate chain and its key, each a (setting, path), into ``context``.

    ConfigError naming the setting and path for a file that does not read, a
    certificate or key OpenSSL cannot load (an encrypted key among them), or a key that
    is not the certificate's. Shared by the listening port and the supervisor link.
    """
    (cert_setting, cert_value), (key_setting, key_value) = cert, key
    cert_path, key_path = (Path(v).expanduser() for v in (cert_value, key_value))
    read_pem(cert_setting, cert_value)
    read_pem(key_setting, key_value)
    try:
        # The chain alone first, so a bad certificate is not blamed on the key.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=cert_path)
    except ssl.SSLError as err:
        raise ConfigError(
            f"{cert_setting}: {cert_path} holds no certificate OpenSSL can read"
            f"{openssl_reason(err)}"
        ) from err
    try:
        context.load_cert_chain(
            cert_path, key_path, password=_refuse_passphrase(key_setting, key_path)
        )
    except ssl.SSLError as err:
        if err.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{cert_setting}/{key_setting}: the key {key_path} is not the private key of "
                f"the certificate {cert_path}"
            ) from err
        raise ConfigError(
            f"{key_setting}: {key_path} holds no private key OpenSSL can read{openssl_reason(err)}"
        ) from err
    except OSError as err:
        raise ConfigError(
            f"{cert_setting}/{key_setting}: cannot read them: {err.strerror or err}"
        ) from err


def load_ca(context: ssl.SSLContext, setting: str, value: str) -> None:
    """Load the CA bundle ``setting`` names into ``context``; ConfigError naming it otherwise."""
    read_pem(setting, value)
    ca_path = Path(value).expanduser()
    try:
        context.load_verify_locations(cafile=ca_path)
    except ssl.SSLError as err:
        raise ConfigError(
            f"{setting}: {ca_path} holds no certificate OpenSSL can read{openssl_reason(err)}"
        ) from err


def _refuse_passphrase(setting: str, key_path: Path) -> Callable[[], bytes]:
    """OpenSSL's passphrase callback: the executor has no passphrase to give (nor has gRPC).

    Without it OpenSSL would prompt on the terminal, or a systemd start would hang.
    """

    def refuse() -> bytes:
        raise ConfigError(
            f"{setting}: {key_path} is encrypted (it asks for a passphrase); "
            "give an unencrypted key, readable by the executor's user only"
        )

    return refuse


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials for the listening port; None for plaintext.

    The files are loaded by ``tls_context`` first, so a key that is not the
    certificate's is refused here, by name, rather than by gRPC as a port it cannot add.
    """
    if tls_context(settings) is None:
        return None
    chain = read_pem("tls_cert", settings.tls_cert)
    key = read_pem("tls_key", settings.tls_key)
    client_ca = (
        read_pem("tls_client_ca", settings.tls_client_ca) if settings.tls_client_ca else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def describe(settings: Settings) -> str:
    """One line for the startup log."""
    transport = (
        "mutual TLS" if settings.tls_client_ca else "TLS" if settings.tls_cert else "plaintext"
    )
    return f"{transport}, {'token required' if settings.auth_token else 'no token'}"


def open_port_warnings(settings: Settings) -> list[str]:
    """A warning for each port anyone on the network may use: bound beyond loopback, no token.

    Plaintext with no token on a network address lets whoever reaches it run code as
    callbacks and act on the farm's jobs; the example config says to open the port only
    with TLS and/or a token. Said at start-up and by ``--check-config``, never refused:
    a site may guard the port by other means.
    """
    warnings = []
    if not settings.auth_token and not settings.tls_cert and not is_loopback(settings.bind):
        warnings.append(
            f"bind {settings.bind} takes calls from the network in plaintext with no token: "
            "anyone who reaches it can run code as callbacks and act on the farm's jobs; "
            "set auth_token (and tls_cert/tls_key), or bind to 127.0.0.1"
        )
    if settings.http_bind and not settings.auth_token and not is_loopback(settings.http_bind):
        warnings.append(
            f"http_bind {settings.http_bind} serves the network with no token: anyone who "
            "reaches it reads the run history and callbacks' output; set auth_token, or "
            "bind it to 127.0.0.1"
        )
    return warnings


def is_loopback(bind: str) -> bool:
    """Whether ``bind`` (host:port, [v6]:port, or a unix: socket) is reachable from this host only."""
    if bind.startswith(("unix:", "unix-abstract:")):
        return True
    host = bind.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # no host (every address), or a name: as reachable as it resolves
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return (mapped or address).is_loopback  # [::ffff:127.0.0.1] is 127.0.0.1


def check_bindable(bind: str, *, setting: str = "bind") -> None:
    """ConfigError, in one line, when ``bind`` cannot be listened on (taken, not ours).

    Checked before anything starts: gRPC would log its own multi-line error first, or,
    with SO_REUSEPORT, silently share a port another executor holds.
    """
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    try:
        addresses = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"{setting}: cannot listen on {bind}: {err}") from err
    problem: OSError | None = None
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(address)
            except OSError as err:
                problem = problem or err
                continue
        return
    reason = problem.strerror if problem is not None and problem.strerror else str(problem)
    raise ConfigError(f"{setting}: cannot listen on {bind}: {reason}")


def add_port(
    server: grpc.aio.Server, settings: Settings, credentials: grpc.ServerCredentials | None
) -> int:
    """Listen on ``settings.bind``; returns the bound port.

    ConfigError when the address cannot be bound (taken by another process, or not an
    address of this host): gRPC would log a long traceback, or return port 0.
    """
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.bind)
        else:
            port = server.add_secure_port(settings.bind, credentials)
    except RuntimeError as err:
        port, reason = 0, str(err)
    else:
        reason = "the address is in use or not an address of this host"
    if port == 0:
        raise ConfigError(f"bind: cannot listen on {settings.bind}: {reason}")
    return port


def own_channel(
    server: grpc.aio.Server, settings: Settings
) -> tuple[grpc.aio.Channel, PrivateSocket]:
    """A channel from the executor to its own services (call before the server starts).

    Through a private Unix socket (0600 whatever the umask; it skips TLS), with our token
    when one is set; that socket is returned too. Not through ``bind``: gRPC counts
    ``max_connections`` per listening address, and the embedded supervisor's long-lived
    connection there took the one place of ``max_connections = 1`` for good, and any
    place a client could take from it (probe 120).
    """
    internal = private_socket.listen(server, settings.data_dir / "internal.sock", "internal socket")
    # Answers as large as the executor sends (a GetRun of a run with big output, for the
    # dashboard), not gRPC's default 4 MiB.
    options = [*RECONNECT_OPTIONS, ("grpc.max_receive_message_length", MAX_ANSWER_BYTES)]
    channel = open_channel(internal.address, token=settings.auth_token or None, options=options)
    return channel, internal


def server_interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    """The security interceptors the settings ask for (outermost first)."""
    return [TokenAuthInterceptor(settings.auth_token)] if settings.auth_token else []
