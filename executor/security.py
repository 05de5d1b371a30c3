"""Endpoint security: TLS / mutual TLS from Settings paths, the shared-token check, the internal channel.

Defaults keep the executor on loopback in plaintext. ``tls_cert`` + ``tls_key`` turn on
TLS; ``tls_client_ca`` additionally requires a client certificate signed by that CA.
``auth_token`` requires ``authorization: Bearer <token>`` on every call except the
health service (load balancers and ``grpc_health_probe`` must see it without secrets).

A missing or unreadable file is a ``ConfigError`` naming the setting and the path, raised
before anything starts (gRPC itself would only log a vague handshake failure later).

The embedded supervisor is served on the executor's own server, so the executor calls
itself for every ``qb`` action and every result. That internal channel carries the
token; under TLS it goes through a Unix socket in ``data_dir`` (mode 0700) instead,
because the executor cannot be expected to hold a client certificate for its own CA.
"""

from __future__ import annotations

import hmac
import logging
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import grpc
from grpc_health.v1 import health

from executor.config import Settings
from executor.errors import ConfigError
from supervisor_client.credentials import open_channel

logger = logging.getLogger(__name__)

OPEN_SERVICES: Final = (f"/{health.SERVICE_NAME}/",)
# sockaddr_un.sun_path is 108 bytes on Linux, NUL included.
_MAX_UNIX_PATH: Final = 100


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


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials for the listening port; None for plaintext."""
    if not settings.tls_cert:
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


def add_port(
    server: grpc.aio.Server, settings: Settings, credentials: grpc.ServerCredentials | None
) -> int:
    """Listen on ``settings.bind``; returns the port (0 when binding failed)."""
    if credentials is None:
        return server.add_insecure_port(settings.bind)
    return server.add_secure_port(settings.bind, credentials)


def own_channel(server: grpc.aio.Server, settings: Settings, port: int) -> grpc.aio.Channel:
    """A channel from the executor to its own CallbackExecutor service (before start).

    Used by the embedded supervisor's forwarder. Plain loopback, or under TLS a private
    Unix socket, with our token when one is set.
    """
    address = f"127.0.0.1:{port}"
    if settings.tls_cert:
        socket_path = settings.data_dir / "internal.sock"
        if len(str(socket_path)) > _MAX_UNIX_PATH:
            socket_path = Path(tempfile.mkdtemp(prefix="cbexec-")) / "internal.sock"
        address = f"unix:{socket_path}"
        if server.add_insecure_port(address) == 0:
            raise ConfigError(f"data_dir: cannot listen on the internal socket {socket_path}")
    return open_channel(address, token=settings.auth_token or None)


Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
if TYPE_CHECKING:  # the stubs make it generic; the runtime class is not
    MethodHandler = grpc.RpcMethodHandler[Any, Any]


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        if details.method.startswith(OPEN_SERVICES):
            return True
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                # Constant time: the comparison must not reveal how much of a guess was right.
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or self._authorized(handler_call_details):
            return handler
        logger.warning("refused %s: missing or wrong bearer token", handler_call_details.method)

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "this executor requires 'authorization: Bearer <token>' metadata",
            )

        return _same_kind(handler, refuse)


def _same_kind(handler: MethodHandler, behavior: Handler) -> MethodHandler:
    """A handler of ``handler``'s streaming kind and serializers that runs ``behavior``."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)


def server_interceptors(settings: Settings) -> list[grpc.aio.ServerInterceptor]:
    """The security interceptors the settings ask for (outermost first)."""
    return [TokenAuthInterceptor(settings.auth_token)] if settings.auth_token else []
