"""A SIGHUP that reaches ``cbexec serve`` during its start-up: one reload once it is up, never a death.

SIGHUP is the documented reload signal; config management may send it right after a
restart. It killed the executor silently (exit by signal, no log line) until the reload
handler was installed, after all of start-up. A real executor process is held at a point
of its start-up (before ``start``, or after it and before ``serve_forever`` installs its
handlers) by a gate file, in that process only; the test sends SIGHUP there, then opens
the gate.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Final

import pytest

from supervisor_client import ExecutorClient
from tests.helpers.executor_process import executor_process
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

# The executor, ``start`` held before or after its work until the gate file exists; the
# held file, written when it waits there, holds its pid.
HELD_START: Final = """
import asyncio, os, sys
import executor.server as server
real_start = server.start
async def wait_at_gate():
    with open(os.environ["HUP_TEST_HELD"] + ".partial", "w") as held:
        held.write(str(os.getpid()))
    os.rename(os.environ["HUP_TEST_HELD"] + ".partial", os.environ["HUP_TEST_HELD"])
    while not os.path.exists(os.environ["HUP_TEST_GATE"]):
        await asyncio.sleep(0.01)
async def held_start(settings):
    if os.environ["HUP_TEST_WHERE"] == "before":
        await wait_at_gate()
    running = await real_start(settings)
    if os.environ["HUP_TEST_WHERE"] == "after":
        await wait_at_gate()
    return running
server.start = held_start
from executor.cli import main
sys.exit(main())
"""


@pytest.mark.parametrize("where", ["before", "after"])
async def test_a_sighup_during_start_up_is_one_reload_once_up(tmp_path: Path, where: str) -> None:
    data, log = tmp_path / "data", tmp_path / "executor.log"
    callbacks = data / "callback"
    callbacks.mkdir(parents=True)
    for name in ("first.py", "added.py"):
        (callbacks / name).write_text("print('hi')\n")
    conf = callbacks / "callbacks.conf"
    conf.write_text("first.py = submit-job-self\n")
    held, gate = tmp_path / "held", tmp_path / "gate"
    env = {"HUP_TEST_HELD": str(held), "HUP_TEST_GATE": str(gate), "HUP_TEST_WHERE": where}

    async def hup_while_held() -> None:
        assert await eventually(held.exists, timeout_s=60), log.read_text()
        # What an admin's restart-then-reload does: a new line, then SIGHUP.
        conf.write_text("first.py = submit-job-self\nadded.py = submit-job-self\n")
        os.kill(int(held.read_text()), signal.SIGHUP)
        gate.touch()

    # The helper returns once the executor serves: held before start, it serves only
    # after the gate opens, so the signal is sent beside it.
    hup = asyncio.create_task(hup_while_held())
    try:
        async with executor_process(data, "", log, launcher=("-c", HELD_START), env=env) as running:
            await hup
            said = "SIGHUP during start-up: reloading callbacks.conf now that the executor is up"
            assert await eventually(
                lambda: said in log.read_text() or running.proc.returncode is not None,
                timeout_s=30,
            )
            assert running.proc.returncode is None, log.read_text()
            async with ExecutorClient(running.address) as client:

                async def names() -> list[str]:
                    listed = await client.get_universal_callbacks()
                    return [Path(cb.source).name for d in listed.directories for cb in d.callbacks]

                # The reload reads the files on a worker thread after the line is logged.
                for _ in range(100):
                    if await names() == ["first.py", "added.py"]:
                        break
                    await asyncio.sleep(0.1)
                assert await names() == ["first.py", "added.py"], log.read_text()
            assert log.read_text().count(said) == 1
    finally:
        hup.cancel()
