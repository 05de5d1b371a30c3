"""The clients used wrongly: after close, with a token read from a file, against a fleet.

Each failure here once escaped as something other than the library's error types, or
took the process down: ``health()`` on a client closed before its first call corrupted
the heap (gRPC's C core registering a method on a closed channel), so those run in a
process of their own, whose exit status is the verdict.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from executor.config_checks import validate
from executor.errors import ConfigError
from supervisor_client import ClientClosedError, ExecutorClient, FarmClient
from tests.conftest import running_stack, stack_settings
from tests.helpers.cli import ROOT, cbexec, cli_env

pytestmark = pytest.mark.service

TOKEN = "tok-s3cret"

CLOSED = """
import asyncio
from supervisor_client import ClientClosedError, ExecutorClient, FarmClient

async def main() -> None:
    for make, call in [
        (ExecutorClient, lambda c: c.health()),
        (ExecutorClient, lambda c: c.wait_until_serving(5)),
        (ExecutorClient, lambda c: c.get_metrics()),
        (ExecutorClient, lambda c: c.execute_callback(language="python", code="", job={"id": 1})),
        (FarmClient, lambda c: c.list_jobs()),
    ]:
        client = make("127.0.0.1:1")
        await client.close()
        try:
            await call(client)
        except ClientClosedError as err:
            print("closed:", err)

asyncio.run(main())
print("alive")
"""


async def test_a_client_closed_before_its_first_call_says_so_and_the_process_lives() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLOSED,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()  # was 134: malloc_consolidate(), heap corrupt
    lines = out.decode().splitlines()
    assert lines == [
        *["closed: CANCELLED: the client is closed; open a new one to call again"] * 5,
        "alive",
    ]


async def test_a_client_closed_after_use_says_so(tmp_path: Path) -> None:
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        client = ExecutorClient(stack.address)
        assert await client.health() == "SERVING"
        await client.close()
        with pytest.raises(ClientClosedError):
            await client.health()
        with pytest.raises(ClientClosedError):
            await client.wait_until_serving(5)  # at once, not after 5 s of retries
        # A channel given and closed by its owner: grpc's UsageError, as the same error.
        farm = FarmClient(stack.channel)
        await stack.channel.close()
        with pytest.raises(ClientClosedError):
            await farm.list_jobs()


async def test_a_call_under_way_when_its_client_is_closed_says_so(tmp_path: Path) -> None:
    # It raised a bare CancelledError: past `except Exception`, read as the caller's own.
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        client = ExecutorClient(stack.address)
        call = asyncio.ensure_future(
            client.execute_callback(
                language="python", code="import time; time.sleep(5)", job={"id": 1}
            )
        )
        await asyncio.sleep(0.5)
        await client.close()
        with pytest.raises(ClientClosedError):
            await call
        assert not call.cancelled()
        # The caller's own cancellation stays one.
        async with ExecutorClient(stack.address) as other:
            mine = asyncio.ensure_future(
                other.execute_callback(
                    language="python", code="import time; time.sleep(5)", job={"id": 1}
                )
            )
            await asyncio.sleep(0.5)
            mine.cancel()
            with pytest.raises(asyncio.CancelledError):
                await mine
            assert mine.cancelled()


async def test_a_token_with_a_newline_works_on_both_sides(tmp_path: Path) -> None:
    """A token file's newline, on the executor's side and the client's, is not the token."""
    settings = stack_settings(tmp_path / "data", auth_token=f"  {TOKEN}\n")
    async with running_stack(settings) as stack:
        async with ExecutorClient(stack.address, token=f"{TOKEN}\n") as client:
            assert await client.health() == "SERVING"
            await client.get_metrics()  # behind the token
        said = await cbexec(
            "metrics", "--json", env=cli_env(stack.address, CBEXEC_AUTH_TOKEN=f"{TOKEN}\n")
        )
        assert said.code == 0, said
        said = await cbexec("metrics", "--token", "wrong", address=stack.address)
        assert (said.code, said.err) == (
            3,
            "cbexec: UNAUTHENTICATED: the bearer token does not match this executor's token\n",
        )


def test_an_executor_refuses_a_token_no_client_can_send(tmp_path: Path) -> None:
    for token, reason in (("tøk", "character 2 is not printable ASCII"), (" \n", "whitespace")):
        with pytest.raises(ConfigError, match=f"auth_token: .*{reason}") as refused:
            validate(stack_settings(tmp_path / "data", auth_token=token))
        assert "tøk" not in str(refused.value)
    validate(stack_settings(tmp_path / "data", auth_token=f"{TOKEN}\n"))


async def test_metrics_through_a_fleet_say_they_are_one_replicas(tmp_path: Path) -> None:
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        said = await cbexec("metrics", address=f"{stack.address},127.0.0.1:1")
        assert said.code == 0, said
        assert "one replica's numbers" in said.err
        said = await cbexec("metrics", address=stack.address)
        assert said.code == 0 and said.err == "", said
