"""Settings: precedence, coercion, language flags and validation errors that name the setting."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Final

import pytest

from executor import config, config_checks, config_sources, config_values
from executor.api.security import open_port_warnings
from executor.cli import build_parser, main
from executor.cli.connection import EXIT_USAGE
from executor.cli.serve import layered_settings, load_settings
from executor.errors import ConfigError
from executor.model import Language
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import TEST_UID_BASE

pytestmark = pytest.mark.unit


def test_languages_accept_names_and_qube_numeric_flags() -> None:
    assert config_values.parse_languages("python, perl") == {Language.PYTHON, Language.PERL}
    assert config_values.parse_languages(5) == {Language.QUBE, Language.PYTHON}
    assert config_values.parse_languages("1") == {Language.QUBE}
    assert config_values.parse_languages(16 + 4) == {Language.MAIL, Language.PYTHON}
    with pytest.raises(ConfigError, match="unknown language 'ruby'"):
        config_values.parse_languages("python,ruby")


def test_toml_then_env_override(tmp_path: Path) -> None:
    toml = tmp_path / "cbexec.toml"
    toml.write_text(
        'bind = "127.0.0.1:6000"\nmax_concurrent = 3\n[default_limits]\nwall_seconds = 5\n'
    )
    settings = config_sources.from_toml(config.Settings(), toml)
    settings = config_sources.from_env(
        settings,
        {"CBEXEC_MAX_CONCURRENT": "7", "CBEXEC_DEFAULT_LIMITS__CPU_SECONDS": "2", "HOME": "/x"},
    )
    assert settings.bind == "127.0.0.1:6000"
    assert settings.max_concurrent == 7
    assert settings.default_limits.wall_seconds == 5
    assert settings.default_limits.cpu_seconds == 2


@pytest.fixture
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own ``CBEXEC_*`` settings out of the way: they would add lines."""
    for variable in [v for v in os.environ if v.startswith(config_sources.ENV_PREFIX)]:
        monkeypatch.delenv(variable)


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
        config_sources.apply(config.Settings(), values, "test")


def test_validate_rejects_defaults_above_caps() -> None:
    settings = config_sources.apply(
        config.Settings(), {"default_limits": {"wall_seconds": 99999}}, "t"
    )
    with pytest.raises(ConfigError, match=r"default_limits\.wall_seconds"):
        config_checks.validate(settings)


def test_unreadable_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        config_sources.from_toml(config.Settings(), tmp_path / "missing.toml")


def test_network_takes_auto_none_or_host() -> None:
    with pytest.raises(ConfigError, match="network: expected auto, none or host"):
        config_checks.validate(config_sources.apply(config.Settings(), {"network": "maybe"}, "t"))
    assert config.Settings().network == "auto"


def test_http_allowed_hosts_are_names_without_a_port() -> None:
    settings = config.Settings(http_allowed_hosts=" Dash.Studio.Example., render-sup-1 ,,10.0.0.5")
    assert config_checks.validate(settings).http_allowed_host_names == [
        "dash.studio.example",
        "render-sup-1",
        "10.0.0.5",
    ]
    assert config_checks.validate(
        config.Settings(http_allowed_hosts="*")
    ).http_allowed_host_names == ["*"]
    for bad in ("dash:8080", "evil.test/x", "[::1]", "a b", "*.studio.example"):
        with pytest.raises(ConfigError, match=f"http_allowed_hosts: '{re.escape(bad.lower())}'"):
            config_checks.validate(config.Settings(http_allowed_hosts=bad))
    env = config_sources.from_env(config.Settings(), {"CBEXEC_HTTP_ALLOWED_HOSTS": "dash.example"})
    assert env.http_allowed_host_names == ["dash.example"]


def test_http_bind_is_off_by_default_and_checked_when_set() -> None:
    assert config.Settings().http_bind == ""
    assert config_checks.validate(config.Settings(http_bind="127.0.0.1:50052")).http_bind
    with pytest.raises(ConfigError, match="http_bind: expected host:port"):
        config_checks.validate(config.Settings(http_bind="50052"))
    with pytest.raises(ConfigError, match="http_bind: must differ from bind"):
        config_checks.validate(config.Settings(http_bind="127.0.0.1:50051"))
    env = config_sources.from_env(
        config.Settings(), {"CBEXEC_HTTP_BIND": "[::1]:9000", "CBEXEC_HTTP_EXEMPT_METRICS": "yes"}
    )
    assert (env.http_bind, env.http_exempt_metrics) == ("[::1]:9000", True)


def test_the_clients_address_variable_is_not_a_setting() -> None:
    settings = config_sources.from_env(
        config.Settings(), {"CBEXEC_ADDRESS": "10.0.0.1:50051", "CBEXEC_MAX_QUEUE": "9"}
    )
    assert settings.max_queue == 9


def test_the_queues_bytes_default_to_256_mib_and_are_set_in_a_file_or_the_environment(
    tmp_path: Path,
) -> None:
    assert config.Settings().max_queue_bytes == 256 << 20
    toml = tmp_path / "c.toml"
    toml.write_text("max_queue_bytes = 67_108_864\n")
    assert (
        config_checks.validate(config_sources.from_toml(config.Settings(), toml)).max_queue_bytes
        == 64 << 20
    )
    env = config_sources.from_env(config.Settings(), {"CBEXEC_MAX_QUEUE_BYTES": "16777216"})
    assert config_checks.validate(env).max_queue_bytes == 16 << 20


def test_max_concurrent_zero_means_the_hosts_default() -> None:
    settings = config_sources.from_env(
        config.Settings(max_concurrent=3), {"CBEXEC_MAX_CONCURRENT": "0"}
    )
    assert settings.max_concurrent == config.default_max_concurrent()


@pytest.mark.parametrize(
    "variable", ["CBEXEC_POLICIES__JOB__NETWORK", "CBEXEC_POLICIES__JOB", "CBEXEC_POLICIES"]
)
def test_policies_come_from_the_config_file_not_the_environment(variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_sources.from_env(config.Settings(), {variable: "host"})
    assert str(caught.value) == (
        f"environment: {variable}: sandbox policies are set in the config file "
        "([policies.NAME] tables), not from the environment"
    )


def test_the_test_suites_and_clients_variables_are_not_settings() -> None:
    """A shell set up for the suite (README "Development") can start the service too.

    ``CBEXEC_TEST_UID_BASE`` made ``cbexec serve`` refuse to start: "environment: unknown
    setting 'test_uid_base'".
    """
    suite = {
        "CBEXEC_TEST_UID_BASE": "80100",
        "CBEXEC_TEST_CHROMIUM": "/usr/bin/chromium",
        "CBEXEC_TEST_BUF_AGAINST": "HEAD~1",
        "CBEXEC_PROTO_ROOT": "/srv/proto",  # the Node example client's
        "CBEXEC_ADDRESS": "127.0.0.1:50051",
    }
    assert config_sources.env_values({**suite, "CBEXEC_MAX_QUEUE": "4"}) == {"max_queue": "4"}
    serve = build_parser().parse_args(["serve"])
    assert load_settings(serve, suite) == load_settings(serve, {})
    # The prefix is the suite's alone: no setting may take it.
    assert not [f.name for f in dataclasses.fields(config.Settings) if f.name.startswith("test")]
    with pytest.raises(ConfigError, match=r"^environment: unknown setting 'max_queues'$"):
        load_settings(serve, {**suite, "CBEXEC_MAX_QUEUES": "4"})


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
            {"CBEXEC_MAX_QUEUE_BYTES": "16777215"},
            "max_queue_bytes: must be at least 16777216 (16 MiB, the largest request, which "
            "may then wait; the value is in bytes), got 16777215",
        ),
        (
            {"CBEXEC_HISTORY_MAX_BYTES": "1024"},
            "history_max_bytes: must be at least 1048576 (1 MiB; the value is in bytes), got 1024",
        ),
        (
            {"CBEXEC_HISTORY_MAX_BYTES": "-1"},
            "history_max_bytes: must be at least 1048576 (1 MiB; the value is in bytes), got -1",
        ),
        (
            {"CBEXEC_TRIGGERS_MAX_BYTES": "1000"},
            "triggers_max_bytes: must be at least 1048576 (1 MiB; the value is in bytes), got 1000",
        ),
        (
            {"CBEXEC_CALLBACK_LOG_MAX_BYTES": "0"},
            "callback_log_max_bytes: must be at least 1, got 0",
        ),
        (
            {"CBEXEC_CALLBACK_LOG_TOTAL_MAX_BYTES": "65536"},
            "callback_log_total_max_bytes: must be at least 1048576 (1 MiB; the value is in bytes),"
            " got 65536",
        ),
        # Shorter, a publisher's resend of an event it was unsure of would apply twice.
        (
            {"CBEXEC_EVENT_ID_RETENTION_HOURS": "0.5"},
            "event_id_retention_hours: must be at least 1 (a publisher's resend of an event "
            "must still find its id), got 0.5",
        ),
        (
            {"CBEXEC_EVENT_ID_RETENTION_HOURS": "-72"},
            "event_id_retention_hours: must be at least 1 (a publisher's resend of an event "
            "must still find its id), got -72",
        ),
        (
            {"CBEXEC_EVENT_ID_MAX_COUNT": "99999"},
            "event_id_max_count: must be at least 100000 (a PublishEvents' ids, and minutes"
            " of them, must be kept for their resends), got 99999",
        ),
    ],
)
def test_a_number_out_of_range_names_only_its_setting(
    variables: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_checks.validate(config_sources.from_env(config.Settings(), variables))
    assert str(caught.value) == message


def test_triggers_max_bytes_is_4_gib_by_default_and_taken_from_a_file_or_the_environment(
    tmp_path: Path,
) -> None:
    assert config.Settings().triggers_max_bytes == 4 << 30
    toml = tmp_path / "cbexec.toml"
    toml.write_text("triggers_max_bytes = 268435456\n")
    assert (
        config_checks.validate(config_sources.from_toml(config.Settings(), toml)).triggers_max_bytes
        == 1 << 28
    )
    settings = config_sources.from_env(config.Settings(), {"CBEXEC_TRIGGERS_MAX_BYTES": "1048576"})
    assert config_checks.validate(settings).triggers_max_bytes == 1 << 20


def test_callback_log_total_max_bytes_is_a_gib_by_default_and_taken_from_a_file_or_the_environment(
    tmp_path: Path,
) -> None:
    """The .cb logs' bound in all (before, they had none: a log per job, kept for ever)."""
    assert config.Settings().callback_log_total_max_bytes == 1 << 30
    toml = tmp_path / "cbexec.toml"
    toml.write_text("callback_log_total_max_bytes = 268435456\n")
    settings = config_checks.validate(config_sources.from_toml(config.Settings(), toml))
    assert settings.callback_log_total_max_bytes == 1 << 28
    assert "callback_log_total_max_bytes = 268435456" in config.describe(settings)
    settings = config_sources.from_env(
        config.Settings(), {"CBEXEC_CALLBACK_LOG_TOTAL_MAX_BYTES": "1048576"}
    )
    assert config_checks.validate(settings).callback_log_total_max_bytes == 1 << 20
    toml.write_text("callback_log_total_max_bytes = 0\n")
    with pytest.raises(
        ConfigError, match=r"^callback_log_total_max_bytes: must be at least 1048576"
    ):
        config_checks.validate(config_sources.from_toml(config.Settings(), toml))
    toml.write_text('callback_log_total_max_bytes = "1GiB"\n')
    with pytest.raises(ConfigError, match="callback_log_total_max_bytes: expected a whole number"):
        config_sources.from_toml(config.Settings(), toml)


def test_history_max_bytes_is_a_gib_by_default_and_taken_from_a_file_or_the_environment(
    tmp_path: Path,
) -> None:
    assert config.Settings().history_max_bytes == 1 << 30
    toml = tmp_path / "cbexec.toml"
    toml.write_text("history_max_bytes = 268435456\n")
    assert (
        config_checks.validate(config_sources.from_toml(config.Settings(), toml)).history_max_bytes
        == 1 << 28
    )
    settings = config_sources.from_env(config.Settings(), {"CBEXEC_HISTORY_MAX_BYTES": "1048576"})
    assert config_checks.validate(settings).history_max_bytes == 1 << 20
    toml.write_text("history_max_bytes = 0\n")
    with pytest.raises(ConfigError, match=r"^history_max_bytes: must be at least 1048576"):
        config_checks.validate(config_sources.from_toml(config.Settings(), toml))
    toml.write_text('history_max_bytes = "1GiB"\n')
    with pytest.raises(ConfigError, match="history_max_bytes: expected a whole number"):
        config_sources.from_toml(config.Settings(), toml)


def test_describe_prints_toml_spelling_and_hides_secrets() -> None:
    lines = config.describe(config.Settings(auth_token="s3cret", languages=frozenset()))
    assert 'auth_token = "(set)"' in lines and "languages = []" in lines
    assert "grace_seconds = 0.5" in lines and "prepare_ahead = true" in lines
    assert not any("s3cret" in line for line in lines)


def test_describe_prints_the_directories_start_up_uses_not_empty_values(tmp_path: Path) -> None:
    # Printed `log_dir = ""` and `universal_callback_path = ""` (mail.directory resolved).
    lines = config.describe(config.Settings(data_dir=tmp_path))
    assert f'log_dir = "{tmp_path / "logs"}"' in lines
    assert f'universal_callback_path = "{tmp_path / "callback"}"' in lines
    assert f'mail.directory = "{tmp_path / "mail"}"' in lines
    given = config.Settings(
        data_dir=tmp_path, log_dir="/var/log/cbexec", universal_callback_path="/a, /b [policy=x]"
    )
    assert 'log_dir = "/var/log/cbexec"' in config.describe(given)
    assert 'universal_callback_path = "/a, /b [policy=x]"' in config.describe(given)


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
        config_checks.validate(config.Settings(store=url))
    said = str(caught.value)
    assert said.startswith("store: not a valid PostgreSQL URL: ") and reason in said
    assert "hunter2" not in said


@pytest.mark.parametrize(
    "variables", [{"CBEXEC_LOG_LEVEL": "LOUD"}, {"CBEXEC_LOG_LEVEL": ""}, {"CBEXEC_LOG_LEVEL": "5"}]
)
def test_an_unknown_log_level_is_a_config_error(variables: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        config_checks.validate(config_sources.from_env(config.Settings(), variables))
    assert str(caught.value).startswith("log_level: expected DEBUG, INFO, WARNING, ERROR, CRITICAL")


def test_a_log_level_is_taken_in_any_case() -> None:
    config_checks.validate(
        config_sources.from_env(config.Settings(), {"CBEXEC_LOG_LEVEL": "debug"})
    )


def test_fractional_seconds_limits_are_kept_alike_from_the_file_and_the_environment() -> None:
    from_file = config_sources.apply(
        config.Settings(), {"default_limits": {"wall_seconds": 1.5, "cpu_seconds": 2.9}}, "f"
    )
    from_env = config_sources.from_env(
        config.Settings(),
        {
            "CBEXEC_DEFAULT_LIMITS__WALL_SECONDS": "1.5",
            "CBEXEC_DEFAULT_LIMITS__CPU_SECONDS": "2.9",
        },
    )
    for settings in (from_file, from_env):
        # cpu_seconds is rounded up where it becomes RLIMIT_CPU (sandbox/limits.py).
        assert config_checks.validate(settings).default_limits.wall_seconds == 1.5
        assert settings.default_limits.cpu_seconds == 2.9
    half = config_sources.apply(config.Settings(), {"default_limits": {"wall_seconds": 0.5}}, "f")
    assert config_checks.validate(half).default_limits.wall_seconds == 0.5


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
        config_sources.apply(config.Settings(), values, "f")


def _refusal(tmp_path: Path, **values: object) -> str:
    settings = config_sources.apply(config.Settings(data_dir=tmp_path / "data"), values, "f")
    with pytest.raises(ConfigError) as caught:
        config_checks.validate(settings)
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
    assert _refusal(tmp_path, grace_seconds=1e9) == "grace_seconds: must be at most 60, got 1e+09"
    assert _refusal(tmp_path, store_lease_seconds=86400) == (
        "store_lease_seconds: must be at most 3600 (an hour), got 86400"
    )
    languages: object
    for languages in (0, []):
        assert _refusal(tmp_path, languages=languages).startswith("languages: none is enabled")
    assert _refusal(tmp_path, supervisor="not an address") == (
        "supervisor: expected host:port, got 'not an address'"
    )
    assert _refusal(tmp_path, log_dir=str(a_file)) == (
        f"log_dir: {a_file} exists and is not a directory"
    )
    default_logs = tmp_path / "data" / "logs"
    default_logs.parent.mkdir()
    default_logs.write_text("")
    assert _refusal(tmp_path) == (
        f"log_dir (the default): {default_logs} exists and is not a directory"
    )
    default_logs.unlink()
    assert _refusal(tmp_path, mail={"directory": str(a_file)}) == (
        f"mail.directory: {a_file} exists and is not a directory"
    )
    missing = tmp_path / "no-templates"
    assert _refusal(tmp_path, mail={"templates_dir": str(missing)}) == (
        f"mail.templates_dir: {missing} is not a directory"
    )


def _float_settings() -> list[str]:
    """Every float setting, nested ones as ``table.key``: found, so a new one is covered."""
    names = []
    for f in dataclasses.fields(config.Settings):
        value = getattr(config.Settings(), f.name)
        if isinstance(value, float):
            names.append(f.name)
        elif dataclasses.is_dataclass(value):
            names += [
                f"{f.name}.{sub.name}"
                for sub in dataclasses.fields(value)
                if isinstance(getattr(value, sub.name), float) or sub.type == "float"
            ]
    return names


def test_every_float_setting_is_found() -> None:
    assert {
        "store_lease_seconds",
        "grace_seconds",
        "supervisor_timeout_seconds",
        "history_retention_days",
        "trigger_journal_days",
        "event_id_retention_hours",
        "default_limits.wall_seconds",
        "max_limits.cpu_seconds",
        "mail.smtp_timeout_seconds",
    } <= set(_float_settings())


@pytest.mark.parametrize("spelling", ["nan", "inf", "-inf", "NaN", "Infinity"])
def test_nan_and_infinity_are_refused_for_every_float_setting(spelling: str) -> None:
    # Were taken: a NaN default wall limit made every Execute INTERNAL, an infinite
    # supervisor timeout every supervisor call DEADLINE_EXCEEDED.
    environ = {
        config_sources.ENV_PREFIX + name.upper().replace(".", "__"): spelling
        for name in _float_settings()
    }
    with pytest.raises(ConfigError) as caught:
        config_sources.from_env(config.Settings(), environ)
    value = float(spelling)
    assert str(caught.value).splitlines() == [
        f"environment: {name}: must be a finite number, got {value}" for name in _float_settings()
    ]


def test_nan_from_a_toml_file_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "cbexec.toml"
    toml.write_text("grace_seconds = nan\n[default_limits]\nwall_seconds = inf\n")
    with pytest.raises(ConfigError) as caught:
        config_sources.from_toml(config.Settings(), toml)
    assert str(caught.value).splitlines() == [
        f"{toml}: grace_seconds: must be a finite number, got nan",
        f"{toml}: default_limits.wall_seconds: must be a finite number, got inf",
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # gRPC took it for a deadline already passed: every supervisor call failed.
        (
            {"supervisor_timeout_seconds": 1e300},
            "supervisor_timeout_seconds: must be at most 3600 (an hour), got 1e+300",
        ),
        # A socket refuses a timeout past ~9e9 s: every SMTP mail failed.
        (
            {"mail": {"smtp_timeout_seconds": 1e12}},
            "mail.smtp_timeout_seconds: must be at most 3600 (an hour), got 1e+12",
        ),
        # 0 made the SMTP socket non-blocking, a negative one a ValueError at each mail.
        ({"mail": {"smtp_timeout_seconds": 0}}, "mail.smtp_timeout_seconds: must be positive"),
        # The embedded supervisor could not start (OverflowError in gRPC's options).
        (
            {"supervisor_max_message_bytes": 1 << 31},
            "supervisor_max_message_bytes: must be at most 2147483647 (gRPC's largest",
        ),
        # setrlimit took neither: every run "the sandbox could not start the callback".
        (
            {"max_limits": {"cpu_seconds": 1e300}},
            "max_limits.cpu_seconds: must be at most 1000000000, got 1e+300",
        ),
        # pids.max refused it (ERANGE): every run an internal error.
        (
            {"max_limits": {"max_processes": 10**7}},
            "max_limits.max_processes: must be at most 4194304, got 10000000",
        ),
    ],
)
def test_absurdly_large_values_that_broke_the_service_are_refused(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    assert _refusal(tmp_path, **values).startswith(message)


def test_the_largest_values_taken_are_the_bounds() -> None:
    settings = config_sources.apply(
        config.Settings(),
        {
            "supervisor_timeout_seconds": 3600,
            "supervisor_max_message_bytes": (1 << 31) - 1,
            "mail": {"smtp_timeout_seconds": 3600},
            "max_limits": {
                "cpu_seconds": 1e9,
                "wall_seconds": 1e9,
                "max_processes": 4194304,
                "memory_bytes": (1 << 63) - 1,
                "output_bytes": (1 << 63) - 1,
                "disk_bytes": (1 << 63) - 1,
            },
        },
        "f",
    )
    config_checks.validate(settings)


@pytest.mark.parametrize("name", ["history_max_runs", "trigger_journal_entries", "max_queue"])
def test_a_whole_number_beyond_64_bits_is_refused(name: str) -> None:
    # trigger_journal_entries = 2**64 failed every journal write (SQLite's OFFSET).
    with pytest.raises(ConfigError) as caught:
        config_sources.apply(config.Settings(), {name: 1 << 64}, "f")
    assert str(caught.value) == (
        f"f: {name}: expected a whole number of 64 bits (at most 9223372036854775807), "
        f"got {1 << 64}"
    )


def test_supervisor_takes_host_port_or_a_grpc_target() -> None:
    for address in (
        "10.0.0.5:50052",
        "supervisor.example:50052",
        "[::1]:50052",
        "unix:/run/qube/supervisor.sock",
        "dns:///sup:50052",
        "dns://10.0.0.53/sup:50052",
    ):
        config_checks.validate(config.Settings(supervisor=address))


@pytest.mark.parametrize(
    ("address", "message"),
    [
        # Each was taken, and every supervisor call then failed, retried for ever.
        (
            "http://127.0.0.1:53281",
            "supervisor: address 'http://127.0.0.1:53281': gRPC has no 'http' scheme; "
            "expected host:port, dns:///name:port or unix:/path",
        ),
        (
            "127.0.0.1:0",
            "supervisor: address '127.0.0.1:0': port 0 is out of range (1 to 65535)",
        ),
        ("a b:1", "supervisor: address 'a b:1': 'a b' is not a host name or an IP address"),
        (
            "::1:50052",
            "supervisor: address '::1:50052': write an IPv6 address in brackets, [IPv6]:PORT",
        ),
        ("[::1]", "supervisor: address '[::1]' needs a port: [IPv6]:PORT"),
        ("unix:", "supervisor: address 'unix:': nothing after the scheme"),
        ("nonsense", "supervisor: expected host:port, got 'nonsense'"),
    ],
)
def test_a_supervisor_address_grpc_could_never_reach_is_refused(address: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_checks.validate(config.Settings(supervisor=address))
    assert str(caught.value) == message


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
        config_checks.validate(config.Settings(universal_callback_path=path))


def test_a_stray_comma_in_universal_callback_path_is_skipped() -> None:
    settings = config_checks.validate(
        config.Settings(universal_callback_path="/a,, /b [policy=x],")
    )
    assert settings.universal_callback_policies == {Path("/a"): "", Path("/b"): "x"}


def test_an_unclosed_policy_bracket_in_universal_callback_path_is_refused() -> None:
    settings = config.Settings(universal_callback_path="/dir [policy=admin")
    with pytest.raises(ConfigError, match=r"universal_callback_path: '/dir \[policy=admin'"):
        config_checks.validate(settings)
    closed = config.Settings(universal_callback_path="/dir [policy=admin]")
    assert config_checks.validate(closed).universal_callback_policies == {Path("/dir"): "admin"}


def test_every_problem_of_the_settings_is_named_not_only_the_first() -> None:
    settings = config.Settings(network="maybe", max_queue=-1, store_lease_seconds=0)
    with pytest.raises(ConfigError) as caught:
        config_checks.validate(settings)
    assert str(caught.value).splitlines() == [
        "max_queue: must be 0 or more, got -1",
        "network: expected auto, none or host, got 'maybe'",
        "store_lease_seconds: must be at least 1",
    ]
    with pytest.raises(ConfigError) as caught:
        config_sources.apply(
            config.Settings(), {"max_queue": "x", "bogus": 1, "grace_seconds": "y"}, "f"
        )
    assert [line.split(":")[:2] for line in str(caught.value).splitlines()] == [
        ["f", " max_queue"],
        ["f", " unknown setting 'bogus'"],
        ["f", " grace_seconds"],
    ]


# Six bad settings, three of them checked by one group (grace_seconds, max_concurrent,
# max_queue) and two by another (callback_log_max_bytes, history_max_runs): each named.
SIX_BAD_SETTINGS: Final = (
    "max_concurrent = -1\nmax_queue = -1\nhistory_max_runs = 0\ncallback_log_max_bytes = 0\n"
    "grace_seconds = 100\nsupervisor_timeout_seconds = 0\n"
)


def test_every_bad_setting_is_named_a_line_each(tmp_path: Path) -> None:
    toml = tmp_path / "cbexec.toml"
    toml.write_text(SIX_BAD_SETTINGS)
    with pytest.raises(ConfigError) as caught:
        config_checks.validate(config_sources.from_toml(config.Settings(), toml))
    named = sorted(line.split(":")[0] for line in str(caught.value).splitlines())
    assert named == [
        "callback_log_max_bytes",
        "grace_seconds",
        "history_max_runs",
        "max_concurrent",
        "max_queue",
        "supervisor_timeout_seconds",
    ]


def test_every_bad_mail_setting_is_named_a_line_each(tmp_path: Path) -> None:
    # Only the first was named ("mail: mail delivery: ..."), and the table's good values
    # were dropped with it, so smtp_timeout_seconds = 0 went unchecked.
    toml = tmp_path / "c.toml"
    toml.write_text('[mail]\ndelivery = "pigeon"\nsmtp_port = 0\nsmtp_timeout_seconds = 0\n')
    with pytest.raises(ConfigError) as caught:
        config_sources.layered(toml, {}, {})
    assert str(caught.value).splitlines() == [
        # What a value means is named by its setting alone, as every such check names it
        # (the file's path only for a value of the wrong type; probe 182).
        "mail.delivery: expected file or smtp, got 'pigeon'",
        "mail.smtp_port: expected 1-65535, got 0",
        "mail.smtp_timeout_seconds: must be positive, got 0",
    ]


def test_a_mail_sender_domain_or_host_that_cannot_work_is_named(tmp_path: Path) -> None:
    # Accepted before (probe 96): every mail then failed with an error naming no setting.
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[mail]\nsender = "qube@farm.example\\r\\nBcc: evil@x"\n'
        'default_domain = "farm example>"\nsmtp_host = ""\n'
    )
    with pytest.raises(ConfigError) as caught:
        config_sources.layered(toml, {}, {})
    assert str(caught.value).splitlines() == [
        "mail.sender: holds a control character; expected one address such as "
        "qube@farm.example, got 'qube@farm.example\\r\\nBcc: evil@x'",
        "mail.default_domain: expected a mail domain such as farm.example, got 'farm example>'",
        "mail.smtp_host: expected the relay's host name or IP address, got ''",
    ]
    toml.write_text('[mail]\nsender = "a@farm.example, evil@elsewhere.example"\n')
    with pytest.raises(ConfigError, match=r"mail\.sender: expected one address"):
        config_sources.layered(toml, {}, {})
    # An address with a display name is one sender.
    toml.write_text('[mail]\nsender = "Render Farm <qube@farm.example>"\n')
    assert config_sources.layered(toml, {}, {}).mail.sender == "Render Farm <qube@farm.example>"


def test_every_bad_limit_is_named_once() -> None:
    settings = config_sources.apply(
        config.Settings(),
        {
            "default_limits": {"cpu_seconds": -1, "wall_seconds": 2e9},
            "max_limits": {"memory_bytes": 0, "wall_seconds": 1e9 + 0.5},
        },
        "t",
    )
    with pytest.raises(ConfigError) as caught:
        config_checks.validate(settings)
    assert str(caught.value).splitlines() == [
        "default_limits.cpu_seconds: must be positive",
        "default_limits.wall_seconds: must be at most 1000000000, got 2000000000",
        "max_limits.wall_seconds: must be at most 1000000000, got 1000000000.5",  # probe 182
        "max_limits.memory_bytes: must be positive",
    ]


@pytest.mark.parametrize(
    "command", [["serve", "--check-config"], ["store", "migrate"]], ids=["serve", "migrate"]
)
@pytest.mark.usefixtures("no_settings_in_the_environment")
def test_serve_and_store_migrate_name_every_bad_setting(
    command: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    toml = tmp_path / "cbexec.toml"
    toml.write_text(SIX_BAD_SETTINGS)
    assert main([*command, "--config", str(toml)]) == EXIT_USAGE
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 6 and all(line.startswith("cbexec: ") for line in lines)
    assert any(line.startswith("cbexec: max_queue: ") for line in lines)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"CBEXEC_MAX_QUEUE": "4294967296"},
            "max_queue: must be at most 4294967295 (GetMetrics carries it in 32 bits),"
            " got 4294967296",
        ),
        (
            {"CBEXEC_MAX_CONCURRENT": "4097"},
            "max_concurrent: must be at most 4096 (each slot makes 4 cgroups), got 4097",
        ),
    ],
    ids=["max_queue", "max_concurrent"],
)
def test_a_setting_getmetrics_carries_in_32_bits_is_bounded_at_load(
    variables: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_checks.validate(config_sources.from_env(config.Settings(), variables))
    assert str(caught.value) == message


def test_the_largest_max_queue_and_max_concurrent_fit_getmetrics() -> None:
    largest = config_checks.validate(
        config.Settings(
            max_queue=config_checks.MAX_QUEUE, max_concurrent=config_checks.MAX_CONCURRENT
        )
    )
    # What convert_status.metrics_message fills from them: protobuf refuses a value past
    # its field's width (ValueError), which failed every GetMetrics.
    reply = executor_pb2.GetMetricsResponse(
        queue_limit=largest.max_queue,
        queue_depth=largest.max_queue,
        slots=largest.max_concurrent,
        active_children=largest.max_concurrent,
        prepared_children=largest.max_concurrent,
    )
    assert (reply.queue_limit, reply.slots) == (4294967295, 4096)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (37, "t: languages: 37 holds flags that are no language here: 32 (Qube's dependency)"),
        ("8", "t: languages: 8 holds flags that are no language here: 8 (Qube's post)"),
        (128 + 4, "t: languages: 132 holds flags that are no language here: 128;"),
        (-1, "t: languages: -1 is not a sum of the flags"),
    ],
    ids=["37", "8", "132", "-1"],
)
def test_numeric_language_flags_refuse_bits_that_are_no_language(
    flags: int | str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_checks.validate(config_sources.apply(config.Settings(), {"languages": flags}, "t"))
    assert str(caught.value).startswith(message)
    assert str(caught.value).endswith("qube 1, perl 2, python 4, mail 16")


@pytest.mark.parametrize(
    ("environ", "flags", "origin"),
    [({"CBEXEC_LANGUAGES": "post"}, {}, "environment"), ({}, {"languages": "post"}, "flag")],
)
def test_an_unknown_language_names_the_environment_or_the_flag_that_gave_it(
    environ: dict[str, str], flags: dict[str, object], origin: str
) -> None:
    # Probe 176: the languages' own parse named "languages:" alone, whatever gave it.
    with pytest.raises(ConfigError) as caught:
        config_sources.layered(None, environ, flags)
    assert str(caught.value) == (
        f"{origin}: languages: unknown language 'post'; expected python, perl, qube, mail"
    )


def test_a_policy_s_unknown_language_is_named_once() -> None:
    with pytest.raises(ConfigError) as caught:
        config_values.parse_languages("ruby", "policies.job.languages")
    assert str(caught.value).startswith("policies.job.languages: unknown language 'ruby';")


def test_qubes_default_language_flags_name_each_bit_that_is_no_language() -> None:
    # qb.conf's default: qube, post, mail, dependency, auto_wrangling.
    with pytest.raises(ConfigError, match=re.escape("8 (Qube's post), 32 (Qube's dependency)")):
        config_values.parse_languages(1 + 8 + 16 + 32 + 64)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1], "languages: expected language names in the list, got 1"),
        (["python", 4], "languages: expected language names in the list, got 4"),
        (1.5, "languages: expected names (a comma list, or a list of names) or Qube's"),
        ({"a": 1}, "languages: expected names"),
        (
            True,
            "languages: expected names (a comma list, or a list of names) or Qube's numeric flags, got true",
        ),
    ],
)
def test_languages_of_another_toml_type_are_refused_by_name(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_values.parse_languages(value)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "text",
    [
        "languages = [1]",
        'languages = ["python", 4]',
        "languages = 1.5",
        "languages = {a = 1}",
        "[policies.job]\nlanguages = [1]",
    ],
)
@pytest.mark.usefixtures("no_settings_in_the_environment")
def test_check_config_refuses_languages_of_another_type_in_one_line(
    text: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Once a traceback and exit 1 (an AttributeError from the names' parsing)."""
    toml = tmp_path / "cbexec.toml"
    toml.write_text(text + "\n")
    monkeypatch.setenv("CBEXEC_DATA_DIR", str(tmp_path / "data"))
    # Clear of a service on the default port and uids (the start-up checks come first
    # for a policy's languages): this suite's own range, any free port.
    monkeypatch.setenv("CBEXEC_SANDBOX_UID_BASE", str(TEST_UID_BASE))
    monkeypatch.setenv("CBEXEC_BIND", "127.0.0.1:0")
    assert main(["serve", "--check-config", "--config", str(toml)]) == EXIT_USAGE
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cbexec: ") and "languages: expected" in lines[0]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_queue": True}, "t: max_queue: expected a whole number, got true"),
        ({"grace_seconds": True}, "t: grace_seconds: expected a number, got true"),
        (
            {"default_limits": {"wall_seconds": False}},
            "t: default_limits.wall_seconds: expected a number, got false",
        ),
        (
            {"default_limits": {"memory_bytes": True}},
            "t: default_limits.memory_bytes: expected a whole number, got true",
        ),
        ({"report_results": "yes"}, "t: report_results: expected true or false, got 'yes'"),
        ({"report_results": 1}, "t: report_results: expected true or false, got 1"),
        (
            {"mail": {"smtp_starttls": "no"}},
            "t: mail.smtp_starttls: expected true or false, got 'no'",
        ),
        # Once Python's own words: "could not convert string to float: 'x'".
        ({"history_retention_days": "x"}, "t: history_retention_days: expected a number, got 'x'"),
        # Once converted: a string of digits, or a float with no fraction, for a whole number.
        ({"max_queue": "5"}, "t: max_queue: expected a whole number, got '5'"),
        ({"max_queue": 5.0}, "t: max_queue: expected a whole number, got 5.0"),
        (
            {"history_max_bytes": 2e6},
            "t: history_max_bytes: expected a whole number, got 2000000.0",
        ),
        (
            {"default_limits": {"memory_bytes": "1048576"}},
            "t: default_limits.memory_bytes: expected a whole number, got '1048576'",
        ),
        ({"grace_seconds": "2"}, "t: grace_seconds: expected a number, got '2'"),
        ({"bind": 50051}, "t: bind: expected a string, got 50051"),
        ({"data_dir": 1}, "t: data_dir: expected a string, got 1"),
    ],
)
def test_a_toml_value_of_the_wrong_type_is_refused_never_coerced(
    values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_sources.apply(config.Settings(), values, "t")
    assert str(caught.value) == message


def test_the_environment_spells_booleans_as_words() -> None:
    words = {"CBEXEC_REPORT_RESULTS": "no", "CBEXEC_STRICT": "yes", "CBEXEC_PREPARE_AHEAD": "0"}
    settings = config_sources.from_env(config.Settings(), words)
    assert (settings.report_results, settings.strict, settings.prepare_ahead) == (
        False,
        True,
        False,
    )
    with pytest.raises(ConfigError) as caught:
        config_sources.from_env(config.Settings(), {"CBEXEC_STRICT": "maybe"})
    assert str(caught.value) == (
        "environment: strict: expected true or false (or 1/0, yes/no, on/off), got 'maybe'"
    )


def test_a_value_of_the_wrong_type_does_not_stop_the_checks_of_the_others(tmp_path: Path) -> None:
    toml = tmp_path / "cbexec.toml"
    toml.write_text(
        'max_concurrent = "four"\nmax_queue = 4294967296\nlauncher = "tepid"\n'
        'report_results = "yes"\n[default_limits]\nwall_seconds = "x"\n[max_limits]\nwall_seconds = 10\n'
    )
    with pytest.raises(ConfigError) as caught:
        config_sources.layered(
            toml, {"CBEXEC_GRACE_SECONDS": "soon", "CBEXEC_LOG_FORMAT": "xml"}, {}
        )
    assert str(caught.value).splitlines() == [
        # The values of the wrong type first, each source's in order...
        f"{toml}: max_concurrent: expected a whole number, got 'four'",
        f"{toml}: report_results: expected true or false, got 'yes'",
        f"{toml}: default_limits.wall_seconds: expected a number, got 'x'",
        "environment: grace_seconds: expected a number, got 'soon'",
        # ...then what the others mean; default_limits.wall_seconds is not compared with
        # max_limits.wall_seconds: its value was refused, so the default's 30 was never given.
        "max_queue: must be at most 4294967295 (GetMetrics carries it in 32 bits), got 4294967296",
        "launcher: expected zygote or cold, got 'tepid'",
        "environment: log_format: expected text or json, got 'xml'",
    ]


def test_a_later_source_that_gives_a_refused_setting_right_has_it_checked(tmp_path: Path) -> None:
    toml = tmp_path / "cbexec.toml"
    toml.write_text('max_queue = "x"\n')
    with pytest.raises(ConfigError) as caught:
        config_sources.layered(toml, {"CBEXEC_MAX_QUEUE": "-1"}, {})
    assert str(caught.value).splitlines() == [
        f"{toml}: max_queue: expected a whole number, got 'x'",
        "environment: max_queue: must be 0 or more, got -1",
    ]


def test_a_problem_names_the_environment_or_the_flag_that_gave_its_setting(
    tmp_path: Path,
) -> None:
    # Probe 173: a bad CBEXEC_AUTH_TOKEN beside a good file token was "auth_token: ...",
    # sending its reader to a file that is fine. The file's own problems stay unprefixed,
    # and a table's setting is named by the source of that one entry.
    toml = tmp_path / "cbexec.toml"
    toml.write_text('auth_token = "fine"\nmax_queue = -1\n[max_limits]\nwall_seconds = 10\n')
    with pytest.raises(ConfigError) as caught:
        config_sources.layered(
            toml,
            {"CBEXEC_AUTH_TOKEN": "bad\ttoken", "CBEXEC_DEFAULT_LIMITS__CPU_SECONDS": "0"},
            {"grace_seconds": -1.0},
        )
    assert str(caught.value).splitlines() == [
        "environment: default_limits.cpu_seconds: must be positive",
        # Its default's 30 (no source gave it) against the file's cap.
        "default_limits.wall_seconds: 30 exceeds max_limits.wall_seconds 10",
        "flag: grace_seconds: must be 0 or more, got -1",
        "max_queue: must be 0 or more, got -1",
        "environment: auth_token: character 4 is not printable ASCII, which no client can send"
        " (gRPC metadata carries nothing else)",
    ]


def test_an_empty_data_dir_means_the_default_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was Path("") = ".": the databases went into the working directory, / under systemd
    # (probe 61). An empty log_dir, store or supervisor means its default too.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    default = tmp_path / "share" / "cbexec"
    assert config.Settings().data_dir == default
    assert config_sources.from_env(config.Settings(), {"CBEXEC_DATA_DIR": ""}).data_dir == default
    toml = tmp_path / "cbexec.toml"
    toml.write_text('data_dir = ""\n')
    assert config_sources.from_toml(config.Settings(), toml).data_dir == default
    assert config_sources.layered(toml, {}, {"data_dir": ""}).data_dir == default


def test_an_empty_data_dir_flag_means_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    args = build_parser().parse_args(["serve", "--data-dir", ""])
    assert load_settings(args, {}).data_dir == tmp_path / "share" / "cbexec"
    args = build_parser().parse_args(["serve", "--data-dir", "~/x"])
    assert load_settings(args, {}).data_dir == Path.home() / "x"


def test_the_event_ids_kept_are_bounded_by_count_by_default() -> None:
    # Age alone let a callback's work verbs keep ~25 GB of ids an hour (probe 75).
    assert config.Settings().event_id_max_count == 10_000_000
    assert config_sources.from_env(config.Settings(), {"CBEXEC_EVENT_ID_MAX_COUNT": "200000"}) == (
        config.Settings(event_id_max_count=200_000)
    )


@pytest.mark.parametrize(
    "command", [["serve", "--check-config"], ["store", "migrate"]], ids=["serve", "migrate"]
)
@pytest.mark.usefixtures("no_settings_in_the_environment")
def test_a_config_file_that_is_not_utf8_is_refused_in_one_line_naming_it(
    command: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One Latin-1 byte in a comment gave a UnicodeDecodeError traceback (probe 82).
    toml = tmp_path / "cbexec.toml"
    toml.write_bytes(b'# caf\xe9 farm\nbind = "127.0.0.1:50051"\n')
    with pytest.raises(ConfigError) as caught:
        config_sources.from_toml(config.Settings(), toml)
    expected = (
        f"config file {toml} is not UTF-8 text (TOML is): byte 0xe9 at line 1, column 6;"
        " save it as UTF-8"
    )
    assert str(caught.value) == expected
    assert main([*command, "--config", str(toml)]) == EXIT_USAGE
    assert capsys.readouterr().err == f"cbexec: {expected}\n"


@pytest.mark.parametrize("name", ["bind", "http_bind"])
def test_an_ipv6_bind_without_brackets_is_refused_with_the_clients_hint(name: str) -> None:
    # gRPC cannot listen on '::1:50051' (a name it cannot look up); the clients say why.
    for bad in ("::1:50051", "fe80::1:9000", "[::1:9000", "::1]:9000"):
        with pytest.raises(ConfigError, match=f"{name}: address '.*'.*brackets, \\[IPv6\\]:PORT"):
            config_checks.validate(config.Settings().replace(**{name: bad}))
    assert getattr(config_checks.validate(config.Settings().replace(**{name: "[::1]:9000"})), name)


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    # Notepad saves UTF-8 with one: it was "Invalid statement (at line 1, column 1)" (probe 107).
    toml = tmp_path / "cbexec.toml"
    toml.write_bytes(b'\xef\xbb\xbfbind = "127.0.0.1:6000"\nmax_concurrent = 3\n')
    settings = config_sources.from_toml(config.Settings(), toml)
    assert (settings.bind, settings.max_concurrent) == ("127.0.0.1:6000", 3)
    # Only a leading one: elsewhere U+FEFF is a character TOML refuses where it stands.
    toml.write_bytes(b'bind = "127.0.0.1:6000"\n\xef\xbb\xbfmax_concurrent = 3\n')
    with pytest.raises(ConfigError, match="at line 2, column 1"):
        config_sources.from_toml(config.Settings(), toml)


@pytest.mark.parametrize("name", ["bind", "http_bind"])
def test_an_ipv4_bind_of_fewer_than_four_parts_is_refused(name: str) -> None:
    # The C library reads '127.1' as 127.0.0.1, so --check-config passed where gRPC's
    # resolver then refused to listen (probe 112).
    for bad in ("127.1:50051", "10.1.2:50051", "2130706433:50051", "1.2.3.4.5:50051"):
        with pytest.raises(ConfigError, match=f"{name}: address .*: .* is not an IPv4 address"):
            config_checks.validate(config.Settings().replace(**{name: bad}))
    assert getattr(
        config_checks.validate(config.Settings().replace(**{name: "127.0.0.2:9000"})), name
    )


def test_an_ipv4_mapped_loopback_bind_is_no_open_port() -> None:
    for bind in ("[::ffff:127.0.0.1]:50051", "127.0.0.2:50051", "[::1]:50051"):
        assert open_port_warnings(config.Settings(bind=bind)) == [], bind
    assert open_port_warnings(config.Settings(bind="[::ffff:10.0.0.5]:50051"))


def test_an_auth_token_too_long_for_grpc_metadata_is_refused_without_showing_it() -> None:
    # Past gRPC's 8 KiB of headers a random share of calls failed RESOURCE_EXHAUSTED; past
    # 16 KiB every one, and /healthz answered 503 (probe 115).
    config_checks.validate(config.Settings(auth_token="t" * 4096))
    token = "s3cret" + "t" * 8094
    with pytest.raises(ConfigError, match=r"^auth_token: 8100 characters, more than 4096") as no:
        config_checks.validate(config.Settings(auth_token=token))
    assert "s3cret" not in str(no.value)


@pytest.mark.usefixtures("no_settings_in_the_environment")
def test_an_empty_templates_dir_is_the_built_in_templates_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Path("") is ".": the mail runtime read <cwd>/job.mail (/ under systemd), where every
    # other path setting takes "" as its default (probe 120).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.mail").write_text("Subject: FROM THE WORKING DIRECTORY\n\nhello\n")
    toml = tmp_path / "cbexec.toml"
    toml.write_text(f'data_dir = "{tmp_path / "data"}"\n[mail]\ntemplates_dir = ""\n')
    from_file = config_sources.layered(toml, {}, {})
    set_in_the_file = tmp_path / "set.toml"
    set_in_the_file.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[mail]\ntemplates_dir = "/etc"\n'
    )
    set_then_emptied = config_sources.layered(
        set_in_the_file, {"CBEXEC_MAIL__TEMPLATES_DIR": ""}, {}
    )
    for settings in (from_file, set_then_emptied):
        assert settings.mail_settings.templates_dir is None
        assert "mail.templates_dir = (unset)" in config.describe(settings)


@pytest.mark.usefixtures("no_settings_in_the_environment")
def test_policies_that_are_not_tables_are_said_once(tmp_path: Path) -> None:
    toml = tmp_path / "t.toml"
    toml.write_text("policies = 5\n")
    with pytest.raises(ConfigError) as caught:
        layered_settings(toml, {}, {})
    assert str(caught.value).splitlines() == [f"{toml}: policies: expected [policies.NAME] tables"]


@pytest.mark.usefixtures("no_settings_in_the_environment")
def test_a_default_above_its_cap_is_said_once_not_again_by_each_policy(tmp_path: Path) -> None:
    # Probe 182: two more lines, `{toml}: policies.job.default_limits.wall_seconds: exceeds
    # max_limits.wall_seconds` and the universal policy's, for a file without [policies].
    toml = tmp_path / "t.toml"
    toml.write_text('bind = "127.0.0.1:0"\n')
    with pytest.raises(ConfigError) as caught:
        layered_settings(toml, {"CBEXEC_DEFAULT_LIMITS__WALL_SECONDS": "4000"}, {})
    assert str(caught.value).splitlines() == [
        "environment: default_limits.wall_seconds: 4000 exceeds max_limits.wall_seconds 3600"
    ]
