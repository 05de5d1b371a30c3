"""The README's "Try it in five minutes" and "Drive it from Python", followed literally.

The commands come from the README's fenced blocks tagged ``console walkthrough`` (``$``
lines; the lines under each are what the README says you will see) and the program from
the block tagged ``python client-example``, as .ci/run reads the quick start: the README
cannot drift from what this proves. The program runs once after the walkthrough, on the
same service, as a reader following the README in order runs it, and once on a fresh
one, as a reader who skips the walkthrough does. They run against a real executor started as the
quick start's (the defaults, its data dir under ``~/.local/share/cbexec``, with ``HOME``
a temporary directory), in a directory where ``scripts/`` is the repository's, with
``.venv/bin/cbexec`` meaning this interpreter's ``python -m executor``.

Reading the expected output: ``…`` in a line stands for any text, a line that is only
``…`` for any number of lines, and runs of spaces are one space (table columns widen
with their content). The README's address, 127.0.0.1:50051, is the server's here.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import pytest

from executor import server
from supervisor_client.reference.farm import Farm
from tests.conftest import stack_settings
from tests.helpers.cli import ROOT

pytestmark = pytest.mark.service

README: Final = ROOT / "README.md"
README_ADDRESS: Final = "127.0.0.1:50051"
CLI: Final = ".venv/bin/cbexec"
ELLIPSIS: Final = "…"


def fenced(tag: str) -> list[list[str]]:
    """The README's fenced blocks whose info string is ``tag``, as lists of lines."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in README.read_text().splitlines():
        if current is None and line.strip() == f"```{tag}":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, f"unclosed ```{tag} block"
    return blocks


def steps(blocks: list[list[str]]) -> list[tuple[str, list[str]]]:
    """(command, the output the README shows for it), in README order."""
    found: list[tuple[str, list[str]]] = []
    for block in blocks:
        for line in block:
            if line.startswith("$ "):
                found.append((line[2:], []))
            else:
                assert found, f"output before any command: {line!r}"
                found[-1][1].append(line)
    return found


def _pattern(line: str) -> re.Pattern[str]:
    parts = (re.escape(part) for part in " ".join(line.split()).split(ELLIPSIS))
    return re.compile(".*".join(parts))


def shows(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is what ``expected`` shows (``…`` lines and spans, spaces)."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head.strip() == ELLIPSIS:
        return any(shows(rest, actual[i:]) for i in range(len(actual) + 1))
    return bool(
        actual and _pattern(head).fullmatch(" ".join(actual[0].split())) and shows(rest, actual[1:])
    )


@pytest.fixture
async def quick_start_service(
    tmp_path: Path,
) -> AsyncIterator[tuple[str, Path, server.RunningServer]]:
    """The service as the quick start runs it; its address, the shell's HOME, the server."""
    home = tmp_path / "home"
    home.mkdir()
    running = await server.start(stack_settings(home / ".local" / "share" / "cbexec"))
    try:
        yield f"127.0.0.1:{running.port}", home, running
    finally:
        await running.stop()


def shell_env(address: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_DATA_HOME", "CBEXEC_AUTH_TOKEN")}
    return {**env, "HOME": str(home), "CBEXEC_ADDRESS": address}


def literal(command: str) -> str:
    """The command as the shell runs it here: ``.venv/bin/cbexec`` is this interpreter's."""
    return command.replace(CLI, f"{shlex.quote(sys.executable)} -m executor")


async def test_try_it_in_five_minutes(
    quick_start_service: tuple[str, Path, server.RunningServer], tmp_path: Path
) -> None:
    address, home, running = quick_start_service
    work = tmp_path / "work"
    work.mkdir()
    (work / "scripts").symlink_to(ROOT / "scripts")
    env = shell_env(address, home)
    walkthrough = steps(fenced("console walkthrough"))
    assert len(walkthrough) >= 15, "the walkthrough lost its steps"
    background: list[asyncio.subprocess.Process] = []
    try:
        for command, said in walkthrough:
            expected = [line.replace(README_ADDRESS, address) for line in said]
            if command.endswith("&"):
                background.append(
                    await asyncio.create_subprocess_exec(
                        "bash", "-c", "exec " + literal(command[:-1]), cwd=work, env=env
                    )
                )
                continue
            if command == "kill %1":
                job = background.pop(0)
                job.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(job.wait(), 30) == 0
                continue
            proc = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                literal(command),
                cwd=work,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 90)
            assert (proc.returncode, err.decode()) == (0, ""), command
            lines = out.decode().splitlines()
            assert shows(expected, lines), (
                f"{command}\nREADME:\n" + "\n".join(expected) + "\nactual:\n" + "\n".join(lines)
            )
    finally:
        for job in background:
            if job.returncode is None:
                job.kill()
            await job.wait()

    # What the README says the workers' log shows: jobB's frame N taken only after jobA's
    # frame N completed.
    log = (work / "workers.log").read_text().splitlines()
    for frame in range(1, 6):
        done = next(i for i, line in enumerate(log) if line.endswith(f": 1:{frame} complete"))
        taken = next(i for i, line in enumerate(log) if line.endswith(f"took 2:{frame} (jobB)"))
        assert done < taken, log

    # What the README says of logFailuresToDB.py: without a policy granting the admin's
    # log directory, the database cannot be written.
    history = running.recorder.history
    (logged,) = [r for r in history.list_runs(job_id=3) if r.source.endswith("/logFailuresToDB.py")]
    record = history.get(logged.invocation_id)
    assert record is not None and record.result is not None
    assert record.result.outcome == "FAILED"
    assert (
        "cannot record job 3 in /var/log/cbexec-callbacks/failures.db: unable to open database file"
        in record.result.stderr
    )
    assert "job 3 (shot010) of" in record.result.stdout
    assert running.reference is not None and Farm(running.reference).status(3) == "failed"

    # "Drive it from Python" next, on the same service: step 4's universal callbacks
    # attached to its job too, and two failed runs more were printed than the README showed.
    await shows_the_client_example_output(address, home, tmp_path)


async def shows_the_client_example_output(address: str, home: Path, tmp_path: Path) -> None:
    """Run the README's client example against ``address``; it prints what the README shows."""
    (program,) = fenced("python client-example")
    (expected,) = fenced("text client-example-output")
    script = tmp_path / "client.py"
    script.write_text("\n".join(program) + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env=shell_env(address, home),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert (proc.returncode, err.decode()) == (0, "")
    assert out.decode().splitlines() == expected


async def test_drive_it_from_python(
    quick_start_service: tuple[str, Path, server.RunningServer], tmp_path: Path
) -> None:
    address, home, _ = quick_start_service
    await shows_the_client_example_output(address, home, tmp_path)


def test_the_expected_output_reader() -> None:
    assert shows(["a  b", "…", "z"], ["a b", "x", "y", "z"])
    assert shows(["… 2 5 ok …"], ["2026  abc  2  5  ok  0.1s"])
    assert not shows(["a"], ["a", "b"])
    assert not shows(["… 2 5 ok"], ["x 2 5 failed"])
    assert shows(["…"], [])
