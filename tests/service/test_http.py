"""The HTTP side port on loopback: /metrics for a real scraper, /healthz, the token, TLS, a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from executor import server
from executor.config import Settings
from executor.errors import ConfigError
from executor.web.server import (
    IDLE_TIMEOUT_S,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MAX_HEADER_LINES,
)
from executor.web.stream_gate import MAX_STREAMS_AT_ONCE, STREAM_WAIT_S
from supervisor_client import ExecutorClient
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.waiting import eventually
from tests.service.test_runs import FAIL, run_py
from tests.service.test_security import Pki, _make_pki

pytestmark = pytest.mark.service

TOKEN = "dashboard-token"


def http_settings(tmp_path: Path, **overrides: object) -> Settings:
    return stack_settings(tmp_path / "data", http_bind="127.0.0.1:0", **overrides)


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(http_settings(tmp_path)) as stack:
        yield stack


def url(stack: Stack, path: str, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{stack.running.http_port}{path}"


async def fetch(
    target: str,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], str]:
    """GET (or POST ``data``) in a thread: the executor's pages need this event loop free."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    def call() -> tuple[int, dict[str, str], str]:
        opener = urllib.request.build_opener(
            NoRedirect(), urllib.request.HTTPSHandler(context=context)
        )
        # http(s) to the executor under test, never a file: or another scheme.
        request = urllib.request.Request(target, data=data, headers=headers or {})  # noqa: S310
        try:
            with opener.open(request, timeout=15) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode()

    return await asyncio.to_thread(call)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A scrape parsed by prometheus_client's own parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_scraped_by_prometheus_parser_move_with_real_runs(web: Stack) -> None:
    status, headers, before = await fetch(url(web, "/metrics"))
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    succeeded = (
        "cbexec_runs_total",
        (("language", "python"), ("outcome", "SUCCEEDED"), ("source", "execute")),
    )
    failed = (
        "cbexec_runs_total",
        (("language", "python"), ("outcome", "FAILED"), ("source", "execute")),
    )
    assert samples(before).get(succeeded, 0) == 0

    await run_py(web, "print('a')", 1)
    await run_py(web, "print('b')", 1)
    await run_py(web, FAIL, 1)

    _, _, after = await fetch(url(web, "/metrics"))
    scraped = samples(after)
    assert scraped[succeeded] == 2 and scraped[failed] == 1
    count = ("cbexec_run_duration_seconds_count", (("language", "python"),))
    infinite = ("cbexec_run_duration_seconds_bucket", (("language", "python"), ("le", "+Inf")))
    assert scraped[count] == scraped[infinite] == 3
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in scraped.items()
        if name == "cbexec_run_duration_seconds_bucket" and ("language", "python") in labels
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), "cumulative buckets"
    assert scraped[("cbexec_slots", ())] == 4
    assert scraped[("cbexec_zygote_up", (("language", "python"),))] == 1
    metrics = await web.client.get_metrics()
    assert dict(metrics.runs_by_outcome) == {"SUCCEEDED": 2, "FAILED": 1}, "GetMetrics agrees"

    _, headers, open_metrics = await fetch(
        url(web, "/metrics"), headers={"Accept": "application/openmetrics-text"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert open_metrics.rstrip().endswith("# EOF")


async def test_healthz_and_pages_answer(web: Stack) -> None:
    status, _, body = await fetch(url(web, "/healthz"))
    assert (status, body.strip()) == (
        200,
        '{"status": "SERVING", "storage_problem": "", "slots_problem": ""}',
    )
    bad = await run_py(web, "print('<script>document.title=\"pwned\"</script>')", 3)
    for path in ("/runs", "/jobs", "/universal", "/health", f"/runs/{bad.invocation_id}"):
        status, headers, page = await fetch(url(web, path))
        assert status == 200, path
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "<script>document" not in page, path
    _, _, page = await fetch(url(web, f"/runs/{bad.invocation_id}"))
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in page
    status, _, _ = await fetch(url(web, "/runs/no-such-run"))
    assert status == 404
    status, headers, _ = await fetch(url(web, "/"))
    assert (status, headers["Location"]) == (302, "/runs")


async def test_the_run_page_shows_a_run_whose_result_is_over_4_mib(web: Stack) -> None:
    # gRPC's default receive limit is 4 MiB: the dashboard's own client must take more.
    code = "import sys\nsys.stdout.write('x' * (5 << 20) + 'the end')"
    async with ExecutorClient(web.address) as client:  # the suite's channel keeps 4 MiB
        response = await client.execute_callback(
            language="python",
            code=code,
            job={"id": 1, "user": "root"},
            limits={"output_bytes": 8 << 20},
        )
    assert len(response.stdout) > 5 << 20

    status, _, page = await fetch(url(web, f"/runs/{response.invocation_id}"))

    assert status == 200, page[:500]
    assert "the end" in page
    # Its two ends, not 5 MiB of HTML: a browser parsing 34 MB stalled past the idle timeout.
    assert len(page) < 1 << 20 and "bytes not shown" in page
    status, headers, whole = await fetch(url(web, f"/runs/{response.invocation_id}?stream=stdout"))
    assert (status, headers["Content-Type"]) == (200, "text/plain; charset=utf-8")
    assert whole == response.stdout


async def test_token_bearer_login_and_exempt_probes(tmp_path: Path) -> None:
    async with running_stack(http_settings(tmp_path, auth_token=TOKEN)) as web:
        status, headers, _ = await fetch(url(web, "/metrics"))
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        # A probe reads JSON from /healthz, refused or not (it was text/plain).
        for given in ({}, {"Authorization": "Bearer nope"}):
            status, headers, body = await fetch(url(web, "/healthz"), headers=given)
            assert (status, headers["Content-Type"]) == (401, "application/json"), body
            assert json.loads(body)["status"] == "UNAUTHENTICATED"
            assert headers["WWW-Authenticate"].startswith("Bearer")
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await fetch(url(web, "/metrics"), headers=bearer))[0] == 200
        assert (await fetch(url(web, "/runs"), headers=bearer))[0] == 200
        wrong = {"Authorization": "Bearer nope"}
        assert (await fetch(url(web, "/runs"), headers=wrong))[0] == 401

        status, headers, _ = await fetch(url(web, "/jobs?job=3"), headers={"Accept": "text/html"})
        assert (status, headers["Location"]) == (303, "/login?next=/jobs%3Fjob%3D3")
        assert (await fetch(url(web, "/login")))[0] == 200
        assert (await fetch(url(web, "/static/app.css")))[0] == 200

        refused = await fetch(url(web, "/login"), data=b"token=guess&next=/jobs")
        assert refused[0] == 401 and "Set-Cookie" not in refused[1]
        status, headers, _ = await fetch(
            url(web, "/login"), data=f"token={TOKEN}&next=/jobs".encode()
        )
        assert (status, headers["Location"]) == (303, "/jobs")
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        # Named after the port: browsers keep cookies per host, and executors share hosts.
        assert cookie.startswith(f"cbexec_session_{web.running.http_port}=")
        session = {"Cookie": cookie.split(";", 1)[0]}
        assert (await fetch(url(web, "/health"), headers=session))[0] == 200
        status, headers, _ = await fetch(url(web, "/logout"), headers=session, data=b"")
        assert status == 303
        assert (await fetch(url(web, "/health"), headers=session))[0] == 401

    async with running_stack(
        http_settings(tmp_path / "2", auth_token=TOKEN, http_exempt_metrics=True)
    ) as web:
        assert (await fetch(url(web, "/metrics")))[0] == 200
        assert (await fetch(url(web, "/healthz")))[0] == 200
        assert (await fetch(url(web, "/runs")))[0] == 401


async def test_sign_in_answers_a_hostile_next_with_the_runs_page(tmp_path: Path) -> None:
    async with running_stack(http_settings(tmp_path, auth_token=TOKEN)) as web:
        for hostile in ("/runs\r\nX-Injected: yes", "/\\evil.example", "/runs\u2028"):
            form = urllib.parse.urlencode({"token": TOKEN, "next": hostile}).encode()
            status, headers, _ = await fetch(url(web, "/login"), data=form)
            assert (status, headers["Location"]) == (303, "/runs"), hostile
            assert "X-Injected" not in headers and "Set-Cookie" in headers


async def test_tls_from_the_grpc_settings(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    directory.mkdir()
    pki: Pki = _make_pki(directory)
    settings = http_settings(
        tmp_path, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), auth_token=TOKEN
    )
    async with running_stack(settings) as web:
        context = ssl.create_default_context(cafile=str(pki.ca))
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        status, _, body = await fetch(
            url(web, "/healthz", "https"), headers=bearer, context=context
        )
        assert status == 200 and "SERVING" in body
        _, headers, _ = await fetch(
            url(web, "/login", "https"), data=f"token={TOKEN}".encode(), context=context
        )
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(f"__Host-cbexec_session_{web.running.http_port}=")
        assert "; Secure" in cookie and "; Path=/;" in cookie and "Domain" not in cookie
        with pytest.raises(OSError):  # noqa: PT011 - plaintext to the TLS port: reset, or a URLError
            await fetch(url(web, "/healthz"))


async def test_stop_ends_idle_connections_and_every_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    running = await server.start(http_settings(tmp_path))
    assert running.http_port is not None
    idle = socket.create_connection(("127.0.0.1", running.http_port))  # never sends a byte
    kept = http.client.HTTPConnection("127.0.0.1", running.http_port, timeout=10)
    try:

        def keep_alive() -> int:
            kept.request("GET", "/healthz")
            response = kept.getresponse()
            response.read()
            return response.status  # and the connection stays open, idle

        assert await asyncio.to_thread(keep_alive) == 200
    finally:
        await asyncio.wait_for(running.stop(), 15)
        idle.close()
        kept.close()
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not [t for t in leftover if not t.name.startswith(("asyncio_", "ThreadPoolExecutor"))]


async def test_healthz_answers_503_while_the_executor_drains(tmp_path: Path) -> None:
    # A load balancer's probe must see a drain, not a port gone as if the executor crashed.
    # The grace must outlast the fetches below by a margin a loaded machine keeps: at
    # 1.5 s, the stubborn callback could be killed and the port closed before the last.
    running = await server.start(http_settings(tmp_path, grace_seconds=4.0))
    assert running.http_port is not None
    healthz = f"http://127.0.0.1:{running.http_port}/healthz"
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)"
    client = ExecutorClient(f"127.0.0.1:{running.port}")
    stopping: asyncio.Task[None] | None = None
    try:
        busy = asyncio.create_task(
            client.execute_callback(language="python", code=stubborn, job={"id": 1})
        )
        await eventually(lambda: running.dispatcher.running == 1)
        assert (await fetch(healthz))[0] == 200

        async def draining() -> bool:  # old code: the port closed at the stop's first moment
            return (await fetch(healthz))[0] == 503

        stopping = asyncio.create_task(running.stop())
        # The drain has a stubborn callback to end (grace_seconds): the port stays open.
        assert await eventually(draining, timeout_s=2.0)
        status, _, body = await fetch(healthz)
        assert (status, json.loads(body)) == (
            503,
            {"status": "NOT_SERVING", "why": "the executor is stopping"},
        )
        assert (await fetch(healthz.replace("/healthz", "/runs")))[0] == 503
        assert not stopping.done()
        await stopping
        await busy
        with pytest.raises(urllib.error.URLError):  # closed at the end of the stop
            await fetch(healthz)
    finally:
        await (running.stop() if stopping is None else stopping)
        await client.close()


async def test_a_taken_http_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"http_bind: cannot listen on 127.0.0.1:{port}"):
            await server.start(stack_settings(tmp_path / "data", http_bind=f"127.0.0.1:{port}"))


async def test_a_slow_steady_reader_gets_a_whole_large_stream(
    web: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The idle timeout bounds each piece written, not the whole body: one write of the
    # whole body had to be done within it, so a browser reading a 16 MiB stream steadily
    # but slowly was cut off (ERR_CONTENT_LENGTH_MISMATCH).
    monkeypatch.setattr("executor.web.server._Handler.timeout", 1.0)
    code = "import sys\nsys.stdout.write('x' * (8 << 20) + 'the end')"
    async with ExecutorClient(web.address) as client:
        response = await client.execute_callback(
            language="python",
            code=code,
            job={"id": 1, "user": "root"},
            limits={"output_bytes": 9 << 20},
        )

    def read_slowly() -> bytes:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            sock.connect(("127.0.0.1", web.running.http_port or 0))
            target = f"/runs/{response.invocation_id}?stream=stdout"
            sock.sendall(
                f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
            )
            received = bytearray()
            while chunk := sock.recv(64 << 10):
                received += chunk
                time.sleep(0.04)  # about 1.5 MB/s: over 5 s for the body, never 1 s idle
            return bytes(received)

    answer = await asyncio.to_thread(read_slowly)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == len(response.stdout) and body.endswith(b"the end")


def raw_get(
    port: int, path: str, headers: list[tuple[str, str]]
) -> tuple[int, dict[str, str], str]:
    """A GET with headers exactly as listed (a name twice included), which urllib cannot send."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.putrequest("GET", path)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


async def test_two_authorization_headers_are_refused_in_either_order(tmp_path: Path) -> None:
    # The handler kept the last of two headers: wrong then right was let in.
    async with running_stack(http_settings(tmp_path, auth_token=TOKEN)) as web:
        port = web.running.http_port or 0
        right, wrong = ("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer nope")
        for pair in ([wrong, right], [right, wrong], [right, right]):
            for path in ("/healthz", "/metrics", "/runs"):
                status, _, body = await asyncio.to_thread(raw_get, port, path, pair)
                assert status == 401, (path, pair)
                assert "the request carried more than one" in body
        assert (await asyncio.to_thread(raw_get, port, "/healthz", [right]))[0] == 200


@contextlib.asynccontextmanager
async def port_filled(port: int) -> AsyncIterator[None]:
    """The side port holding its most connections at once, idle ones of ours; closed after."""
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        await asyncio.sleep(0.3)  # every one accepted and in its thread
        yield
    finally:
        for connection in idle:
            connection.close()


def raw_exchange(
    port: int, request: bytes, context: ssl.SSLContext | None = None
) -> tuple[str, dict[str, str], bytes]:
    """Send bytes as they are; the status line, headers and body the port answers before closing."""
    plain = socket.create_connection(("127.0.0.1", port), timeout=5)
    with plain if context is None else context.wrap_socket(plain) as sock:
        sock.sendall(request)
        answer = bytearray()
        while chunk := sock.recv(1 << 16):  # a timeout here: the port held the connection
            answer += chunk
    head, _, body = bytes(answer).partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines), body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"OPTIONS /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "501"),
        (b"PUT /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "501"),
        (b"GET /healthz?" + b"q" * (70 << 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n", "414"),
        (
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: y\r\n" % n for n in range(200))
            + b"\r\n",
            "431",
        ),
        (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", "505"),
        (b"GET /healthz\r\n", "400"),  # HTTP/0.9: held the connection for the idle timeout
        # A POST: a method the port serves (signing in and out), but not here.
        (
            b"POST /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
            "405",
        ),
    ],
    ids=["options", "put", "long-target", "many-headers", "http-9.9", "http-0.9", "post"],
)
async def test_a_request_the_port_cannot_take_on_healthz_is_answered_in_json(
    web: Stack, request_bytes: bytes, status: str
) -> None:
    # Python's own error page was HTML, without the dashboard's security headers.
    port = web.running.http_port or 0
    line, headers, body = await asyncio.to_thread(raw_exchange, port, request_bytes)
    assert line.startswith(f"HTTP/1.1 {status} "), line
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["why"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert (headers["X-Frame-Options"], headers["X-Content-Type-Options"]) == ("DENY", "nosniff")
    assert headers["Cache-Control"] == "no-store"


async def test_a_request_the_port_cannot_take_elsewhere_gets_the_dashboard_s_page(
    web: Stack,
) -> None:
    port = web.running.http_port or 0
    for request_bytes in (b"PUT /runs HTTP/1.1\r\nHost: x\r\n\r\n", b"TRACE / HTTP/1.1\r\n\r\n"):
        line, headers, body = await asyncio.to_thread(raw_exchange, port, request_bytes)
        assert line.startswith("HTTP/1.1 501 "), line
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert b"/static/app.css" in body and b"Unsupported method" in body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert headers["Cache-Control"] == "no-store"
    line, headers, body = await asyncio.to_thread(
        raw_exchange, port, b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n"
    )
    assert line.startswith("HTTP/1.1 413 ") and headers["X-Frame-Options"] == "DENY"
    line, headers, body = await asyncio.to_thread(
        raw_exchange, port, b"PUT /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert line.startswith("HTTP/1.1 501 ") and headers["Content-Type"].startswith("text/plain")
    # A POST where only GET is served: 405, in each path's kind (it was a bare text one).
    post = b"POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    line, headers, body = await asyncio.to_thread(raw_exchange, port, post % b"/runs")
    assert line.startswith("HTTP/1.1 405 "), line
    assert headers["Content-Type"] == "text/html; charset=utf-8" and headers["Allow"] == "GET, HEAD"
    assert b"/static/app.css" in body and b"this page answers GET and HEAD only" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    line, headers, body = await asyncio.to_thread(raw_exchange, port, post % b"/metrics")
    assert line.startswith("HTTP/1.1 405 ") and headers["Content-Type"].startswith("text/plain")
    assert body == b"Method not allowed ('POST'): this page answers GET and HEAD only\n"


async def test_stalled_stream_readers_hold_at_most_the_port_s_stream_slots(
    web: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each client that asked for a 16 MiB stream and never read held its whole answer
    # (120 of them: 3 GB) and 60 arriving at once held gRPC calls for seconds.
    # The stalled readers must outlast the third request's STREAM_WAIT_S by a margin a
    # loaded machine keeps: at 2 s each, the two could be dropped before it was refused.
    monkeypatch.setattr("executor.web.server.WRITE_TIMEOUT_S", STREAM_WAIT_S + 4.0)
    code = "import sys\nsys.stdout.write('x' * (12 << 20))"
    async with ExecutorClient(web.address) as client:
        response = await client.execute_callback(
            language="python",
            code=code,
            job={"id": 1, "user": "root"},
            limits={"output_bytes": 16 << 20},
        )
    target = url(web, f"/runs/{response.invocation_id}?stream=stdout")
    stalled = []
    for _ in range(MAX_STREAMS_AT_ONCE):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        sock.connect(("127.0.0.1", web.running.http_port or 0))
        path = f"/runs/{response.invocation_id}?stream=stdout"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        stalled.append(sock)  # never read
    try:
        # Once both are stuck in their writes, the next waits STREAM_WAIT_S and is refused.
        async def answer() -> tuple[int, dict[str, str], str] | None:
            got = await fetch(target)
            return got if got[0] == 503 else None

        refused = await eventually(answer, timeout_s=20)
        assert refused is not None, "a third stream was sent while two were stalled"
        _, headers, text = refused
        assert headers["Retry-After"] == "5"
        assert f"{MAX_STREAMS_AT_ONCE} whole output streams are being sent already" in text
        # The stalled readers are dropped by the write timeout: their slots come free.
        deadline = time.monotonic() + 30
        while True:
            status, _, whole = await fetch(target)
            if status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert status == 200 and len(whole) == 12 << 20
    finally:
        for sock in stalled:
            sock.close()


async def test_a_burst_of_the_port_s_connections_is_taken_without_a_retransmit(
    web: Stack,
) -> None:
    # socketserver's listen backlog of 5 dropped the SYNs of a burst (a page's assets,
    # scrapers): each such connect waited for its retransmit, a second (64 took 8 s).
    port = web.running.http_port or 0

    def burst() -> None:
        opened: list[socket.socket] = []
        try:
            opened.extend(  # one by one: those opened before a timeout are closed
                socket.create_connection(("127.0.0.1", port), timeout=0.5)
                for _ in range(MAX_CONNECTIONS)
            )
        finally:
            for connection in opened:
                connection.close()

    await asyncio.to_thread(burst)


async def test_connections_past_the_port_s_bound_are_turned_away_at_once(
    web: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each connection held a thread (one of the executor's tasks) for as long as its client
    # kept it: idle clients, or wrong tokens waiting their turn, held them without bound.
    # The request line must come within the turn-away wait to be answered as /healthz's:
    # at 20 ms, a loaded machine could run the accepting thread's wait out between our
    # thread's connect and its send (a text/plain 503).
    monkeypatch.setattr("executor.web.server.TURN_AWAY_WAIT_S", 0.5)
    port = web.running.http_port or 0
    async with port_filled(port):
        line, headers, body = await asyncio.to_thread(
            raw_exchange, port, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )
        assert line.startswith("HTTP/1.1 503 "), line
        assert headers["Retry-After"] == "1"
        assert headers["Content-Type"] == "application/json"  # /healthz's, always
        assert json.loads(body) == {
            "status": "UNAVAILABLE",
            "why": "too many connections to this side port at once; try again shortly",
        }
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        line, headers, body = await asyncio.to_thread(raw_exchange, port, b"")  # asks nothing
        assert line.startswith("HTTP/1.1 503 ") and headers["Content-Type"].startswith("text/plain")

    # Their 64 threads see the close and end, on a loaded machine not always within a
    # fixed 0.3 s: until then a request is still turned away.
    async def served_again() -> str | None:
        line, _, _ = await asyncio.to_thread(
            raw_exchange,
            port,
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        return line if line.startswith("HTTP/1.1 200 ") else None

    assert await eventually(served_again, timeout_s=10, interval_s=0.1)


def header_block(total: int, *lines: bytes) -> bytes:
    """``lines``, then filler lines and the blank line that ends them: ``total`` bytes in all."""
    block = b"".join(lines)
    n = 0
    while (room := total - len(block) - 2) > 0:
        size = 1000 if room >= 2000 else room
        name = b"X-F%d: " % n
        block += name + b"a" * (size - len(name) - 2) + b"\r\n"
        n += 1
    block += b"\r\n"
    assert len(block) == total
    return block


async def test_headers_over_the_cap_in_all_are_refused_431_without_reading_on(
    tmp_path: Path,
) -> None:
    # The stdlib's limits (100 lines of 64 KiB each) were the only ones, read before the
    # token was looked at: a client without one held 6.4 MB of the executor a connection.
    async with running_stack(http_settings(tmp_path, auth_token=TOKEN)) as web:
        port = web.running.http_port or 0
        start = b"GET /healthz HTTP/1.1\r\n"
        token = f"Authorization: Bearer {TOKEN}\r\n".encode()
        at_cap = header_block(MAX_HEADER_BYTES, b"Host: x\r\n", token, b"Connection: close\r\n")
        line, _, body = await asyncio.to_thread(raw_exchange, port, start + at_cap)
        assert line.startswith("HTTP/1.1 200 "), (line, body)
        # One byte more, and the request never ends: answered once the cap is read, and
        # closed (raw_exchange reads to the end; a connection held is its timeout).
        over = at_cap[:-2] + b"X-Y"
        assert len(over) == MAX_HEADER_BYTES + 1
        line, headers, body = await asyncio.to_thread(raw_exchange, port, start + over)
        assert line.startswith("HTTP/1.1 431 "), line
        assert headers["Connection"] == "close"
        assert json.loads(body)["why"] == "the request's headers are over 64 KiB in all"
        # 100 lines at most, the blank one included, whatever their size.
        lines = [b"Host: x\r\n", token, b"Connection: close\r\n"]
        at_most = b"".join(lines) + b"X: a\r\n" * (MAX_HEADER_LINES - 1 - len(lines)) + b"\r\n"
        assert at_most.count(b"\r\n") == MAX_HEADER_LINES
        line, _, body = await asyncio.to_thread(raw_exchange, port, start + at_most)
        assert line.startswith("HTTP/1.1 200 "), (line, body)
        line, _, body = await asyncio.to_thread(raw_exchange, port, start + b"X: a\r\n" + at_most)
        assert line.startswith("HTTP/1.1 431 "), line
        assert json.loads(body)["why"] == "the request's headers are over 100 lines in all"
        # Past the cap in any shape: one long line, many short ones.
        for flood in (b"X-Long: " + b"a" * (70 << 10), b"X-A: b\r\n" * 20000):
            line, _, body = await asyncio.to_thread(raw_exchange, port, start + flood)
            assert line.startswith("HTTP/1.1 431 "), line


@pytest.mark.parametrize("body_bytes", [70000, 1 << 20])
async def test_a_post_whose_body_is_too_large_is_answered_413_not_reset(
    tmp_path: Path, body_bytes: int
) -> None:
    # The 413 was written and the socket closed with the body unread: the kernel sent a
    # reset, and a client that had not read the 413 yet saw that instead (under TLS; in
    # plaintext the stdlib's half-close before it let the 413 and the end through).
    directory = tmp_path / "pki"
    directory.mkdir()
    pki: Pki = _make_pki(directory)
    settings = http_settings(tmp_path, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False
    head = b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % body_bytes
    async with running_stack(settings) as web:
        port = web.running.http_port or 0
        for _ in range(3):
            line, _, body = await asyncio.to_thread(
                raw_exchange, port, head + b"a" * body_bytes, context
            )
            assert line.startswith("HTTP/1.1 413 "), line
            assert b"request body too large" in body


async def test_a_tls_connection_in_its_handshake_does_not_hold_the_stop(tmp_path: Path) -> None:
    # The handshake's socket was not the one the stop shuts down: a connection that sent
    # nothing held the stop for its 30 s timeout (probe 171), past systemd's TimeoutStopSec.
    directory = tmp_path / "pki"
    directory.mkdir()
    pki: Pki = _make_pki(directory)
    settings = http_settings(tmp_path, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    silent = []
    try:
        async with running_stack(settings) as web:
            port = web.running.http_port or 0
            silent.append(socket.create_connection(("127.0.0.1", port)))
            silent.append(socket.create_connection(("127.0.0.1", port)))
            silent[1].sendall(b"\x16\x03\x01")  # a ClientHello begun
            await asyncio.sleep(0.5)  # each in its handshake
            began = time.monotonic()
        assert time.monotonic() - began < IDLE_TIMEOUT_S / 3
    finally:
        for connection in silent:
            connection.close()


@pytest.mark.parametrize("length", [b"-5", b"abc", b"+5", b"5_0", b""])
async def test_a_content_length_that_is_not_a_length_is_400(web: Stack, length: bytes) -> None:
    # -5 was answered 413, "request body too large".
    port = web.running.http_port or 0
    head = b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n" % length
    line, _, body = await asyncio.to_thread(raw_exchange, port, head)
    assert line.startswith("HTTP/1.1 400 "), line
    assert b"bad Content-Length" in body


def _trickle_after_413(port: int) -> tuple[str, float]:
    """A refused body sent a byte every 0.2 s: (the answer's status line, when the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n")
        started = time.monotonic()
        received = b""
        answered = False  # its half-close came: it reads on, dropping, until it closes
        conn.settimeout(0.2)
        while time.monotonic() - started < 20:
            if not answered:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    chunk = None
                answered = chunk == b""
                received += chunk or b""
            try:
                conn.sendall(b"a")
            except OSError:
                break  # it closed the connection: the send met its reset
            time.sleep(0.2)
        return received.split(b"\r\n", 1)[0].decode(), time.monotonic() - started


async def test_a_refused_body_trickled_is_dropped_for_two_seconds_in_all(web: Stack) -> None:
    # The drain's 2 s were per read: a byte every 0.2 s held the connection's thread until
    # 4 MiB had come, about nine days.
    line, closed_after_s = await asyncio.to_thread(_trickle_after_413, web.running.http_port or 0)
    assert line.startswith("HTTP/1.1 413 "), line
    assert closed_after_s < 10, closed_after_s


async def test_a_token_in_a_query_string_is_not_written_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Refused (401), but the access line at DEBUG held it whole (probe 115), and with its
    # name percent-escaped, or named bearer, still did (probe 121).
    caplog.set_level(logging.DEBUG, logger="executor.web.server")
    async with running_stack(http_settings(tmp_path, auth_token=TOKEN)) as web:
        for query in (
            f"token={TOKEN}",
            f"outcome=FAILED&access_token={TOKEN}&x=1",
            f"t%6Fken={TOKEN}",
            f"bearer={TOKEN}",
            f"token%3D{TOKEN}&y=2",
        ):
            assert (await fetch(url(web, f"/healthz?{query}")))[0] == 401
    lines = [r.getMessage() for r in caplog.records if r.name == "executor.web.server"]
    assert not [line for line in lines if TOKEN in line], lines
    assert any("GET /healthz?token=(hidden) HTTP/1.1" in line for line in lines), lines
    assert any("?outcome=FAILED&access_token=(hidden)&x=1 " in line for line in lines), lines
    assert any("?t%6Fken=(hidden) " in line for line in lines), lines
    assert any("?bearer=(hidden) " in line for line in lines), lines
    assert any("?(hidden)&y=2 " in line for line in lines), lines
