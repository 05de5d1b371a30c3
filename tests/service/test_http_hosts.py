"""The HTTP side port against DNS rebinding: without a token it answers only for its own names."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from pathlib import Path

import pytest

from tests.conftest import running_stack
from tests.service.test_http import TOKEN, http_settings

pytestmark = pytest.mark.service


def get_as(
    port: int, path: str, hosts: list[str], headers: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """GET ``path`` with these ``Host`` headers exactly (none, or two): status, type, body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.putrequest("GET", path, skip_host=True)
        for host in hosts:
            connection.putheader("Host", host)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        connection.close()


async def status_as(port: int, path: str, *hosts: str, **headers: str) -> int:
    return (await asyncio.to_thread(get_as, port, path, list(hosts), headers))[0]


async def test_without_a_token_a_name_the_port_is_not_reached_by_is_refused(
    tmp_path: Path,
) -> None:
    # A page on evil.test:PORT whose name is rebound to 127.0.0.1 read every run's output.
    async with running_stack(http_settings(tmp_path)) as web:
        port = web.running.http_port or 0
        for path in ("/runs", "/runs?part=rows", "/jobs", "/login", "/static/app.css", "/"):
            for host in (
                f"evil.test:{port}",
                "evil.test",
                "localhost.evil.test",
                "127.0.0.1.nip.io",
            ):
                status, _, body = await asyncio.to_thread(get_as, port, path, [host])
                assert status == 421, (path, host)
                assert "http_allowed_hosts" in body, (path, host)
        status, kind, body = await asyncio.to_thread(get_as, port, "/healthz", ["evil.test"])
        assert (status, kind) == (421, "application/json")
        assert json.loads(body)["status"] == "MISDIRECTED_REQUEST"
        assert "http_allowed_hosts" in json.loads(body)["why"]
        status, kind, body = await asyncio.to_thread(get_as, port, "/metrics", ["evil.test"])
        assert (status, kind) == (421, "text/plain; charset=utf-8")
        assert "cbexec_runs_total" not in body and "http_allowed_hosts" in body
        # Two Host headers are judged both: one of the port's own first does not let in.
        assert await status_as(port, "/runs", "localhost", "evil.test") == 421
        assert await status_as(port, "/runs", "evil.test", "localhost") == 421

        # The names and addresses it is reached by, with a port or without, in any case.
        own = [
            f"localhost:{port}",
            "LocalHost",
            "localhost.",
            f"127.0.0.1:{port}",
            f"[::1]:{port}",
            "[::1]",
            # An address cannot be rebound: whatever its value, it is no attacker's name.
            "192.0.2.7:8080",
            socket.gethostname(),
            f"{socket.gethostname().upper()}:{port}",
            socket.getfqdn(),
        ]
        for host in own:
            for path in ("/runs", "/healthz", "/metrics"):
                assert await status_as(port, path, host) == 200, (path, host)
        # No Host at all (an HTTP/1.0 probe): no browser, so no rebinding.
        assert await status_as(port, "/healthz") == 200


async def test_http_allowed_hosts_adds_the_names_a_site_reaches_the_port_by(
    tmp_path: Path,
) -> None:
    settings = http_settings(tmp_path, http_allowed_hosts="dash.studio.example, Render-Sup-1 ,")
    async with running_stack(settings) as web:
        port = web.running.http_port or 0
        for host in ("dash.studio.example", f"DASH.studio.example:{port}", "render-sup-1:9"):
            assert await status_as(port, "/runs", host) == 200, host
        for host in ("evil.test", "studio.example", "x.dash.studio.example"):
            assert await status_as(port, "/runs", host) == 421, host

    async with running_stack(http_settings(tmp_path / "2", http_allowed_hosts="*")) as web:
        port = web.running.http_port or 0
        assert await status_as(port, "/runs", "evil.test") == 200, "'*' turns the check off"


async def test_with_a_token_any_name_is_answered_to_the_token_holder_only(tmp_path: Path) -> None:
    # A rebound page has neither the token nor the session cookie (kept per host name):
    # the token refuses it, and the dashboard stays reachable by any DNS alias or proxy.
    async with running_stack(http_settings(tmp_path, auth_token=TOKEN)) as web:
        port = web.running.http_port or 0
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert await status_as(port, "/runs", "dashboard.studio.example", **bearer) == 200
        assert await status_as(port, "/runs", "evil.test") == 401
        assert await status_as(port, "/healthz", "evil.test") == 401


async def test_a_target_in_absolute_form_is_served_as_its_path_and_judged_by_its_authority(
    tmp_path: Path,
) -> None:
    # RFC 9112 3.2.2: the target's authority stands for the Host header, which is ignored.
    async with running_stack(http_settings(tmp_path)) as web:
        port = web.running.http_port or 0
        status, kind, body = await asyncio.to_thread(
            get_as, port, f"http://127.0.0.1:{port}/healthz", ["evil.test"]
        )
        assert (status, kind) == (200, "application/json"), body
        assert json.loads(body)["status"] == "SERVING"
        assert await status_as(port, f"HTTP://localhost:{port}/runs?part=rows") == 200
        assert await status_as(port, f"http://localhost:{port}") == 302  # "/": to the runs
        assert await status_as(port, f"http://localhost:{port}/no-such-page") == 404
        for target in (f"http://evil.test:{port}/runs", "http://evil.test/healthz"):
            assert await status_as(port, target, "localhost") == 421, target
        # No host in it (RFC 9110 4.2.1: invalid): it passed as a request without a Host.
        for target in ("http:///metrics", f"http://:{port}/runs", "http://user@/healthz"):
            assert await status_as(port, target, "evil.test") == 400, target
