"""The HTTP side port: a stdlib ``ThreadingHTTPServer`` in threads of its own, started and stopped with us.

Why threads and not the event loop: the callback path lives on the loop, and a page
(HTML rendering, TLS handshakes, slow clients on keep-alive connections) should not
take turns with it. The threads only render and send; what they show they ask the loop
for (``source.ExecutorSource``), and the Prometheus registry they expose is one the
loop updates under prometheus_client's own locks. ``scripts/bench.py`` measures the
callback path with the port off and on (scraped every second, a dashboard page open).

TLS comes from the gRPC port's settings (``tls_cert``/``tls_key``; ``tls_client_ca``
requires client certificates here too), the handshake done in the connection's own
thread so a slow client never holds up ``accept``. ``drain``, at the start of a stop,
has /healthz say 503 NOT_SERVING (and every page 503) while the executor drains; ``close``,
once the gRPC server has closed, stops accepting, ends
every open connection (an idle keep-alive one included), and joins every thread before
it returns: nothing of the port outlives the executor's stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import select
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from executor.api import security
from executor.config import Settings
from executor.errors import ConfigError
from executor.visible_text import escaped
from executor.web import framing
from executor.web.app import SECURITY_HEADERS, Dashboard, Request, Response, absolute_form

logger = logging.getLogger(__name__)

# An idle keep-alive connection is closed after this; a request must arrive within it.
IDLE_TIMEOUT_S: Final = 30.0
MAX_BODY_BYTES: Final = 64 << 10
# A request's header lines in all (their line ends and the blank line included), refused
# 431 once read past: the stdlib's own limits (100 lines of 64 KiB) let a client without
# the token, which is looked at only after them, hold 6.4 MB of the executor a connection.
MAX_HEADER_BYTES: Final = 64 << 10
_HEADERS_WHY: Final = "the request's headers are over 64 KiB in all"
# And their lines, counted alike (the blank one included): 13,000 short lines fit in
# 64 KiB, and the stdlib's parse of them held 2.3 MB and a quarter of a second of CPU,
# for a client without the token too. The stdlib refuses a 101st line as well ("Too many
# headers"): this one says which limit, and does not move with the stdlib's.
MAX_HEADER_LINES: Final = 100
_HEADER_LINES_WHY: Final = "the request's headers are over 100 lines in all"
# After an answer that closes the connection (every error), what the client goes on
# sending (a refused body) is read and dropped, up to this much or for this long: a socket
# closed with bytes unread sends a reset, and a client that had not read the answer yet
# saw the reset instead.
LINGER_BYTES: Final = 4 << 20
LINGER_S: Final = 2.0
WRITE_PIECE_BYTES: Final = 256 << 10
# Of a request line too long to take (414), what is read to tell /healthz from a page.
MAX_TARGET_SEEN: Final = 4096
# Empty lines skipped before a request line; one more is a request line without words.
MAX_EMPTY_LINES: Final = 8
# The stdlib's bound of a request line (handle_one_request's 65536: 414 past it).
_MAX_REQUEST_LINE: Final = 65536
# Each piece must be taken by the client within this (the socket's send timeout while a
# body is written): a client that asks for a 16 MiB stream and never reads is dropped,
# and its stream's slot (stream_gate) and copy with it, instead of holding them for the
# idle timeout per piece. A browser laying a page out slowly still takes 256 KiB in it.
WRITE_TIMEOUT_S: Final = 10.0
# Connections served at once, each in a thread of its own (and each thread one of the
# executor's tasks, ``process_limit``): browsers open a few each, scrapers one. Past it a
# connection is answered 503 at once (closed unanswered under TLS): idle or slow clients
# hold at most this many threads, and a wrong token's delay (``auth``) is per connection.
MAX_CONNECTIONS: Final = 64
_BUSY_WHY: Final = "too many connections to this side port at once; try again shortly"
# How long a connection turned away may take to send its request line (the accepting
# thread waits for it: a port that is full accepts nothing else meanwhile anyway).
TURN_AWAY_WAIT_S: Final = 0.02
# The versions served; any other is refused, 505 when it reads as one (RFC 9112 2.3).
_VERSIONS: Final = (b"HTTP/1.0", b"HTTP/1.1")
_VERSION: Final = re.compile(r"HTTP/[0-9]\.[0-9]")
_SEND: Final = "send HTTP/1.0 or HTTP/1.1"


class _Handler(BaseHTTPRequestHandler):
    """One connection: reads requests, asks the dashboard, writes its answers."""

    server: _Server
    raw_requestline: bytes  # set by the stdlib's handle_one_request (untyped there)
    body_length: int  # set by parse_request (``framing``), for the do_* methods
    timeout = IDLE_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    server_version = "cbexec"
    sys_version = ""

    def do_GET(self) -> None:  # the name http.server dispatches to
        self._answer("GET")

    def do_HEAD(self) -> None:
        self._answer("GET", body=False)

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str, *, body: bool = True) -> None:
        length = self.body_length
        if length > MAX_BODY_BYTES:
            self.send_error(413, "request body too large")
            return
        request = Request.parse(
            method,
            self.path,
            self.headers.items(),  # every header as sent: a repeated one is refused
            self.rfile.read(length) if length else b"",
        )
        response = self.server.dashboard.handle(request)
        try:
            self.send_response(response.status)
            self._send(response, body=body)
        finally:
            if response.sent is not None:
                response.sent()
            self.server.dashboard.request_done()

    def _send(self, response: Response, *, body: bool) -> None:
        """The headers after the status line, and the body unless a HEAD asked."""
        if response.status not in (204, 304):
            self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if not body:
            return
        # In pieces: the socket's timeout bounds each write, not the whole body. One
        # write of a 16 MiB output stream had IDLE_TIMEOUT_S for all of it, so a browser
        # reading it steadily but slowly (laying it out as it comes) was cut off.
        self.connection.settimeout(WRITE_TIMEOUT_S)
        try:
            whole = memoryview(response.body)
            for start in range(0, len(whole), WRITE_PIECE_BYTES):
                self.wfile.write(whole[start : start + WRITE_PIECE_BYTES])
        finally:
            self.connection.settimeout(self.timeout)

    def parse_request(self) -> bool:
        # Judged from the request line, before the headers are read: the stdlib read on
        # for the headers of a request line without a version (HTTP/0.9 has none),
        # holding the connection until the idle timeout, and served HTTP/0.9 without a
        # status line or a header (so none of SECURITY_HEADERS), HTTP/1.2 as HTTP/1.1.
        # Empty lines before it are skipped (RFC 9112 2.2: a client's CRLF after the body
        # before): the stdlib closed the connection on one, unanswered.
        for _ in range(MAX_EMPTY_LINES):
            if self.raw_requestline != b"\r\n":
                break
            self.raw_requestline = self.rfile.readline(_MAX_REQUEST_LINE + 1)
        if not self.raw_requestline:  # gone after its empty lines: nothing to answer
            self.close_connection = True
            return False
        if len(self.raw_requestline) > _MAX_REQUEST_LINE:
            return self._refuse_request_line(HTTPStatus.REQUEST_URI_TOO_LONG, "")
        if not self.raw_requestline.strip():
            return self._refuse_request_line(400, f"no request line: {_SEND}")
        # Its line end first: the stdlib splits the line's words at a bare CR too.
        try:
            framing.check_line_end(self.raw_requestline)
        except framing.FramingError as err:
            return self._refuse_request_line(err.status, err.why)
        refusal = _version_refusal(self.raw_requestline.split())
        if refusal is not None:
            return self._refuse_request_line(*refusal)
        rfile = self.rfile
        budget = _HeaderBudget(rfile)
        self.rfile = budget  # what the stdlib reads the headers from
        try:
            if not super().parse_request():
                return False
        except _HeadersTooLargeError as err:
            self.send_error(431, err.why)
            return False
        finally:
            self.rfile = rfile
        try:
            self.body_length = framing.body_length(budget.lines)
        except framing.FramingError as err:
            self.send_error(err.status, err.why)
            return False
        try:
            absolute_form(self.path)
        except ValueError as err:  # "http:///metrics" would pass as a request without a Host
            self.send_error(400, str(err))
            return False
        return True

    def _refuse_request_line(self, status: int, why: str) -> bool:
        """Answer a request refused for its request line alone (the stdlib has not parsed it)."""
        self.command = ""
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.send_error(status, why)
        return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every error the stdlib answers itself, in the dashboard's way (``Dashboard.unreadable``).

        Its own page was HTML without the security headers, on /healthz too, and one of
        a request line it could not read (``HTTP/9.9``) lost even its status line.
        """
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = self.protocol_version  # so a status line is written
        why = message or HTTPStatus(code).phrase
        self.log_error("code %d, message %s", code, why)
        line = getattr(self, "requestline", "") or str(
            self.raw_requestline[:MAX_TARGET_SEEN], "iso-8859-1"
        )
        words = line.split()
        response = self.server.dashboard.unreadable(code, why, words[1] if len(words) > 1 else "")
        self.send_response(code)
        self.send_header("Connection", "close")
        self.close_connection = True
        self._send(response, body=getattr(self, "command", None) != "HEAD")
        self._linger()

    def _linger(self) -> None:
        """Half-close, then read and drop what the client still sends (``LINGER_BYTES``)."""
        connection = self.connection
        with contextlib.suppress(OSError):
            # Under TLS this ends the TLS layer too: what follows is read as it came.
            connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S  # in all, however slowly it comes
            left = LINGER_BYTES
            while left > 0 and (wait := deadline - time.monotonic()) > 0:
                connection.settimeout(wait)
                dropped = connection.recv(min(left, 64 << 10))
                if not dropped:
                    break
                left -= len(dropped)

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's signature
        # The stdlib's own escapes control characters; so must this one, since a request
        # line is the sender's: raw, an escape sequence acts on the terminal of whoever
        # reads the log (a window title, colours, a cleared screen).
        if logger.isEnabledFor(logging.DEBUG):
            line = hide_secret_parameters(format % args)
            logger.debug("http %s: %s", self.address_string(), escaped(line))


# A query parameter whose name says it holds a secret (token=, access_token=, password=,
# api_key=, bearer=...), judged by its name decoded (t%6Fken= is token=, and so is
# token%3D). The query string is no way to give the token (refused, 401), but one who
# tries it left the real token in the access line at DEBUG (probes 115, 121).
_PARAMETER: Final = re.compile(r"([?&;])([^&;\s\"]*)")
_SECRET_NAME: Final = re.compile(r"token|auth|pass|secret|key|session|cred|bearer", re.IGNORECASE)


def _hidden_if_secret(parameter: re.Match[str]) -> str:
    separator, written = parameter.groups()
    name = urllib.parse.unquote_plus(written).partition("=")[0]
    if not _SECRET_NAME.search(name):
        return parameter.group(0)
    if "=" in written:  # its name as written, its value hidden
        return f"{separator}{written.partition('=')[0]}=(hidden)"
    return f"{separator}(hidden)"  # the = encoded too: where the name ends is not shown


def hide_secret_parameters(line: str) -> str:
    """``line`` with the value of each query parameter named like a secret as ``(hidden)``."""
    return _PARAMETER.sub(_hidden_if_secret, line)


def _version_refusal(words: list[bytes]) -> tuple[int, str] | None:
    """The status and why for a request line whose HTTP version is not served, else None.

    ``words``: the request line split. One of other lengths is the stdlib's to refuse.
    """
    if len(words) == 2:
        return 400, f"HTTP/0.9 requests are not served: {_SEND}"
    if len(words) < 3 or words[-1] in _VERSIONS:
        return None
    version = str(words[-1], "iso-8859-1")
    if _VERSION.fullmatch(version):
        return 505, f"HTTP version {version} is not served: {_SEND}"
    return 400, f"bad HTTP version {version!r}: {_SEND}"


class _HeadersTooLargeError(Exception):
    """A request's headers went past ``MAX_HEADER_BYTES`` or ``MAX_HEADER_LINES``: ``why``."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _HeaderBudget(io.BufferedIOBase):
    """The connection's reader as the stdlib reads headers from it, within the headers' limits.

    ``MAX_HEADER_BYTES`` and ``MAX_HEADER_LINES`` in all. It asks for no more than one
    byte past what is left, so the request is refused as soon as it is known to be over,
    however its lines are cut; a line past the last one allowed is not read at all.
    """

    def __init__(self, rfile: io.BufferedIOBase) -> None:
        super().__init__()
        self._rfile = rfile
        self._left = MAX_HEADER_BYTES
        self.lines: list[bytes] = []  # as read, for ``framing`` (the stdlib's parse hides some)

    def readline(self, size: int | None = -1, /) -> bytes:
        if len(self.lines) >= MAX_HEADER_LINES:
            raise _HeadersTooLargeError(_HEADER_LINES_WHY)
        most = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        line = self._rfile.readline(most)
        self._left -= len(line)
        if self._left < 0:
            raise _HeadersTooLargeError(_HEADERS_WHY)
        self.lines.append(line)
        return line


class _Server(ThreadingHTTPServer):
    """Tracks its connections so ``close`` can end idle ones, and does TLS per connection."""

    daemon_threads = False  # joined by server_close: no thread outlives the stop
    block_on_close = True
    # The listen backlog: socketserver's 5 dropped the SYNs of a burst of connections
    # (a dashboard's page and its assets, scrapers) and each waited for the client's
    # retransmit, a second: 64 at once took 8 s to connect. Room for the port's bound,
    # twice over, as they arrive faster than the accepting thread starts their threads.
    request_queue_size = 2 * MAX_CONNECTIONS

    dashboard: Dashboard  # set once bound, before serving: it is named after the port

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None) -> None:
        self._tls = tls
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            full = len(self._connections) >= MAX_CONNECTIONS
            if not full:
                self._connections.add(request)
        if full:
            self._turn_away(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:
            # No thread to be had (the executor's process limit, ``process_limit``): the
            # connection is closed unanswered (handle_error, shutdown_request), and the
            # thread that never started is not left for server_close to join.
            threads = vars(self).get("_threads")  # ThreadingMixIn's, made by the call above
            if threads is not None:
                threads.reap()
            raise

    def _turn_away(self, request: socket.socket) -> None:
        """A connection past ``MAX_CONNECTIONS``: a 503 (plaintext) or nothing (TLS), closed.

        Answered from the accepting thread, without waiting: a client that does not read
        loses the answer, not the port.
        """
        if self._tls is None:
            request.setblocking(False)
            with contextlib.suppress(OSError):
                asked = b""
                # Its request line, if it comes at once: /healthz is answered in JSON. Read
                # in any case, since a socket closed with data unread sends a reset.
                # poll, not select: past 1024 descriptors select() raises ValueError.
                poller = select.poll()
                poller.register(request, select.POLLIN)
                if poller.poll(TURN_AWAY_WAIT_S * 1000):
                    asked = request.recv(MAX_TARGET_SEEN)
                request.send(_turned_away(asked))
        super().shutdown_request(request)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self._tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(IDLE_TIMEOUT_S)
        # The TLS socket owns the connection from here (the raw one is detached): tracked
        # before its handshake, under the lock ``end_connections`` takes, so a stop shuts
        # down a handshake waiting for its peer too (it held the stop for the timeout).
        with self._connections_lock:
            try:
                wrapped = self._tls.wrap_socket(
                    request, server_side=True, do_handshake_on_connect=False
                )
            except (ssl.SSLError, OSError) as err:
                logger.info("http: TLS with %s failed: %s", client_address[0], err)
                return
            self._connections.discard(request)
            self._connections.add(wrapped)
        try:
            try:
                wrapped.do_handshake()
            except (ssl.SSLError, OSError) as err:
                logger.info("http: TLS handshake with %s failed: %s", client_address[0], err)
                return
            super().finish_request(wrapped, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(wrapped)
            wrapped.close()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver calls this inside its own except block: the exception is at hand.
        logger.debug(
            "http: connection from %s ended with an error", client_address, exc_info=sys.exc_info()
        )

    def end_connections(self) -> None:
        """Wake every connection's thread (one idle on keep-alive included) so it ends."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class SidePort:
    """The running HTTP side port: its thread, its server, the port it bound."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self.port: int = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="cbexec-http"
        )

    @classmethod
    def start(cls, settings: Settings, dashboard: Callable[[int], Dashboard]) -> SidePort:
        """Bind ``http_bind`` and serve in a thread; ConfigError when the address cannot be bound.

        ``dashboard`` makes the dashboard for the port bound (``http_bind`` may say 0).
        """
        host, _, port = settings.http_bind.rpartition(":")
        tls = security.tls_context(settings)
        try:
            server = _Server((host.strip("[]"), int(port)), tls)
        except OSError as err:
            raise ConfigError(
                f"http_bind: cannot listen on {settings.http_bind}: {err.strerror or err}"
            ) from err
        try:
            server.dashboard = dashboard(server.server_address[1])
        except BaseException:
            server.server_close()
            raise
        side = cls(server)
        side._thread.start()
        logger.info(
            "HTTP side port on %s:%d (%s): /metrics, /healthz, dashboard",
            host,
            side.port,
            "TLS" if tls else "plaintext",
        )
        return side

    def drain(self) -> None:
        """The start of a stop: the port stays open, answering 503 (``Dashboard.stop_answering``)."""
        self._server.dashboard.stop_answering()

    async def close(self) -> None:
        """Stop accepting, end every connection, join every thread (off the event loop)."""
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        self._server.shutdown()  # serve_forever returns
        self._server.end_connections()
        self._server.server_close()  # joins the connections' threads
        self._thread.join()


def _turned_away(asked: bytes) -> bytes:
    """The whole 503 for a connection past ``MAX_CONNECTIONS``, JSON if it asked for /healthz.

    ``asked``: what the client sent already (its request line, if it came that soon).
    """
    words = asked.split(b"\r\n", 1)[0].split()
    target = words[1].split(b"?", 1)[0].rstrip(b"/") if len(words) > 1 else b""
    if target == b"/healthz":  # JSON always, as a probe expects
        body = json.dumps({"status": "UNAVAILABLE", "why": _BUSY_WHY}).encode() + b"\n"
        kind = "application/json"
    else:
        body, kind = f"{_BUSY_WHY}\n".encode(), "text/plain; charset=utf-8"
    headers = [
        ("Content-Type", kind),
        ("Retry-After", "1"),
        ("Cache-Control", "no-store"),
        *SECURITY_HEADERS,
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
    ]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"HTTP/1.1 503 Service Unavailable\r\n{head}\r\n".encode() + body
