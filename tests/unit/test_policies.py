"""Policies as the config file gives them: resolved, checked, and who gets which."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from executor import policies as policies_module
from executor import policy_binds
from executor.config import Settings
from executor.config_checks import validate
from executor.errors import ConfigError, NotFoundError, PermissionDeniedError
from executor.policies import PolicySet, canonical_verb, resolve
from executor.policy_binds import _perl_inc, bind_warnings, interpreter_paths
from executor.policy_host import for_host
from executor.runtimes.child import CHILD_DIR, PerlRuntime
from executor.sandbox.process import SandboxOptions
from executor.triggers.universal import UniversalConfigError, load_universal

pytestmark = pytest.mark.unit

DEFAULTS = Settings()


def policies(tmp_path: Path, tables: dict[str, Any], **kwargs: Any) -> PolicySet:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    return resolve(
        tables,
        network_host=False,
        languages=DEFAULTS.languages,
        default_limits=DEFAULTS.default_limits,
        max_limits=DEFAULTS.max_limits,
        data_dir=data_dir,
        protected_files=kwargs.pop("protected_files", []),
        keep=[sys.prefix],
        environ=kwargs.pop("environ", {}),
    )


def refused(tmp_path: Path, tables: dict[str, Any], **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        policies(tmp_path, tables, **kwargs)
    return str(caught.value)


def test_the_built_in_policies_are_todays_confinement(tmp_path: Path) -> None:
    found = policies(tmp_path, {})
    assert found.names() == ["job", "universal"]
    for name in ("job", "universal"):
        policy = found.get(name)
        assert not policy.host_network and not policy.binds and policy.group is None
        assert policy.limits == (DEFAULTS.default_limits, DEFAULTS.max_limits)
        assert policy.verbs is None and policy.umask == 0o077


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"binds": [{"path": "relative"}]}, "policies.p.binds[0].path: must be an absolute path"),
        ({"binds": [{"path": "/nonexistent-dir"}]}, "is not an existing directory"),
        ({"binds": [{"path": "/", "mode": "ro"}]}, "may not be /"),
        ({"binds": [{"path": "/usr", "mode": "rwx"}]}, "policies.p.binds[0].mode: expected"),
        ({"binds": [{"path": "/usr", "target": "/nonexistent-target"}]}, "make it on the host"),
        ({"binds": [{"path": "/usr", "owner": "x"}]}, "unknown key 'owner'"),
        ({"network": "lan"}, "policies.p.network: expected 'none' or 'host'"),
        ({"group": "no-such-group-here"}, "policies.p.group: no group"),
        ({"group": 0}, "other than root's"),
        ({"group": "0"}, "other than root's"),
        ({"group": -1}, "policies.p.group: -1 is not a gid"),
        ({"umask": "9"}, "policies.p.umask"),
        ({"verbs": ["destroy"]}, "policies.p.verbs: unknown qb action 'destroy'"),
        ({"languages": ["cobol"]}, "policies.p.languages"),
        ({"default_limits": {"wall_seconds": 99999}}, "default_limits.wall_seconds: exceeds"),
        ({"max_limits": {"speed": 1}}, "unknown limit 'speed'"),
        # Were taken: NaN compares false with everything, so no cap or default check saw it.
        ({"max_limits": {"wall_seconds": float("nan")}}, "max_limits.wall_seconds: must be a fini"),
        (
            {"default_limits": {"cpu_seconds": float("inf")}},
            "default_limits.cpu_seconds: must be a fi",
        ),
        ({"max_limits": {"max_processes": 10**7}}, "max_processes: must be at most 4194304"),
        ({"max_limits": {"max_processes": 1.5}}, "max_processes: expected a whole number, got 1.5"),
        ({"env": {"PATH": "/evil"}}, "policies.p.env.PATH: not a variable a policy may set"),
        ({"env_files": {"TOKEN": "/nonexistent-token"}}, "policies.p.env_files.TOKEN: cannot read"),
        # Was read from the cwd at start-up: another file, or none, under systemd's /.
        (
            {"env_files": {"TOKEN": "secrets/token"}},
            "policies.p.env_files.TOKEN: must be an absolute path, got 'secrets/token'",
        ),
        ({"env_pass": ["NOT_SET_HERE"]}, "is not set in the executor's environment"),
        ({"colour": "red"}, "policies.p.colour: unknown key"),
    ],
)
def test_a_malformed_policy_is_refused_naming_its_key(
    tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    assert message in refused(tmp_path, {"p": table})


def test_every_bad_key_of_every_policy_is_named_a_line_each(tmp_path: Path) -> None:
    # Only the first was named: each fix revealed the next.
    lines = refused(
        tmp_path,
        {
            "job": {"network": "moon", "users": "x", "colour": "red", "umask": "9"},
            "universal": {"network": "lan"},
        },
    ).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "policies.job.colour",
        "policies.job.network",
        "policies.job.umask",
        "policies.job.users",
        "policies.universal.network",
    ]


def test_a_policys_fractional_seconds_are_kept_not_cut(tmp_path: Path) -> None:
    # Were cut to whole seconds (int(1.5)) when the executor's own were whole numbers.
    found = policies(tmp_path, {"p": {"default_limits": {"wall_seconds": 1.5, "cpu_seconds": 2.5}}})
    default, _ = found.get("p").limits
    assert (default.wall_seconds, default.cpu_seconds) == (1.5, 2.5)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        # Were given to the callback as Python's reprs: "True", "[1, 2]", "{'a': 1}".
        ("env = { VERBOSE = true }", "policies.p.env.VERBOSE: expected a string, got true"),
        ("env = { FRAMES = [1, 2] }", "policies.p.env.FRAMES: expected a string, got [1, 2]"),
        ("env = { OPTS = { a = 1 } }", "policies.p.env.OPTS: expected a string, got {'a': 1}"),
        ("env = { RATIO = 0.1 }", "policies.p.env.RATIO: expected a string, got 0.1"),
        ("env_files = { TOKEN = 5 }", "policies.p.env_files.TOKEN: expected a string, got 5"),
        # As the top-level tables: a string is no number, 1e9 no whole number.
        (
            'default_limits = { wall_seconds = "7" }',
            "policies.p.default_limits.wall_seconds: expected a number, got '7'",
        ),
        (
            "max_limits = { memory_bytes = 1e9 }",
            "policies.p.max_limits.memory_bytes: expected a whole number, got 1000000000.0",
        ),
        (
            "max_limits = { wall_seconds = true }",
            "policies.p.max_limits.wall_seconds: expected a number, got true",
        ),
    ],
)
def test_a_policy_value_of_the_wrong_toml_type_is_refused_not_converted(
    tmp_path: Path, toml: str, message: str
) -> None:
    assert refused(tmp_path, tomllib.loads(f"[p]\n{toml}\n")) == message


# TOML keeps no base: umask = 77 read as decimal was 0o115, a group-writable umask for an
# admin who meant 077; and 0o77 cannot be told from 63 written in decimal.
@pytest.mark.parametrize("written", ["77", "0o077", "0", "true", '"0o77"', '"7_7"', '" 77"'])
def test_a_umask_is_a_string_of_octal_digits(tmp_path: Path, written: str) -> None:
    said = refused(tmp_path, tomllib.loads(f"[p]\numask = {written}\n"))
    assert said.startswith('policies.p.umask: expected a string of octal digits like "027"'), said


@pytest.mark.parametrize(("written", "umask"), [("077", 0o077), ("7", 0o007), ("0027", 0o027)])
def test_a_umask_string_is_read_as_octal(tmp_path: Path, written: str, umask: int) -> None:
    assert policies(tmp_path, {"p": {"umask": written}}).get("p").umask == umask


def test_a_bind_may_not_expose_the_data_dir_the_config_or_tls_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    assert "would expose the data dir" in refused(tmp_path, {"p": {"binds": [{"path": str(data)}]}})
    assert "would expose the data dir" in refused(
        tmp_path, {"p": {"binds": [{"path": str(tmp_path)}]}}
    )
    secrets = tmp_path / "etc"
    secrets.mkdir()
    key = secrets / "server.key"
    key.write_text("key")
    message = refused(
        tmp_path, {"p": {"binds": [{"path": str(secrets)}]}}, protected_files=[str(key)]
    )
    assert f"would expose {key}" in message
    target = refused(tmp_path, {"p": {"binds": [{"path": str(secrets), "target": sys.prefix}]}})
    assert "would hide" in target


def test_a_bind_may_not_expose_an_env_file_or_the_config_file_given_in_the_settings(
    tmp_path: Path,
) -> None:
    # A bind mounts its directory afresh: the covers a child puts on the files in it
    # would not show there.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    token = secrets / "token"
    token.write_text("s3cret")
    config = tmp_path / "etc" / "cbexec.toml"
    config.parent.mkdir()
    config.write_text("")
    for bound, exposed in ((secrets, token), (config.parent, config)):
        settings = Settings(
            data_dir=tmp_path / "data",
            config_file=str(config),
            policies={
                "pipeline": {"env_files": {"TOKEN": str(token)}},
                "p": {"network": "host", "binds": [{"path": str(bound)}]},
            },
        )
        with pytest.raises(ConfigError) as caught:
            for_host(settings, HOST_NETWORK, {})
        assert str(caught.value) == (
            f"{config}: policies.p.binds[0].path: {bound} would expose {exposed} to callbacks"
        )


def test_a_bind_inside_a_read_write_bind_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer's callbacks could swap the directory for a symbolic link between runs.
    area = tmp_path / "area"
    (area / "sub").mkdir(parents=True)
    (area / "view").mkdir()
    writer = {"binds": [{"path": str(area), "mode": "rw"}]}
    reports = {"binds": [{"path": str(area / "sub"), "target": "/tmp/reports"}]}
    assert refused(tmp_path, {"universal": writer, "reports": reports}) == (
        f"policies.reports.binds[0].path: {area / 'sub'} lies inside {area}, which "
        "policies.universal.binds[0] mounts read-write: its callbacks could swap it for a "
        "symbolic link between runs; bind a directory outside it"
    )
    # Read-write inside read-write, in the same policy or through a symbolic link.
    (tmp_path / "link").symlink_to(area / "sub")
    inner = {"path": str(tmp_path / "link"), "target": "/tmp/inner", "mode": "rw"}
    nested = {"binds": [*writer["binds"], inner]}
    assert refused(tmp_path, {"universal": nested}).startswith(
        f"policies.universal.binds[1].path: {area / 'sub'} lies inside {area}"
    )
    # A target on the host inside it, when it is not under a mask (pytest's directories
    # are under /tmp, each callback's own: out of a writer's reach).
    elsewhere = tmp_path / "outside"
    elsewhere.mkdir()
    at_view = {"binds": [{"path": str(elsewhere), "target": str(area / "view")}]}
    policies(tmp_path, {"universal": writer, "reports": at_view})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "private"))
    assert refused(tmp_path, {"universal": writer, "reports": at_view}).startswith(
        f"policies.reports.binds[0].target: {area / 'view'} lies inside {area}"
    )
    # The read-write directory itself, bound by another policy too, is no nesting.
    policies(tmp_path, {"universal": writer, "reports": {"binds": [{"path": str(area)}]}})


def test_a_bind_target_on_the_host_in_a_directory_others_may_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its writers could rename it while a callback runs (the child's mount goes with the
    # renamed directory) and leave a symbolic link in its place (probe 53).
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "private"))  # tmp_path: the host's
    shared = tmp_path / "shared"
    (shared / "tools").mkdir(parents=True)
    shared.chmod(0o777)
    at_itself = {"p": {"binds": [{"path": str(shared / "tools")}]}}  # the target is the path
    assert refused(tmp_path, at_itself) == (
        f"policies.p.binds[0].target: {shared / 'tools'} can be renamed by the users who may "
        f"write {shared} (mode 0777, owner uid 0, group gid 0): they could leave a symbolic "
        "link in its place while a callback runs, and the callback's path would follow it; "
        "make it and the directories on its way root's alone, or choose a target under "
        f"{tmp_path / 'private'} (made in the callback's private one)"
    )
    shared.chmod(0o1777)  # sticky: others rename only their own entries
    policies(tmp_path, at_itself)
    os.chown(shared / "tools", 54321, 0)  # but the target's owner may rename it there
    assert refused(tmp_path, at_itself).startswith(
        f"policies.p.binds[0].target: {shared / 'tools'} can be renamed by uid 54321, the "
        f"owner of {shared / 'tools'} in the sticky directory {shared}: "
    )
    os.chown(shared / "tools", 0, 0)
    shared.chmod(0o775)
    os.chown(shared, 0, 54321)  # a group's (syslog's /var/log, on some systems): a warning
    assert bind_warnings(policies(tmp_path, at_itself)) == [
        f"policies.p.binds[0].target: {shared / 'tools'} can be renamed by the users who may "
        f"write {shared} (mode 0775, owner uid 0, group gid 54321): they could leave a "
        "symbolic link in its place while a callback runs, and the callback's path would "
        "follow it"
    ]
    os.chown(shared, 0, 0)
    assert bind_warnings(policies(tmp_path, at_itself)) == []
    os.chown(shared, 54321, 0)  # a user's own directory
    assert "owner uid 54321" in refused(tmp_path, at_itself)
    # A target in the callback's private /tmp is out of every writer's reach.
    private = {"p": {"binds": [{"path": str(shared / "tools"), "target": "/tmp/tools"}]}}
    monkeypatch.setattr(tempfile, "tempdir", None)
    policies(tmp_path, private)


def test_a_bind_is_resolved_and_its_directories_noted(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (tmp_path / "link").symlink_to(shared)
    found = policies(
        tmp_path, {"p": {"binds": [{"path": str(tmp_path / "link"), "target": "/tmp/view"}]}}
    )
    (bind,) = found.get("p").binds
    noted = shared.stat()
    not_a_mount = 0  # the same device as its parent's
    assert (bind.path, bind.path_identity) == (
        str(shared),
        (noted.st_dev, noted.st_ino, not_a_mount),
    )
    assert (bind.target, bind.target_identity) == ("/tmp/view", None), "made in the private /tmp"


def test_env_comes_from_the_table_files_and_the_executors_environment(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    found = policies(
        tmp_path,
        {
            "p": {
                "env": {"SITE": "studio"},
                "env_files": {"TOKEN": str(token)},
                "env_pass": ["TZ"],
            }
        },
        environ={"TZ": "UTC", "OTHER": "no"},
    ).get("p")
    assert dict(found.env) == {"SITE": "studio", "TOKEN": "s3cret", "TZ": "UTC"}
    assert "s3cret" not in repr(found) and "s3cret" not in found.grants()


def test_verbs_are_checked_in_any_spelling() -> None:
    assert canonical_verb("unblockwork") == "workunblock"
    assert canonical_verb("retire") == "complete"
    assert canonical_verb("subjobkill") == "subjobkill"


def test_who_gets_which_policy(tmp_path: Path) -> None:
    found = policies(tmp_path, {"admin": {"users": ["root-ops"]}, "universal": {"users": ["ci"]}})
    assert found.for_job_callback("alice").name == "job"
    assert found.for_job_callback("root-ops").name == "admin"
    assert found.for_execute("root-ops", "").name == "admin"
    assert found.for_execute("root-ops", "job").name == "job"
    assert found.for_execute("ci", "universal").name == "universal"
    for user, asked in (("alice", "admin"), ("alice", "universal"), ("root-ops", "nope")):
        with pytest.raises(PermissionDeniedError):
            found.for_execute(user, asked)
    assert found.for_universal("").name == "universal"
    assert found.for_universal("admin").name == "admin"
    # Never another policy (and its grants) for a name that is gone.
    with pytest.raises(NotFoundError) as gone:
        found.for_universal("contrib")
    assert str(gone.value) == "policy 'contrib' is not configured (policies: job, universal, admin)"
    assert "policies.job.users" in refused(tmp_path, {"job": {"users": ["x"]}})


def test_a_user_in_two_policies_is_refused_naming_both(tmp_path: Path) -> None:
    said = refused(tmp_path, {"b": {"users": ["alice"]}, "a": {"users": ["bob", "alice"]}})
    assert said == (
        "policies.a.users: user 'alice' is also in policies.b.users; "
        "a user gets one policy, list them once"
    )


def test_a_user_name_no_user_can_have_is_refused(tmp_path: Path) -> None:
    # Found by a probe: users = [""] gave the policy to every request naming no user,
    # and " admin" was taken but never matched admin.
    said = refused(tmp_path, {"anon": {"users": ["ok", "", " admin", "bob\t", "a\nb"]}})
    assert said.splitlines() == [
        "policies.anon.users[1]: an empty name: no Qube user has it (it would give this "
        "policy to every request and job that names no user)",
        "policies.anon.users[2]: ' admin' has whitespace around it: no Qube user name does "
        "(it would match only a request naming ' admin')",
        "policies.anon.users[3]: 'bob\\t' has whitespace around it: no Qube user name does "
        "(it would match only a request naming 'bob\\t')",
        "policies.anon.users[4]: 'a\\nb' holds a control character: no Qube user name does",
    ]


def test_what_the_host_cannot_do_fails_start_up(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", policies={"p": {"network": "none"}})
    no_namespaces = SandboxOptions(
        site_paths=(), pid_namespace=False, network=True, grace_s=0.1, cgroups=None
    )
    assert for_host(settings.replace(policies={}), no_namespaces, {}).get("job").host_network
    with pytest.raises(ConfigError, match=r"policies.p.network: 'none' needs namespaces"):
        for_host(settings, no_namespaces, {})
    shared = tmp_path / "shared"
    shared.mkdir()
    bound = settings.replace(policies={"p": {"network": "host", "binds": [{"path": str(shared)}]}})
    with pytest.raises(ConfigError, match=r"policies.p.binds: needs the hardened tier"):
        for_host(bound, no_namespaces, {})


HOST_NETWORK = SandboxOptions(
    site_paths=(), pid_namespace=False, network=True, grace_s=0.1, cgroups=None
)
PERL = PerlRuntime().perl
PERL_INC = [p for p in _perl_inc(PERL) if os.path.isdir(p)]
# Where the callbacks' interpreters live: no bind target may be, hold or lie in one.
INTERPRETER_TARGETS = [
    sys.base_prefix,
    os.path.join(sys.base_prefix, "lib"),
    os.path.dirname(os.path.realpath(sys.executable)),
    sys.prefix,
    str(CHILD_DIR),
    *(
        [os.path.dirname(PERL), os.path.dirname(os.path.dirname(PERL))]
        if shutil.which(PERL)
        else []
    ),
    *PERL_INC[:1],
    *(os.path.join(p, "x") for p in PERL_INC[:1]),
]


def bind_to(tmp_path: Path, target: str) -> Settings:
    shared = tmp_path / "shared"
    shared.mkdir(exist_ok=True)
    binds = [{"path": str(shared), "target": target}]
    return Settings(data_dir=tmp_path / "data", policies={"p": {"network": "host", "binds": binds}})


@pytest.mark.parametrize("target", INTERPRETER_TARGETS)
def test_a_bind_target_may_not_hide_what_the_interpreters_need(tmp_path: Path, target: str) -> None:
    with pytest.raises(ConfigError) as caught:
        for_host(bind_to(tmp_path, target), HOST_NETWORK, {})
    assert str(caught.value).startswith(f"policies.p.binds[0].target: {target} would hide"), (
        caught.value
    )
    assert str(caught.value).endswith(", which callbacks need")


# What the sandbox mounts afresh in each callback: a bind there was accepted, then every
# run of the policy failed before its code ran (probe 82: a raw "mount ..." error, or a
# BindChangedError blaming a change that never happened).
@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("/proc", "/proc is where the sandbox mounts each callback's own proc file system"),
        ("/proc/sys", "/proc/sys lies inside /proc, where the sandbox mounts each callback's own"),
        ("/dev/pts", "/dev/pts is where the sandbox mounts each callback's own ptys"),
        ("/dev", "/dev would hide /dev/pts, where the sandbox mounts each callback's own ptys"),
    ],
)
def test_a_bind_target_may_not_meet_what_the_sandbox_mounts_for_each_callback(
    tmp_path: Path, target: str, said: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        for_host(bind_to(tmp_path, target), HOST_NETWORK, {})
    assert str(caught.value).startswith(f"policies.p.binds[0].target: {said}"), caught.value
    assert str(caught.value).endswith(": choose another target"), caught.value
    assert "\n" not in str(caught.value)


def test_the_private_tmp_itself_is_refused_as_a_target_for_what_it_is(tmp_path: Path) -> None:
    # It was "/tmp is not an existing directory": it is, and holds the working directory.
    private_tmp = tempfile.gettempdir()
    with pytest.raises(ConfigError) as caught:
        for_host(bind_to(tmp_path, private_tmp), HOST_NETWORK, {})
    assert str(caught.value) == (
        f"policies.p.binds[0].target: {private_tmp} is each callback's private tmpfs, which "
        "holds its working directory (made after the binds, it would be made in the bound "
        f"directory): choose a target under {private_tmp} (made in the callback's private one)"
    )


def test_network_none_with_pid_namespace_off_blames_the_setting_not_the_host(
    tmp_path: Path,
) -> None:
    # It said "which this host does not allow" on a host that allows them.
    settings = Settings(
        data_dir=tmp_path / "data", pid_namespace="off", policies={"p": {"network": "none"}}
    )
    with pytest.raises(ConfigError) as caught:
        for_host(settings, HOST_NETWORK, {})
    assert str(caught.value) == (
        "policies.p.network: 'none' needs namespaces, and pid_namespace is off (the "
        "executor makes an empty network namespace only with a PID namespace); set "
        'pid_namespace = "auto"'
    )


@pytest.mark.skipif(shutil.which("perl") is None, reason="no perl here")
def test_hiding_perl_names_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        for_host(bind_to(tmp_path, os.path.dirname(PERL)), HOST_NETWORK, {})
    assert f"would hide {PERL}, which callbacks need" in str(caught.value)


def test_a_target_elsewhere_passes_and_perl_is_asked_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def perl_inc(perl: str) -> tuple[str, ...]:
        asked.append(perl)
        return ()

    monkeypatch.setattr(policy_binds, "_perl_inc", perl_inc)
    interpreter_paths.cache_clear()
    try:
        for_host(Settings(data_dir=tmp_path / "data"), HOST_NETWORK, {})
        assert not asked, "no bind to check: perl is not asked"
        for _ in range(2):
            # Past the target checks: only the tier is missing here.
            with pytest.raises(ConfigError, match=r"policies.p.binds: needs the hardened tier"):
                for_host(bind_to(tmp_path, "/tmp/cbexec-test-mount"), HOST_NETWORK, {})
        assert asked == [PERL]
    finally:
        interpreter_paths.cache_clear()


def test_universal_callback_path_may_name_a_policy_per_directory() -> None:
    settings = Settings(universal_callback_path="/a, /b [policy=admin]")
    assert settings.universal_callback_policies == {Path("/a"): "", Path("/b"): "admin"}
    assert settings.universal_callback_dirs == [Path("/a"), Path("/b")]
    with pytest.raises(ConfigError, match="universal_callback_path"):
        validate(Settings(universal_callback_path="/a [admin]"))


@pytest.mark.parametrize("path", ["/a [policy=admin], /b, /a/ [policy=pipe]", "/a, /a"])
def test_a_directory_named_twice_in_universal_callback_path_is_refused(path: str) -> None:
    # Before, the last entry won: /a's callbacks ran under 'pipe'.
    with pytest.raises(ConfigError) as refused:
        validate(Settings(universal_callback_path=path))
    assert str(refused.value) == (
        "universal_callback_path: '/a' is named twice; name each directory once, with its "
        "[policy=NAME] if any"
    )


def test_callbacks_conf_lines_name_a_policy_and_shadow(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("print(1)\n")
    (tmp_path / "b.py").write_text("print(2)\n")
    (tmp_path / "callbacks.conf").write_text(
        "a.py [level, policy=admin, shadow] = done-job-self\nb.py = done-job-self\n"
    )
    a, b = load_universal([tmp_path], lambda _: None, policies={tmp_path: "dir-policy"})
    assert (a.mode, a.policy, a.shadow) == ("level", "admin", True)
    assert (b.mode, b.policy, b.shadow) == ("edge", "dir-policy", False)
    with pytest.raises(UniversalConfigError, match="no policy 'admin'"):
        load_universal([tmp_path], lambda _: None, known_policies=["job", "universal"])


def test_a_refused_policy_names_the_user_and_where_it_came_from(tmp_path: Path) -> None:
    found = policies(tmp_path, {"admin": {"users": ["admin"]}})
    with pytest.raises(PermissionDeniedError) as refused:
        found.for_execute("alice", "admin")
    assert str(refused.value) == (
        "user 'alice' (callback.user, else context.job.user) may not ask for policy 'admin': "
        "it is not in policies.admin.users"
    )


def test_an_env_value_with_a_nul_byte_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "nul.secret"
    secret.write_bytes(b"abc\x00def\n")
    assert refused(tmp_path, {"x": {"env_files": {"TOKEN": str(secret)}}}) == (
        "policies.x.env_files.TOKEN: holds a NUL byte, which an environment variable cannot"
    )
    assert refused(tmp_path, {"x": {"env": {"TOKEN": "a\x00b"}}}) == (
        "policies.x.env.TOKEN: holds a NUL byte, which an environment variable cannot"
    )


def test_a_group_may_be_a_gid_written_as_a_string(tmp_path: Path) -> None:
    assert policies(tmp_path, {"p": {"group": "4242"}}).get("p").group == 4242


def test_the_readme_shows_the_policy_lines_its_studio_config_gives(tmp_path: Path) -> None:
    # The README's lines had lost mail from the default languages.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    studio = readme.split("**A studio's policies.**", 1)[1].split("```toml\n", 1)[1]
    tables = tomllib.loads(studio.split("```", 1)[0])["policies"]
    shown = readme.split("list each policy and what it grants:\n\n```\n", 1)[1].split("```", 1)[0]
    # This host has neither its directories nor its group: stand-ins, named back after.
    stand_ins: dict[str, str] = {}
    for bind in tables["universal"]["binds"]:
        stand_ins[bind["path"]] = bind["path"] = str(tmp_path / bind["path"].strip("/"))
        Path(bind["path"]).mkdir(parents=True)
    tables["universal"]["group"] = 990
    for table in tables.values():
        files = table.get("env_files", {})
        for variable in files:
            files[variable] = str(tmp_path / variable)
            Path(files[variable]).write_text("secret\n")

    lines = policies_module.report(policies(tmp_path, tables))

    for readme_path, stand_in in stand_ins.items():
        lines = [line.replace(stand_in, readme_path) for line in lines]
    assert lines == shown.splitlines()
