"""The executor's files in its data dir are its own, whatever the directory's mode.

An admin who makes the data dir beforehand (``install -d``, 0755) left every run's output
(runs.db), the outbox and the trigger store readable by every local user: the files took
the process umask (022), and only a data dir the executor made itself was 0700.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.runs.callback_log import log_path
from tests.conftest import running_stack, stack_settings
from tests.helpers.waiting import eventually

pytestmark = [pytest.mark.service, pytest.mark.timeout(60)]


@pytest.fixture
def umask_022() -> Iterator[None]:
    before = os.umask(0o022)  # root's usual one, whatever the test runner's
    try:
        yield
    finally:
        os.umask(before)


def modes(root: Path) -> dict[str, int]:
    """Every regular file under ``root`` (relative name -> permission bits)."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory, name)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                found[str(path.relative_to(root))] = stat.S_IMODE(mode)
    return found


@pytest.mark.usefixtures("umask_022")
async def test_files_in_a_0755_data_dir_are_the_executor_s_own(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "hello.py").write_text("print('hello')\n")
    (callbacks / "callbacks.conf").write_text("hello.py = submit-job-self\n")
    for path in (callbacks, *callbacks.iterdir()):  # refused writable by others
        path.chmod(0o755)
    settings = stack_settings(data, universal_callback_path=str(callbacks))
    async with running_stack(settings) as stack:
        (job,) = stack.supervisor.submit([{"name": "j", "user": "alice"}])
        await stack.settle()
        cb_log = log_path(data / "logs", job["id"])
        assert await eventually(lambda: cb_log.exists() and "hello" in cb_log.read_text())
        found = modes(data)
    for name in ("runs.db", "triggers.db", "outbox.db", "supervisor.db"):
        assert found[name] == 0o600, (name, oct(found[name]))
    assert found["universal-last-good.json"] == 0o600
    # A .cb log keeps its group (its directories are 0750, for a log reader's group).
    assert found[str(cb_log.relative_to(data))] == 0o640
    readable = {name: oct(mode) for name, mode in found.items() if mode & 0o007}
    assert not readable, readable


@pytest.mark.usefixtures("umask_000")
async def test_under_umask_000_the_log_tree_is_0750_and_a_planted_link_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its parents were 0777, and a local user's link at logs/job/0/2 had the executor
    # write job 2's log (as root) where it pointed (probe 82).
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    victim = tmp_path / "victim"
    victim.mkdir()
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "hello.py").write_text("print('hello')\n")
    (callbacks / "callbacks.conf").write_text("hello.py = submit-job-self\n")
    for path in (callbacks, *callbacks.iterdir()):  # refused writable by others
        path.chmod(0o755)
    settings = stack_settings(data, universal_callback_path=str(callbacks))
    logs = data / "logs"
    async with running_stack(settings) as stack:
        (first,) = stack.supervisor.submit([{"name": "j", "user": "alice"}])
        await stack.settle()
        first_log = log_path(logs, first["id"])
        assert await eventually(lambda: first_log.exists() and "hello" in first_log.read_text())
        tree = [logs, logs / "job", logs / "job/0", first_log.parent]
        assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in tree} == {
            str(p): "0o750" for p in tree
        }
        planted = log_path(logs, first["id"] + 1).parent
        planted.symlink_to(victim)
        (second,) = stack.supervisor.submit([{"name": "j", "user": "alice"}])
        assert second["id"] == first["id"] + 1
        await stack.settle()
        history = stack.running.recorder.history
        assert await eventually(lambda: len(history.list_runs(job_id=second["id"])) == 1)
        (run,) = history.list_runs(job_id=second["id"])
        assert run.outcome.value == "SUCCEEDED"
        assert await eventually(
            lambda: any("its .cb entry is not written" in r.getMessage() for r in caplog.records)
        )
    assert list(victim.iterdir()) == []
    assert planted.is_symlink()
