"""Settings read from their sources: a TOML file, the environment and flags, in layers.

Precedence, lowest first: the defaults (``config.Settings``), a TOML file (``--config``),
``CBEXEC_*`` environment variables (named after the fields, e.g. ``CBEXEC_MAX_CONCURRENT``,
``CBEXEC_DEFAULT_LIMITS__WALL_SECONDS``), then command-line flags. ``layered`` reads them
all and raises one ``ConfigError`` naming every bad setting, a line each: values of the
wrong type first, then the checks of what the others mean (``config_checks``).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from executor.config import Settings, default_data_dir, default_max_concurrent
from executor.config_checks import meaning_problems
from executor.config_values import MeaningLine, TableError, coerce
from executor.errors import ConfigError

ENV_PREFIX: Final = "CBEXEC_"
# CBEXEC_* variables that are not settings: the config file's path, and the address the
# clients (cbexec farm, runs, ...) call and the Node example client's .proto root, which a
# shell may export for them and the service.
NOT_SETTINGS: Final = frozenset({"CBEXEC_CONFIG", "CBEXEC_ADDRESS", "CBEXEC_PROTO_ROOT"})
# The test suite's own variables (CBEXEC_TEST_UID_BASE, ...): a shell set up to run it
# may start the service too. No setting's name starts with "test".
TEST_SUITE_PREFIX: Final = "CBEXEC_TEST_"
# Settings that are file system paths, as their variables name them: any bytes but NUL.
# Every other variable's value must be UTF-8 text.
PATH_VARIABLES: Final = frozenset(
    f"{ENV_PREFIX}{name.upper()}"
    for name in (
        "data_dir",
        "log_dir",
        "universal_callback_path",
        "tls_cert",
        "tls_key",
        "tls_client_ca",
        "supervisor_tls_ca",
        "supervisor_tls_cert",
        "supervisor_tls_key",
        "mail__directory",
        "mail__templates_dir",
    )
)


@dataclass(frozen=True, slots=True)
class Overlay:
    """Settings with one source's values laid over them, and the values refused.

    A refused value leaves its setting as it was; ``refused`` names those settings
    (``max_queue``, ``default_limits.wall_seconds``, a whole ``mail``) so the checks of
    what the values mean leave them out rather than judge the value underneath.
    """

    settings: Settings
    problems: tuple[str, ...] = ()
    refused: frozenset[str] = frozenset()


def overlay(
    settings: Settings,
    values: Mapping[str, Any],
    origin: str,
    *,
    text: bool = False,
    typed: bool = False,
) -> Overlay:
    """Lay a mapping of field name -> raw value over ``settings``, naming ``origin`` in problems.

    Every value ``origin`` gets wrong is named, a line each; the others are applied.
    ``text``: the values are text (the environment), so a boolean may be a word.
    ``typed``: the values have the types they were written with (TOML), the settings'.
    """
    known = {f.name for f in dataclasses.fields(Settings)} - {"config_file"}
    changes: dict[str, Any] = {}
    problems: list[str] = []
    refused: set[str] = set()
    for key, raw in values.items():
        if key not in known:
            problems.append(f"{origin}: unknown setting {key!r}")
        elif key == "policies":
            # Tables of tables: resolved (and checked) by policies.resolve at start-up.
            if isinstance(raw, Mapping):
                changes[key] = raw
            else:  # refused: policies.resolve would say it again
                problems.append(f"{origin}: policies: expected [policies.NAME] tables")
                refused.add(key)
        elif key == "data_dir" and raw == "":
            # The default, as an empty log_dir is: Path("") is ".", the working directory
            # (/ under systemd), where the databases were once made without a word.
            changes[key] = default_data_dir()
        else:
            try:
                changes[key] = coerce(
                    f"{origin}: {key}", raw, getattr(settings, key), text=text, typed=typed
                )
            except TableError as err:
                in_file = origin not in ("environment", "flag")
                problems += [
                    line.removeprefix(f"{origin}: ")
                    if in_file and isinstance(line, MeaningLine)
                    else line
                    for line in err.lines
                ]
                refused.update(f"{key}.{sub}" for sub in err.keys)
                changes[key] = err.partial
            except ConfigError as err:
                problems.append(str(err))
                refused.add(key)
    if changes.get("max_concurrent") == 0:
        changes["max_concurrent"] = default_max_concurrent()
    return Overlay(settings.replace(**changes), tuple(problems), frozenset(refused))


def apply(settings: Settings, values: Mapping[str, Any], origin: str) -> Settings:
    """Overlay a mapping of field name -> value as TOML types it, naming ``origin`` in errors.

    Every value ``origin`` gets wrong is named, a line each, in one ConfigError.
    """
    laid = overlay(settings, values, origin, typed=True)
    if laid.problems:
        raise ConfigError("\n".join(laid.problems))
    return laid.settings


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML settings file's values; ConfigError when it cannot be read or parsed."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror or err}") from err
    try:
        text = data.decode("utf-8")  # TOML's encoding, not the locale's
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - data.rfind(b"\n", 0, err.start)  # in bytes, from 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text (TOML is): byte 0x{data[err.start]:02x} at"
            f" line {line}, column {column}; save it as UTF-8"
        ) from err
    try:
        # A leading byte order mark (Notepad's UTF-8) is no TOML, nor part of the text.
        return tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path}: {err}") from err


def from_toml(settings: Settings, path: Path) -> Settings:
    """Overlay a TOML file (top-level keys are field names; limits are tables)."""
    return apply(settings, read_toml(path), str(path)).replace(config_file=str(path))


def env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``CBEXEC_<FIELD>`` and ``CBEXEC_<TABLE>__<FIELD>`` variables give, as text.

    ``NOT_SETTINGS`` and the test suite's ``CBEXEC_TEST_*`` are passed over; any other
    name is a setting, and one that is none is refused later (``unknown setting``).
    Sandbox policies are the config file's only: a ``CBEXEC_POLICIES*`` variable is a
    ConfigError saying so.
    """
    values: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in NOT_SETTINGS:
            continue
        if key.startswith(TEST_SUITE_PREFIX):
            continue
        if key not in PATH_VARIABLES and not _is_text(raw):
            # Said as the command line says it, before any conversion (which quoted
            # Python's '\udcff' as a value of the wrong type).
            shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise ConfigError(f"${key}: '{shown}' is not UTF-8 text")
        name = key[len(ENV_PREFIX) :].lower()
        if name == "policies" or name.startswith("policies__"):
            raise ConfigError(
                f"environment: {key}: sandbox policies are set in the config file "
                "([policies.NAME] tables), not from the environment"
            )
        if "__" in name:
            table, sub = name.split("__", 1)
            values.setdefault(table, {})[sub] = raw
        else:
            values[name] = raw
    return values


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def from_env(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """Overlay ``CBEXEC_<FIELD>`` and ``CBEXEC_<LIMITS>__<FIELD>`` variables (pure)."""
    laid = overlay(settings, env_values(environ), "environment", text=True)
    if laid.problems:
        raise ConfigError("\n".join(laid.problems))
    return laid.settings


def _from(given_by: Mapping[str, str], problem: str) -> str:
    """``problem`` prefixed with its setting's source where that is not the file.

    As a value's type problems are (``environment: ...``): a bad ``CBEXEC_AUTH_TOKEN``
    must not send its reader to a config file whose token is fine.
    """
    setting = re.split(r"[:\s]", problem, maxsplit=1)[0]  # "auth_token", "limits.cpu_seconds"
    origin = given_by.get(setting) or given_by.get(setting.split(".")[0], "")
    return f"{origin}: {problem}" if origin else problem


def layered(
    config_file: Path | None,
    environ: Mapping[str, str],
    flags: Mapping[str, object],
    *,
    beside: Callable[[Settings, frozenset[str]], list[str]] | None = None,
) -> Settings:
    """Defaults < TOML file < environment < flags given, validated.

    Every bad setting is named in one ConfigError, a line each: the values of the wrong
    type first (each source's, in order), then the checks of what the others mean. A
    refused value leaves its setting as the source below had it, and the checks say
    nothing about it: judging the value underneath would name a problem not written.
    ``beside``: the problems of checks that otherwise come later (the policies', which
    need the host's sandbox), named too when there are others; given the settings and
    the names of those refused.
    """
    settings = Settings()
    problems: list[str] = []
    refused: set[str] = set()
    # Each source's values, its name, whether they are text, whether typed as written.
    sources: list[tuple[Mapping[str, Any], str, bool, bool]] = []
    if config_file is not None:
        sources.append((read_toml(config_file), str(config_file), False, True))
    sources.append((env_values(environ), "environment", True, False))
    sources.append((flags, "flag", False, False))
    given_by: dict[str, str] = {}  # each setting's source, where it is not the file
    for values, origin, text, typed in sources:
        laid = overlay(settings, values, origin, text=text, typed=typed)
        settings = laid.settings
        problems += laid.problems
        named = origin if origin in ("environment", "flag") else ""
        for key, raw in values.items():
            leaves = [f"{key}.{sub}" for sub in raw] if isinstance(raw, Mapping) else [key]
            given_by |= dict.fromkeys(leaves, named)
        # A setting a later source gives again is checked again if that value is taken.
        given = {
            f"{key}.{sub}" for key, raw in values.items() if isinstance(raw, Mapping) for sub in raw
        }
        refused = (refused - set(values) - given) | laid.refused
    if config_file is not None:
        settings = settings.replace(config_file=str(config_file))
    meaning = meaning_problems(settings, frozenset(refused))
    problems += [_from(given_by, problem) for problem in meaning]
    if problems and beside is not None:
        # A setting the meaning checks refused (a default above its cap) is refused to the
        # checks built on it too: the policies would name it again, as their own problem.
        judged = {problem.split(":", 1)[0] for problem in meaning}
        problems += beside(settings, frozenset(refused | judged))
    if problems:
        raise ConfigError("\n".join(problems))
    return settings
