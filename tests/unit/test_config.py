"""Settings: precedence, coercion, language flags and validation errors that name the setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from executor import config
from executor.errors import ConfigError
from executor.model import Language

pytestmark = pytest.mark.unit


def test_languages_accept_names_and_qube_numeric_flags() -> None:
    assert config.parse_languages("python, perl") == {Language.PYTHON, Language.PERL}
    assert config.parse_languages(5) == {Language.QUBE, Language.PYTHON}
    assert config.parse_languages("1") == {Language.QUBE}
    assert config.parse_languages(16 + 4) == {Language.MAIL, Language.PYTHON}
    with pytest.raises(ConfigError, match="unknown language 'ruby'"):
        config.parse_languages("python,ruby")


def test_toml_then_env_override(tmp_path: Path) -> None:
    toml = tmp_path / "cbexec.toml"
    toml.write_text(
        'bind = "127.0.0.1:6000"\nmax_concurrent = 3\n[default_limits]\nwall_seconds = 5\n'
    )
    settings = config.from_toml(config.Settings(), toml)
    settings = config.from_env(
        settings,
        {"CBEXEC_MAX_CONCURRENT": "7", "CBEXEC_DEFAULT_LIMITS__CPU_SECONDS": "2", "HOME": "/x"},
    )
    assert settings.bind == "127.0.0.1:6000"
    assert settings.max_concurrent == 7
    assert settings.default_limits.wall_seconds == 5
    assert settings.default_limits.cpu_seconds == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bogus": 1}, "unknown setting 'bogus'"),
        ({"max_concurrent": "many"}, "max_concurrent"),
        ({"default_limits": {"gpu": 1}}, "unknown limit 'gpu'"),
        ({"grace_seconds": "soon"}, "grace_seconds"),
    ],
)
def test_bad_values_name_the_setting(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.apply(config.Settings(), values, "test")


def test_validate_rejects_defaults_above_caps() -> None:
    settings = config.apply(config.Settings(), {"default_limits": {"wall_seconds": 99999}}, "t")
    with pytest.raises(ConfigError, match=r"default_limits\.wall_seconds"):
        config.validate(settings)


def test_unreadable_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        config.from_toml(config.Settings(), tmp_path / "missing.toml")


def test_network_takes_auto_none_or_host() -> None:
    with pytest.raises(ConfigError, match="network: expected auto, none or host"):
        config.validate(config.apply(config.Settings(), {"network": "maybe"}, "t"))
    assert config.Settings().network == "auto"


def test_http_bind_is_off_by_default_and_checked_when_set() -> None:
    assert config.Settings().http_bind == ""
    assert config.validate(config.Settings(http_bind="127.0.0.1:50052")).http_bind
    with pytest.raises(ConfigError, match="http_bind: expected host:port"):
        config.validate(config.Settings(http_bind="50052"))
    with pytest.raises(ConfigError, match="http_bind: must differ from bind"):
        config.validate(config.Settings(http_bind="127.0.0.1:50051"))
    env = config.from_env(
        config.Settings(), {"CBEXEC_HTTP_BIND": "[::1]:9000", "CBEXEC_HTTP_EXEMPT_METRICS": "yes"}
    )
    assert (env.http_bind, env.http_exempt_metrics) == ("[::1]:9000", True)


def test_the_clients_address_variable_is_not_a_setting() -> None:
    settings = config.from_env(
        config.Settings(), {"CBEXEC_ADDRESS": "10.0.0.1:50051", "CBEXEC_MAX_QUEUE": "9"}
    )
    assert settings.max_queue == 9


def test_max_concurrent_zero_means_the_hosts_default() -> None:
    settings = config.from_env(config.Settings(max_concurrent=3), {"CBEXEC_MAX_CONCURRENT": "0"})
    assert settings.max_concurrent == config.default_max_concurrent()


@pytest.mark.parametrize(
    "variable", ["CBEXEC_POLICIES__JOB__NETWORK", "CBEXEC_POLICIES__JOB", "CBEXEC_POLICIES"]
)
def test_policies_come_from_the_config_file_not_the_environment(variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.from_env(config.Settings(), {variable: "host"})
    assert str(caught.value) == (
        f"environment: {variable}: sandbox policies are set in the config file "
        "([policies.NAME] tables), not from the environment"
    )


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"CBEXEC_MAX_QUEUE": "-1"}, "max_queue: must be 0 or more, got -1"),
        (
            {"CBEXEC_MAX_CONCURRENT": "-2"},
            "max_concurrent: must be at least 1 (0 means the default), got -2",
        ),
        ({"CBEXEC_HISTORY_MAX_RUNS": "0"}, "history_max_runs: must be at least 1, got 0"),
        (
            {"CBEXEC_CALLBACK_LOG_MAX_BYTES": "0"},
            "callback_log_max_bytes: must be at least 1, got 0",
        ),
    ],
)
def test_a_number_out_of_range_names_only_its_setting(
    variables: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config.validate(config.from_env(config.Settings(), variables))
    assert str(caught.value) == message


def test_describe_prints_toml_spelling_and_hides_secrets() -> None:
    lines = config.describe(config.Settings(auth_token="s3cret", languages=frozenset()))
    assert 'auth_token = "(set)"' in lines and "languages = []" in lines
    assert "grace_seconds = 0.5" in lines and "prepare_ahead = true" in lines
    assert not any("s3cret" in line for line in lines)


@pytest.mark.parametrize(
    "store",
    [
        "postgresql://u:hunter2@db/cbexec",
        "postgresql://u@db/cbexec?password=hunter2",
        "postgresql://u@db/cbexec?sslmode=require&Password=hunter2&connect_timeout=3",
    ],
)
def test_describe_never_prints_a_store_password(store: str) -> None:
    (line,) = [
        line for line in config.describe(config.Settings(store=store)) if line.startswith("store =")
    ]
    assert "hunter2" not in line and "(set)" in line and "db/cbexec" in line


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://u:hunter2@[bad/db", 'looking for matching "]" in IPv6 host address'),
        ("postgresql://u:hunter2@h/db?nope=hunter2", 'invalid URI query parameter: "nope"'),
    ],
)
def test_a_malformed_store_url_is_refused_without_its_password(url: str, reason: str) -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(ConfigError) as caught:
        config.validate(config.Settings(store=url))
    said = str(caught.value)
    assert said.startswith("store: not a valid PostgreSQL URL: ") and reason in said
    assert "hunter2" not in said


@pytest.mark.parametrize(
    "variables", [{"CBEXEC_LOG_LEVEL": "LOUD"}, {"CBEXEC_LOG_LEVEL": ""}, {"CBEXEC_LOG_LEVEL": "5"}]
)
def test_an_unknown_log_level_is_a_config_error(variables: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        config.validate(config.from_env(config.Settings(), variables))
    assert str(caught.value).startswith("log_level: expected DEBUG, INFO, WARNING, ERROR, CRITICAL")


def test_a_log_level_is_taken_in_any_case() -> None:
    config.validate(config.from_env(config.Settings(), {"CBEXEC_LOG_LEVEL": "debug"}))


def test_fractional_seconds_limits_are_kept_alike_from_the_file_and_the_environment() -> None:
    from_file = config.apply(
        config.Settings(), {"default_limits": {"wall_seconds": 1.5, "cpu_seconds": 2.9}}, "f"
    )
    from_env = config.from_env(
        config.Settings(),
        {
            "CBEXEC_DEFAULT_LIMITS__WALL_SECONDS": "1.5",
            "CBEXEC_DEFAULT_LIMITS__CPU_SECONDS": "2.9",
        },
    )
    for settings in (from_file, from_env):
        # cpu_seconds is rounded up where it becomes RLIMIT_CPU (sandbox/limits.py).
        assert config.validate(settings).default_limits.wall_seconds == 1.5
        assert settings.default_limits.cpu_seconds == 2.9
    half = config.apply(config.Settings(), {"default_limits": {"wall_seconds": 0.5}}, "f")
    assert config.validate(half).default_limits.wall_seconds == 0.5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"default_limits": {"memory_bytes": 1.5}}, "memory_bytes: expected a whole number"),
        ({"max_queue": 2.5}, "max_queue: expected a whole number, got 2.5"),
    ],
)
def test_a_fraction_for_a_whole_number_is_refused_not_truncated(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        config.apply(config.Settings(), values, "f")


def _refusal(tmp_path: Path, **values: object) -> str:
    settings = config.apply(config.Settings(data_dir=tmp_path / "data"), values, "f")
    with pytest.raises(ConfigError) as caught:
        config.validate(settings)
    return str(caught.value)


def test_values_that_break_the_service_are_refused_by_name(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert _refusal(tmp_path, supervisor_timeout_seconds=0) == (
        "supervisor_timeout_seconds: must be positive, got 0"
    )
    assert _refusal(tmp_path, supervisor_timeout_seconds=-1).startswith(
        "supervisor_timeout_seconds: must be positive"
    )
    assert _refusal(tmp_path, grace_seconds=-1) == "grace_seconds: must be 0 or more, got -1"
    languages: object
    for languages in (0, []):
        assert _refusal(tmp_path, languages=languages).startswith("languages: none is enabled")
    assert _refusal(tmp_path, supervisor="not an address") == (
        "supervisor: expected host:port, got 'not an address'"
    )
    assert _refusal(tmp_path, log_dir=str(a_file)) == (
        f"log_dir: {a_file} exists and is not a directory"
    )
    assert _refusal(tmp_path, mail={"directory": str(a_file)}) == (
        f"mail.directory: {a_file} exists and is not a directory"
    )
    missing = tmp_path / "no-templates"
    assert _refusal(tmp_path, mail={"templates_dir": str(missing)}) == (
        f"mail.templates_dir: {missing} is not a directory"
    )


def test_supervisor_takes_host_port_or_a_grpc_target() -> None:
    for address in ("10.0.0.5:50052", "unix:/run/qube/supervisor.sock", "dns:///sup:50052"):
        config.validate(config.Settings(supervisor=address))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        # Was taken as no directory at all: "no callbacks.conf in " (an empty name).
        (",", "universal_callback_path: ',' names no directory; leave it unset for"),
        (" , ,", "universal_callback_path: ' , ,' names no directory"),
        # Was taken as the working directory, "."
        ("/a, [policy=admin]", "'[policy=admin]': no directory before the options"),
    ],
)
def test_a_universal_callback_path_entry_without_a_directory_is_refused(
    path: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.validate(config.Settings(universal_callback_path=path))


def test_a_stray_comma_in_universal_callback_path_is_skipped() -> None:
    settings = config.validate(config.Settings(universal_callback_path="/a,, /b [policy=x],"))
    assert settings.universal_callback_policies == {Path("/a"): "", Path("/b"): "x"}


def test_an_unclosed_policy_bracket_in_universal_callback_path_is_refused() -> None:
    settings = config.Settings(universal_callback_path="/dir [policy=admin")
    with pytest.raises(ConfigError, match=r"universal_callback_path: '/dir \[policy=admin'"):
        config.validate(settings)
    closed = config.Settings(universal_callback_path="/dir [policy=admin]")
    assert config.validate(closed).universal_callback_policies == {Path("/dir"): "admin"}


def test_every_problem_of_the_settings_is_named_not_only_the_first() -> None:
    settings = config.Settings(network="maybe", max_queue=-1, store_lease_seconds=0)
    with pytest.raises(ConfigError) as caught:
        config.validate(settings)
    assert str(caught.value).splitlines() == [
        "max_queue: must be 0 or more, got -1",
        "network: expected auto, none or host, got 'maybe'",
        "store_lease_seconds: must be at least 1",
    ]
    with pytest.raises(ConfigError) as caught:
        config.apply(config.Settings(), {"max_queue": "x", "bogus": 1, "grace_seconds": "y"}, "f")
    assert [line.split(":")[:2] for line in str(caught.value).splitlines()] == [
        ["f", " max_queue"],
        ["f", " unknown setting 'bogus'"],
        ["f", " grace_seconds"],
    ]
