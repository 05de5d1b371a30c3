"""Endpoint security over loopback: TLS, mutual TLS, the shared token, and clear startup errors."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from executor import server
from executor.api import security
from executor.config import Settings
from executor.errors import ConfigError
from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2, executor_pb2_grpc
from tests.conftest import stack_settings
from tests.helpers.cli import cbexec, cli_env
from tests.helpers.health import SERVING, health_status

pytestmark = pytest.mark.service

TOKEN = "s3cret-token"
# Acts on a job through the embedded supervisor: proves the executor's own channel to it
# (Unix socket under TLS, token-bearing under auth) works, not just the public port.
UNBLOCK = "qb.unblock(qb.jobid())\nprint('status', qb.jobinfo('-id', qb.jobid())[0]['status'])"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def read(self, name: str) -> bytes:
        path: Path = getattr(self, name)
        return path.read_bytes()


def _make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        return _make_pki_with_openssl(directory)
    import ipaddress

    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common: str, usage: x509.ObjectIdentifier, san: list[x509.GeneralName]
    ) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), key

    pki = Pki(
        *(directory / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"))
    )
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    server_pem, server_key = leaf(
        "executor",
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    pki.server_cert.write_bytes(server_pem)
    write_key(server_key, pki.server_key)
    client_pem, client_key = leaf("supervisor", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pki.client_cert.write_bytes(client_pem)
    write_key(client_key, pki.client_key)
    return pki


def _make_pki_with_openssl(directory: Path) -> Pki:
    """The same PKI with the openssl command, for hosts without the cryptography package."""
    pki = Pki(
        *(directory / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key"))
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test CA",
    )
    for stem, cn, ext in (
        (
            "server",
            "executor",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        ),
        ("client", "supervisor", "extendedKeyUsage=clientAuth"),
    ):
        (directory / f"{stem}.ext").write_text(ext + "\n")
        openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            f"{stem}.key",
            "-out",
            f"{stem}.csr",
            "-subj",
            f"/CN={cn}",
        )
        openssl(
            "x509",
            "-req",
            "-in",
            f"{stem}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{stem}.pem",
            "-days",
            "1",
            "-extfile",
            f"{stem}.ext",
        )
    return pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    directory = tmp_path / "pki"
    directory.mkdir()
    return _make_pki(directory)


@pytest.fixture
async def executor_with(tmp_path: Path) -> AsyncIterator[list[server.RunningServer]]:
    """Stops whatever executors the test started."""
    started: list[server.RunningServer] = []
    try:
        yield started
    finally:
        for running in started:
            await running.stop()


async def start(started: list[server.RunningServer], settings: Settings) -> str:
    running = await server.start(settings)
    started.append(running)
    assert running.reference is not None
    job = running.reference.submit([{"name": "shot", "user": "alice", "status": "blocked"}])[0]
    assert job["id"] == 1
    return f"127.0.0.1:{running.port}"


async def unblock_job_1(client: ExecutorClient) -> executor_pb2.ExecuteResponse:
    response = await client.execute_callback(
        language="python", code=UNBLOCK, job={"id": 1, "user": "alice"}, timeout=30
    )
    assert response.outcome == executor_pb2.OUTCOME_SUCCEEDED, response
    assert response.stdout == "status pending\n"
    return response


async def test_tls(tmp_path: Path, pki: Pki, executor_with: list[server.RunningServer]) -> None:
    settings = stack_settings(
        tmp_path / "data", tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)
    )
    address = await start(executor_with, settings)
    async with ExecutorClient(address, root_certificates=pki.read("ca")) as client:
        done = await unblock_job_1(client)
        runs = await client.list_runs()
        assert [r.invocation_id for r in runs.runs] == [done.invocation_id]
    running = executor_with[0]
    assert running.reference is not None
    for _ in range(100):  # the result goes to the embedded supervisor over the Unix socket
        if running.reference.result(done.invocation_id) is not None:
            break
        await asyncio.sleep(0.05)
    assert running.reference.result(done.invocation_id) is not None

    async with ExecutorClient(address) as plaintext:
        with pytest.raises(ExecutorRpcError) as refused:
            await plaintext.get_metrics(timeout=5)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


async def test_tls_to_a_list_checks_each_certificate_against_the_first_entry(
    tmp_path: Path, pki: Pki, executor_with: list[server.RunningServer]
) -> None:
    """A list's calls carry its first entry as their authority, which TLS checks names by.

    The certificate holds 127.0.0.1; the whole list ("127.0.0.1:A,127.0.0.1:B") was
    the name checked, and no certificate could hold it.
    """
    tls = {"tls_cert": str(pki.server_cert), "tls_key": str(pki.server_key)}
    first = await start(executor_with, stack_settings(tmp_path / "a", **tls))
    async with ExecutorClient(f"{first},127.0.0.1:43198", root_certificates=pki.read("ca")) as c:
        assert (await c.get_metrics(timeout=10)).slots > 0


async def test_mutual_tls(
    tmp_path: Path, pki: Pki, executor_with: list[server.RunningServer]
) -> None:
    settings = stack_settings(
        tmp_path / "data",
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )
    address = await start(executor_with, settings)
    async with ExecutorClient(
        address,
        root_certificates=pki.read("ca"),
        certificate_chain=pki.read("client_cert"),
        private_key=pki.read("client_key"),
    ) as client:
        await unblock_job_1(client)
    async with ExecutorClient(address, root_certificates=pki.read("ca")) as no_cert:
        with pytest.raises(ExecutorRpcError) as refused:
            await no_cert.get_metrics(timeout=5)
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE


async def test_token(tmp_path: Path, executor_with: list[server.RunningServer]) -> None:
    address = await start(executor_with, stack_settings(tmp_path / "data", auth_token=TOKEN))
    async with ExecutorClient(address, token=TOKEN) as client:
        await unblock_job_1(client)  # qb calls reach the embedded supervisor with the token
        assert (await client.get_metrics()).runs_by_outcome["SUCCEEDED"] == 1
    for token in (None, "wrong", TOKEN + "x"):
        async with ExecutorClient(address, token=token) as client:
            with pytest.raises(ExecutorRpcError) as refused:
                await client.execute_callback(language="python", code="pass", job={"id": 1})
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(address) as channel:
        assert await health_status(channel) == SERVING, "health stays open"
        metrics = executor_pb2_grpc.RunServiceStub(channel).GetMetrics
        right, wrong = f"Bearer {TOKEN}", "Bearer wrong"
        one_entry = (
            "this executor requires one 'authorization: Bearer <token>' metadata entry; "
            "the call carried more than one"
        )
        for headers, refusal in (
            ((f"bearer {TOKEN}",), ""),  # the scheme in any case, as in HTTP
            ((f"BEARER  {TOKEN}",), ""),
            # Surrounding whitespace is no part of it, before the scheme as after the token.
            ((f" Bearer {TOKEN}",), ""),
            ((f"  Bearer {TOKEN}  ",), ""),
            ((f"Basic {TOKEN}",), "the authorization given is not a bearer token"),
            ((TOKEN,), "the authorization given is not a bearer token"),
            # Two entries are refused whatever their order: judging only the first
            # accepted [right, wrong] and refused [wrong, right].
            ((right, wrong), one_entry),
            ((wrong, right), one_entry),
            ((right, right), one_entry),
        ):
            metadata = tuple(("authorization", header) for header in headers)
            call = metrics(executor_pb2.GetMetricsRequest(), metadata=metadata)
            if not refusal:
                await call
                continue
            with pytest.raises(grpc.aio.AioRpcError) as refused_header:
                await call
            assert refused_header.value.code() == grpc.StatusCode.UNAUTHENTICATED, headers
            assert refusal in (refused_header.value.details() or ""), headers
        from supervisor_client.qbcallback.v1 import supervisor_pb2, supervisor_pb2_grpc

        kill = supervisor_pb2.JobActionRequest(
            verb=supervisor_pb2.JOB_VERB_KILL, job_id=1, actor="alice"
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused_supervisor:
            await supervisor_pb2_grpc.SupervisorServiceStub(channel).JobAction(kill, timeout=5)
        # The embedded Supervisor service is not on the public port at all (it trusts the
        # actor it is told), only on a private socket in the data dir.
        assert refused_supervisor.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_token_and_tls_together(
    tmp_path: Path, pki: Pki, executor_with: list[server.RunningServer]
) -> None:
    settings = stack_settings(
        tmp_path / "data",
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        auth_token=TOKEN,
    )
    address = await start(executor_with, settings)
    async with ExecutorClient(address, root_certificates=pki.read("ca"), token=TOKEN) as client:
        await unblock_job_1(client)


@pytest.mark.parametrize("missing", ["tls_cert", "tls_key", "tls_client_ca"])
async def test_missing_certificate_is_a_clear_startup_error(
    tmp_path: Path, pki: Pki, missing: str
) -> None:
    paths = {
        "tls_cert": str(pki.server_cert),
        "tls_key": str(pki.server_key),
        "tls_client_ca": str(pki.ca),
    }
    paths[missing] = str(tmp_path / "nowhere" / f"{missing}.pem")
    with pytest.raises(ConfigError) as error:
        await server.start(stack_settings(tmp_path / "data", **paths))
    assert str(error.value) == (
        f"{missing}: cannot read {paths[missing]}: No such file or directory"
    )


async def test_not_pem_is_a_clear_startup_error(tmp_path: Path, pki: Pki) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match=rf"tls_key: {junk} is not a PEM file"):
        await server.start(
            stack_settings(tmp_path / "data", tls_cert=str(pki.server_cert), tls_key=str(junk))
        )


def _pem_framed_junk(path: Path, label: str) -> Path:
    path.write_text(f"-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n")
    return path


async def test_a_key_that_is_not_the_certificates_is_refused_before_anything_starts(
    tmp_path: Path, pki: Pki
) -> None:
    # gRPC took the pair, then could not add the port: "bind: cannot listen on ...",
    # after the outbox and the trigger engine had started.
    with pytest.raises(ConfigError) as error:
        await server.start(
            stack_settings(
                tmp_path / "data", tls_cert=str(pki.server_cert), tls_key=str(pki.client_key)
            )
        )
    assert str(error.value) == (
        f"tls_cert/tls_key: the key {pki.client_key} is not the private key of the "
        f"certificate {pki.server_cert}"
    )
    assert not (tmp_path / "data").exists(), "refused before anything started"


@pytest.mark.parametrize(
    ("setting", "label", "expected"),
    [
        ("tls_key", "PRIVATE KEY", "holds no private key OpenSSL can read"),
        ("tls_cert", "CERTIFICATE", "holds no certificate OpenSSL can read"),
        ("tls_client_ca", "CERTIFICATE", "holds no certificate OpenSSL can read"),
    ],
)
async def test_pem_framed_junk_is_refused_naming_the_setting(
    tmp_path: Path, pki: Pki, setting: str, label: str, expected: str
) -> None:
    paths = {
        "tls_cert": str(pki.server_cert),
        "tls_key": str(pki.server_key),
        "tls_client_ca": str(pki.ca),
    }
    junk = _pem_framed_junk(tmp_path / "junk.pem", label)
    paths[setting] = str(junk)
    with pytest.raises(ConfigError) as error:
        await server.start(stack_settings(tmp_path / "data", **paths))
    assert str(error.value) == f"{setting}: {junk} {expected}"


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(
    tmp_path: Path, pki: Pki
) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        (
            "openssl",
            "pkey",
            "-aes256",
            "-passout",
            "pass:x",
            "-in",
            pki.server_key,
            "-out",
            encrypted,
        ),
        check=True,
    )
    settings = stack_settings(
        tmp_path / "data", tls_cert=str(pki.server_cert), tls_key=str(encrypted)
    )
    with pytest.raises(ConfigError) as error:
        security.server_credentials(settings)  # what start-up and --check-config call first
    assert str(error.value).startswith(f"tls_key: {encrypted} is encrypted")


async def test_check_config_refuses_a_key_that_is_not_the_certificates(
    tmp_path: Path, pki: Pki
) -> None:
    # It said "ok: start-up would succeed", and serve then blamed the port.
    said = await cbexec(
        "serve",
        "--check-config",
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        env=cli_env(
            CBEXEC_TLS_CERT=str(pki.server_cert),
            CBEXEC_TLS_KEY=str(pki.client_key),
            CBEXEC_HTTP_BIND="127.0.0.1:0",
        ),
    )
    assert said.code == 2, said
    assert "ok: start-up would succeed" not in said.out
    assert said.err.splitlines() == [
        f"cbexec: tls_cert/tls_key: the key {pki.client_key} is not the private key of the "
        f"certificate {pki.server_cert}"
    ]


def test_check_config_names_the_unreadable_file(tmp_path: Path, pki: Pki) -> None:
    env = {
        **os.environ,
        "CBEXEC_TLS_CERT": str(pki.server_cert),
        "CBEXEC_TLS_KEY": str(tmp_path / "gone.key"),
        "CBEXEC_AUTH_TOKEN": TOKEN,
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "executor",
            "serve",
            "--check-config",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert f"tls_key: cannot read {tmp_path / 'gone.key'}" in done.stderr
    assert TOKEN not in done.stdout + done.stderr, "the token is never printed"
