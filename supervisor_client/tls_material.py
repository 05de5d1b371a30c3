"""Client TLS material loaded with OpenSSL before gRPC gets it: a CA, a certificate, its key.

gRPC loads them only when it first connects; a CA block with no certificate inside, an
encrypted key (there is no way to give gRPC a passphrase) or a key that is not the
certificate's then fails every call with a retryable UNAVAILABLE "Failed to create
security handshaker", the reason only in gRPC's own stderr lines. Python's ``ssl`` is the
same OpenSSL, so loading the material into a throwaway context finds each of these,
with OpenSSL's reason, when the client is made.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TlsMaterialError", "check_loadable", "openssl_reason"]


class TlsMaterialError(ValueError):
    """TLS material OpenSSL cannot use; ``argument`` names which (``root_certificates``, ...).

    The message starts with the argument's name; ``reason`` is the rest, for a caller that
    names the material its own way (``cbexec`` names the flag and the file).
    """

    def __init__(self, argument: str, reason: str) -> None:
        super().__init__(f"{argument}: {reason}")
        self.argument = argument
        self.reason = reason


def check_loadable(
    root_certificates: bytes | None, private_key: bytes | None, certificate_chain: bytes | None
) -> None:
    """TlsMaterialError for material present but unusable; the PEM markers are checked before."""
    if root_certificates is not None:
        try:
            ssl.create_default_context(cadata=root_certificates.decode("ascii", "replace"))
        except ssl.SSLError as err:
            raise TlsMaterialError(
                "root_certificates", f"holds no certificate OpenSSL can read{openssl_reason(err)}"
            ) from err
    if private_key is None or certificate_chain is None:
        return
    with _readable_file(certificate_chain) as chain, _readable_file(private_key) as key:
        try:
            ssl.create_default_context(cafile=chain)
        except ssl.SSLError as err:
            raise TlsMaterialError(
                "certificate_chain", f"holds no certificate OpenSSL can read{openssl_reason(err)}"
            ) from err
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                chain, key, password=_refuse_passphrase
            )
        except _EncryptedKeyError:
            raise TlsMaterialError(
                "private_key",
                "is encrypted (it asks for a passphrase, which gRPC cannot be given); "
                "give an unencrypted key",
            ) from None
        except ssl.SSLError as err:
            if err.reason == "KEY_VALUES_MISMATCH":
                raise TlsMaterialError(
                    "private_key",
                    "is not the private key of the certificate in certificate_chain",
                ) from err
            raise TlsMaterialError(
                "private_key", f"holds no private key OpenSSL can read{openssl_reason(err)}"
            ) from err


class _EncryptedKeyError(Exception):
    pass


def _refuse_passphrase() -> bytes:
    """OpenSSL's passphrase callback: without it OpenSSL would prompt on the terminal."""
    raise _EncryptedKeyError


@contextlib.contextmanager
def _readable_file(data: bytes) -> Iterator[str]:
    """``data`` as a path OpenSSL can open (``load_cert_chain`` takes files only).

    An anonymous memory file where Linux has them, so a key never touches a disk;
    elsewhere a file in a private temporary directory, removed at once.
    """
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("cbexec-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory() as directory:  # mode 0700
        path = Path(directory) / "material.pem"
        path.write_bytes(data)
        yield str(path)


def openssl_reason(err: ssl.SSLError) -> str:
    """OpenSSL's reason in parentheses, when it says more than that the PEM did not parse.

    ``[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found (_ssl.c:4154)``
    becomes `` (no certificate or crl found)``; ``[SSL] PEM lib (_ssl.c:3926)``, nothing.
    """
    text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(err.args[-1] if err.args else err))
    text = re.sub(r"^\[[A-Z0-9_]+(: [A-Z0-9_]+)?\]\s*", "", text)
    return "" if text in ("", "PEM lib") else f" ({text})"
