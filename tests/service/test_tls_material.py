"""TLS material checked for real where it is given: the clients' files, the executor's dates.

Probe 115: a client CA or key that only looked like PEM made every call fail a retryable
UNAVAILABLE ("Failed to create security handshaker", cbexec exit 3); a certificate near
or past its end passed ``--check-config`` silently; new files could not be checked
beside the running executor (its data dir and uids are in use).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from executor import server
from supervisor_client import ExecutorClient, RetryableError
from tests.conftest import running_stack, stack_settings
from tests.helpers.cli import cbexec, cli_env
from tests.helpers.static_pki import CA_CERT, LEAF_CERT, LEAF_KEY_ENCRYPTED, OTHER_KEY
from tests.service.test_security import Pki, _make_pki

pytestmark = pytest.mark.service


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA, and server and client certificates it signed, valid for a day."""
    directory = tmp_path / "pki"
    directory.mkdir()
    return _make_pki(directory)


NOT_A_CERT = b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(
    ("files", "said"),
    [
        ({"--tls-ca": NOT_A_CERT}, "--tls-ca {--tls-ca}: holds no certificate OpenSSL can read"),
        (
            {"--tls-ca": CA_CERT, "--tls-cert": LEAF_CERT, "--tls-key": LEAF_KEY_ENCRYPTED},
            "--tls-key {--tls-key}: is encrypted (it asks for a passphrase, which gRPC cannot",
        ),
        (
            {"--tls-ca": CA_CERT, "--tls-cert": LEAF_CERT, "--tls-key": OTHER_KEY},
            "--tls-key {--tls-key}: is not the private key of the certificate in --tls-cert",
        ),
    ],
)
async def test_client_material_openssl_cannot_use_is_a_usage_error_naming_the_file(
    tmp_path: Path, files: dict[str, bytes], said: str
) -> None:
    argv = ["metrics", "--address", "127.0.0.1:1"]
    for flag, content in files.items():
        path = tmp_path / flag.removeprefix("--")
        path.write_bytes(content)
        argv += [flag, str(path)]
        said = said.replace("{" + flag + "}", str(path))
    done = await cbexec(*argv)
    assert done.code == 2, done  # was 3: UNAVAILABLE, as if the executor were down
    lines = done.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cbexec: {said}"), done


async def test_check_config_warns_of_a_certificate_near_its_end(tmp_path: Path, pki: Pki) -> None:
    # The fixture's certificates are valid for a day.
    done = await cbexec(
        "serve",
        "--check-config",
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        env=cli_env(CBEXEC_TLS_CERT=str(pki.server_cert), CBEXEC_TLS_KEY=str(pki.server_key)),
    )
    assert done.code == 0, done
    assert f"  WARNING: tls_cert: {pki.server_cert} expires within a day, on " in done.out


async def test_check_tls_checks_new_files_beside_the_running_executor(
    tmp_path: Path, pki: Pki
) -> None:
    settings = stack_settings(
        tmp_path / "data", tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)
    )
    running = await server.start(settings)
    try:
        env = cli_env(
            CBEXEC_TLS_CERT=str(pki.server_cert),
            CBEXEC_TLS_KEY=str(pki.client_key),  # the new key is the wrong one
            CBEXEC_SANDBOX_UID_BASE=str(settings.sandbox_uid_base),
        )
        data = ["--data-dir", str(settings.data_dir), "--bind", f"127.0.0.1:{running.port}"]
        wrong = await cbexec("serve", "--check-tls", *data, env=env)
        assert wrong.code == 2, wrong
        assert wrong.err.splitlines() == [
            f"cbexec: tls_cert/tls_key: the key {pki.client_key} is not the private key of "
            f"the certificate {pki.server_cert}"
        ]
        env["CBEXEC_TLS_KEY"] = str(pki.server_key)
        right = await cbexec("serve", "--check-tls", *data, env=env)
        assert right.code == 0, right
        assert right.err == ""
        assert f"tls_cert: {pki.server_cert}, valid from " in right.out
        assert right.out.splitlines()[-1] == "ok: the TLS files load; restart to use them"
    finally:
        await running.stop()


async def test_a_transport_mistake_says_what_it_may_be(tmp_path: Path, pki: Pki) -> None:
    # Both said only "Socket closed" or OpenSSL's WRONG_VERSION_NUMBER (probe 115).
    settings = stack_settings(
        tmp_path / "tls", tls_cert=str(pki.server_cert), tls_key=str(pki.server_key)
    )
    running = await server.start(settings)
    try:
        plaintext = ExecutorClient(f"127.0.0.1:{running.port}")
        with pytest.raises(RetryableError) as closed:
            await plaintext.get_metrics(timeout=30)
        await plaintext.close()
    finally:
        await running.stop()
    assert "Socket closed" in closed.value.details, closed.value
    assert "if the executor uses TLS (tls_cert), give its CA (--tls-ca" in closed.value.details
    async with running_stack(stack_settings(tmp_path / "plain")) as plain:
        tls = ExecutorClient(plain.address, root_certificates=pki.read("ca"))
        with pytest.raises(RetryableError) as wrong:
            await tls.get_metrics(timeout=30)
        await tls.close()
    assert "WRONG_VERSION_NUMBER" in wrong.value.details, wrong.value
    assert "the address does not speak TLS: the executor may be plaintext" in wrong.value.details
