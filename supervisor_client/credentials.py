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

__all__ = ["BearerTokenInterceptor", "open_channel"]

#: Reconnect quickly after the peer comes back (gRPC's default backoff reaches 120 s).
RECONNECT_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


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
) -> grpc.aio.Channel:
    """A channel to ``address``: TLS when any certificate is given, plaintext otherwise.

    Args:
        address: "host:port", or any target gRPC takes ("unix:/path", "dns:///name").
        root_certificates: PEM CA bundle that signed the server's certificate (None with
            TLS on means the system roots).
        private_key: the client's PEM key, for mutual TLS.
        certificate_chain: the client's PEM certificate chain, for mutual TLS.
        token: the executor's ``auth_token``, sent as a bearer token on every call.
        tls: force TLS even without any certificate (system roots).
        options: gRPC channel options (by default: reconnect quickly).
    """
    interceptors = [BearerTokenInterceptor(token)] if token else None
    if tls or root_certificates or private_key or certificate_chain:
        credentials = grpc.ssl_channel_credentials(
            root_certificates, private_key, certificate_chain
        )
        return grpc.aio.secure_channel(
            address, credentials, options=list(options), interceptors=interceptors
        )
    return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
