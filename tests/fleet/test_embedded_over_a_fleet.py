"""The embedded supervisor over a shared store is a farm per replica: start-up says so (probe 51)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import cbexec

pytestmark = pytest.mark.service

WARNING = "each replica on this store runs a farm of its own, whose job ids collide"


async def test_check_config_warns_of_a_farm_per_replica_unless_a_supervisor_is_set(
    pg_url: str, tmp_path: Path
) -> None:
    argv = ("serve", "--check-config", "--data-dir", str(tmp_path), "--bind", "127.0.0.1:0")
    embedded = await cbexec(*argv, "--store", pg_url)
    assert embedded.code == 0, embedded.err
    assert "WARNING: the embedded reference supervisor (no supervisor set) over" in embedded.out
    assert WARNING in embedded.out
    remote = await cbexec(*argv, "--store", pg_url, "--supervisor", "127.0.0.1:1")
    assert remote.code == 0, remote.err
    assert WARNING not in remote.out
    sqlite = await cbexec(*argv)
    assert sqlite.code == 0 and WARNING not in sqlite.out
