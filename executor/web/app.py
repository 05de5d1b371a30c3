"""The HTTP side port's routes: /metrics, /healthz, the dashboard's pages, sign-in, static files.

A request comes in as a ``Request`` and leaves as a ``Response`` (``server.py`` does
the sockets), so every route is a plain function of what the ``Source`` answers and can
be tested without a socket. Pages carry a Content-Security-Policy that allows scripts
from this origin only: even markup that slipped through the escaping could run no
script of its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import string
import threading
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from executor.web import runs_pages
from executor.web.auth import Access
from executor.web.explain import Explainer, explain_from_latches
from executor.web.host_check import MISDIRECTED, HostCheck
from executor.web.html import Html, tag
from executor.web.jobs_pages import JobsQuery, jobs_body, jobs_page
from executor.web.layout import notice, page
from executor.web.source import RunNotFound, SourceRefused, SourceUnavailable
from executor.web.status_pages import health_body, health_page, universal_page
from executor.web.stream_gate import StreamGate

logger = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).parent / "static"
STATIC_TYPES: Final = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
HTML_TYPE: Final = "text/html; charset=utf-8"
TEXT_TYPE: Final = "text/plain; charset=utf-8"
DEFAULT_PAGE: Final = "/runs"
# A stream refused for want of a slot (StreamGate): when to ask again, in seconds.
RETRY_STREAM_S: Final = "5"
# What a 401 asks for (RFC 6750).
_CHALLENGE: Final = (("WWW-Authenticate", 'Bearer realm="cbexec"'),)
STOPPING: Final = "the executor is stopping"
_NO_STORE: Final = (("Cache-Control", "no-store"),)
# What a sign-in's ``next`` keeps as is (a "%" included: it is already encoded).
_PRINTABLE_ASCII: Final = "".join(c for c in string.printable if not c.isspace())
SECURITY_HEADERS: Final = (
    (
        "Content-Security-Policy",
        (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        ),
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


@dataclass(frozen=True, slots=True)
class Request:
    """What the handler read: method, path, query, headers (lower-cased names), body.

    ``repeated`` names the headers that came more than once (``headers`` keeps the last):
    an access check must not judge one of two ``Authorization`` headers. ``target`` is
    the request line's target as sent, still percent-encoded: the way back after signing
    in (``path`` decoded has lost which "?", "/", "%" or "#" was part of a run's id).
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    repeated: frozenset[str] = frozenset()
    target: str = ""

    @classmethod
    def parse(
        cls,
        method: str,
        target: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        body: bytes = b"",
    ) -> Request:
        """From the request line's target (path and query) and the headers, as sent.

        A target in absolute form (``http://host:port/path``, what a client that takes
        this port for a proxy sends) is served as its path, and its authority stands for
        the ``Host`` header, which is ignored (RFC 9112 3.2.2): the Host check judges it.
        """
        authority = None
        with contextlib.suppress(ValueError):  # the handler answers such a target 400 first
            found = absolute_form(target)
            if found is not None:
                authority, target = found
        path, _, query = target.partition("?")
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        named: dict[str, str] = {}
        repeated: set[str] = set()
        for name, value in pairs:
            if name.lower() in named:
                repeated.add(name.lower())
            named[name.lower()] = value
        if authority is not None:
            named["host"] = authority
            repeated.discard("host")
        return cls(
            method,
            unquote(path) or "/",
            dict(parse_qsl(query)),
            named,
            body,
            frozenset(repeated),
            target,
        )


def absolute_form(target: str) -> tuple[str, str] | None:
    """(authority, target in origin form) of a request target in absolute form, else None.

    ``http://host:8080/runs?x`` is ("host:8080", "/runs?x"); ``http://host`` is ("host",
    "/"). Raises ValueError for one with no host (RFC 9110 4.2.1: such a URI is invalid),
    which would otherwise pass the Host check as a request without a Host.
    """
    scheme, separator, rest = target.partition("://")
    if not separator or scheme.lower() not in ("http", "https"):
        return None
    ends = [at for at in (rest.find("/"), rest.find("?")) if at >= 0]
    end = min(ends, default=len(rest))
    authority, origin = rest[:end], rest[end:]
    if not _host_part(authority):
        raise ValueError("a target in absolute form must name a host (RFC 9110 4.2.1)")
    return authority, origin if origin.startswith("/") else "/" + origin


def _host_part(authority: str) -> str:
    """The host of an authority (``user@host:port``, ``[v6]:port``), empty if it has none."""
    host = authority.rpartition("@")[2]
    if host.startswith("["):
        return host.partition("]")[0][1:]
    return host.partition(":")[0]


@dataclass(frozen=True, slots=True)
class Response:
    """Status, body, content type and any further headers."""

    status: int
    body: bytes = b""
    content_type: str = HTML_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    # Called once the body is sent, or its sending failed (a stream's slot: StreamGate).
    sent: Callable[[], None] | None = None


class Dashboard:
    """Routes requests to pages over ``source`` (an ``ExecutorSource`` or a test's own)."""

    def __init__(
        self,
        source: Any,
        registry: CollectorRegistry,
        access: Access,
        *,
        explain: Explainer = explain_from_latches,
        streams: StreamGate | None = None,
        hosts: HostCheck | None = None,
    ) -> None:
        self._source = source
        self._hosts = hosts or HostCheck.anything()
        self._streams = streams or StreamGate()
        self._registry = registry
        # Set at the start of a stop: the port stays open, to say so (see stop_answering).
        self._stopping = threading.Event()
        self._access = access
        self._explain = explain
        self._static = {
            path.name: (path.read_bytes(), STATIC_TYPES[path.suffix])
            for path in STATIC_DIR.iterdir()
            if path.suffix in STATIC_TYPES
        }
        self._pages: dict[str, Callable[[Request], Response]] = {
            "/runs": self._runs,
            "/jobs": self._jobs,
            "/universal": lambda r: self._page("Universal callbacks", r, universal_page),
            "/health": self._health,
        }

    def stop_answering(self) -> None:
        """From now on /healthz is 503 NOT_SERVING and every other page 503, without asking.

        The executor is stopping: a load balancer's probe must see it draining, not a
        port that went away as if it had crashed; the pages ask nothing of parts that are
        shutting down.
        """
        self._stopping.set()

    def handle(self, request: Request) -> Response:
        """The response to one request; never raises."""
        try:
            response = self._route(request)
        except SourceUnavailable as err:
            response = self._error(503, "No answer in time", str(err), request)
        except SourceRefused as err:
            response = self._error(400, "Bad request", str(err), request)
        except Exception:
            incident = uuid.uuid4().hex[:12]
            logger.exception(
                "dashboard: %s %s failed (incident %s)", request.method, request.path, incident
            )
            response = self._error(500, "Internal error", f"incident {incident}", request)
        return _secured(response)

    def request_done(self) -> None:
        """The request's answer has been sent (or its sending failed): its memory is let go of."""
        done = getattr(self._source, "request_done", None)  # a test's own source may lack it
        if done is not None:
            done()

    def unreadable(self, status: int, why: str, target: str) -> Response:
        """The answer to a request the HTTP layer refused before routing it.

        An unknown method, a request line or headers too long, a bad HTTP version:
        Python's own answer was an HTML page without the security headers, on /healthz
        too. Here /healthz answers JSON (as always), /metrics text (as its 401), any
        other path the dashboard's error page; all with the security headers.
        ``target`` is the request line's target, as much of it as was read.
        """
        path = unquote(target.partition("?")[0]).rstrip("/") or "/"
        return _secured(self._refused(status, why, Request("GET", path)))

    def _refused(
        self, status: int, why: str, request: Request, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        """A request refused, in its path's kind: JSON on /healthz, text on /metrics, else a page."""
        path = request.path.rstrip("/") or "/"
        if path == "/healthz":
            return _json(status, {"status": HTTPStatus(status).name, "why": why}, headers)
        if path == "/metrics":
            return Response(status, f"{why}\n".encode(), TEXT_TYPE, (*headers, *_NO_STORE))
        refused = self._error(status, HTTPStatus(status).phrase, why, request)
        return Response(status, refused.body, refused.content_type, (*headers, *refused.headers))

    def _route(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        if not self._hosts.allows(request.headers.get("host"), repeated="host" in request.repeated):
            return self._misdirected(path, request)
        if not self._access.allowed(path, request.headers, repeated=request.repeated):
            return self._refuse(request)
        if self._stopping.is_set():
            return self._stopped(path, request)
        if path == "/login":
            return self._login(request)
        if request.method == "POST" and path == "/logout":
            cookie = self._access.sign_out(request.headers)
            return Response(303, headers=(("Location", "/login"), ("Set-Cookie", cookie)))
        if request.method != "GET":  # a POST (login and logout are above)
            why = f"Method not allowed ('{request.method}'): this page answers GET and HEAD only"
            return self._refused(405, why, request, (("Allow", "GET, HEAD"),))
        if path.startswith("/static/"):
            found = self._static.get(path.removeprefix("/static/"))
            if found is None:
                return Response(404, b"not found\n", "text/plain")
            return Response(200, found[0], found[1], (("Cache-Control", "max-age=300"),))
        if path == "/":
            return Response(302, headers=(("Location", "/runs"),))
        if path == "/metrics":
            return self._metrics(request)
        if path == "/healthz":
            return self._healthz()
        if path.startswith("/runs/"):
            return self._run(request, path.removeprefix("/runs/"))
        if path == "/run":  # for the ids "." and "..", which no browser sends in a path
            return self._run(request, request.query.get("id", ""))
        route = self._pages.get(path)
        if route is None:
            return self._error(404, "Not found", f"There is no page {path}.", request)
        return route(request)

    def _misdirected(self, path: str, request: Request) -> Response:
        """421 for a ``Host`` this port does not answer for (``host_check``), in each path's kind."""
        why = f"{_shown_host(request)}: {MISDIRECTED}"
        if path == "/healthz":  # JSON always, as a probe expects
            return _json(421, {"status": "MISDIRECTED_REQUEST", "why": why})
        if path == "/metrics":
            return Response(421, f"{why}\n".encode(), TEXT_TYPE)
        return self._error(421, "Misdirected request", why, request)

    # -- probes ---------------------------------------------------------------------------

    def _stopped(self, path: str, request: Request) -> Response:
        if path == "/healthz":
            return _json(503, {"status": "NOT_SERVING", "why": STOPPING})
        return self._error(503, "The executor is stopping", "The executor is stopping.", request)

    def _metrics(self, request: Request) -> Response:
        self._source.refresh_metrics()
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(200, encoder(self._registry), content_type)

    def _healthz(self) -> Response:
        """The health service's status as JSON: 200 while SERVING, else 503 (a probe reads either).

        While the event loop is held a moment, the last status known (at most the
        source's timeout old) answers at once. An executor that does not answer in time
        is UNKNOWN, with why; one that stopped meanwhile (a stop began after this request
        was let in) is NOT_SERVING, as from the stop's first moment. Always JSON, as a
        load balancer's probe expects, never the 503 page.
        """
        try:
            # The last known while the loop is held a moment (``ExecutorSource.health_now``).
            health = self._source.health_now()
        except SourceUnavailable as err:
            if self._stopping.is_set():
                return _json(503, {"status": "NOT_SERVING", "why": STOPPING})
            return _json(503, {"status": "UNKNOWN", "why": str(err)})
        answer = {
            "status": health.status,
            "storage_problem": health.storage_problem,
            "slots_problem": health.slots_problem,
        }
        return _json(200 if health.status == "SERVING" else 503, answer)

    # -- pages --------------------------------------------------------------------------

    def _page(self, title: str, request: Request, render: Callable[[Any], Html]) -> Response:
        body = page(
            title,
            render(self._source),
            active=request.path,
            signed_in=self._access.session_of(request.headers) is not None,
        )
        return _html(200, body)

    def _runs(self, request: Request) -> Response:
        filters, problem = runs_pages.RunFilters.parse(request.query, runs_pages.now())
        if request.query.get("part") == "rows":
            return _html(200, runs_pages.runs_rows(self._source, filters))
        return self._page("Runs", request, lambda s: runs_pages.runs_page(s, filters, problem))

    def _run(self, request: Request, invocation_id: str) -> Response:
        stream = request.query.get("stream")
        if stream is not None:
            return self._stream(request, invocation_id, stream)
        run, why = self._run_record(invocation_id)
        if run is None:
            return self._error(404, "No such run", why, request)
        return self._page(f"Run {invocation_id[:8]}", request, lambda _: runs_pages.run_page(run))

    def _run_record(self, invocation_id: str) -> tuple[Any | None, str]:
        """The run's record, else None and why: the executor's words (in progress, pruned)."""
        try:
            run = self._source.get_run(invocation_id)
        except RunNotFound as err:
            return None, str(err)
        return run, f"No run {invocation_id!r} in the history."

    def _stream(self, request: Request, invocation_id: str, stream: str) -> Response:
        """A whole output stream as text, in one of the port's few stream slots (StreamGate)."""
        if stream not in runs_pages.STREAMS:
            raise SourceRefused(f"stream {stream!r} is not one of {', '.join(runs_pages.STREAMS)}")
        if not self._streams.enter():
            busy = (
                f"{self._streams.at_once} whole output streams are being sent already (the"
                f" most at once); try again in a few seconds\n"
            )
            retry = (("Retry-After", RETRY_STREAM_S), ("Cache-Control", "no-store"))
            return Response(503, busy.encode(), TEXT_TYPE, retry)
        try:
            run, why = self._run_record(invocation_id)
            if run is None:
                self._streams.leave()
                return self._error(404, "No such run", why, request)
            # Text, never HTML (nosniff is on every response): output shows as written.
            text = runs_pages.stream_text(run, stream).encode()
        except BaseException:
            self._streams.leave()
            raise
        headers = (("Cache-Control", "no-store"),)
        return Response(200, text, TEXT_TYPE, headers, sent=self._streams.leave)

    def _jobs(self, request: Request) -> Response:
        query, problem = JobsQuery.parse(request.query)
        if request.query.get("part") == "body":
            return _html(200, jobs_body(self._source, query, self._explain))
        return self._page(
            "Jobs & callbacks", request, lambda s: jobs_page(s, query, self._explain, problem)
        )

    def _health(self, request: Request) -> Response:
        if request.query.get("part") == "body":
            return _html(200, health_body(self._source))
        return self._page("Health", request, health_page)

    # -- signing in -----------------------------------------------------------------------

    def _refuse(self, request: Request) -> Response:
        path = request.path.rstrip("/") or "/"
        why = self._access.refusal(request.headers, repeated=request.repeated)
        if path == "/healthz":  # JSON always, as a probe expects
            return _json(401, {"status": "UNAUTHENTICATED", "why": why}, _CHALLENGE)
        if path == "/metrics":
            return Response(401, f"{why}\n".encode(), "text/plain", _CHALLENGE)
        if "authorization" in request.repeated:
            # Signing in would not help: whatever sent two headers sends them again.
            refused = self._error(401, "Unauthorized", f"Refused: {why}.", request)
            return Response(401, refused.body, refused.content_type, refused.headers + _CHALLENGE)
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            # The target as sent: decoded, a run id's "%3F" would come back as a "?".
            target = quote(_safe_next(request.target), safe="/")
            return Response(303, headers=(("Location", f"/login?next={target}"),))
        return Response(401, f"{why}\n".encode(), "text/plain", _CHALLENGE)

    def _login(self, request: Request) -> Response:
        wanted = _safe_next(request.query.get("next", DEFAULT_PAGE))
        form: dict[str, str] = {}
        if request.method == "POST":
            # Whole (the port takes 64 KiB a body): a token of MAX_TOKEN_CHARS characters
            # a browser percent-encodes is three times that many bytes.
            form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
            wanted = _safe_next(form.get("next", DEFAULT_PAGE))
        if not self._access.required:  # nothing to sign in to: every page is open
            return Response(
                303 if request.method == "POST" else 302, headers=(("Location", wanted),)
            )
        if request.method == "POST":
            cookie = self._access.sign_in(form.get("token", ""))
            if cookie is not None:
                return Response(303, headers=(("Location", wanted), ("Set-Cookie", cookie)))
            return _html(401, _login_page(wanted, "That is not this executor's token."))
        return _html(200, _login_page(wanted, ""))

    def _error(self, status: int, title: str, text: str, request: Request) -> Response:
        if request.query.get("part"):  # a live region: keep what it shows, say why below
            return _html(status, notice(text, "error"))
        return _html(status, page(title, notice(text, "error")))


def _secured(response: Response) -> Response:
    """With the security headers, and no-store unless it says otherwise (a static file).

    /metrics and /healthz included: an answer that needed the token is not for a cache.
    """
    cached = any(name == "Cache-Control" for name, _ in response.headers)
    return Response(
        response.status,
        response.body,
        response.content_type,
        (*response.headers, *SECURITY_HEADERS, *(() if cached else _NO_STORE)),
        response.sent,
    )


def _html(status: int, body: Html) -> Response:
    return Response(status, body.encode(), HTML_TYPE, _NO_STORE)


def _json(
    status: int, answer: Mapping[str, str], headers: tuple[tuple[str, str], ...] = ()
) -> Response:
    """A /healthz answer: one JSON object and a newline."""
    return Response(status, json.dumps(answer).encode() + b"\n", "application/json", headers)


def _shown_host(request: Request) -> str:
    if "host" in request.repeated:
        return "more than one Host header"
    return f"Host {request.headers.get('host', '')!r}"


def _safe_next(target: str) -> str:
    r"""Where to go after signing in: a path of this server, else the runs page.

    It goes into a Location header, so nothing a header cannot carry as is (CR/LF would
    add headers of the sender's choosing), and nothing a browser reads as another host:
    not ``//host``, and no backslash or whitespace, which browsers turn into or drop
    from ``//host`` (``/\host``, ``/<TAB>/host``). Non-ASCII characters are
    percent-encoded (UTF-8), as a browser sends them.
    """
    if (
        not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(char.isspace() or unicodedata.category(char) == "Cc" for char in target)
    ):
        return DEFAULT_PAGE
    return quote(target, safe=_PRINTABLE_ASCII)


def _login_page(wanted: str, problem: str) -> Html:
    form = tag(
        "form",
        tag(
            "label",
            "Token",
            tag(
                "input",
                type="password",
                name="token",
                autofocus=True,
                autocomplete="current-password",
            ),
        ),
        tag("input", type="hidden", name="next", value=wanted),
        tag("button", "Sign in", type="submit"),
        method="post",
        action="/login",
        class_="login",
    )
    hint = tag(
        "p",
        "The executor's auth_token (the one gRPC clients send). Scripts can send "
        "'Authorization: Bearer <token>' instead.",
        class_="hint",
    )
    body = Html(notice(problem, "error") + form + hint) if problem else Html(form + hint)
    return page("Sign in", body)
