"""The executor's own files that hold secrets: which they are, and whether other users may read them.

They are the config file (``auth_token``, ``supervisor_token``, ``mail.smtp_password``, a
store URL's password and the policies), the TLS keys (the port's and the supervisor
link's), and each policy's ``env_files`` (credentials): all read once, at start-up. The
hardened tier hides each from every callback (``tier.isolation_plan``: a child binds
``/dev/null`` over it), whatever its mode, but only at that path: a cover is a bind
mount, so another hard link to the file is guarded by its mode alone. The other local
users are a file's mode's business too. For the start-up WARNINGs, ``open_to_others``
says which of these files they could read, ``with_other_links`` which have another name.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from executor.config import SECRETS, Settings, without_passwords

# Mode bits that let the file's group or anyone else read it.
READABLE_BY_OTHERS: Final = stat.S_IRGRP | stat.S_IROTH


def secret_files(settings: Settings) -> list[tuple[str, str]]:
    """(setting, path) of each file start-up read that holds a secret, as the settings name it.

    The config file whatever it holds (it also lays out the policies), then the TLS
    keys, then the policies' ``env_files``. The TLS certificate and client CA are
    public. Malformed policy tables give nothing here: start-up refuses them anyway.
    """
    found: list[tuple[str, str]] = []
    if settings.config_file:
        found.append(("config file", settings.config_file))
    found += [
        (setting, str(Path(value).expanduser()))
        for setting in ("tls_key", "supervisor_tls_key")
        if (value := getattr(settings, setting))
    ]
    policies = settings.policies if isinstance(settings.policies, Mapping) else {}
    for name, table in policies.items():
        files = table.get("env_files") if isinstance(table, Mapping) else None
        if not isinstance(files, Mapping):
            continue
        found += [
            (f"policies.{name}.env_files.{var}", str(path))
            for var, path in files.items()
            if isinstance(path, str) and path
        ]
    return found


def secrets_in_config(values: Mapping[str, Any]) -> list[str]:
    """The secret settings a config file's TOML gives (their names, never their values)."""
    found = []
    for name in sorted(SECRETS):
        table, _, key = name.rpartition(".")
        holder = values.get(table) if table else values
        if isinstance(holder, Mapping) and holder.get(key):
            found.append(name)
    store = values.get("store")
    if isinstance(store, str) and without_passwords(store) != store:
        found.append("store (its password)")
    return found


def _config_secrets(path: str) -> list[str]:
    """What the config file at ``path`` holds, read again; [] if it no longer reads."""
    try:
        return secrets_in_config(tomllib.loads(Path(path).read_text()))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []


def _described(setting: str, path: str) -> str | None:
    """How a WARNING names a secret file; None for a config file holding no secret.

    Without one, who may read the config file is the site's choice.
    """
    if setting != "config file":
        return f"{setting}: {path}"
    held = _config_secrets(path)
    return f"config file {path} holds {', '.join(held)} and" if held else None


def open_to_others(settings: Settings) -> list[str]:
    """A start-up WARNING for each secret file its group or other users may read.

    The config file only when it holds a secret (``auth_token``, ``mail.smtp_password``,
    a store URL's password).
    """
    warnings = []
    for setting, path in secret_files(settings):
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue  # start-up names a file it cannot read; nothing to say here
        if not mode & READABLE_BY_OTHERS or (what := _described(setting, path)) is None:
            continue
        warnings.append(
            f"{what} is readable by its group or others (mode {mode:04o}): other local "
            f"users can read it; chmod 600 {path}"
        )
    return warnings


def with_other_links(settings: Settings) -> list[str]:
    """A start-up WARNING for each secret file with more than one hard link.

    A child covers the path the settings name, not the file: through another link, a
    callback reads it as its mode lets any other user. The config file only when it
    holds a secret, as for ``open_to_others``.
    """
    warnings = []
    for setting, path in secret_files(settings):
        try:
            status = os.stat(path)
        except OSError:
            continue  # start-up names a file it cannot read; nothing to say here
        if status.st_nlink < 2 or (what := _described(setting, path)) is None:
            continue
        warnings.append(
            f"{what} has {status.st_nlink} hard links: a callback may read it through "
            f"another link unless its mode forbids (mode {stat.S_IMODE(status.st_mode):04o}; "
            f"the sandbox covers only {path}); keep it 0600, or remove the other links"
        )
    return warnings
