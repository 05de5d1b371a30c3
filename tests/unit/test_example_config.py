"""scripts/cbexec.example.toml stays loadable, valid, and complete."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from executor import config, config_checks, config_sources

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "scripts" / "cbexec.example.toml"


def test_example_config_loads_and_validates() -> None:
    settings = config_checks.validate(config_sources.from_toml(config.Settings(), EXAMPLE))
    assert settings.bind == "127.0.0.1:50051", "the sample keeps the loopback default"
    assert settings.data_dir == Path("/var/lib/cbexec")
    assert settings.default_limits == config.Settings().default_limits
    assert settings.max_limits == config.Settings().max_limits
    assert settings.mail_settings.directory == Path("/var/lib/cbexec/mail")


def test_example_config_shows_the_defaults() -> None:
    """Every value is the default, but data_dir (its comment says why)."""
    example = config_checks.validate(config_sources.from_toml(config.Settings(), EXAMPLE))
    defaults = config.Settings()
    differ = [
        f.name
        for f in dataclasses.fields(config.Settings)
        if f.name not in ("mail", "config_file")  # config_file: where the file itself is
        and getattr(example, f.name) != getattr(defaults, f.name)
    ]
    assert differ == ["data_dir"]
    assert example.max_concurrent == config.default_max_concurrent()
    assert dataclasses.replace(example.mail, directory=Path("")) == dataclasses.replace(
        defaults.mail, directory=Path("")
    )


def test_example_config_names_every_setting() -> None:
    names = set(tomllib.loads(EXAMPLE.read_text()))
    # config_file is not a key: it records where the file itself is.
    fields = {f.name for f in dataclasses.fields(config.Settings)} - {"config_file"}
    assert sorted(fields - names) == [], "settings missing from scripts/cbexec.example.toml"


def test_example_config_tables_name_every_field() -> None:
    tables = {k: v for k, v in tomllib.loads(EXAMPLE.read_text()).items() if isinstance(v, dict)}
    defaults = config.Settings()
    for name, table in tables.items():
        if name == "policies":
            continue  # tables the site names (README "Policies"), none by default
        nested = getattr(defaults, name)
        # TOML has no null: a field whose default is None can only be shown commented out.
        fields = {f.name for f in dataclasses.fields(nested) if getattr(nested, f.name) is not None}
        assert sorted(fields - set(table)) == [], f"[{name}] misses fields"


def test_the_example_unit_leaves_every_setting_to_the_example_config() -> None:
    """No Environment= of the unit silently beats what the config file it points at says.

    The unit's CBEXEC_LOG_FORMAT=json made the file's log_format (its comment invites a
    choice) do nothing under systemd (probe 107): the file is the one place that decides.
    """
    unit = (EXAMPLE.parent / "cbexec.service").read_text()
    names = set(tomllib.loads(EXAMPLE.read_text()))
    set_by_unit = [
        word.partition("=")[0]
        for line in unit.splitlines()
        if line.startswith("Environment=")
        for word in line.removeprefix("Environment=").split()
    ]
    assert [n for n in set_by_unit if n.removeprefix("CBEXEC_").lower() in names] == []
