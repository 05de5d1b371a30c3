"""Client-side connection security: TLS / mutual TLS channels and the shared bearer token.

An executor configured with ``auth_token`` expects ``authorization: Bearer <token>`` on
every call. gRPC's own ``access_token_call_credentials`` sends exactly that header, but
only over TLS; the interceptor here sends it on any channel, so a token also works on
a loopback plaintext port (the default deployment).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import grpc

from supervisor_client.tls_material import check_loadable

__all__ = ["MAX_TOKEN_CHARS", "BearerTokenInterceptor", "check_tls", "clean_token", "open_channel"]

#: Reconnect quickly after the peer comes back (gRPC's default backoff reaches 120 s).
#: Not ``grpc.min_reconnect_backoff_ms``: gRPC takes it as each connection attempt's
#: timeout too, and a peer whose handshake takes longer (a slow link) was never reached.
RECONNECT_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


#: Pings that find a peer which stopped answering (a frozen process, a hung host: its TCP
#: connection stays up) within KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS, so a fleet's
#: round robin drops it and a call on it fails UNAVAILABLE instead of waiting for ever.
#: Pings go on while no call is active (a fleet's idle health watch is one stream), and
#: an executor accepts them (``executor.api.connections.KEEPALIVE_SERVER_OPTIONS``); other
#: gRPC servers may refuse such pings, so only channels to executors carry these.
KEEPALIVE_TIME_MS: Final = 10_000
KEEPALIVE_TIMEOUT_MS: Final = 5_000
KEEPALIVE_OPTIONS: Final = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Any ping, not only keepalive's: a flow-control (BDP) ping already on its way when the
    # peer froze holds back keepalive's, for gRPC's default 60 s.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),  # 0: no limit (gRPC's default stops at 2)
)

# What gRPC metadata can carry: printable ASCII. Anything else makes gRPC's C core
# refuse the call with an error that names nothing (ExecuteBatchError).
_TOKEN_CHARS: Final = frozenset(chr(c) for c in range(0x20, 0x7F))

#: The longest token sent. gRPC bounds a call's headers together (``grpc.max_metadata_size``):
#: past 8 KiB (the soft limit) a server refuses a random share of calls RESOURCE_EXHAUSTED,
#: past 16 KiB every one. The token shares that space with the path, authority, user
#: agent, deadline, request id and HPACK's 32 bytes per entry; 4096 leaves them about as
#: much again. A random token needs far less (256 bits is 43 base64 characters).
MAX_TOKEN_CHARS: Final = 4096


def token_length_problem(token: str) -> str | None:
    """Why ``token`` (stripped) is too long for gRPC metadata, without any of it; else None."""
    if len(token) <= MAX_TOKEN_CHARS:
        return None
    return (
        f"{len(token)} characters, more than {MAX_TOKEN_CHARS}: gRPC refuses calls whose "
        "headers pass 8 KiB (some) or 16 KiB (all); use a shorter random token"
    )


def clean_token(token: str | None) -> str | None:
    """The token as sent: without surrounding whitespace (a token file's newline); None for none.

    ValueError for a token gRPC metadata cannot carry: a character that is not printable
    ASCII, or more than ``MAX_TOKEN_CHARS``. The executor strips and checks its
    ``auth_token`` the same way.
    """
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"token: expected a str, got {type(token).__name__}")
    token = token.strip()
    # The position only: the message must not show any of the secret.
    bad = next((n for n, c in enumerate(token, 1) if c not in _TOKEN_CHARS), 0)
    if bad:
        raise ValueError(
            f"token: character {bad} is not printable ASCII, and gRPC metadata carries nothing else"
        )
    if problem := token_length_problem(token):
        raise ValueError(f"token: {problem}")
    return token or None


def _pem(name: str, value: bytes | None, marker: bytes, what: str) -> None:
    if value is None:
        return
    if not isinstance(value, bytes):
        raise TypeError(f"{name}: expected PEM bytes, got {type(value).__name__}")
    if marker not in value:
        problem = "is empty" if not value.strip() else f"holds no PEM {what}"
        raise ValueError(f"{name} {problem}: TLS needs one (never plaintext when TLS is asked for)")


def check_tls(
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
) -> None:
    """ValueError (or TypeError) for TLS material gRPC would misuse.

    gRPC takes an empty CA as none at all (a plaintext channel, the token in clear), and
    aborts the whole process on half a client certificate. Material that has the markers
    is then loaded with OpenSSL (``tls_material.check_loadable``): gRPC would fail every
    call UNAVAILABLE for a CA or key it cannot load, as if the executor were down.
    """
    if (private_key is None) != (certificate_chain is None):
        given, missing = (
            ("private_key", "certificate_chain")
            if certificate_chain is None
            else ("certificate_chain", "private_key")
        )
        raise ValueError(f"{given} without {missing}: a client certificate (mutual TLS) needs both")
    certificate = b"-----BEGIN CERTIFICATE-----"
    _pem("root_certificates", root_certificates, certificate, "certificate")
    _pem("certificate_chain", certificate_chain, certificate, "certificate")
    # "-----BEGIN PRIVATE KEY-----", and the RSA, EC and ENCRYPTED forms.
    _pem("private_key", private_key, b"PRIVATE KEY-----", "private key")
    check_loadable(root_certificates, private_key, certificate_chain)


class BearerTokenInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """Adds ``authorization: Bearer <token>`` to every call on the channel."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._header)
        return details._replace(metadata=metadata)  # type: ignore[attr-defined,no-any-return]  # a namedtuple at runtime

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._with_token(client_call_details), request)


def open_channel(
    address: str,
    *,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    token: str | None = None,
    tls: bool = False,
    options: Sequence[tuple[str, Any]] = RECONNECT_OPTIONS,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A channel to ``address``: TLS when any certificate is given, plaintext otherwise.

    Raises ValueError for TLS material or a token that cannot work (``check_tls``,
    ``clean_token``), before gRPC sees them.

    Args:
        address: "host:port", or any target gRPC takes ("unix:/path", "dns:///name").
        root_certificates: PEM CA bundle that signed the server's certificate (None with
            TLS on means the system roots).
        private_key: the client's PEM key, for mutual TLS.
        certificate_chain: the client's PEM certificate chain, for mutual TLS.
        token: the executor's ``auth_token``, sent as a bearer token on every call.
        tls: force TLS even without any certificate (system roots).
        options: gRPC channel options (by default: reconnect quickly).
        interceptors: further client interceptors, after the token's.
    """
    check_tls(root_certificates, private_key, certificate_chain)
    token = clean_token(token)
    chain = [*([BearerTokenInterceptor(token)] if token else []), *interceptors]
    given = (root_certificates, private_key, certificate_chain)
    if tls or any(value is not None for value in given):
        credentials = grpc.ssl_channel_credentials(
            root_certificates, private_key, certificate_chain
        )
        return grpc.aio.secure_channel(
            address, credentials, options=list(options), interceptors=chain or None
        )
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=chain or None)
