"""``cbexec serve --check-config``'s own checks: each says what start-up would."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from executor.cli.check_config import _universal
from executor.config import Settings
from executor.errors import ConfigError
from executor.sandbox.identity import UidClaim, check_uid_range
from executor.triggers.universal import LAST_GOOD_NAME, UniversalCallback, save_last_good

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
        strict=True,
    )
    with pytest.raises(ConfigError) as caught:
        _universal(settings)
    assert "no policy 'nosuch' (configured: job, universal, admin)" in str(caught.value)
    # Without strict start-up runs without them: the same problem, as a warning.
    said = _universal(settings.replace(strict=False))
    assert said.startswith("NOT LOADED: callbacks.conf has 1 problem; start-up would run without")
    assert "  WARNING: " in said and "no policy 'nosuch'" in said
    # With a set kept from before, start-up runs with it, and says so.
    (tmp_path / "data").mkdir()
    kept = UniversalCallback(str(callbacks / "cb.py"), "python", "print('hi')\n", "done-job-self")
    save_last_good(tmp_path / "data" / LAST_GOOD_NAME, [kept], 1.0)
    said = _universal(settings.replace(strict=False))
    assert said.startswith(
        "NOT LOADED: callbacks.conf has 1 problem; start-up would run with the set loaded "
        "last before it (1 callbacks)"
    )


def test_a_kept_line_whose_policy_is_gone_is_not_counted_as_start_up_would_run_it(
    tmp_path: Path,
) -> None:
    # Start-up leaves such a line out of the set kept from before; the check counted it.
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "cb.py").write_text("print('hi')\n")
    (callbacks / "callbacks.conf").write_text("cb.py [policy=contrib] = done-job-self\n")
    (tmp_path / "data").mkdir()
    kept = [
        UniversalCallback(str(callbacks / "cb.py"), "python", "print(1)\n", "done-job-self"),
        UniversalCallback(
            str(callbacks / "cb.py"), "python", "print(2)\n", "submit-job-self", policy="contrib"
        ),
    ]
    save_last_good(tmp_path / "data" / LAST_GOOD_NAME, kept, 1.0)
    settings = Settings(data_dir=tmp_path / "data", universal_callback_path=str(callbacks))

    said = _universal(settings).splitlines()

    assert said[0] == (
        "NOT LOADED: callbacks.conf has 1 problem; start-up would run with the set loaded "
        "last before it (1 callbacks) (strict = true refuses to start instead)"
    )
    assert said[-1] == (
        f"  WARNING: {callbacks}/cb.py = submit-job-self left out of the set kept from "
        "before: its policy 'contrib' is not configured (policies: job, universal)"
    )


def test_an_unknown_policy_named_by_universal_callback_path_blames_the_setting(
    tmp_path: Path,
) -> None:
    # Was "<dir>/callbacks.conf:1: no policy 'nope'", a line that names no policy.
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "a.py").write_text("print(1)\n")
    (callbacks / "b.py").write_text("print(2)\n")
    (callbacks / "callbacks.conf").write_text("a.py = done-job-self\nb.py = done-job-self\n")
    settings = Settings(
        data_dir=tmp_path / "data", universal_callback_path=f"{callbacks} [policy=nope]"
    )
    said = _universal(settings)
    assert said.splitlines()[1:] == [
        f"  WARNING: universal_callback_path: '{callbacks} [policy=nope]': no policy 'nope' "
        "(configured: job, universal)"
    ]
    with pytest.raises(ConfigError, match=r"^universal callbacks: universal_callback_path: "):
        _universal(settings.replace(strict=True))


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


@pytest.mark.parametrize(
    ("first", "count", "said"),
    [
        (0, 4, "the sandbox uids 0-3 (one per cell) start below 1000"),
        (100, 4, "the sandbox uids 100-103 (one per cell) start below 1000"),
        (-5, 4, "start below 1000"),
        (65530, 8, "include the reserved uid 65534"),
        (2**32 - 4, 8, f"do not fit below {2**32 - 1}"),
    ],
)
def test_a_uid_range_among_root_system_or_reserved_uids_is_refused(
    first: int, count: int, said: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_uid_range(first, count)
    assert str(caught.value).startswith("sandbox_uid_base: ")
    assert said in str(caught.value)


def test_a_uid_range_holding_a_host_account_names_it() -> None:
    account = next((a for a in pwd.getpwall() if 1000 <= a.pw_uid < 65534), None)
    if account is None:
        pytest.skip("no host account from uid 1000 on here")
    with pytest.raises(ConfigError) as caught:
        check_uid_range(account.pw_uid, 4)
    assert f"the host account {account.pw_name!r}" in str(caught.value)


def test_a_free_uid_range_is_accepted() -> None:
    taken = {a.pw_uid for a in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    first = next(b for b in range(70000, 4_000_000, 1000) if not taken & set(range(b, b + 8)))
    check_uid_range(first, 8)


def test_a_configured_universal_directory_that_is_missing_is_warned_about(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    said = _universal(Settings(data_dir=tmp_path / "data", universal_callback_path=str(missing)))
    assert said == (
        f"none (no callbacks.conf in {missing})\n  WARNING: {missing}: no such directory "
        "(universal_callback_path); none of its callbacks is loaded"
    )
    # The default directory need not exist: no warning.
    assert "WARNING" not in _universal(Settings(data_dir=tmp_path / "data"))
