"""Two executors on one host never share sandbox uids: each claims its range while it runs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from executor import server
from executor.errors import ConfigError
from executor.sandbox.identity import UidClaim
from executor.sandbox.tier import describe_tier
from supervisor_client import ExecutorClient
from tests.conftest import stack_settings

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(120)]


def _hardened() -> None:
    if os.geteuid() != 0:
        pytest.skip("dedicated sandbox uids need root")


async def _uid_of_a_callback(port: int) -> int:
    async with ExecutorClient(f"127.0.0.1:{port}") as client:
        response = await client.execute_callback(
            language="python", code="import os\nprint(os.getuid())", job={"id": 1}
        )
    assert response.stdout.strip(), response  # what ran, when it printed nothing
    return int(response.stdout)


async def test_a_second_executor_with_the_same_uids_is_refused(tmp_path: Path) -> None:
    _hardened()
    first = await server.start(stack_settings(tmp_path / "first"))
    try:
        plan = first.options.isolation
        assert plan is not None
        assert f"dedicated uids {plan.uid_base}-{plan.uid_base + plan.uid_count - 1}" in (
            describe_tier(first.options)
        )
        with pytest.raises(ConfigError) as refused:
            await server.start(stack_settings(tmp_path / "second"))
        message = str(refused.value)
        assert "sandbox_uid_base" in message and f"pid {os.getpid()}" in message
    finally:
        await first.stop()
    again = await server.start(stack_settings(tmp_path / "second"))  # released at stop
    await again.stop()


async def test_executors_side_by_side_run_callbacks_as_different_uids(tmp_path: Path) -> None:
    _hardened()
    one = await server.start(stack_settings(tmp_path / "one"))
    try:
        assert one.options.isolation is not None
        other_base = one.options.isolation.uid_base + one.options.isolation.uid_count
        two = await server.start(stack_settings(tmp_path / "two", sandbox_uid_base=other_base))
        try:
            uid_one, uid_two = await asyncio.gather(
                _uid_of_a_callback(one.port), _uid_of_a_callback(two.port)
            )
        finally:
            await two.stop()
    finally:
        await one.stop()
    assert one.options.isolation.uid_base <= uid_one < other_base
    assert other_base <= uid_two


async def test_a_killed_executor_leaves_its_uids_free(tmp_path: Path) -> None:
    claims = tmp_path / "claims"
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys, time\n"
        "from pathlib import Path\n"
        "from executor.sandbox.identity import UidClaim\n"
        f"UidClaim.take(70000, 4, Path({str(claims)!r}))\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"held\n"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            UidClaim.take(70002, 4, claims)
    finally:
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
    claim = UidClaim.take(70000, 4, claims)
    assert str(claim) == "70000-70003"
    claim.release()


def test_a_throwaway_executor_takes_the_next_free_range(tmp_path: Path) -> None:
    held = UidClaim.take(70000, 4, tmp_path)
    try:
        assert UidClaim.free_first(70000, 4, directory=tmp_path) == 70004
        with pytest.raises(ConfigError, match="no free range of 4 uids from 70000 to 70003"):
            UidClaim.free_first(70000, 4, tries=1, directory=tmp_path)
    finally:
        held.release()
    assert UidClaim.free_first(70000, 4, directory=tmp_path) == 70000
