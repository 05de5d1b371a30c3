"""A TCP relay in front of the test PostgreSQL that can hold back what the server says.

The end of a PostgreSQL session reaches the client as two things: the server's last
words (``FATAL: terminating connection due to administrator command``) and then the
connection closing. Which of them libpq has read when it next looks depends on timing:
the executor met a backend terminated while a pipeline's Sync was on its way, read the
FATAL as the Sync's answer, and had not yet seen the close, which left psycopg stuck in
pipeline mode (probe 51). ``hold`` makes that order certain: the server's bytes are
kept back until the client sends something more, and its close until the client
closes its own end.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class _Link:
    """One client connection and the relay's own connection to the server for it."""

    client: socket.socket
    server: socket.socket
    held: bool = False
    kept: bytearray = field(default_factory=bytearray)  # the server's bytes, held back
    server_closed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def release_kept(self) -> None:
        with self.lock:
            kept, self.kept = bytes(self.kept), bytearray()
        if kept:
            self.client.sendall(kept)


class HoldingRelay:
    """Relays 127.0.0.1:``port`` to the server's port; ``url`` is the server's URL through it."""

    def __init__(self, server_port: int) -> None:
        self._server_port = server_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="pg-relay", daemon=True).start()

    def url(self, server_url: str) -> str:
        return server_url.replace(f":{self._server_port}/", f":{self.port}/")

    def hold(self, client_port: int) -> _Link:
        """Hold back the server's bytes on the link PostgreSQL sees at ``client_port``.

        ``client_port`` is ``pg_stat_activity.client_port`` of its backend. What the
        server says from now on reaches the client when the client next sends anything;
        the server's close reaches it only when the client closes its end.
        """
        with self._lock:
            (link,) = [ln for ln in self._links if ln.server.getsockname()[1] == client_port]
        link.held = True
        return link

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for link in self._links:
                for sock in (link.client, link.server):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self._server_port))
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._to_server, args=(link,), daemon=True).start()
            threading.Thread(target=self._to_client, args=(link,), daemon=True).start()

    @staticmethod
    def _to_server(link: _Link) -> None:
        try:
            while data := link.client.recv(65536):
                if link.held:
                    link.release_kept()
                # A server gone: the client learns it from the server's side.
                with contextlib.suppress(OSError):
                    link.server.sendall(data)
        except OSError:
            pass
        for sock in (link.server, link.client):  # the client closed: so does everything
            _shut(sock)

    @staticmethod
    def _to_client(link: _Link) -> None:
        try:
            while data := link.server.recv(65536):
                with link.lock:
                    if link.held:
                        link.kept += data
                        continue
                link.client.sendall(data)
        except OSError:
            pass
        link.server_closed.set()
        if not link.held:
            _shut(link.client)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
