"""Signals at any moment of ``cbexec serve``'s start-up: a clean stop, or a reload once up.

Each test is a real executor process that signals itself at one point of its start-up
(so the point is the same on every run): while its first modules import, while gRPC
starts a server (the embedded supervisor's, then the executor's own). A Ctrl-C there
was a KeyboardInterrupt traceback, or a cancelled gRPC start whose stop raised
InvalidStateError ("Task exception was never retrieved", exit 1); a SIGHUP before the
CLI's own modules ended the process (probe 107).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import psutil
import pytest

from tests.conftest import TEST_UID_BASE
from tests.helpers.cli import ROOT
from tests.helpers.executor_process import kill_family
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

# The signal (SIGNAL_TEST_SIGNUM) the process sends itself just after ``import executor``.
AT_IMPORT: Final = """
import os, signal, sys
import executor
os.kill(os.getpid(), int(os.environ["SIGNAL_TEST_SIGNUM"]))
from executor.cli import main
sys.exit(main())
"""

# SIGINT as gRPC's n-th server start (SIGNAL_TEST_NTH) begins: 1, the embedded
# supervisor's; 2, the executor's own.
AT_SERVER_START: Final = """
import os, signal, sys
from grpc.aio import _server
real_start = _server.Server.start
started = 0
async def start(self):
    global started
    started += 1
    if started == int(os.environ["SIGNAL_TEST_NTH"]):
        os.kill(os.getpid(), signal.SIGINT)
    await real_start(self)
_server.Server.start = start
from executor.cli import main
sys.exit(main())
"""

STOPPED: Final = "stopping during start-up: stopped what had started; not serving"


async def serve(
    tmp_path: Path,
    code: str,
    env: dict[str, str],
    *,
    stop_on: str = "",
    at_exec: Sequence[str] = (),
) -> tuple[int, str]:
    """``python -c CODE serve ...`` to its end (killed if it overstays): exit code, log.

    ``code`` empty: ``python -m executor serve``. ``at_exec``: a command run as soon as
    the process exists, ``{pid}`` in it replaced by its pid. ``stop_on``: a SIGTERM once
    the log says this.
    """
    log = tmp_path / "executor.log"
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *(("-c", code) if code else ("-m", "executor")),
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
            "--max-concurrent",
            "2",
            env={**os.environ, "CBEXEC_SANDBOX_UID_BASE": str(TEST_UID_BASE + 700), **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            start_new_session=True,
        )
    family = psutil.Process(proc.pid)
    try:
        if at_exec:
            sent = await asyncio.create_subprocess_exec(
                *(word.replace("{pid}", str(proc.pid)) for word in at_exec)
            )
            assert await asyncio.wait_for(sent.wait(), 60) == 0
        if stop_on:
            await eventually(
                lambda: stop_on in log.read_text() or proc.returncode is not None, timeout_s=60
            )
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        await kill_family(proc, family)
    return exit_code, log.read_text()


def assert_clean_stop(code: int, log: str) -> None:
    assert (code, log.count(STOPPED)) == (0, 1), log
    # (A start a few awaits from its end may end before the stop is taken: then it is
    # stopped at once, so "serving on port" may be said.)
    for wrong in ("Traceback", "never retrieved", "InvalidStateError"):
        assert wrong not in log, log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_stop_signal_as_the_executor_imports_stops_it_cleanly(
    tmp_path: Path, signum: int
) -> None:
    code, log = await serve(tmp_path, AT_IMPORT, {"SIGNAL_TEST_SIGNUM": str(signum)})
    assert_clean_stop(code, log)


@pytest.mark.parametrize("nth", [1, 2])
async def test_a_ctrl_c_as_grpc_starts_a_server_stops_it_cleanly(tmp_path: Path, nth: int) -> None:
    code, log = await serve(tmp_path, AT_SERVER_START, {"SIGNAL_TEST_NTH": str(nth)})
    assert_clean_stop(code, log)
    # What had started was stopped: the next start finds the data dir free.
    assert not (tmp_path / "data" / "supervisor.sock").exists(), log


async def test_a_sighup_as_the_executor_imports_is_a_reload_once_up(tmp_path: Path) -> None:
    said = "SIGHUP during start-up: reloading callbacks.conf now that the executor is up"
    env = {"SIGNAL_TEST_SIGNUM": str(signal.SIGHUP)}
    code, log = await serve(tmp_path, AT_IMPORT, env, stop_on=said)
    assert (code, log.count(said)) == (0, 1), log


async def test_a_ctrl_c_as_a_client_command_starts_is_one_interrupt(tmp_path: Path) -> None:
    # A command that is no service: a Ctrl-C while its parser's modules import ends it,
    # 130 as a shell reports it, with no traceback.
    # As a terminal's Ctrl-C finds it: a process started in the background (a CI job's
    # `cmd &`) inherits SIGINT ignored, and Python then leaves it so.
    code = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
import executor.cli as cli
real = cli.build_parser
def build_parser():
    os.kill(os.getpid(), signal.SIGINT)
    return real()
cli.build_parser = build_parser
sys.exit(cli.main())
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "runs",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, out, err) == (130, b"", b"")


async def test_the_example_units_reload_as_it_starts_is_a_reload_once_up(tmp_path: Path) -> None:
    # systemd calls a Type=exec unit started at exec, so `systemctl reload` may come
    # before the interpreter has run a line of the executor's: the unit's ExecReload
    # waits for the handler. (Its old `kill -HUP $MAINPID` killed the process there.)
    unit = (ROOT / "scripts" / "cbexec.service").read_text()
    (reload,) = [line for line in unit.splitlines() if line.startswith("ExecReload=")]
    command = shlex.split(reload.removeprefix("ExecReload=").replace("$MAINPID", "{pid}"))
    command = [word.replace("${MAINPID}", "{pid}") for word in command]
    said = "SIGHUP during start-up: reloading callbacks.conf now that the executor is up"
    code, log = await serve(tmp_path, "", {}, at_exec=command, stop_on=said)
    assert (code, log.count(said)) == (0, 1), log
