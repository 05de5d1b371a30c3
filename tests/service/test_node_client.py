"""A non-Python caller: scripts/node-client (grpc-js + proto-loader from npm) against a live executor."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from collections.abc import Awaitable
from pathlib import Path

import pytest

from tests.conftest import TEST_UID_BASE, Stack, running_stack, stack_settings
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "scripts" / "node-client"
NODE, NPM = shutil.which("node"), shutil.which("npm")


async def _run(
    *argv: str, cwd: Path, env: dict[str, str], timeout_s: float
) -> tuple[int, str, str]:
    """Run a command without blocking the event loop the executor is served from."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
def installed_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp copy of scripts/node-client with its npm dependencies installed."""
    if NODE is None or NPM is None:
        pytest.skip("node and npm are not installed: the Node.js client cannot be tested here")
    target = tmp_path_factory.mktemp("node") / "node-client"
    shutil.copytree(CLIENT_DIR, target, ignore=shutil.ignore_patterns("node_modules"))
    code, out, err = asyncio.run(
        _run(
            NPM,
            "install",
            "--no-audit",
            "--no-fund",
            cwd=target,
            env=dict(os.environ),
            timeout_s=110,
        )
    )
    assert code == 0, f"npm install failed:\n{out}\n{err}"
    assert (target / "node_modules" / "@grpc" / "grpc-js").is_dir()
    return target


async def test_node_client_executes_and_publishes(stack: Stack, installed_client: Path) -> None:
    assert NODE is not None
    job = stack.supervisor.submit([{"name": "from-node", "user": "node"}])[0]
    env = {**os.environ, "CBEXEC_PROTO_ROOT": str(REPO / "proto"), "CBEXEC_AUTH_TOKEN": ""}
    code, out, err = await _run(
        NODE,
        "client.js",
        stack.address,
        "--job",
        str(job["id"]),
        cwd=installed_client,
        env=env,
        timeout_s=60,
    )
    assert code == 0, out + err
    executed, registered, published = (json.loads(line) for line in out.splitlines())
    assert executed["outcome"] == "OUTCOME_SUCCEEDED"
    assert executed["stdout"] == f"hello from node, job {job['id']}\n"
    assert registered == {"call": "RegisterJob", "callbacks": 1}
    assert published["duplicate"] is False
    [fired] = published["fired"]
    assert fired["outcome"] == "OUTCOME_SUCCEEDED"
    assert fired["stdout"] == f"fired by a node event for job {job['id']}\n"

    runs = await stack.client.list_runs()
    assert {r.invocation_id for r in runs.runs} >= {
        executed["invocation_id"],
        fired["invocation_id"],
    }


async def test_node_client_reports_a_refusal(installed_client: Path, tmp_path: Path) -> None:
    assert NODE is not None
    async with running_stack(stack_settings(tmp_path / "data", auth_token="right")) as stack:
        env = {**os.environ, "CBEXEC_PROTO_ROOT": str(REPO / "proto"), "CBEXEC_AUTH_TOKEN": "x"}
        code, _, err = await _run(
            NODE, "client.js", stack.address, "--no-events",
            cwd=installed_client, env=env, timeout_s=60,
        )  # fmt: skip
    assert code == 1
    assert "Execute failed: UNAUTHENTICATED" in err
    # Not a number a job id can be: refused before any call (was sent as an odd id; 0,
    # which no job has, was sent and refused by the executor).
    for job in ("0", "-4", "abc", "9223372036854775808"):
        code, _, err = await _run(
            NODE,
            "client.js",
            stack.address,
            "--job",
            job,
            cwd=installed_client,
            env=env,
            timeout_s=60,
        )
        assert (code, err.strip()) == (
            2,
            f"--job: expected a job id from 1 to 9223372036854775807, got {job}",
        )


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_node_client_skips_an_executor_that_is_down(
    stack: Stack, installed_client: Path
) -> None:
    """A fleet list whose first executor is down: every call goes to the one that is up."""
    assert NODE is not None
    job = stack.supervisor.submit([{"name": "from-node", "user": "node"}])[0]
    env = {**os.environ, "CBEXEC_PROTO_ROOT": str(REPO / "proto"), "CBEXEC_AUTH_TOKEN": ""}
    fleet = f"127.0.0.1:{_closed_port()},{stack.address}"
    code, out, err = await _run(
        NODE, "client.js", fleet, "--job", str(job["id"]), "--executes", "3",
        cwd=installed_client, env=env, timeout_s=60,
    )  # fmt: skip
    assert code == 0, out + err
    calls = [json.loads(line)["call"] for line in out.splitlines()]
    assert calls == ["Execute"] * 3 + ["RegisterJob", "PublishEvent"]


async def test_node_client_balances_round_robin_over_two_executors(
    stack_warm: Stack, installed_client: Path, tmp_path: Path
) -> None:
    """Two executors (separate trigger stores, so Execute only): both take calls."""
    assert NODE is not None
    second_settings = stack_settings(tmp_path / "second", sandbox_uid_base=TEST_UID_BASE + 100)
    async with running_stack(second_settings) as second:
        env = {**os.environ, "CBEXEC_PROTO_ROOT": str(REPO / "proto"), "CBEXEC_AUTH_TOKEN": ""}
        fleet = f"{stack_warm.address},{second.address}"
        code, out, err = await _run(
            NODE, "client.js", fleet, "--executes", "8", "--no-events",
            cwd=installed_client, env=env, timeout_s=60,
        )  # fmt: skip
        assert code == 0, out + err
        assert len(out.splitlines()) == 8

        async def ran(stack: Stack) -> int:
            return (await stack.client.get_metrics()).runs_by_outcome.get("SUCCEEDED", 0)

        assert await eventually(lambda: _both_ran(ran(stack_warm), ran(second), 8), timeout_s=10)


async def _both_ran(first: Awaitable[int], second: Awaitable[int], total: int) -> bool:
    on_first, on_second = await first, await second
    return on_first >= 2 and on_second >= 2 and on_first + on_second == total


async def test_node_client_takes_a_token_as_the_python_client_does(
    installed_client: Path, tmp_path: Path
) -> None:
    """A token file's newline is not the token; anything unprintable inside is refused."""
    assert NODE is not None
    token = "n0de-s3cret"
    async with running_stack(stack_settings(tmp_path / "data", auth_token=token)) as stack:
        env = {**os.environ, "CBEXEC_PROTO_ROOT": str(REPO / "proto")}
        for given, extra in ((f"{token}\n", []), ("x", ["--token", f"  {token}\r\n"])):
            code, out, err = await _run(
                NODE, "client.js", stack.address, "--no-events", *extra,
                cwd=installed_client, env={**env, "CBEXEC_AUTH_TOKEN": given}, timeout_s=60,
            )  # fmt: skip
            assert code == 0, out + err
            assert json.loads(out)["outcome"] == "OUTCOME_SUCCEEDED"
        for bad, position in (
            (f"{token[:3]}\n{token[3:]}", 4),
            (f"{token}\x7f", 12),
            (f"tøk{token}", 2),
        ):
            code, out, err = await _run(
                NODE, "client.js", stack.address, "--no-events",
                cwd=installed_client, env={**env, "CBEXEC_AUTH_TOKEN": bad}, timeout_s=60,
            )  # fmt: skip
            assert (code, out) == (2, "")
            assert err == (
                f"--token: character {position} is not printable ASCII, "
                "and gRPC metadata carries nothing else\n"
            )
