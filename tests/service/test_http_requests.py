"""How the HTTP side port reads a request: sign-in's way back.

Each on a real side port on loopback, with requests written byte by byte.
"""

from __future__ import annotations

import asyncio
import html
import http.client
import urllib.parse
from pathlib import Path

import pytest

from supervisor_client import ExecutorClient
from tests.conftest import running_stack
from tests.service.test_http import TOKEN, http_settings, raw_exchange

pytestmark = pytest.mark.service


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
                    **{"Content-Type": "application/x-www-form-urlencoded"},
                )
                assert (status, headers["Location"]) == (303, target), invocation_id
            cookie = headers["Set-Cookie"].split(";", 1)[0]
            status, _, page = await asyncio.to_thread(_http, port, "GET", link, Cookie=cookie)
            assert status == 200 and html.escape(invocation_id) in page, invocation_id


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
