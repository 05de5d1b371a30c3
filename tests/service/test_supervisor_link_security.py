"""The executor's link to a remote supervisor: TLS, mutual TLS and a token, over loopback.

A real reference Supervisor service serves TLS (or mutual TLS) and requires a token; a
real executor reaches it with the ``supervisor_tls_*`` settings and ``supervisor_token``:
a callback's ``qb.jobinfo`` reads the job through it and the run's result is delivered
to it. Material that cannot work stops start-up (and ``--check-config``) with one line
per problem; a link that fails its handshake says so in the callback's error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from executor import config_checks, server
from executor.config import Settings
from executor.errors import ConfigError
from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import TEST_UID_BASE, stack_settings
from tests.helpers.cli import cbexec, cli_env
from tests.helpers.supervisors import SupervisorEndpoint
from tests.service.test_security import Pki, _make_pki

pytestmark = pytest.mark.service

TOKEN = "link-s3cret"
READ_JOB = "print(qb.jobinfo(id=qb.jobid())[0]['name'])"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    return _make_pki(directory)


@pytest.fixture
async def endpoints(tmp_path: Path) -> AsyncIterator[list[SupervisorEndpoint]]:
    """Stops the supervisors the test started."""
    started: list[SupervisorEndpoint] = []
    try:
        yield started
    finally:
        for endpoint in started:
            await endpoint.stop()
            endpoint.store.close()


async def secure_supervisor(
    tmp_path: Path, pki: Pki, started: list[SupervisorEndpoint], *, mutual: bool = False
) -> SupervisorEndpoint:
    endpoint = SupervisorEndpoint(
        tmp_path / "supervisor.db",
        certificate_chain=pki.read("server_cert"),
        private_key=pki.read("server_key"),
        client_ca=pki.read("ca") if mutual else None,
        token=TOKEN,
    )
    started.append(endpoint)
    (job,) = endpoint.store.submit([{"name": "shot", "user": "alice"}])
    assert job["id"] == 1
    await endpoint.start()
    return endpoint


async def run_read(settings: Settings) -> executor_pb2.ExecuteResponse:
    running = await server.start(settings)
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            return await client.execute_callback(
                language="python", code=READ_JOB, job={"id": 1, "user": "alice"}, timeout=30
            )
    finally:
        await running.stop()


async def wait_for_result(endpoint: SupervisorEndpoint, invocation_id: str) -> None:
    for _ in range(200):
        if endpoint.store.result(invocation_id) is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"result {invocation_id} never reached the supervisor")


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
async def test_a_job_read_and_a_result_cross_a_tls_link_with_a_token(
    tmp_path: Path, pki: Pki, endpoints: list[SupervisorEndpoint], mutual: bool
) -> None:
    endpoint = await secure_supervisor(tmp_path, pki, endpoints, mutual=mutual)
    client_cert = (
        {"supervisor_tls_cert": str(pki.client_cert), "supervisor_tls_key": str(pki.client_key)}
        if mutual
        else {}
    )
    settings = stack_settings(
        tmp_path / "data",
        supervisor=endpoint.address,
        supervisor_tls_ca=str(pki.ca),
        supervisor_token=TOKEN,
        **client_cert,
    )
    running = await server.start(settings)
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            response = await client.execute_callback(
                language="python", code=READ_JOB, job={"id": 1, "user": "alice"}, timeout=30
            )
            assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
            assert response.stdout == "shot\n"
            await wait_for_result(endpoint, response.invocation_id)
    finally:
        await running.stop()
    assert endpoint.refused_tokens == 0


async def test_a_link_without_the_token_is_refused_and_says_so(
    tmp_path: Path, pki: Pki, endpoints: list[SupervisorEndpoint]
) -> None:
    endpoint = await secure_supervisor(tmp_path, pki, endpoints)
    settings = stack_settings(
        tmp_path / "data", supervisor=endpoint.address, supervisor_tls_ca=str(pki.ca)
    )
    response = await run_read(settings)
    assert response.outcome == executor_pb2.OUTCOME_FAILED, response
    assert "UNAUTHENTICATED" in response.failure.message
    assert "supervisor_token" in response.failure.message
    assert endpoint.refused_tokens > 0


async def test_plaintext_to_a_tls_supervisor_names_supervisor_tls_ca(
    tmp_path: Path, pki: Pki, endpoints: list[SupervisorEndpoint]
) -> None:
    """It said only "Socket closed", the words of a supervisor that is down."""
    endpoint = await secure_supervisor(tmp_path, pki, endpoints)
    settings = stack_settings(
        tmp_path / "data",
        supervisor=endpoint.address,
        supervisor_token=TOKEN,
        supervisor_timeout_seconds=3,
    )
    running = await server.start(settings)
    try:
        async with ExecutorClient(f"127.0.0.1:{running.port}") as client:
            response = await client.execute_callback(
                language="python", code=READ_JOB, job={"id": 1, "user": "alice"}, timeout=30
            )
            assert response.outcome == executor_pb2.OUTCOME_FAILED, response
            assert "SupervisorUnavailable" in response.failure.exception_type
            assert "supervisor_tls_ca" in response.failure.message, response.failure.message
            # The outbox's delivery of that run's result says the same.
            for _ in range(200):
                error = (await client.get_metrics()).outbox_last_error
                if error:
                    break
                await asyncio.sleep(0.05)
            assert "set supervisor_tls_ca" in error, error
    finally:
        await running.stop()


async def test_a_certificate_from_another_ca_is_a_tls_handshake_failure(
    tmp_path: Path, pki: Pki, endpoints: list[SupervisorEndpoint]
) -> None:
    endpoint = await secure_supervisor(tmp_path, pki, endpoints)
    other = tmp_path / "other"
    other.mkdir()
    settings = stack_settings(
        tmp_path / "data",
        supervisor=endpoint.address,
        supervisor_tls_ca=str(_make_pki(other).ca),
        supervisor_token=TOKEN,
        supervisor_timeout_seconds=3,
    )
    response = await run_read(settings)
    assert response.outcome == executor_pb2.OUTCOME_FAILED, response
    message = response.failure.message
    assert "TLS handshake with the supervisor failed" in message, message
    assert "supervisor_tls_ca" in message, message


async def test_no_client_certificate_for_a_mutual_tls_supervisor_names_the_settings(
    tmp_path: Path, pki: Pki, endpoints: list[SupervisorEndpoint]
) -> None:
    endpoint = await secure_supervisor(tmp_path, pki, endpoints, mutual=True)
    settings = stack_settings(
        tmp_path / "data",
        supervisor=endpoint.address,
        supervisor_tls_ca=str(pki.ca),
        supervisor_token=TOKEN,
        supervisor_timeout_seconds=3,
    )
    response = await run_read(settings)
    assert response.outcome == executor_pb2.OUTCOME_FAILED, response
    assert "supervisor_tls_cert" in response.failure.message, response.failure.message


def _bad_files(tmp_path: Path, pki: Pki) -> list[tuple[dict[str, str], str]]:
    """(settings, the one line start-up says) for files that cannot work."""
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("hello\n")
    gone = tmp_path / "gone.pem"
    return [
        (
            {"supervisor_tls_ca": str(gone)},
            f"supervisor_tls_ca: cannot read {gone}: No such file or directory",
        ),
        ({"supervisor_tls_ca": str(plain)}, f"supervisor_tls_ca: {plain} is not a PEM file"),
        (
            {"supervisor_tls_ca": str(junk)},
            f"supervisor_tls_ca: {junk} holds no certificate OpenSSL can read",
        ),
        (
            {
                "supervisor_tls_ca": str(pki.ca),
                "supervisor_tls_cert": str(pki.client_cert),
                "supervisor_tls_key": str(pki.server_key),
            },
            f"supervisor_tls_cert/supervisor_tls_key: the key {pki.server_key} is not the "
            f"private key of the certificate {pki.client_cert}",
        ),
        (
            {
                "supervisor_tls_ca": str(pki.ca),
                "supervisor_tls_cert": str(junk),
                "supervisor_tls_key": str(pki.client_key),
            },
            f"supervisor_tls_cert: {junk} holds no certificate OpenSSL can read",
        ),
    ]


async def test_bad_link_files_are_refused_at_start_up_in_one_line(tmp_path: Path, pki: Pki) -> None:
    for overrides, said in _bad_files(tmp_path, pki):
        settings = stack_settings(tmp_path / "data", supervisor="127.0.0.1:43279", **overrides)
        with pytest.raises(ConfigError) as refused:
            await server.start(settings)
        lines = str(refused.value).splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(said), (lines, said)
    assert not (tmp_path / "data").exists(), "refused before anything started"


def test_link_settings_that_cannot_work_together_are_refused(tmp_path: Path) -> None:
    remote = {"supervisor": "127.0.0.1:43279"}
    cases: list[tuple[dict[str, str], str]] = [
        (
            {**remote, "supervisor_tls_ca": "ca.pem", "supervisor_tls_cert": "c.pem"},
            "supervisor_tls_cert and supervisor_tls_key: set both (a client certificate, "
            "for mutual TLS) or neither",
        ),
        (
            {**remote, "supervisor_tls_cert": "c.pem", "supervisor_tls_key": "c.key"},
            "supervisor_tls_cert: a client certificate is sent over TLS only: "
            "set supervisor_tls_ca too",
        ),
        (
            {**remote, "supervisor_token": "caf\u00e9"},
            "supervisor_token: character 4 is not printable ASCII, which gRPC metadata "
            "cannot carry",
        ),
        (
            {**remote, "supervisor_token": "t" * 4097},
            "supervisor_token: 4097 characters, more than 4096: gRPC refuses calls whose "
            "headers pass 8 KiB (some) or 16 KiB (all); use a shorter random token",
        ),
        (
            {**remote, "supervisor_token": " \n"},
            "supervisor_token: only whitespace; leave it empty for no token",
        ),
        (
            {"supervisor_token": TOKEN},
            "supervisor_token: only for a remote supervisor (set supervisor); "
            "the embedded one is reached over a private socket",
        ),
    ]
    for overrides, said in cases:
        with pytest.raises(ConfigError) as refused:
            config_checks.validate(stack_settings(tmp_path / "data", **overrides))
        assert str(refused.value) == said


async def test_check_config_refuses_bad_link_material_and_names_it(
    tmp_path: Path, pki: Pki
) -> None:
    said = await cbexec(
        "serve",
        "--check-config",
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        env=cli_env(
            CBEXEC_SANDBOX_UID_BASE=str(TEST_UID_BASE),
            CBEXEC_SUPERVISOR="127.0.0.1:43279",
            CBEXEC_SUPERVISOR_TLS_CA=str(pki.ca),
            CBEXEC_SUPERVISOR_TLS_CERT=str(pki.client_cert),
            CBEXEC_SUPERVISOR_TLS_KEY=str(pki.server_key),
            CBEXEC_SUPERVISOR_TOKEN=TOKEN,
        ),
    )
    assert said.code == 2, said
    assert said.err.splitlines() == [
        f"cbexec: supervisor_tls_cert/supervisor_tls_key: the key {pki.server_key} is not "
        f"the private key of the certificate {pki.client_cert}"
    ]
    assert TOKEN not in said.out + said.err


async def test_check_config_describes_the_link_and_warns_of_a_plaintext_one(
    tmp_path: Path, pki: Pki
) -> None:
    base = {"CBEXEC_SANDBOX_UID_BASE": str(TEST_UID_BASE)}
    argv = ("serve", "--check-config", "--bind", "127.0.0.1:0", "--data-dir")
    plaintext = await cbexec(
        *argv, str(tmp_path / "a"), env=cli_env(**base, CBEXEC_SUPERVISOR="192.0.2.10:50060")
    )
    assert plaintext.code == 0, plaintext
    assert (
        "  WARNING: supervisor 192.0.2.10:50060 is reached in plaintext with no token: "
        in plaintext.out
    ), plaintext.out
    secured = await cbexec(
        *argv,
        str(tmp_path / "b"),
        env=cli_env(
            **base,
            CBEXEC_SUPERVISOR="192.0.2.10:50060",
            CBEXEC_SUPERVISOR_TLS_CA=str(pki.ca),
            CBEXEC_SUPERVISOR_TOKEN=TOKEN,
        ),
    )
    assert secured.code == 0, secured
    assert "supervisor: 192.0.2.10:50060, TLS, token sent\n" in secured.out, secured.out
    assert "WARNING: supervisor" not in secured.out
    assert TOKEN not in secured.out + secured.err


async def test_start_up_logs_the_link_and_warns_of_a_plaintext_one_off_this_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="executor.server")
    running = await server.start(stack_settings(tmp_path / "data", supervisor="192.0.2.10:50060"))
    await running.stop()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "executor.server"]
    assert ("INFO", "supervisor link: 192.0.2.10:50060, plaintext, no token") in said
    warned = [m for level, m in said if level == "WARNING" and m.startswith("supervisor ")]
    assert warned == [
        "supervisor 192.0.2.10:50060 is reached in plaintext with no token: job data, qb "
        "actions and results (with the callbacks' output) cross the network in clear, and "
        "whoever answers at that address is taken for the supervisor; set supervisor_tls_ca "
        "(and supervisor_token, supervisor_tls_cert/supervisor_tls_key as the supervisor asks)"
    ]


async def test_check_tls_checks_the_link_files_beside_a_running_executor(
    tmp_path: Path, pki: Pki
) -> None:
    link = {
        "CBEXEC_SUPERVISOR": "10.0.0.5:50060",
        "CBEXEC_SUPERVISOR_TLS_CA": str(pki.ca),
        "CBEXEC_SUPERVISOR_TOKEN": TOKEN,
    }
    argv = ("serve", "--check-tls", "--data-dir", str(tmp_path / "data"))
    good = await cbexec(*argv, env=cli_env(**link))
    assert good.code == 0, good
    assert good.out.splitlines() == [
        "supervisor: 10.0.0.5:50060, TLS, token sent",
        "ok: the TLS files load; restart to use them",
    ]
    bad = await cbexec(
        *argv,
        env=cli_env(
            **link,
            CBEXEC_SUPERVISOR_TLS_CERT=str(pki.client_cert),
            CBEXEC_SUPERVISOR_TLS_KEY=str(pki.server_key),
        ),
    )
    assert bad.code == 2, bad
    assert bad.err.splitlines() == [
        f"cbexec: supervisor_tls_cert/supervisor_tls_key: the key {pki.server_key} is not "
        f"the private key of the certificate {pki.client_cert}"
    ]
