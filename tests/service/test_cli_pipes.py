"""A cbexec command whose reader goes away (``cbexec runs --json | head -2``) stops quietly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import running_stack, stack_settings
from tests.helpers.cli import ROOT, cli_env

pytestmark = pytest.mark.service


def into_a_closed_pipe(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``cbexec ARGV`` with its stdout a pipe nobody reads any more."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "executor", *argv],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)


def test_a_local_command_into_a_closed_pipe_ends_quietly() -> None:
    done = into_a_closed_pipe("store", "migrate", env=cli_env(CBEXEC_STORE=""))
    assert (done.returncode, done.stderr) == (141, "")


async def test_a_listing_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        for job in range(1, 4):
            await stack.client.execute_callback(
                language="python", code="print('hi')", job={"id": job, "user": "alice"}
            )
        done = await asyncio.to_thread(
            into_a_closed_pipe, "runs", "--json", env=cli_env(stack.address)
        )
    assert (done.returncode, done.stderr) == (141, "")
