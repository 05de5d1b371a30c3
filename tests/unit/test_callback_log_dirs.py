"""The .cb logs' directories: 0750 whatever the umask, and nothing planted in them followed.

Only the innermost directory was 0750 (pathlib gives ``mode`` to the last one only): under
umask 000 ``logs/``, ``logs/job/`` and ``logs/job/0/`` were 0777, and a local user's link
at ``logs/job/0/2`` had the executor write job 2's log, as root, where it pointed (probe 82).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.owned_dirs import UnsafePathError
from executor.runs.bookkeeping import BookkeepingWriter
from executor.runs.callback_log import CallbackLog, log_path
from executor.runs.history import RunHistory
from executor.runs.metrics import Metrics
from tests.unit.test_history import invocation, result

pytestmark = pytest.mark.unit

# Whoever the test runs as, a uid that is not it (the tests run as root or as a user).
OTHER_UID = 65534 if os.geteuid() != 65534 else 65533


@pytest.fixture(params=[0o000, 0o022, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def append(log: CallbackLog, job_id: int, inv_id: str = "run-1") -> Path:
    return log.append(invocation(inv_id, job_id=job_id), result(inv_id), time.time())


@pytest.mark.usefixtures("umask")
def test_every_directory_made_for_the_logs_is_0750_and_the_log_0640(tmp_path: Path) -> None:
    # log_dir and a parent of it missing too, as a separate log_dir may be.
    root = tmp_path / "var" / "cbexec-logs"
    written = append(CallbackLog(root, 1 << 20), 1234)
    assert written == log_path(root, 1234)
    made = [tmp_path / "var", root, root / "job", root / "job/1000", root / "job/1000/1234"]
    assert {str(p): oct(mode(p)) for p in made} == {str(p): "0o750" for p in made}
    assert mode(written) == 0o640


@pytest.mark.usefixtures("umask_000")
def test_a_directory_that_was_there_keeps_its_mode(tmp_path: Path) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    root.chmod(0o755)  # install -d, say
    append(CallbackLog(root, 1 << 20), 7)
    assert mode(root) == 0o755
    assert mode(root / "job") == 0o750


@pytest.mark.usefixtures("umask_000")
def test_a_setgid_log_dir_passes_its_group_and_setgid_bit_down(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory another group needs root")
    root = tmp_path / "logs"
    root.mkdir()
    os.chown(root, -1, 4242)
    root.chmod(0o2770)
    written = append(CallbackLog(root, 1 << 20), 7)
    for directory in (root / "job", root / "job/0", root / "job/0/7"):
        found = directory.stat()
        assert (oct(stat.S_IMODE(found.st_mode)), found.st_gid) == (oct(0o2750), 4242)
    assert written.stat().st_gid == 4242


@pytest.mark.parametrize("planted", ["job", "job/0", "job/0/2", "job/0/2/2.cb"])
def test_a_link_planted_in_the_tree_is_refused_and_nothing_written_where_it_points(
    tmp_path: Path, planted: str
) -> None:
    root = tmp_path / "logs"
    log = CallbackLog(root, 1 << 20)
    append(log, 1)  # the tree as a run makes it
    victim = tmp_path / "victim"
    victim.mkdir()
    link = root / planted
    if link.exists():
        if link.is_dir():
            link.rename(tmp_path / "moved-away")
        else:
            link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim / "2.cb" if planted.endswith(".cb") else victim)
    with pytest.raises(UnsafePathError, match=rf"{link} is a symbolic link"):
        append(log, 2)
    assert list(victim.iterdir()) == []
    assert link.is_symlink()


def test_a_directory_of_another_user_in_the_tree_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    root = tmp_path / "logs"
    log = CallbackLog(root, 1 << 20)
    append(log, 1)
    planted = root / "job/0/2"
    planted.mkdir()
    os.chown(planted, OTHER_UID, OTHER_UID)
    with pytest.raises(
        UnsafePathError, match=rf"{planted} belongs to uid {OTHER_UID}, not the executor's"
    ):
        append(log, 2)
    assert list(planted.iterdir()) == []


def test_a_file_of_another_user_is_not_appended_to(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    root = tmp_path / "logs"
    log = CallbackLog(root, 1 << 20)
    written = append(log, 2)
    os.chown(written, OTHER_UID, OTHER_UID)
    before = written.read_text()
    with pytest.raises(
        UnsafePathError, match=rf"{written} belongs to uid {OTHER_UID}, not the executor's"
    ):
        append(log, 2, "run-2")
    assert written.read_text() == before


def test_the_log_dir_itself_may_be_a_link_its_admin_made(tmp_path: Path) -> None:
    # log_dir is the admin's setting: a link there (/var/log -> /srv/log) is theirs.
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "logs").symlink_to(real)
    append(CallbackLog(tmp_path / "logs", 1 << 20), 3)
    assert log_path(real, 3).exists()


def test_the_bookkeeping_skips_a_refused_entry_with_a_warning_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    history = RunHistory(tmp_path / "runs.db", retention_days=1, max_runs=1000)
    root = tmp_path / "logs"
    log = CallbackLog(root, 1 << 20)
    append(log, 1)
    victim = tmp_path / "victim"
    victim.mkdir()
    (root / "job/0/2").symlink_to(victim)
    writer = BookkeepingWriter(history, log, Metrics())
    now = time.time()
    with caplog.at_level(logging.WARNING, logger="executor.runs.bookkeeping"):
        writer.submit(invocation("run-2", job_id=2), result("run-2"), ended_at=now, started_at=now)
        writer.submit(invocation("run-3", job_id=3), result("run-3"), ended_at=now, started_at=now)
        # Its job's next run: skipped alike, not warned of again.
        writer.submit(invocation("run-4", job_id=2), result("run-4"), ended_at=now, started_at=now)
        assert writer.flush()
        time.sleep(1.5)  # a kept entry would be tried again after a second
        writer.close()
    assert list(victim.iterdir()) == []
    assert history.get("run-2") is not None  # the run itself is recorded
    assert log_path(root, 3).exists()  # and the next job's log written
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"run run-2: its .cb entry is not written: {root}/job/0/2 is a symbolic link"
        " (not followed: the executor makes and writes only its own directories and files there)"
        " (said once for job 2: its later entries are skipped alike)"
    ]
