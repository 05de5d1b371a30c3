"""``one_transaction``: the block committed at its end, rolled back when it raises, the error kept."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from executor.sql import one_transaction

pytestmark = pytest.mark.unit


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:", isolation_level=None)
    connection.execute("CREATE TABLE t (n INTEGER)")
    yield connection
    connection.close()


def _rows(db: sqlite3.Connection) -> list[int]:
    return [n for (n,) in db.execute("SELECT n FROM t ORDER BY n")]


def test_the_block_is_committed_at_its_end(db: sqlite3.Connection) -> None:
    with one_transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("INSERT INTO t VALUES (2)")
        in_transaction = [db.in_transaction]
    in_transaction.append(db.in_transaction)
    assert in_transaction == [True, False]
    assert _rows(db) == [1, 2]


def _inserting_then(db: sqlite3.Connection, *statements: str) -> None:
    with one_transaction(db):
        db.execute("INSERT INTO t VALUES (1)")
        for statement in statements:
            db.execute(statement)
        raise KeyError("mid-way")


def test_a_block_that_raises_is_rolled_back_and_its_error_goes_on(db: sqlite3.Connection) -> None:
    with pytest.raises(KeyError, match="mid-way"):
        _inserting_then(db)
    assert not db.in_transaction
    assert _rows(db) == []


def test_a_rollback_that_fails_does_not_hide_the_blocks_error(db: sqlite3.Connection) -> None:
    # As SQLite on a full disk: the transaction already rolled back, ROLLBACK then refused.
    with pytest.raises(KeyError, match="mid-way"):
        _inserting_then(db, "ROLLBACK")
    assert _rows(db) == []
