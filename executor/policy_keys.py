"""A policy table's keys read one at a time, each problem naming ``policies.NAME.key``.

What each key takes is the ``policies`` module's docstring; the binds are
``policy_binds``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import grp
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

from executor.config_values import as_written, check_written_type, finite_number, whole_number
from executor.errors import ConfigError
from executor.model import Limits
from executor.sandbox.limits import setting_problem

# An environment file larger than this is a mistake (a credential is a line).
MAX_ENV_FILE_BYTES: Final = 64 << 10
# Variables a policy may not set: the sandbox's own (see launch.child_environment).
RESERVED_ENV: Final = frozenset({"PATH", "HOME", "TMPDIR", "CBEXEC_SANDBOX", "LD_PRELOAD"})


def key_error(name: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"policies.{name}.{key}: {message}")


def group(name: str, raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        gid = raw
    elif isinstance(raw, str) and raw.strip().isdecimal():  # a gid written as a string
        gid = int(raw.strip())
    else:
        try:
            gid = grp.getgrnam(str(raw)).gr_gid
        except KeyError:
            raise key_error(name, "group", f"no group {raw!r} on this host") from None
    if gid < 0 or gid >= 2**32 - 1:
        raise key_error(name, "group", f"{gid} is not a gid")
    if gid == 0:
        raise key_error(name, "group", "must be a group other than root's (gid 0)")
    return gid


_OCTAL_DIGITS: Final = re.compile(r"[0-7]{1,4}")


def umask(name: str, raw: Any) -> int:
    """A umask written as a string of octal digits ("077").

    Never a TOML number: TOML keeps no base, so ``77`` (read as 0o115, group-writable
    for an admin who meant 077) and ``0o77`` (63) cannot be told from each other.
    """
    expected = 'expected a string of octal digits like "027"'
    if not isinstance(raw, str):
        hint = ""
        if isinstance(raw, int) and not isinstance(raw, bool):
            hint = (
                " (a TOML number keeps no base: 77 and 0o77 cannot be told apart; "
                'quote the octal digits: umask = "077")'
            )
        raise key_error(name, "umask", f"{expected}, got {as_written(raw)}{hint}")
    if not _OCTAL_DIGITS.fullmatch(raw):
        raise key_error(name, "umask", f"{expected}, got {raw!r}")
    value = int(raw, 8)
    if value > 0o777:
        raise key_error(name, "umask", f"{raw!r} is not a umask (000-777)")
    return value


def names(name: str, key: str, raw: Any) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise key_error(name, key, "expected a list of strings")
    return list(raw)


def users(name: str, raw: Any) -> list[str]:
    """``users``: names a Qube user can have, every bad one named.

    Matched exactly: an empty name would give the policy to every request and job that
    names no user, and one with whitespace around it would match no user.
    """
    users = names(name, "users", raw)
    problems = []
    for i, user in enumerate(users):
        if not user:
            why = "an empty name: no Qube user has it (it would give this policy to every "
            why += "request and job that names no user)"
        elif user != user.strip():
            why = f"{user!r} has whitespace around it: no Qube user name does (it would match "
            why += f"only a request naming {user!r})"
        elif any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in user):
            why = f"{user!r} holds a control character: no Qube user name does"
        else:
            continue
        problems.append(str(key_error(name, f"users[{i}]", why)))
    if problems:
        raise ConfigError("\n".join(problems))
    return users


def _no_nul(name: str, key: str, value: str) -> str:
    """``value``, which an environment variable can hold: no NUL byte."""
    if "\0" in value:
        raise key_error(name, key, "holds a NUL byte, which an environment variable cannot")
    return value


def environment(
    name: str, table: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {}
    problems: list[str] = []  # every variable's, a line each
    for key in ("env", "env_files"):
        values = table.get(key, {})
        if not isinstance(values, Mapping):
            raise key_error(name, key, "expected a table of VAR = value")
        for var, value in values.items():
            found = named_each(problems, None, functools.partial(_env_value, name, key, var, value))
            if found is not None:
                env[var] = found
    for var in names(name, "env_pass", table.get("env_pass", [])):
        if var in RESERVED_ENV:
            problems.append(
                str(key_error(name, f"env_pass.{var}", "not a variable a policy may set"))
            )
        elif var not in environ:
            problems.append(
                str(key_error(name, f"env_pass.{var}", "is not set in the executor's environment"))
            )
        else:
            env[var] = environ[var]
    if problems:
        raise ConfigError("\n".join(problems))
    return tuple(sorted(env.items()))


def _env_value(name: str, key: str, var: str, value: Any) -> str:
    """An ``env`` value, or an ``env_files`` file's content."""
    if var in RESERVED_ENV or not var.replace("_", "").isalnum():
        raise key_error(name, f"{key}.{var}", "not a variable a policy may set")
    if not isinstance(value, str):
        # As str(): "True", "[1, 2]", Python's reprs, which no script expects.
        raise key_error(name, f"{key}.{var}", f"expected a string, got {as_written(value)}")
    if key == "env":
        return _no_nul(name, f"{key}.{var}", value)
    if not os.path.isabs(value):  # as a bind's path: not another file under another cwd
        raise key_error(name, f"{key}.{var}", f"must be an absolute path, got {value!r}")
    try:
        with open(value, "rb") as source:
            content = source.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as err:
        raise key_error(name, f"{key}.{var}", f"cannot read {value}: {err.strerror}") from err
    if len(content) > MAX_ENV_FILE_BYTES:
        raise key_error(name, f"{key}.{var}", f"{value} is larger than {MAX_ENV_FILE_BYTES} bytes")
    return _no_nul(name, f"{key}.{var}", content.decode(errors="replace").rstrip("\n"))


def limits(name: str, key: str, raw: Any, base: Limits) -> Limits:
    if not isinstance(raw, Mapping):
        raise key_error(name, key, "expected a table of limits")
    changes: dict[str, Any] = {}
    problems: list[str] = []  # every limit's, a line each
    for field, value in raw.items():
        number = named_each(problems, None, functools.partial(_limit, name, key, field, value))
        if number is not None:
            changes[field] = number
    if problems:
        raise ConfigError("\n".join(problems))
    return dataclasses.replace(base, **changes)


def _limit(name: str, key: str, field: str, value: Any) -> float:
    """One limit of a policy's table, checked as the top-level tables' are."""
    declared = {f.name: f.type for f in dataclasses.fields(Limits)}
    if field not in declared:
        raise key_error(name, key, f"unknown limit {field!r}")
    # By the declared type, as the top-level tables: the base's value may be a whole
    # number (cpu_seconds = 10) that would have cut 1.5 to 1. As TOML wrote it, too:
    # "7" is no number, 1e9 no whole number.
    whole = declared[field] != "float"
    try:
        check_written_type(value, 0 if whole else 0.0, field)
        number: float = whole_number(value) if whole else finite_number(value)
    except (TypeError, ValueError) as err:
        raise key_error(name, f"{key}.{field}", str(err)) from None
    if problem := setting_problem(field, number):
        raise key_error(name, f"{key}.{field}", problem)
    return number


_T = TypeVar("_T")


def named_each(problems: list[str], fallback: _T, value: Callable[[], _T]) -> _T:
    """``value()``, or ``fallback`` with its ConfigError's lines added to ``problems``.

    So a policy's every bad key is named, a line each, as the top-level settings are,
    rather than only the first (each fix revealing the next).
    """
    try:
        return value()
    except ConfigError as err:
        problems += str(err).splitlines()
        return fallback
