"""A statement committed with a result is a fleet's alone (PostgreSQL's data-modifying WITH)."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.runs.outbox import Outbox
from executor.runs.outbox_fences import Alongside


class Taking:
    async def deliver(self, key: str, payload: bytes) -> bool:
        return False


async def test_an_outbox_in_sqlite_refuses_a_statement_alongside_and_commits_nothing(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.db", Taking())
    try:
        with pytest.raises(ValueError, match="alongside"):
            await outbox.commit("k", b"r", None, None, Alongside("DELETE FROM outbox", ()))
        assert outbox.pending() == 0
    finally:
        await outbox.close()
