"""``cbexec serve --check-config``'s own checks: each says what start-up would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from executor.cli.check_config import _universal
from executor.config import Settings
from executor.errors import ConfigError
from executor.sandbox.identity import UidClaim

pytestmark = pytest.mark.unit


def test_an_unknown_policy_lists_each_configured_one_once(tmp_path: Path) -> None:
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "cb.py").write_text("print('hi')\n")
    (callbacks / "callbacks.conf").write_text("cb.py [policy=nosuch] = complete-job-self\n")
    settings = Settings(
        data_dir=tmp_path / "data",
        universal_callback_path=str(callbacks),
        # [policies.job] widens the built-in job: it is still one policy.
        policies={"job": {"verbs": ["unblock"]}, "admin": {}},
    )
    with pytest.raises(ConfigError) as caught:
        _universal(settings)
    assert "no policy 'nosuch' (configured: job, universal, admin)" in str(caught.value)


def test_a_uid_range_is_checked_without_being_claimed(tmp_path: Path) -> None:
    claim = UidClaim.take(70002, 1, directory=tmp_path)
    try:
        with pytest.raises(ConfigError) as caught:
            UidClaim.check(70000, 4, directory=tmp_path)
        assert str(caught.value).startswith(
            f"sandbox_uid_base: uid 70002 of this executor's range 70000-70003 is in use by "
            f"another executor (pid {os.getpid()}); give each executor on a host its own range"
        )
    finally:
        claim.release()
    UidClaim.check(70000, 4, directory=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["70002.lock"], "nothing made"
    assert (tmp_path / "70002.lock").read_text() == f"{os.getpid()}\n", "nothing written"
    UidClaim.take(70000, 4, directory=tmp_path).release()  # and nothing left held
