"""DataDirLock: one executor per data dir, whatever is done to its lock file, whatever its version."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor.data_dir_lock import LOCK_FILE, SUPERVISOR_SOCKET, DataDirLock
from executor.errors import ConfigError

pytestmark = pytest.mark.unit

IN_USE = "is in use by another executor"


@pytest.fixture
def held(tmp_path: Path) -> Iterator[DataDirLock]:
    lock = DataDirLock.take(tmp_path)
    yield lock
    lock.release()


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path, held: DataDirLock) -> None:
    with pytest.raises(ConfigError, match=rf"^data_dir: {tmp_path} {IN_USE} \(pid {os.getpid()}\)"):
        DataDirLock.take(tmp_path)
    with pytest.raises(ConfigError, match=IN_USE):
        DataDirLock.check(tmp_path)


def test_deleting_the_lock_file_under_a_holder_lets_no_second_one_in(
    tmp_path: Path, held: DataDirLock
) -> None:
    # The lock was the file's alone: a new file at the path was a new lock, and a second
    # executor ran the first one's firing in flight again (probe 61).
    (tmp_path / LOCK_FILE).unlink()
    with pytest.raises(ConfigError, match=rf"^data_dir: {tmp_path} {IN_USE}: give each"):
        DataDirLock.take(tmp_path)
    with pytest.raises(ConfigError, match=IN_USE):
        DataDirLock.check(tmp_path)


def test_a_lock_file_an_earlier_version_holds_refuses_too(tmp_path: Path) -> None:
    # The version before this one locked only cbexec.lock (and checks only it).
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match=IN_USE):
            DataDirLock.take(tmp_path)
    finally:
        os.close(fd)
    DataDirLock.take(tmp_path).release()


def test_a_listener_on_the_supervisor_socket_refuses_start_up_naming_it(tmp_path: Path) -> None:
    # An executor from before cbexec.lock takes no lock, but its embedded supervisor
    # listens there: an upgrade started while it drains shared its data dir (probe 61).
    path = tmp_path / SUPERVISOR_SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        expected = rf"^data_dir: {tmp_path} {IN_USE}: one listens on {path} \(an executor of"
        with pytest.raises(ConfigError, match=expected):
            DataDirLock.take(tmp_path)
        with pytest.raises(ConfigError, match=expected):
            DataDirLock.check(tmp_path)
    # Its socket file, left behind once it is gone, refuses: stale, not a holder.
    assert path.exists()
    DataDirLock.check(tmp_path)
    DataDirLock.take(tmp_path).release()


def test_a_lock_let_go_can_be_taken_again(tmp_path: Path) -> None:
    DataDirLock.take(tmp_path).release()
    DataDirLock.check(tmp_path)
    DataDirLock.take(tmp_path).release()


def test_a_directory_where_the_supervisor_socket_goes_is_refused_in_one_line(
    tmp_path: Path,
) -> None:
    # Start-up replaces what is there, and died with a traceback on a directory (probe 62).
    (tmp_path / SUPERVISOR_SOCKET).mkdir()
    expected = rf"^data_dir: {tmp_path / SUPERVISOR_SOCKET} is a directory; the embedded"
    with pytest.raises(ConfigError, match=expected):
        DataDirLock.check(tmp_path)
    with pytest.raises(ConfigError, match=expected):
        DataDirLock.take(tmp_path)


@pytest.mark.parametrize("kind", ["directory", "link"])
def test_something_else_where_the_lock_file_goes_is_refused_in_one_line(
    tmp_path: Path, kind: str
) -> None:
    # A directory there passed the check, then start-up died with an IsADirectoryError
    # traceback (probe 82); a link had start-up truncate the file it points to.
    path = tmp_path / LOCK_FILE
    if kind == "directory":
        path.mkdir()
        what = "is a directory"
    else:
        target = tmp_path / "elsewhere"
        target.write_text("keep me\n")
        path.symlink_to(target)
        what = "is a symbolic link"
    expected = rf"^data_dir: {path} {what}; the executor's lock file goes there: move it away$"
    with pytest.raises(ConfigError, match=expected):
        DataDirLock.check(tmp_path)
    with pytest.raises(ConfigError, match=expected):
        DataDirLock.take(tmp_path)
    if kind == "link":
        assert (tmp_path / "elsewhere").read_text() == "keep me\n"
