"""Which ``Host`` the side port answers for without a token: its own names, against DNS rebinding.

A web page on ``evil.test:50052`` whose DNS record its owner then points at 127.0.0.1 is,
to the browser, still the origin ``evil.test:50052``: its script may read what the side
port answers, and the port, bound to loopback without a token (as the start-up warning
advises), answered it everything, the runs and their output. The browser does send
``Host: evil.test:50052``, so without ``auth_token`` the port answers only requests whose
``Host`` is a name it is really reached by: ``localhost``, an IP address (no DNS answer
can rebind an address; 127.0.0.1, [::1] and the host's own addresses are such), the name
``http_bind`` gives, this machine's host name and fully qualified name, and the names in
``http_allowed_hosts`` (``"*"``: any). Any port, or none; any case; a final dot.
A request without a ``Host`` (an HTTP/1.0 probe) is no browser's, and is answered.

With ``auth_token`` set no ``Host`` is refused: a rebound page has neither the token nor
the session cookie (which the browser keeps per host name), so the token refuses it,
and a studio may reach the dashboard by any alias or through a proxy.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Collection
from typing import Final

ANY_HOST: Final = "*"
LOCALHOST: Final = "localhost"
MISDIRECTED: Final = (
    "this side port answers without auth_token only for localhost, IP addresses, this"
    " machine's own names and the names in the setting http_allowed_hosts (against DNS"
    " rebinding): reach it by one of those, or add the name to http_allowed_hosts"
)


class HostCheck:
    """Whether a request's ``Host`` header names this port (see the module doc)."""

    def __init__(self, names: Collection[str] = (), *, required: bool = True) -> None:
        self._required = required and ANY_HOST not in names
        self._names = {_plain_name(name) for name in names} | {LOCALHOST}
        self._own: frozenset[str] | None = None  # this machine's names, once looked up
        self._lock = threading.Lock()

    @classmethod
    def anything(cls) -> HostCheck:
        """No check: a port with a token (or a test's dashboard)."""
        return cls(required=False)

    def allows(self, host: str | None, *, repeated: bool = False) -> bool:
        """Whether a request whose ``Host`` header is ``host`` (None: none) is answered.

        ``repeated``: it came more than once (RFC 9112 3.2: an error), refused: the
        handler keeps the last, a proxy in front may have judged the first.
        """
        if not self._required or host is None:
            return True
        return not repeated and self._names_this_port(host)

    def _names_this_port(self, host: str) -> bool:
        name = _host_of(host.strip())
        if name is None:
            return False
        if not name:
            return True  # "Host:" empty, as for a target without an authority
        if _is_address(name):
            return True
        return name in self._names or name in self._machine_names()

    def _machine_names(self) -> frozenset[str]:
        """The host name and its fully qualified form, looked up once, in a handler thread.

        Not at start-up: getfqdn asks the resolver, which may take seconds to fail, and
        only a request with another name needs them.
        """
        with self._lock:
            if self._own is None:
                names = {socket.gethostname(), socket.getfqdn()}
                self._own = frozenset(_plain_name(name) for name in names if name)
            return self._own


def bind_name(bind: str) -> list[str]:
    """The name ``http_bind`` listens on, if a name (an address is allowed as any is)."""
    host = bind.rpartition(":")[0].strip("[]")
    return [host] if host and not _is_address(host) else []


def _plain_name(name: str) -> str:
    return name.strip().lower().removesuffix(".")


def _host_of(header: str) -> str | None:
    """The host of a ``Host`` value (``name``, ``name:port``, ``[v6]:port``); None if malformed."""
    if header.startswith("["):
        literal, bracket, port = header[1:].partition("]")
        if not bracket or not (port == "" or (port[0] == ":" and _is_port(port[1:]))):
            return None
        return literal if _is_address(literal) else None
    name, colon, port = header.partition(":")
    if colon and not _is_port(port):
        return None  # a second colon (a bare IPv6 address), or a port that is none
    return _plain_name(name)


def _is_port(text: str) -> bool:
    return text == "" or (text.isascii() and text.isdigit())


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
