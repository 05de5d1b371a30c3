"""The uid claims' lock files: root makes and truncates them, so nothing planted is followed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from executor.errors import ConfigError
from executor.sandbox.identity import UidClaim


@pytest.mark.usefixtures("umask_000")
def test_the_claim_directory_is_0755_whatever_the_umask(tmp_path: Path) -> None:
    claim = UidClaim.take(70000, 2, directory=tmp_path / "cbexec" / "uids")
    try:
        for directory in (tmp_path / "cbexec", tmp_path / "cbexec" / "uids"):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory
        lock = tmp_path / "cbexec" / "uids" / "70000.lock"
        assert stat.S_IMODE(lock.stat().st_mode) == 0o644
    finally:
        claim.release()


def test_a_link_planted_at_a_lock_file_is_refused_and_its_target_left_alone(
    tmp_path: Path,
) -> None:
    claims = tmp_path / "uids"
    claims.mkdir()
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    (claims / "70001.lock").symlink_to(precious)
    with pytest.raises(ConfigError, match=r"sandbox uids: .*70001\.lock is a symbolic link"):
        UidClaim.take(70000, 2, directory=claims)
    assert precious.read_text() == "keep me\n"
    # Nothing stays claimed: the first uid's lock was let go with the refusal.
    (claims / "70001.lock").unlink()
    UidClaim.take(70000, 2, directory=claims).release()


def test_a_link_planted_as_the_claim_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "cbexec").mkdir()
    (tmp_path / "cbexec" / "uids").symlink_to(elsewhere)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        UidClaim.take(70000, 1, directory=tmp_path / "cbexec" / "uids")
    assert list(elsewhere.iterdir()) == []
