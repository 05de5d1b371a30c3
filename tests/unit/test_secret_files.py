"""The executor's secret files: which they are, which a child hides, WARNINGs for an open mode or another link."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor.config import Settings
from executor.sandbox.tier import files_to_hide
from executor.secret_files import (
    open_to_others,
    secret_files,
    secrets_in_config,
    with_other_links,
)

pytestmark = pytest.mark.unit


def written(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_config_file_holding_the_token_readable_by_others_is_warned_about(
    tmp_path: Path,
) -> None:
    config = written(tmp_path / "cbexec.toml", 'auth_token = "tok123"\n', 0o644)

    assert open_to_others(Settings(config_file=str(config))) == [
        f"config file {config} holds auth_token and is readable by its group or others "
        f"(mode 0644): other local users can read it; chmod 600 {config}"
    ]


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700, 0o620])
def test_a_config_file_only_its_owner_reads_is_not(tmp_path: Path, mode: int) -> None:
    config = written(tmp_path / "cbexec.toml", 'auth_token = "tok123"\n', mode)

    assert open_to_others(Settings(config_file=str(config))) == []


def test_a_config_file_without_secrets_may_be_read_by_anyone(tmp_path: Path) -> None:
    config = written(tmp_path / "cbexec.toml", 'bind = "127.0.0.1:50051"\n', 0o644)

    assert open_to_others(Settings(config_file=str(config))) == []


def test_each_secret_setting_the_file_gives_is_named_never_its_value() -> None:
    held = secrets_in_config(
        {
            "auth_token": "tok123",
            "mail": {"smtp_password": "hunter2"},
            "store": "postgresql://cbexec:pw@db/farm",
        }
    )

    assert held == ["auth_token", "mail.smtp_password", "store (its password)"]
    assert secrets_in_config({"auth_token": "", "store": "postgresql://cbexec@db/farm"}) == []


def test_a_group_readable_tls_key_and_env_file_are_warned_about(tmp_path: Path) -> None:
    key = written(tmp_path / "server.key", "key", 0o640)
    token = written(tmp_path / "token", "s3cret", 0o604)
    closed = written(tmp_path / "closed", "s3cret", 0o600)
    settings = Settings(
        tls_key=str(key),
        policies={"pipeline": {"env_files": {"TOKEN": str(token), "OTHER": str(closed)}}},
    )

    assert open_to_others(settings) == [
        f"tls_key: {key} is readable by its group or others (mode 0640): other local users "
        f"can read it; chmod 600 {key}",
        f"policies.pipeline.env_files.TOKEN: {token} is readable by its group or others "
        f"(mode 0604): other local users can read it; chmod 600 {token}",
    ]


def test_a_config_file_holding_the_token_with_another_hard_link_is_warned_about(
    tmp_path: Path,
) -> None:
    # A child covers the config file's path: through the other link, a callback reads it
    # as its mode lets any other user (probe 158 read auth_token so at 0644).
    config = written(tmp_path / "cbexec.toml", 'auth_token = "tok123"\n', 0o644)
    (tmp_path / "reachable.toml").hardlink_to(config)

    assert with_other_links(Settings(config_file=str(config))) == [
        f"config file {config} holds auth_token and has 2 hard links: a callback may read "
        f"it through another link unless its mode forbids (mode 0644; the sandbox covers "
        f"only {config}); keep it 0600, or remove the other links"
    ]


def test_a_hard_linked_tls_key_and_env_file_are_warned_about_whatever_their_mode(
    tmp_path: Path,
) -> None:
    key = written(tmp_path / "server.key", "key", 0o600)
    token = written(tmp_path / "token", "s3cret", 0o640)
    alone = written(tmp_path / "alone", "s3cret", 0o644)
    (tmp_path / "key.bak").hardlink_to(key)
    for copy in ("token.1", "token.2"):
        (tmp_path / copy).hardlink_to(token)
    settings = Settings(
        tls_key=str(key),
        policies={"pipeline": {"env_files": {"TOKEN": str(token), "OTHER": str(alone)}}},
    )

    assert with_other_links(settings) == [
        f"tls_key: {key} has 2 hard links: a callback may read it through another link "
        f"unless its mode forbids (mode 0600; the sandbox covers only {key}); keep it "
        f"0600, or remove the other links",
        f"policies.pipeline.env_files.TOKEN: {token} has 3 hard links: a callback may read "
        f"it through another link unless its mode forbids (mode 0640; the sandbox covers "
        f"only {token}); keep it 0600, or remove the other links",
    ]


def test_a_secret_file_with_one_link_or_a_config_file_without_secrets_is_not(
    tmp_path: Path,
) -> None:
    config = written(tmp_path / "cbexec.toml", 'auth_token = "tok123"\n', 0o644)
    (tmp_path / "symlink.toml").symlink_to(config)  # a child covers it by its real path
    plain = written(tmp_path / "plain.toml", 'bind = "127.0.0.1:50051"\n', 0o644)
    (tmp_path / "plain-link.toml").hardlink_to(plain)

    assert with_other_links(Settings(config_file=str(config))) == []
    assert with_other_links(Settings(config_file=str(tmp_path / "symlink.toml"))) == []
    assert with_other_links(Settings(config_file=str(plain))) == []
    assert with_other_links(Settings(config_file=str(tmp_path / "gone.toml"))) == []


def test_the_secret_files_are_the_config_the_tls_key_and_env_files() -> None:
    settings = Settings(
        config_file="/etc/cbexec/cbexec.toml",
        tls_cert="/etc/cbexec/server.crt",
        tls_key="/etc/cbexec/server.key",
        tls_client_ca="/etc/cbexec/ca.crt",
        policies={
            "pipeline": {"env_files": {"TOKEN": "/etc/cbexec/secrets/token"}},
            "broken": "not a table",  # refused by start-up, nothing here
        },
    )

    assert secret_files(settings) == [
        ("config file", "/etc/cbexec/cbexec.toml"),
        ("tls_key", "/etc/cbexec/server.key"),
        ("policies.pipeline.env_files.TOKEN", "/etc/cbexec/secrets/token"),
    ]
    assert secret_files(Settings()) == []


def test_a_child_hides_the_files_it_would_see_once_each_by_real_path(tmp_path: Path) -> None:
    masked = tmp_path / "masked"
    kept = masked / "venv"
    kept.mkdir(parents=True)
    config = written(tmp_path / "cbexec.toml", "", 0o644)
    (tmp_path / "link.toml").symlink_to(config)
    under_a_mask = written(masked / "server.key", "", 0o644)
    under_a_kept_path = written(kept / "token", "", 0o644)

    hidden = files_to_hide(
        [
            str(config),
            str(tmp_path / "link.toml"),
            str(under_a_mask),
            str(under_a_kept_path),
            str(tmp_path / "gone"),
            str(tmp_path),  # not a file
        ],
        (str(masked),),
        [str(kept)],
    )

    assert hidden == tuple(sorted([str(config), str(under_a_kept_path)]))
