"""Each executor database knows its kind: another's at its path is refused, untouched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from executor.errors import ConfigError
from executor.storage import check_database, open_database

pytestmark = pytest.mark.unit


def _made(path: Path, *statements: str) -> bytes:
    db = sqlite3.connect(path)
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    return path.read_bytes()


def test_a_database_of_another_application_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    before = _made(path, "PRAGMA application_id = 1234", "CREATE TABLE outbox (n INTEGER)")
    for check in (check_database, open_database):
        with pytest.raises(ConfigError) as refused:
            check(path)
        assert str(refused.value) == (
            f"{path}: this is a database of another application (application id 0x4d2), "
            "not its outbox.db. It was left untouched: put the right file back (from a "
            "backup), or move this one aside to start with an empty one"
        )
    assert path.read_bytes() == before


def test_an_older_versions_database_is_taken_and_marked(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    _made(path, "CREATE TABLE runs (n INTEGER)")
    assert check_database(path) == "sound"
    open_database(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] != 0
    db.close()
    open_database(tmp_path / "triggers.db").close()  # new: made and marked
    assert check_database(tmp_path / "triggers.db") == "sound"
    with pytest.raises(ConfigError, match=r"this is the executor's runs\.db .* not its outbox\.db"):
        check_database(path.rename(tmp_path / "outbox.db"))


def test_an_in_memory_database_makes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tests' in-memory stores once left an empty ":memory:" file in the working dir.
    monkeypatch.chdir(tmp_path)
    db = open_database(":memory:")
    db.execute("CREATE TABLE t (n INTEGER)")
    db.close()
    assert list(tmp_path.iterdir()) == []
