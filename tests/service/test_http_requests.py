"""How the HTTP side port reads a request: its framing, its version, sign-in's way back, its log line.

Each on a real side port on loopback, with requests written byte by byte.
"""

from __future__ import annotations

import asyncio
import html
import http.client
import json
import logging
import socket
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from supervisor_client import ExecutorClient
from supervisor_client.credentials import MAX_TOKEN_CHARS
from tests.conftest import Stack, running_stack
from tests.helpers.waiting import eventually
from tests.service.test_http import TOKEN, http_settings, raw_exchange

pytestmark = pytest.mark.service

SMUGGLED = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
FORM_TYPE = "application/x-www-form-urlencoded"
CHUNKED = b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n"


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(http_settings(tmp_path)) as stack:
        yield stack


def whole_exchange(port: int, request: bytes) -> bytes:
    """Send ``request``, say that is all (half-close), and read every byte answered until closed.

    Every request the port read out of the bytes is answered in there, each with its
    status line.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = bytearray()
        while chunk := sock.recv(1 << 16):
            answer += chunk
    return bytes(answer)


def _post(headers: bytes, body: bytes, path: bytes = b"/logout") -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\nHost: localhost\r\n" + headers + b"\r\n" + body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # TE.CL: a front end reads one chunked request; the port read its chunk as a second.
        (
            _post(
                b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % CHUNKED.index(b"\r\n"),
                CHUNKED,
            ),
            "400",
        ),
        (
            _post(
                b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n" % CHUNKED.index(b"\r\n"),
                CHUNKED,
            ),
            "400",
        ),
        # CL.CL: the port took the first of two.
        (_post(b"Content-Length: 0\r\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED), "400"),
        # A name with whitespace before its colon: the stdlib ended the headers there.
        (_post(b"Content-Length : %d\r\n" % len(SMUGGLED), SMUGGLED), "400"),
        (_post(b"Content-Length\t: %d\r\n" % len(SMUGGLED), SMUGGLED), "400"),
        (_post(b"X-A: b\r\n Content-Length: %d\r\n" % len(SMUGGLED), SMUGGLED), "400"),
        (_post(b"Content-Length: %d, 0\r\n" % len(SMUGGLED), SMUGGLED), "400"),
        # A chunked body alone: its size line was read as the next request line.
        (_post(b"Transfer-Encoding: chunked\r\n", CHUNKED), "501"),
        (_post(b"Transfer-Encoding: Chunked\r\n", CHUNKED), "501"),
        (_post(b"Transfer-Encoding: gzip\r\n", SMUGGLED), "400"),
        (_post(b"Transfer-Encoding: chunked, gzip\r\n", SMUGGLED), "400"),
        # A bare CR: kept inside X's value here, a line end to a parser that ends lines at
        # CR (the Content-Length it read went unseen, the body read as a second request).
        (_post(b"X: a\rContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED), "400"),
        (_post(b"X: a\rTransfer-Encoding: chunked\r\n", CHUNKED), "400"),
        (b"GET /runs\rHTTP/1.1\r\nHost: localhost\r\n\r\n" + SMUGGLED, "400"),
        # A bare LF: a line end here (the body taken by its Content-Length), none to a
        # parser that ends lines at CRLF only (no Content-Length, a second request).
        (_post(b"X: a\nContent-Length: %d\r\n" % len(SMUGGLED), SMUGGLED), "400"),
        (b"GET /runs HTTP/1.1\nHost: localhost\n\n" + SMUGGLED, "400"),
    ],
    ids=[
        "te-cl",
        "cl-te",
        "cl-cl",
        "space-before-colon",
        "tab-before-colon",
        "obs-fold",
        "cl-list",
        "chunked",
        "chunked-capital",
        "te-not-chunked",
        "te-chunked-not-last",
        "bare-cr-cl",
        "bare-cr-te",
        "bare-cr-request-line",
        "bare-lf-cl",
        "lf-only",
    ],
)
async def test_a_request_whose_body_s_end_is_ambiguous_is_refused_and_nothing_read_after_it(
    web: Stack, request_bytes: bytes, status: str
) -> None:
    # The body was read as a second request and answered: /healthz's "SERVING".
    answer = await asyncio.to_thread(whole_exchange, web.running.http_port or 0, request_bytes)
    head = answer.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 %s " % status.encode()), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert b"SERVING" not in answer
    assert b"\r\nConnection: close\r\n" in head
    assert b"\r\nContent-Security-Policy: " in head and b"\r\nX-Frame-Options: DENY" in head


@pytest.mark.parametrize(
    ("request_bytes", "why"),
    [
        (
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX: a\rContent-Length: 0\r\n\r\n",
            "a bare CR in the request line or a header line",
        ),
        (b"GET /healthz HTTP/1.1\rX\r\n\r\n", "a bare CR in the request line or a header line"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: localhost\n\r\n",
            "a line of the request does not end in CRLF (a bare LF, or none)",
        ),
    ],
    ids=["header-line", "request-line", "bare-lf"],
)
async def test_a_bare_cr_or_lf_is_refused_saying_which(
    web: Stack, request_bytes: bytes, why: str
) -> None:
    line, headers, body = await asyncio.to_thread(
        raw_exchange, web.running.http_port or 0, request_bytes
    )
    assert line.startswith("HTTP/1.1 400 "), line
    assert headers["Content-Type"] == "application/json"  # /healthz's, always
    assert json.loads(body) == {"status": "BAD_REQUEST", "why": why}


async def test_identical_content_lengths_frame_the_body_as_one(web: Stack) -> None:
    request = _post(b"Content-Length: 7\r\nContent-Length: 7\r\n", b"token=x", b"/login")
    answer = await asyncio.to_thread(whole_exchange, web.running.http_port or 0, request)
    assert answer.startswith(b"HTTP/1.1 303 "), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1


@pytest.mark.parametrize("path", ["/healthz", "/runs", "/metrics", "/nosuch"])
@pytest.mark.parametrize(
    ("version", "status"),
    [("HTTP/0.9", "505"), ("HTTP/1.2", "505"), ("HTTP/3.0", "505"), ("HTTP/01.1", "400")],
)
async def test_a_version_other_than_http_1_0_and_1_1_is_refused_with_a_status_line_and_headers(
    web: Stack, path: str, version: str, status: str
) -> None:
    # HTTP/0.9 got the page with no status line and no headers (no CSP, no nosniff);
    # HTTP/1.2 and HTTP/01.1 were served as HTTP/1.1. Answered from the request line
    # alone: headers that never end are not waited for.
    request = f"GET {path} {version}\r\nHost: localhost\r\n".encode()
    line, headers, _ = await asyncio.to_thread(raw_exchange, web.running.http_port or 0, request)
    assert line.startswith(f"HTTP/1.1 {status} "), line
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert (headers["X-Frame-Options"], headers["X-Content-Type-Options"]) == ("DENY", "nosniff")
    assert headers["Connection"] == "close"
    for served in ("HTTP/1.0", "HTTP/1.1"):
        request = f"GET /healthz {served}\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
        line, _, _ = await asyncio.to_thread(raw_exchange, web.running.http_port or 0, request)
        assert line.startswith("HTTP/1.1 200 "), (served, line)


async def test_empty_lines_before_a_request_line_are_skipped(web: Stack) -> None:
    # RFC 9112 2.2: a server skips them (a client's CRLF after a body); the stdlib closed
    # the connection unanswered on one. Past eight, or with nothing after them: 400.
    port = web.running.http_port or 0
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    for empty in (b"\r\n", b"\r\n" * 8):
        line, _, _ = await asyncio.to_thread(raw_exchange, port, empty + request)
        assert line.startswith("HTTP/1.1 200 "), (empty, line)
    for refused in (b"\r\n" * 9 + request, b"\r\n \r\n"):
        line, headers, body = await asyncio.to_thread(raw_exchange, port, refused)
        assert line.startswith("HTTP/1.1 400 "), (refused, line)
        assert b"no request line" in body and headers["Connection"] == "close"


def _http(
    port: int, method: str, target: str, body: str | None = None, **headers: str
) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request(method, target, body, headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


# Ids the proto allows whose link percent-encodes a "?", "/", "%", "#" or "\".
ODD_IDS = ("t29?x=1", "t29/../x", "t29%2e%2e", "t29\\x", "t29#frag", "t29%3F")


async def test_signing_in_from_a_run_s_link_lands_on_that_run(tmp_path: Path) -> None:
    # ``next`` was the percent-decoded path written back undecoded: "%3F" came back "?",
    # "%2F" "/", "%25" "%", "%23" "#", and a decoded "\" sent the browser to /runs.
    async with running_stack(http_settings(tmp_path, auth_token=TOKEN)) as web:
        port = web.running.http_port or 0
        async with ExecutorClient(f"127.0.0.1:{web.running.port}", token=TOKEN) as client:
            for invocation_id in ODD_IDS:
                await client.execute_callback(
                    language="python", code="pass", job={"id": 29}, invocation_id=invocation_id
                )
        for invocation_id in ODD_IDS:
            link = "/runs/" + urllib.parse.quote(invocation_id, safe="")  # as run_link writes it
            for target in (link, link + "?stream=stdout"):
                status, headers, _ = await asyncio.to_thread(
                    _http, port, "GET", target, Accept="text/html"
                )
                assert status == 303, target
                login = urllib.parse.urlsplit(headers["Location"])
                assert login.path == "/login"
                wanted = dict(urllib.parse.parse_qsl(login.query))["next"]
                form = urllib.parse.urlencode({"token": TOKEN, "next": wanted})
                status, headers, _ = await asyncio.to_thread(
                    _http,
                    port,
                    "POST",
                    "/login",
                    form,
                    **{"Content-Type": FORM_TYPE},
                )
                assert (status, headers["Location"]) == (303, target), invocation_id
            cookie = headers["Set-Cookie"].split(";", 1)[0]
            status, _, page = await asyncio.to_thread(_http, port, "GET", link, Cookie=cookie)
            assert status == 200 and html.escape(invocation_id) in page, invocation_id


async def test_the_longest_token_signs_in_as_a_browser_sends_it(tmp_path: Path) -> None:
    # Probe 173: only the form's first 4096 bytes were read, and a browser writes each
    # '+' or '/' of a token as three: tokens the settings take were refused here.
    token = ("+/" * MAX_TOKEN_CHARS)[:MAX_TOKEN_CHARS]
    async with running_stack(http_settings(tmp_path, auth_token=token)) as web:
        port = web.running.http_port or 0
        form = urllib.parse.urlencode({"token": token, "next": "/runs"})
        assert len(form) > 3 * MAX_TOKEN_CHARS
        status, headers, _ = await asyncio.to_thread(
            _http, port, "POST", "/login", form, **{"Content-Type": FORM_TYPE}
        )
        assert (status, headers["Location"]) == (303, "/runs")
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        status, _, _ = await asyncio.to_thread(_http, port, "GET", "/runs", Cookie=cookie)
        assert status == 200


async def test_sign_in_s_way_back_stays_on_this_server(tmp_path: Path) -> None:
    # Targets as sent (not as a browser would write them): none leads off this server.
    async with running_stack(http_settings(tmp_path, auth_token=TOKEN)) as web:
        port = web.running.http_port or 0
        followed = 0
        for target in (
            "//evil.example/runs",
            "/\\evil.example",
            "http://evil.example/runs",
            "/runs\x1b",
            "/%2F%2Fevil.example",
            "/%5Cevil.example",
        ):
            request = f"GET {target} HTTP/1.1\r\nAccept: text/html\r\nConnection: close\r\n\r\n"
            line, headers, _ = await asyncio.to_thread(raw_exchange, port, request.encode())
            if not line.startswith("HTTP/1.1 303 "):
                continue  # refused outright: no way back to follow
            wanted = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(headers["Location"]).query))
            form = urllib.parse.urlencode({"token": TOKEN, "next": wanted["next"]})
            status, answered, _ = await asyncio.to_thread(
                _http,
                port,
                "POST",
                "/login",
                form,
                **{"Content-Type": "application/x-www-form-urlencoded"},
            )
            back = urllib.parse.urlsplit(
                urllib.parse.urljoin("http://127.0.0.1:1/x", answered["Location"])
            )
            assert status == 303 and back.netloc == "127.0.0.1:1", (target, answered["Location"])
            # What a browser would read as another host (urljoin does not: "/\\host").
            assert not answered["Location"].startswith("//") and "\\" not in answered["Location"]
            followed += 1
        assert followed >= 4


async def test_request_lines_are_logged_with_control_characters_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # At DEBUG the request line went to the log raw: an escape sequence a reader's
    # terminal obeyed (a window title, colours, a cleared screen).
    caplog.set_level(logging.DEBUG, logger="executor.web.server")
    async with running_stack(http_settings(tmp_path, auth_token=TOKEN)) as web:
        port = web.running.http_port or 0
        for request in (
            b"GET /runs/\x1b]0;PWNED\x07\x1b[31mRED HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /healthz HTTP/1.1\x1b[2J\r\n\r\n",
        ):
            await asyncio.to_thread(raw_exchange, port, request)

        def logged() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "executor.web.server"]

        await eventually(lambda: sum("PWNED" in m or "[2J" in m for m in logged()) >= 2)
        lines = [m for m in logged() if "PWNED" in m or "[2J" in m]
        assert not any(c in m for m in lines for c in "\x1b\x07"), lines
        assert any("\\x1b]0;PWNED\\x07\\x1b[31mRED" in m for m in lines), lines
