"""A data dir or database start-up cannot use: `serve` and `serve --check-config` say the same.

Each refusal is one ``cbexec:`` line and exit 2, never a traceback; the check finds it
without creating or changing anything, and a damaged database is left as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from executor.api import embedded
from executor.errors import ConfigError
from executor.runs.history import RunHistory
from executor.runs.outbox import Outbox
from executor.triggers.store import TriggerStore
from tests.conftest import TEST_UID_BASE, stack_settings
from tests.faults.helpers import executor, ext4_that_fails, small_tmpfs
from tests.helpers.cli import cbexec

pytestmark = pytest.mark.faults


async def _cbexec(data_dir: Path, *args: str) -> tuple[int, str, str]:
    """``cbexec serve`` (with ``args``) on ``data_dir``: its exit code, stdout and stderr."""
    said = await cbexec(
        "serve", "--data-dir", str(data_dir), "--bind", "127.0.0.1:0", *args,
        env={**os.environ, "CBEXEC_SANDBOX_UID_BASE": str(TEST_UID_BASE)},
    )  # fmt: skip
    return said.code, said.out, said.err


async def _both_refuse(data_dir: Path) -> str:
    """Check and start-up both refuse ``data_dir`` with the same one line; that line."""
    check_code, _, check_err = await _cbexec(data_dir, "--check-config")
    serve_code, _, serve_err = await _cbexec(data_dir)
    assert (check_code, serve_code) == (2, 2), (check_err, serve_err)
    for err in (check_err, serve_err):
        assert "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert check_err == serve_err
    return serve_err.strip()


async def test_a_data_dir_under_a_file_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")

    said = await _both_refuse(tmp_path / "a-file" / "data")

    assert said == (
        f"cbexec: data_dir: cannot make {tmp_path}/a-file/data: "
        f"{tmp_path}/a-file is not a directory"
    )


async def test_a_data_dir_the_kernel_will_not_make_is_refused_and_nothing_is_left(
    tmp_path: Path,
) -> None:
    # /proc allows root every mkdir by its permissions, and refuses it all the same.
    data_dir = Path(f"/proc/cbexec-test-{uuid.uuid4().hex[:8]}/data")

    said = await _both_refuse(data_dir)

    assert said.startswith(f"cbexec: data_dir: cannot make {data_dir}: ")
    assert not data_dir.parent.exists()


async def test_a_missing_data_dir_on_a_read_only_filesystem_is_refused(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", 1 << 20) as disk:
        remount = ["mount", "-o", "remount,ro", str(disk)]
        await asyncio.to_thread(subprocess.run, remount, check=True)

        said = await _both_refuse(disk / "data")

    assert said == (
        f"cbexec: data_dir: {disk}/data does not exist and {disk} is not writable by this "
        "user (a read-only filesystem)"
    )


async def test_the_check_leaves_no_data_dir_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"

    code, out, err = await _cbexec(data_dir, "--check-config")

    assert code == 0, err
    assert f"data dir: {data_dir} (made at start-up)" in out
    assert list(tmp_path.iterdir()) == []


# -- damaged databases: the check and start-up agree, and the file is left as it was ----


def _filled(path: Path, *, keep_log: bool) -> None:
    """An SQLite database of several pages at ``path``, in WAL mode.

    ``keep_log``: its last commits stay in ``-wal`` (and ``-shm``), as a kill -9 leaves
    them; otherwise everything is in the file itself.
    """
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE filler (n INTEGER, pad BLOB)")
    db.executemany("INSERT INTO filler VALUES (?, ?)", [(n, b"x" * 500) for n in range(200)])
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if keep_log:
        db.execute("CREATE TABLE later (n INTEGER)")  # page 1 changes: the log has it
        for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
            shutil.copyfile(path.parent / name, path.parent / f"{name}.crashed")
        db.close()
        for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
            (path.parent / f"{name}.crashed").rename(path.parent / name)
        return
    db.close()


def _truncated(path: Path) -> None:
    _filled(path, keep_log=False)
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _pages_overwritten(path: Path) -> None:
    _filled(path, keep_log=False)
    with path.open("r+b") as handle:
        handle.seek(3 * 4096)
        handle.write(os.urandom(3 * 4096))


def _a_directory(path: Path) -> None:
    path.mkdir()


def _emptied_beside_its_log(path: Path) -> None:
    _filled(path, keep_log=True)
    path.write_bytes(b"")


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": _truncated,
    "pages overwritten": _pages_overwritten,
    "a directory": _a_directory,
    "emptied beside its log": _emptied_beside_its_log,
}


def _snapshot(data_dir: Path, name: str = "") -> dict[str, bytes | None]:
    """The files (a directory as None) whose names start with ``name``."""
    return {
        p.name: p.read_bytes() if p.is_file() else None
        for p in sorted(data_dir.iterdir())
        if p.name.startswith(name)
    }


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        (name, damage)
        for name in ("outbox.db", "triggers.db", "runs.db", "supervisor.db")
        for damage in DAMAGE
        # The history is not read whole at start-up (it may be gigabytes): a page it does
        # not read is found when it is (test_a_big_historys_pages_are_not_all_read).
        if (name, damage) != ("runs.db", "pages overwritten")
    ],
)
async def test_a_damaged_database_is_refused_alike_by_the_check_and_start_up(
    tmp_path: Path, name: str, damage: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    DAMAGE[damage](data_dir / name)
    before = _snapshot(data_dir, name)

    said = await _both_refuse(data_dir)

    assert said.startswith(f"cbexec: {data_dir / name}: "), said
    assert _snapshot(data_dir, name) == before, "left exactly as it was"


async def test_a_big_historys_pages_are_not_all_read_at_start_up(tmp_path: Path) -> None:
    """Pages of runs.db that start-up does not read: both take it (no whole read of a big history)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    _pages_overwritten(data_dir / "runs.db")

    code, out, err = await _cbexec(data_dir, "--check-config")

    assert code == 0, err
    assert "runs.db sound" in out


async def test_a_log_that_holds_what_the_file_lost_is_sound_for_both(tmp_path: Path) -> None:
    """A header overwritten while the -wal holds page 1: SQLite reads page 1 from the log."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    outbox = Outbox(data_dir / "outbox.db", transport=None)  # type: ignore[arg-type]
    for n in range(5):
        outbox.put(f"result-{n}", b"r" * 100)
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):  # as kill -9 leaves them
        shutil.copyfile(data_dir / name, tmp_path / name)
    await outbox.close()
    for name in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        shutil.copyfile(tmp_path / name, data_dir / name)
    with (data_dir / "outbox.db").open("r+b") as handle:
        handle.write(b"garbagegarbagegarbage")
    (data_dir / "outbox.db-shm").unlink()  # the check reads a copy then: nothing is made
    before = _snapshot(data_dir)

    code, out, err = await _cbexec(data_dir, "--check-config")

    assert code == 0, err
    assert "outbox.db sound" in out
    assert _snapshot(data_dir) == before
    async with executor(stack_settings(data_dir, supervisor="127.0.0.1:9")) as running:
        assert running.recorder.outbox is not None
        assert running.recorder.outbox.pending() == 5


# -- another of the executor's databases at a database's path ------------------------------

KINDS = ("outbox.db", "triggers.db", "runs.db", "supervisor.db")


async def _data_dir_of_a_run(data_dir: Path) -> None:
    """A data dir holding each database as an executor leaves it."""
    async with executor(stack_settings(data_dir)):
        pass
    assert {p.name for p in data_dir.iterdir()} >= set(KINDS)


def application_id(path: Path) -> int:
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return int(db.execute("PRAGMA application_id").fetchone()[0])
    finally:
        db.close()


@pytest.mark.parametrize("old", [False, True], ids=["marked", "from an older version"])
@pytest.mark.parametrize(
    ("copied", "over"),
    [("triggers.db", "outbox.db"), ("outbox.db", "runs.db"), ("runs.db", "triggers.db"),
     ("supervisor.db", "triggers.db"), ("triggers.db", "supervisor.db")],
)  # fmt: skip
async def test_another_kind_of_database_at_a_path_is_refused_untouched(
    tmp_path: Path, copied: str, over: str, old: bool
) -> None:
    """triggers.db copied over outbox.db was taken (outbox tables added to it) and written."""
    data_dir = tmp_path / "data"
    await _data_dir_of_a_run(data_dir)
    if old:  # as an earlier version left it: no application id
        db = sqlite3.connect(data_dir / copied)
        db.execute("PRAGMA application_id = 0")
        db.close()
    for suffix in ("", "-wal", "-shm"):
        (data_dir / f"{over}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(data_dir / copied, data_dir / over)
    before = _snapshot(data_dir, over)

    said = await _both_refuse(data_dir)

    assert said.startswith(
        f"cbexec: {data_dir / over}: this is the executor's {copied} (it holds "
    ), said
    assert f"not its {over}. It was left untouched" in said
    assert _snapshot(data_dir, over) == before, "left exactly as it was"


async def test_databases_of_an_older_version_open_and_are_marked(tmp_path: Path) -> None:
    """Without an application id (as earlier versions wrote them) each is still taken."""
    data_dir = tmp_path / "data"
    await _data_dir_of_a_run(data_dir)
    marks = {name: application_id(data_dir / name) for name in KINDS}
    assert len(set(marks.values())) == len(KINDS) and 0 not in marks.values(), marks
    for name in KINDS:
        db = sqlite3.connect(data_dir / name)
        db.execute("PRAGMA application_id = 0")
        db.close()

    code, _, err = await _cbexec(data_dir, "--check-config")
    assert code == 0, err
    assert {name: application_id(data_dir / name) for name in KINDS} == dict.fromkeys(KINDS, 0)
    async with executor(stack_settings(data_dir)):
        pass
    assert {name: application_id(data_dir / name) for name in KINDS} == marks


# -- a sound database on storage that fails: never called damaged ---------------------------

# What start-up says of a damaged file, and would lose a sound one's contents if followed.
DAMAGE_ADVICE = ("is damaged", "move it aside")


async def test_a_filesystem_the_kernel_stopped_writing_to_is_refused_as_such(
    tmp_path: Path,
) -> None:
    # Found by fault injection: ext4 made read-only by an error (errors=remount-ro) still
    # shows rw, and start-up said runs.db "is damaged... move it aside": followed for
    # outbox.db, that loses the results not yet delivered.
    with ext4_that_fails(tmp_path / "disk") as fail:
        data_dir = tmp_path / "disk" / "data"
        await _data_dir_of_a_run(data_dir)
        fail()

        said = await _both_refuse(data_dir)

    assert said == (
        f"cbexec: data_dir: {data_dir} refuses new files (Read-only file system) although "
        "its filesystem is mounted read-write (the kernel does this after a filesystem "
        "error; its log says why): mend it, then start again"
    )


async def _open_each(data_dir: Path) -> dict[str, str]:
    """Each database opened as start-up opens it, then closed: what refused it, by name ("" if none)."""
    said: dict[str, str] = {}
    for name, opened in (
        ("runs.db", lambda: RunHistory(data_dir / "runs.db", retention_days=1, max_runs=10)),
        ("outbox.db", lambda: Outbox(data_dir / "outbox.db", transport=None)),  # type: ignore[arg-type]
        ("triggers.db", lambda: TriggerStore(str(data_dir / "triggers.db"))),
    ):
        try:
            store = opened()
        except ConfigError as err:
            said[name] = str(err)
            continue
        said[name] = ""
        await store.close() if isinstance(store, Outbox) else store.close()
    try:
        supervisor = await embedded.start(
            data_dir,
            max_message_bytes=1 << 20,
            history_retention_days=1,
            history_max_runs=10,
            history_max_bytes=1 << 20,
        )
    except ConfigError as err:
        said["supervisor.db"] = str(err)
    else:
        said["supervisor.db"] = ""
        await supervisor.close(0)
    return said


async def test_a_sound_database_on_a_filesystem_that_failed_is_not_called_damaged(
    tmp_path: Path,
) -> None:
    """Past the data dir's own check (a file made there first) each database says the same."""
    with ext4_that_fails(tmp_path / "disk") as fail:
        data_dir = tmp_path / "disk" / "data"
        data_dir.mkdir(mode=0o700)
        assert await _open_each(data_dir) == dict.fromkeys(KINDS, "")
        before = _snapshot(data_dir)
        fail()

        said = await _open_each(data_dir)

        assert _snapshot(data_dir) == before, "left exactly as it was"
    for name in KINDS:
        assert said[name].startswith(f"{data_dir / name}: "), said[name]
        assert "the storage refused it" in said[name], said[name]
        assert "the file is not known to be damaged" in said[name], said[name]
        assert "do not move the file aside (it holds " in said[name], said[name]
        assert not any(advice in said[name] for advice in DAMAGE_ADVICE), said[name]


async def test_a_database_another_process_holds_locked_is_not_called_damaged(
    tmp_path: Path,
) -> None:
    """SQLite's busy timeout (5 s) passes, then start-up says who is in the way."""
    path = tmp_path / "outbox.db"
    await Outbox(path, transport=None).close()  # type: ignore[arg-type]
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode = DELETE")  # so that the lock keeps readers out too
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ConfigError) as refused:
            await asyncio.to_thread(Outbox, path, transport=None)  # type: ignore[arg-type]
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    said = str(refused.value)
    assert said.startswith(f"{path}: database is locked: another process holds the database ")
    assert not any(advice in said for advice in DAMAGE_ADVICE), said


# -- a database start-up could open but not write -------------------------------------------


@contextlib.contextmanager
def _immutable(path: Path) -> Iterator[None]:
    """``path`` made immutable (``chattr +i``) for the block; skipped where that cannot be done."""
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make a file immutable here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("name", KINDS)
async def test_a_database_start_up_cannot_write_is_refused_by_both(
    tmp_path: Path, name: str
) -> None:
    # Found by a probe: SQLite opened an immutable triggers.db or outbox.db read-only
    # without a word, the executor served, and the first event met UNAVAILABLE; the check
    # said "ok" for each (runs.db was refused by start-up only, at its first write).
    data_dir = tmp_path / "data"
    await _data_dir_of_a_run(data_dir)
    before = _snapshot(data_dir, name)

    with _immutable(data_dir / name):
        said = await _both_refuse(data_dir)

    assert said.startswith(
        f"cbexec: {data_dir / name}: this user cannot write {name} (its mode, or chattr +i): "
        "the storage refused it ("
    ), said
    assert "do not move the file aside (it holds " in said, said
    assert _snapshot(data_dir, name) == before, "left exactly as it was"


async def test_a_data_dir_with_no_inodes_left_is_refused_by_the_check_as_by_start_up(
    tmp_path: Path,
) -> None:
    # Found by a probe: the check said "ok" (it read only the free blocks), then start-up
    # exited with "unable to open database file", never a word of inodes.
    with small_tmpfs(tmp_path / "disk", 16 << 20, inodes=64) as disk:
        data_dir = disk / "data"
        await _data_dir_of_a_run(data_dir)
        (disk / "fill").mkdir()
        with contextlib.suppress(OSError):
            for n in range(1000):  # to the last inode: ENOSPC ends it
                (disk / "fill" / str(n)).touch()
        assert os.statvfs(disk).f_bfree * os.statvfs(disk).f_frsize > 1 << 20  # bytes to spare

        said = await _both_refuse(data_dir)

    assert said == (
        f"cbexec: data_dir: {data_dir}: its filesystem has too few inodes left for new files (0 "
        "free to this user; opening runs.db, triggers.db, outbox.db, supervisor.db makes 8: "
        "runs.db-wal, runs.db-shm, triggers.db-wal, triggers.db-shm, outbox.db-wal, "
        "outbox.db-shm, supervisor.db-wal, supervisor.db-shm): start-up would be refused "
        "(unable to open database file: the storage refused it); delete files on it or give "
        "it more inodes, then start again"
    )


async def test_a_data_dir_on_a_full_filesystem_is_refused_by_the_check_as_by_start_up(
    tmp_path: Path,
) -> None:
    # Found by a probe: start-up could not make the databases' -shm and refused to start,
    # while the check, reading them read-only, said "ok".
    with small_tmpfs(tmp_path / "disk", 3 << 20) as disk:
        data_dir = disk / "data"
        await _data_dir_of_a_run(data_dir)
        with contextlib.suppress(OSError), (disk / "filler").open("wb", buffering=0) as filler:
            while True:  # to the last block: ENOSPC ends it
                filler.write(b"\0" * 4096)

        check_code, _, check_err = await _cbexec(data_dir, "--check-config")
        serve_code, _, serve_err = await _cbexec(data_dir)

    assert (check_code, serve_code) == (2, 2), (check_err, serve_err)
    assert check_err.strip() == (
        f"cbexec: data_dir: {data_dir}: its filesystem is full (0 KiB free to this user; "
        "opening runs.db, triggers.db, outbox.db, supervisor.db takes 128 KiB, 32 KiB each "
        "for its -shm): start-up would be refused (disk I/O error: the storage refused it); "
        "free space, then start again"
    )
    assert "the storage refused it" in serve_err, serve_err


async def test_a_directory_where_the_lock_file_goes_is_refused_alike_in_one_line(
    tmp_path: Path,
) -> None:
    # --check-config said "ok", then serve died with a 23-line traceback (probe 82).
    data_dir = tmp_path / "data"
    (data_dir / "cbexec.lock").mkdir(parents=True)

    said = await _both_refuse(data_dir)

    assert said == (
        f"cbexec: data_dir: {data_dir}/cbexec.lock is a directory; the executor's lock file"
        " goes there: move it away"
    )


@pytest.mark.parametrize("kind", ["file", "symlink"])
async def test_something_but_a_directory_where_the_mail_queue_goes_is_refused_alike(
    tmp_path: Path, kind: str
) -> None:
    # Start-up and --check-config said nothing, then every mail run failed (probe 103 F6).
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if kind == "file":
        (data_dir / "mail-queue").write_bytes(b"")
    else:
        (tmp_path / "elsewhere").mkdir()
        (data_dir / "mail-queue").symlink_to(tmp_path / "elsewhere")

    said = await _both_refuse(data_dir)

    what = "not a directory" if kind == "file" else "a symbolic link"
    assert said == (
        f"cbexec: data_dir: {data_dir}/mail-queue is {what}; the mail queue's directory goes"
        " there: move it away"
    )
