"""A reload meets callbacks.conf and its files as an admin leaves them, not as an editor does.

Probe 102: a reload that landed inside an editor's save (vim renames the file away and
writes a new one; others truncate, then write) took the missing or empty callbacks.conf
as "no universal callbacks" (``reloaded: 0 active``), kept it as the last good set and
stopped the removed lines' repeats at every job; a ``git checkout`` of the directory
gave sets of one commit's lines with the other's code. An empty callback file loaded
and ran as a no-op; one saved with a byte order mark failed (``.py``) or was REJECTED
at each firing (``.pl``); a directory or file anyone could write was loaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from executor.cli.check_config import _universal
from executor.errors import ConfigError
from executor.triggers.nodes import QB_TIME_EPOCH_OFFSET
from tests.conftest import Stack
from tests.helpers.cli import cbexec
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.service

CONF = "a.py = submit-job-self\nb.py = done-job-self\n"
BOM = "\ufeff"


def _callbacks(stack: Stack, conf: str = CONF) -> Path:
    directory = stack.settings.data_dir / "callback"
    directory.mkdir(exist_ok=True)
    (directory / "a.py").write_text("print('A ran')\n")
    (directory / "b.py").write_text("print('B ran')\n")
    (directory / "callbacks.conf").write_text(conf)
    return directory


def _truncate(conf: Path) -> None:
    conf.write_text("")  # nano, VS Code, `cat >`: truncate, then write


def _rename_away(conf: Path) -> None:
    conf.rename(conf.with_name(conf.name + "~"))  # vim: the old file kept as a backup


@pytest.mark.parametrize("save", [_truncate, _rename_away], ids=["truncated", "renamed"])
async def test_a_reload_inside_an_editors_save_takes_the_saved_file(
    stack_warm: Stack, save: Callable[[Path], None]
) -> None:
    directory = _callbacks(stack_warm)
    conf = directory / "callbacks.conf"
    assert (await stack_warm.client.reload_universal_callbacks()).active == 2
    begun = threading.Event()

    def editor() -> None:
        save(conf)
        begun.set()
        time.sleep(0.1)  # the save's window: the new text is not written yet
        conf.write_text(CONF + "# saved\n")

    writer = threading.Thread(target=editor)
    writer.start()
    try:
        await asyncio.to_thread(begun.wait, 10)
        reply = await stack_warm.client.reload_universal_callbacks()
    finally:
        await asyncio.to_thread(writer.join)

    assert (reply.reloaded, reply.active, list(reply.errors)) == (True, 2, [])
    kept = json.loads((stack_warm.settings.data_dir / "universal-last-good.json").read_text())
    assert len(kept["callbacks"]) == 2


async def test_a_callbacks_conf_emptied_for_good_still_removes_every_line(
    stack_warm: Stack,
) -> None:
    directory = _callbacks(stack_warm)
    assert (await stack_warm.client.reload_universal_callbacks()).active == 2
    (directory / "callbacks.conf").unlink()

    reply = await stack_warm.client.reload_universal_callbacks()

    assert (reply.reloaded, reply.active) == (True, 0)


@pytest.mark.parametrize("text", ["", "\n  \n"], ids=["empty", "blank"])
@pytest.mark.parametrize("name", ["a.py", "a.pl"])
async def test_an_empty_callback_file_is_refused_naming_it(
    stack_warm: Stack, name: str, text: str
) -> None:
    directory = _callbacks(stack_warm)
    assert (await stack_warm.client.reload_universal_callbacks()).active == 2
    (directory / name).write_text(text)
    (directory / "callbacks.conf").write_text(f"{name} = submit-job-self\n")

    reply = await stack_warm.client.reload_universal_callbacks()

    assert (reply.reloaded, reply.active) == (False, 2), "the previous set stays"
    assert list(reply.errors) == [
        f"{directory}/callbacks.conf:1: {name} is empty: no callback (saved half-way?)"
    ]


async def test_callback_files_saved_with_a_byte_order_mark_run(stack_warm: Stack) -> None:
    directory = _callbacks(stack_warm, "bom.py = submit-job-self\nbom.pl = submit-job-self\n")
    (directory / "bom.py").write_text(BOM + "print('python ran')\r\n")
    (directory / "bom.pl").write_text(BOM + 'print "perl ran\\n";\r\n')

    reply = await stack_warm.client.reload_universal_callbacks()
    assert (reply.reloaded, reply.active, list(reply.errors)) == (True, 2, [])
    (job,) = stack_warm.supervisor.submit([{"name": "bom", "user": "u"}])
    await stack_warm.settle()

    history = stack_warm.running.recorder.history
    said = []
    for record in history.list_runs(job_id=job["id"]):
        full = history.get(record.invocation_id)
        assert full is not None and full.result is not None
        assert full.result.failure is None, full.result.failure
        said.append(full.result.stdout.strip())
    assert sorted(said) == ["perl ran", "python ran"]


@pytest.mark.parametrize("suffix", ["py", "pl"])
async def test_cbexec_run_takes_a_file_with_a_byte_order_mark(
    stack_warm: Stack, tmp_path: Path, suffix: str
) -> None:
    code = tmp_path / f"bom.{suffix}"
    code.write_text(BOM + ("print('ran')\n" if suffix == "py" else 'print "ran\\n";\n'))
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"id": 7, "name": "j", "user": "u"}))

    said = await cbexec("run", str(code), "--job", str(job_file), address=stack_warm.address)

    assert said.code == 0, said.out + said.err
    assert "outcome: SUCCEEDED" in said.out and "ran" in said.out


def _group_writable_dir(directory: Path) -> str:
    directory.chmod(0o777)
    return (
        f"{directory}: the directory is writable by group or others (mode 0777): whoever "
        f"can write there has code run by the executor; chmod go-w {directory}"
    )


def _world_writable_file(directory: Path) -> str:
    (directory / "b.py").chmod(0o666)
    return (
        f"{directory}/callbacks.conf:2: b.py is writable by group or others (mode 0666): "
        f"whoever can write it has code run by the executor; chmod go-w {directory}/b.py"
    )


def _group_writable_conf(directory: Path) -> str:
    (directory / "callbacks.conf").chmod(0o620)
    return (
        f"{directory}/callbacks.conf: callbacks.conf is writable by group or others (mode "
        "0620): whoever can write it has code run by the executor; chmod go-w "
        f"{directory}/callbacks.conf"
    )


def _file_of_another_user(directory: Path) -> str:
    os.chown(directory / "a.py", 65534, -1)
    return (
        f"{directory}/callbacks.conf:1: a.py is owned by uid 65534, neither root nor the "
        f"executor's user (uid {os.geteuid()}): whoever owns it has code run by the executor; "
        f"chown root {directory}/a.py"
    )


@pytest.mark.parametrize(
    "loosen",
    [_group_writable_dir, _world_writable_file, _group_writable_conf, _file_of_another_user],
    ids=["dir-0777", "file-0666", "conf-0620", "file-of-nobody"],
)
async def test_a_callback_directory_or_file_others_may_write_is_refused(
    stack_warm: Stack, loosen: Callable[[Path], str]
) -> None:
    if os.geteuid() != 0 and loosen is _file_of_another_user:
        pytest.skip("only root gives a file away")
    directory = _callbacks(stack_warm)
    assert (await stack_warm.client.reload_universal_callbacks()).active == 2
    expected = loosen(directory)

    reply = await stack_warm.client.reload_universal_callbacks()

    assert (reply.reloaded, reply.active, list(reply.errors)) == (False, 2, [expected])
    # `serve --check-config --strict` says the same (without strict, start-up's NOT LOADED).
    with pytest.raises(ConfigError) as raised:
        _universal(stack_warm.settings.replace(strict=True))
    assert f"universal callbacks: {expected}" in str(raised.value)


async def test_a_line_added_back_ticks_again_at_the_jobs_it_stayed_attached_to(
    stack_warm: Stack,
) -> None:
    # Probe 102: a line removed by a reload (a save caught half-way, say) had its repeat
    # stopped at every job, and stopped for good: added back, it ticked only at jobs
    # registered after.
    directory = _callbacks(stack_warm, "")
    (directory / "tick.py").write_text("print('tick')\n")
    start = int(time.time()) - QB_TIME_EPOCH_OFFSET
    line = f"tick.py = globalrepeat-{start}-1\n"
    (directory / "callbacks.conf").write_text(line)
    assert (await stack_warm.client.reload_universal_callbacks()).active == 1
    await stack_warm.client.register_job({"id": 961, "user": "u", "callbacks": []})

    async def ticks() -> int:
        (explained,) = (await stack_warm.client.explain_callbacks(961)).callbacks
        return int(explained.callback.count)

    assert await eventually(lambda: _more(ticks, 0))
    (directory / "callbacks.conf").write_text("# tick.py is off for a while\n")
    assert (await stack_warm.client.reload_universal_callbacks()).active == 0
    stopped = await ticks()
    await asyncio.sleep(1.5)
    assert await ticks() == stopped, "its clock stopped with its line"

    (directory / "callbacks.conf").write_text(line)
    assert (await stack_warm.client.reload_universal_callbacks()).active == 1

    assert await eventually(lambda: _more(ticks, stopped), timeout_s=5)


async def _more(count: Callable[[], Awaitable[int]], than: int) -> bool:
    return await count() > than
