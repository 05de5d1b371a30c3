"""Run the ``cbexec`` command as a real process, the way a user does, and collect what it says."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Said:
    """A finished command: its exit code and its output."""

    code: int
    out: str
    err: str


def cli_env(address: str = "", **extra: str) -> dict[str, str]:
    """The environment of a cbexec child: ours, with its address and no stray token."""
    return {**os.environ, "CBEXEC_ADDRESS": address, "CBEXEC_AUTH_TOKEN": "", **extra}


async def cbexec(
    *argv: str,
    address: str = "",
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    timeout_s: float = 60.0,
) -> Said:
    """``python -m executor ARGV`` to the end (killed and reaped if it overstays)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "executor",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else cli_env(address),
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Said(proc.returncode, out.decode(), err.decode())


def check_config(launcher: Sequence[str], data_dir: Path, uid_base: int) -> Said:
    """``serve --check-config`` with 4 slots, run as ``python LAUNCHER`` (its ``-c`` code first).

    ``launcher``: python's arguments before ``serve``, code that sets what it is checked
    under (an rlimit, a cgroup) and then runs ``executor.cli.main``.
    """
    done = subprocess.run(
        [
            sys.executable,
            *launcher,
            "serve",
            "--check-config",
            "--data-dir",
            str(data_dir),
            "--bind",
            "127.0.0.1:0",
            "--max-concurrent",
            "4",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "CBEXEC_SANDBOX_UID_BASE": str(uid_base)},
        timeout=120,
    )
    return Said(done.returncode, done.stdout, done.stderr)
