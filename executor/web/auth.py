"""Who may read the HTTP side port: the gRPC port's token, as a bearer header or a signed-in session.

With ``auth_token`` set, every path but the login form and the static files needs
``Authorization: Bearer <token>`` (a scraper, curl) or the session cookie the login
form sets (a browser). ``http_exempt_metrics`` opens ``/metrics`` and ``/healthz`` to
anyone who can reach the port, for scrapers and load balancers that cannot send a
token. Without a token everything is open, as the gRPC port is.

Sessions live in memory (a restart signs everyone out) under a random id, in an
HttpOnly, SameSite=Strict cookie (Secure under TLS); the token itself never goes into
a cookie. The cookie's name carries the side port's number (``cbexec_session_50052``),
because browsers keep cookies per host, not per port: under one name, signing in to
a second executor on the host replaced the first one's session. Under TLS the name
starts with ``__Host-``: a browser takes such a cookie only from an HTTPS answer, with
Path=/ and no Domain (as this one is set), so no plaintext page and no other host of the
domain can set one of that name. Comparisons are constant-time, and a wrong token (in
the sign-in form or an ``Authorization`` header) costs half a second in its connection's
thread: with ``server.MAX_CONNECTIONS`` (64), 128 guesses a second at most, as on the
gRPC port (``api.interceptors.WrongTokenTurns``). The wait is in the HTTP threads, never
the event loop, and the right token never waits.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Final

COOKIE_PREFIX: Final = "cbexec_session"
SESSION_TTL_S: Final = 12 * 3600.0
MAX_SESSIONS: Final = 1000
WRONG_TOKEN_DELAY_S: Final = 0.5
# Open whatever the settings say: the login form and what it needs to look right.
OPEN_PATHS: Final = ("/login", "/static/")
PROBE_PATHS: Final = ("/metrics", "/healthz")
MORE_THAN_ONE: Final = (
    "this executor requires one 'Authorization: Bearer <token>' header; "
    "the request carried more than one"
)


class Access:
    """Decides whether a request may read a path, and keeps the signed-in sessions."""

    def __init__(
        self,
        token: str,
        *,
        port: int = 0,
        exempt_probes: bool = False,
        secure_cookie: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._expected = token.strip().encode()  # as gRPC's check and clients take it
        self._exempt_probes = exempt_probes
        self._secure = secure_cookie
        # The side port's number: one cookie per executor on a host (see above).
        self.cookie_name: Final = f"{'__Host-' if secure_cookie else ''}{COOKIE_PREFIX}_{port}"
        self._clock = clock
        self._sessions: dict[str, float] = {}  # id -> expiry
        self._lock = threading.Lock()  # handler threads sign in and out concurrently

    @property
    def required(self) -> bool:
        """Whether a token is needed at all."""
        return bool(self._expected)

    def token_matches(self, given: str) -> bool:
        """Constant time: the comparison does not say how much of a guess was right."""
        return bool(self._expected) and hmac.compare_digest(given.strip().encode(), self._expected)

    def allowed(
        self, path: str, headers: Mapping[str, str], *, repeated: Collection[str] = ()
    ) -> bool:
        """Whether a request for ``path`` with these (lower-cased) headers may be answered.

        ``repeated`` names the headers sent more than once: two ``Authorization`` headers
        are refused whatever they hold (as the gRPC port refuses two entries), since
        judging one would depend on their order, which a proxy may change.
        """
        if not self.required or path.startswith(OPEN_PATHS):
            return True
        if self._exempt_probes and path in PROBE_PATHS:
            return True
        if "authorization" in repeated:
            return False
        scheme, _, given = headers.get("authorization", "").partition(" ")
        bearer = scheme.lower() == "bearer"
        if bearer and self.token_matches(given.strip()):
            return True
        if self.session_of(headers) is not None:
            return True
        if bearer:  # a wrong token costs as much here as in the sign-in form
            self._wrong_token_delay()
        return False

    def refusal(self, headers: Mapping[str, str], *, repeated: Collection[str] = ()) -> str:
        """Why a request ``allowed`` refused was refused, for the caller (never the token)."""
        if "authorization" in repeated:
            return MORE_THAN_ONE
        scheme, _, _ = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            return "the bearer token does not match this executor's token"
        return "this executor requires 'Authorization: Bearer <token>'"

    def session_of(self, headers: Mapping[str, str]) -> str | None:
        """The signed-in session the request's cookie names, if it is valid."""
        try:
            cookie = SimpleCookie(headers.get("cookie", ""))
        except CookieError:
            return None
        morsel = cookie.get(self.cookie_name)
        if morsel is None:
            return None
        with self._lock:
            expiry = self._sessions.get(morsel.value)
            if expiry is None or expiry < self._clock():
                self._sessions.pop(morsel.value, None)
                return None
        return morsel.value

    def sign_in(self, given: str) -> str | None:
        """A Set-Cookie value for a new session when ``given`` is the token, else None."""
        if not self.token_matches(given):
            self._wrong_token_delay()
            return None
        session = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            for stale in [s for s, expiry in self._sessions.items() if expiry < now]:
                del self._sessions[stale]
            if len(self._sessions) >= MAX_SESSIONS:  # drop the one closest to its end
                del self._sessions[min(self._sessions, key=self._sessions.__getitem__)]
            self._sessions[session] = now + SESSION_TTL_S
        return self._cookie(session, int(SESSION_TTL_S))

    def sign_out(self, headers: Mapping[str, str]) -> str:
        """End the request's session; the Set-Cookie value that clears it."""
        session = self.session_of(headers)
        if session is not None:
            with self._lock:
                self._sessions.pop(session, None)
        return self._cookie("", 0)

    @staticmethod
    def _wrong_token_delay() -> None:
        """Wait ``WRONG_TOKEN_DELAY_S`` in the connection's own thread.

        Per connection: one lock for the whole port made every wrong token wait behind the
        others, so a scraper left with an old token queued up threads without end and held
        the side port's connections from everyone else (probe 62, 65); the port's
        connection bound (``server.MAX_CONNECTIONS``) bounds the guesses instead.
        """
        time.sleep(WRONG_TOKEN_DELAY_S)

    def _cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self._secure else ""
        return f"{self.cookie_name}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict{secure}"
