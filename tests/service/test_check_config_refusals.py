"""``cbexec serve --check-config`` refuses what start-up would, and says it the same way."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from executor.data_dir_lock import DataDirLock
from executor.runtimes.child import PerlRuntime
from executor.sandbox.identity import UidClaim
from executor.sandbox.process import SandboxRunner
from tests.conftest import TEST_UID_BASE
from tests.helpers.cli import cbexec, cli_env

pytestmark = pytest.mark.service

# Within this suite's own block of uids, clear of the ranges its stacks use.
BASE = TEST_UID_BASE + 600


def config_file(tmp_path: Path, policies: str = "") -> Path:
    config = tmp_path / "cbexec.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nsandbox_uid_base = {BASE}\nmax_concurrent = 2\n'
        + policies
    )
    return config


async def check_config(config: Path) -> tuple[int, str, str]:
    # The suite's own CBEXEC_SANDBOX_UID_BASE would override the file's.
    env = {k: v for k, v in cli_env().items() if k != "CBEXEC_SANDBOX_UID_BASE"}
    said = await cbexec(
        "serve", "--config", str(config), "--check-config", "--bind", "127.0.0.1:0", env=env
    )
    assert "Traceback" not in said.err, said.err
    return said.code, said.out, said.err


@pytest.mark.skipif(shutil.which("perl") is None, reason="no perl here")
async def test_a_bind_over_perls_directory_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    perl = PerlRuntime().perl
    target = os.path.dirname(perl)
    code, out, err = await check_config(
        config_file(
            tmp_path, f'[policies.x]\nbinds = [{{ path = "{shared}", target = "{target}" }}]\n'
        )
    )
    assert code == 2 and "ok: start-up would succeed" not in out
    assert f"policies.x.binds[0].target: {target} would hide {perl}, which callbacks need" in err


async def test_a_bind_into_pythons_library_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    target = os.path.join(sys.base_prefix, "lib")
    code, out, err = await check_config(
        config_file(
            tmp_path, f'[policies.x]\nbinds = [{{ path = "{shared}", target = "{target}" }}]\n'
        )
    )
    assert code == 2 and "ok: start-up would succeed" not in out
    assert f"policies.x.binds[0].target: {target} would hide" in err


async def test_a_bind_over_what_the_sandbox_mounts_for_each_callback_is_refused(
    tmp_path: Path,
) -> None:
    # It said "ok: start-up would succeed", then every run of the policy failed (probe 82).
    shared = tmp_path / "shared"
    shared.mkdir()
    binds = "".join(
        f'[policies.{name}]\nbinds = [{{ path = "{shared}", target = "{target}" }}]\n'
        for name, target in (("proc", "/proc/sys"), ("dev", "/dev"), ("tmp", "/tmp"))
    )
    code, out, err = await check_config(config_file(tmp_path, binds))
    assert code == 2 and "ok: start-up would succeed" not in out
    lines = err.splitlines()
    assert [line.split(": ", 3)[2] for line in lines] == [
        "policies.proc.binds[0].target",
        "policies.dev.binds[0].target",
        "policies.tmp.binds[0].target",
    ], err
    assert "lies inside /proc, where the sandbox mounts" in lines[0]
    assert "would hide /dev/pts, where the sandbox mounts" in lines[1]
    assert "not an existing directory" not in lines[2]


async def test_pid_namespace_off_is_blamed_as_the_setting_in_clean_lines(tmp_path: Path) -> None:
    # The refusal of network = "none" said the host allows no namespaces (it does), and
    # a raw log line ("no namespaces here", a timestamp) came amid the check's output.
    config = config_file(tmp_path)
    config.write_text(config.read_text() + 'pid_namespace = "off"\nnetwork = "none"\n')
    code, out, err = await check_config(config)
    assert code == 2 and "ok: start-up would succeed" not in out
    assert err.splitlines() == [
        "cbexec: network: 'none' needs namespaces, and pid_namespace is off (the executor "
        'makes an empty network namespace only with a PID namespace); set pid_namespace = "auto"'
    ]

    config = config_file(tmp_path)
    config.write_text(config.read_text() + 'pid_namespace = "off"\ndedicated_uid = "off"\n')
    code, out, err = await check_config(config)
    assert code == 0 and "ok: start-up would succeed" in out, err
    assert err == ""
    assert (
        '  WARNING: network = "auto" gives callbacks the host network here: pid_namespace is '
        "off (the executor makes an empty network namespace only with a PID namespace)"
    ) in out.splitlines()
    assert "no namespaces here" not in out


@pytest.mark.skipif(os.geteuid() != 0, reason="dedicated uids need root")
async def test_a_uid_range_another_executor_holds_is_refused_and_left_to_it(
    tmp_path: Path,
) -> None:
    config = config_file(tmp_path)
    last = BASE + SandboxRunner.cells(2) - 1
    code, out, err = await check_config(config)
    if f"dedicated uids {BASE}-{last}" not in out:
        pytest.skip("no hardened tier here (dedicated uids need PID namespaces)")
    assert code == 0 and "ok: start-up would succeed" in out, err

    held = UidClaim.take(BASE + 2, 1)  # as a running executor holds it
    try:
        code, out, err = await check_config(config)
        assert code == 2 and "ok: start-up would succeed" not in out
        assert (
            f"sandbox_uid_base: uid {BASE + 2} of this executor's range {BASE}-{last} is in "
            f"use by another executor (pid {os.getpid()})"
        ) in err
    finally:
        held.release()
    UidClaim.take(BASE, last - BASE + 1).release()  # the checks claimed nothing


async def test_a_uid_base_of_0_is_refused_not_run_as_root(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    config.write_text(
        config.read_text().replace(f"sandbox_uid_base = {BASE}", "sandbox_uid_base = 0")
    )
    code, out, err = await check_config(config)
    if os.geteuid() != 0:
        pytest.skip("dedicated uids are root's")
    assert code == 2 and "ok: start-up would succeed" not in out
    assert "sandbox_uid_base: the sandbox uids 0-3 (one per cell) start below 1000" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root executor's callbacks run as root")
async def test_as_root_no_pid_namespace_is_refused_and_dedicated_uid_off_warned(
    tmp_path: Path,
) -> None:
    config = config_file(tmp_path)
    config.write_text(config.read_text() + 'pid_namespace = "off"\n')
    code, out, err = await check_config(config)
    assert code == 2 and "ok: start-up would succeed" not in out
    assert "dedicated_uid: callbacks would run as root with full capabilities" in err

    config.write_text(config.read_text() + 'dedicated_uid = "off"\n')
    code, out, err = await check_config(config)
    assert code == 0 and "ok: start-up would succeed" in out, err
    assert "WARNING: callbacks run as root with full capabilities (dedicated_uid is off)" in out


async def test_every_bad_setting_is_named_at_once(tmp_path: Path) -> None:
    # An admin fixing a config file one refusal at a time had to run the check again
    # for each: every setting's problem is a line of its own.
    config = config_file(tmp_path)
    with config.open("a") as file:
        file.write('network = "maybe"\nmax_queue = -1\nlog_format = "xml"\n')
    code, _, err = await check_config(config)
    assert code == 2
    assert err.splitlines() == [
        "cbexec: max_queue: must be 0 or more, got -1",
        "cbexec: network: expected auto, none or host, got 'maybe'",
        "cbexec: log_format: expected text or json, got 'xml'",
    ]
    with config.open("a") as file:  # values of the wrong type: named before the checks
        file.write('grace_seconds = "soon"\nhistory_max_runs = 1.5\n')
    code, _, err = await check_config(config)
    assert code == 2
    assert err.splitlines() == [
        f"cbexec: {config}: grace_seconds: expected a number, got 'soon'",
        f"cbexec: {config}: history_max_runs: expected a whole number, got 1.5",
        "cbexec: max_queue: must be 0 or more, got -1",
        "cbexec: network: expected auto, none or host, got 'maybe'",
        "cbexec: log_format: expected text or json, got 'xml'",
    ]


async def test_a_data_dir_a_running_executor_holds_is_said_in_one_line(tmp_path: Path) -> None:
    # It was a traceback (the lock file closed twice), exit 1 (probe 57).
    (tmp_path / "data").mkdir()
    held = DataDirLock.take(tmp_path / "data")
    try:
        code, _, err = await check_config(config_file(tmp_path))
    finally:
        held.release()
    assert code == 2
    assert err.strip() == (
        f"cbexec: data_dir: {tmp_path / 'data'} is in use by another executor (pid "
        f"{os.getpid()}): give each executor its own data dir (a fleet's replicas share "
        "PostgreSQL, never a data dir)"
    )
    code, out, _ = await check_config(config_file(tmp_path))  # let go: free again
    assert code == 0, out


async def test_a_bind_target_a_group_may_rename_is_warned_of_once(tmp_path: Path) -> None:
    site = Path(tempfile.mkdtemp(prefix="cbexec-test-group-", dir="/srv"))
    try:
        (site / "tools").mkdir()
        os.chown(site, 0, TEST_UID_BASE + 603)
        site.chmod(0o775)
        binds = f'[policies.x]\nbinds = [{{ path = "{site / "tools"}" }}]\n'
        code, out, _ = await check_config(config_file(tmp_path, binds))
    finally:
        shutil.rmtree(site)
    assert code == 0, out
    warned = [line for line in out.splitlines() if "policies.x.binds[0].target" in line]
    assert len(warned) == 1, out
    assert f"can be renamed by the users who may write {site} (mode 0775" in warned[0]


async def test_a_port_open_to_the_network_with_no_token_is_warned_of(tmp_path: Path) -> None:
    config = config_file(tmp_path)
    env = {k: v for k, v in cli_env().items() if k != "CBEXEC_SANDBOX_UID_BASE"}
    said = await cbexec(
        "serve", "--config", str(config), "--check-config", "--bind", "0.0.0.0:0", env=env
    )
    assert said.code == 0, said.err
    assert "WARNING: bind 0.0.0.0:0 takes calls from the network in plaintext with no token" in (
        said.out
    )
    # The same port with a token, or on loopback, is nothing to warn of.
    for bind, token in (("0.0.0.0:0", "s3cret"), ("127.0.0.1:0", "")):
        said = await cbexec(
            "serve",
            "--config",
            str(config),
            "--check-config",
            "--bind",
            bind,
            env={**env, "CBEXEC_AUTH_TOKEN": token},
        )
        assert said.code == 0, said.err
        assert "takes calls from the network" not in said.out


async def test_a_policy_value_of_the_wrong_toml_type_is_named_with_its_file(tmp_path: Path) -> None:
    # Were converted and the check said ok: the callback saw VERBOSE='True', its umask
    # was 0o115 (77 read as decimal), and "7" was 7 seconds.
    config = config_file(
        tmp_path,
        "[policies.job]\n"
        "env = { VERBOSE = true, SITE = 'studio', FRAMES = [1, 2] }\n"
        "umask = 77\n"
        'default_limits = { wall_seconds = "7" }\n'
        'max_limits = { wall_seconds = "70", memory_bytes = 1e9 }\n',
    )
    code, out, err = await check_config(config)
    assert code == 2 and "ok: start-up would succeed" not in out
    assert err.splitlines() == [
        f"cbexec: {config}: policies.job.default_limits.wall_seconds: expected a number, got '7'",
        f"cbexec: {config}: policies.job.max_limits.wall_seconds: expected a number, got '70'",
        f"cbexec: {config}: policies.job.max_limits.memory_bytes: expected a whole number, "
        "got 1000000000.0",
        f'cbexec: {config}: policies.job.umask: expected a string of octal digits like "027", '
        "got 77 (a TOML number keeps no base: 77 and 0o77 cannot be told apart; quote the "
        'octal digits: umask = "077")',
        f"cbexec: {config}: policies.job.env.VERBOSE: expected a string, got true",
        f"cbexec: {config}: policies.job.env.FRAMES: expected a string, got [1, 2]",
    ]


async def test_bad_mail_settings_and_a_login_in_clear_are_said_by_name(tmp_path: Path) -> None:
    # Both passed the check (probe 96): every mail then failed naming no setting.
    bad = (
        '[mail]\nsender = "qube@farm.example\\r\\nBcc: evil@x"\ndefault_domain = "farm example>"\n'
    )
    code, out, err = await check_config(config_file(tmp_path, bad))
    assert code == 2 and "ok: start-up would succeed" not in out
    assert "mail.sender: holds a control character" in err, err
    assert "mail.default_domain: expected a mail domain such as farm.example" in err, err
    # The relay's password in clear over the network is warned of, not refused.
    login = '[mail]\ndelivery = "smtp"\nsmtp_host = "smtp.farm.example"\nsmtp_user = "farm"\n'
    code, out, err = await check_config(config_file(tmp_path, login))
    assert code == 0, err
    assert "mail: smtp://smtp.farm.example:25, plaintext, login as farm" in out
    assert (
        "WARNING: mail.smtp_user is set and mail.smtp_starttls is off: the relay login sends "
        "mail.smtp_password to smtp.farm.example:25 in clear"
    ) in out
    code, out, err = await check_config(config_file(tmp_path, login + "smtp_starttls = true\n"))
    assert code == 0, err
    assert "mail: smtp://smtp.farm.example:25, STARTTLS, login as farm" in out
    assert "in clear" not in out


async def test_an_ipv6_bind_without_brackets_is_refused_by_check_and_serve_alike(
    tmp_path: Path,
) -> None:
    # The check said ok, then serve could not bind it (gRPC's own add_port.cc line, exit 2,
    # and under the example unit a restart every 2 s): both refuse it, in the clients' words.
    env = {k: v for k, v in cli_env().items() if k != "CBEXEC_SANDBOX_UID_BASE"}
    config = config_file(tmp_path)
    for check in (["--check-config"], []):
        said = await cbexec(
            "serve", "--config", str(config), "--bind", "::1:43240", *check, env=env
        )
        assert (said.code, said.err) == (
            2,
            "cbexec: flag: bind: address '::1:43240': write an IPv6 address in brackets,"
            " [IPv6]:PORT\n",
        ), check


async def test_a_bad_policy_is_named_beside_other_bad_settings(tmp_path: Path) -> None:
    # Only the [default_limits] line was said; the policy's came after that was fixed.
    config = config_file(
        tmp_path,
        '[default_limits]\nbogus = 1\n[policies.x]\nnetwork = "maybe"\nverbs = ["nope"]\n',
    )
    code, _, err = await check_config(config)
    lines = err.splitlines()
    assert (code, lines[:2]) == (
        2,
        [
            f"cbexec: {config}: default_limits: unknown limit 'bogus'",
            f"cbexec: {config}: policies.x.network: expected 'none' or 'host', got 'maybe'",
        ],
    ), err
    assert len(lines) == 3, err
    assert lines[2].startswith(f"cbexec: {config}: policies.x.verbs: unknown qb action 'nope'")
