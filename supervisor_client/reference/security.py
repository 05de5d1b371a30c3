"""The reference supervisor's port security: TLS / mutual TLS, and the executor's bearer token.

An executor sends its ``supervisor_token`` as ``authorization: Bearer <token>`` (the
metadata its own clients send it: ``supervisor_client.credentials``), over TLS when
``supervisor_tls_ca`` is set. A site's supervisor written in Python serves the
SupervisorService the same way: ``add_supervisor_port`` and ``BearerTokenCheck``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc

from supervisor_client.credentials import check_tls, clean_token

__all__ = ["BearerTokenCheck", "add_supervisor_port"]

logger = logging.getLogger(__name__)

#: What a caller without the right token is told (never what it sent).
REFUSED: Final = "this supervisor requires one 'authorization: Bearer <token>' metadata entry"
WRONG: Final = "the bearer token does not match this supervisor's token"


class BearerTokenCheck(grpc.aio.ServerInterceptor):
    """Refuses every call without exactly one ``authorization: Bearer <token>`` (UNAUTHENTICATED).

    ``refused`` counts the calls refused.
    """

    def __init__(self, token: str) -> None:
        cleaned = clean_token(token)
        if cleaned is None:
            raise ValueError("token: empty; give the token the executors send")
        self._expected = cleaned.encode()
        self.refused = 0

    def _allowed(self, details: grpc.HandlerCallDetails) -> str:
        """What the caller is told for its token; empty when the call carries the right one."""
        given = [
            value.encode() if isinstance(value, str) else value
            for key, value in details.invocation_metadata or ()
            if key == "authorization"
        ]
        if len(given) != 1:
            return REFUSED
        scheme, _, token = given[0].strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return REFUSED
        # Constant time: the comparison must not reveal how much of a guess was right.
        return "" if hmac.compare_digest(token.strip(), self._expected) else WRONG

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        told = self._allowed(handler_call_details)
        if handler is None or not told:
            return handler
        self.refused += 1
        method = handler_call_details.method

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            logger.warning("refused %s from %s: %s", method, context.peer(), told)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, told)

        # Every SupervisorService method is unary.
        return grpc.unary_unary_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def add_supervisor_port(
    server: grpc.aio.Server,
    bind: str,
    *,
    certificate_chain: bytes | None = None,
    private_key: bytes | None = None,
    client_ca: bytes | None = None,
) -> int:
    """Listen on ``bind``: TLS with the PEM chain and key, plaintext without; the bound port.

    ``client_ca`` requires every caller to present a certificate it signed (mutual TLS:
    the executor's ``supervisor_tls_cert``). ValueError for half a key pair, a client CA
    without TLS, or material that holds no PEM (``check_tls``); RuntimeError when gRPC
    cannot bind.
    """
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("certificate_chain and private_key: give both (TLS) or neither")
    if certificate_chain is None or private_key is None:
        if client_ca is not None:
            raise ValueError("client_ca: mutual TLS needs certificate_chain and private_key too")
        port = server.add_insecure_port(bind)
    else:
        check_tls(client_ca, private_key, certificate_chain)
        credentials = grpc.ssl_server_credentials(
            [(private_key, certificate_chain)],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(bind, credentials)
    if port == 0:
        raise RuntimeError(f"cannot listen on {bind}")
    return port
