"""A Settings' policies resolved for this host's sandbox, or before it is known; start-up's warnings.

``for_host`` checks them against what the sandbox can give (namespaces, the hardened
tier); ``problems_beside`` and ``allowed_languages`` resolve them without the host.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from executor.errors import ConfigError
from executor.model import Language
from executor.policies import PolicySet, resolve
from executor.policy_binds import interpreter_paths
from executor.runtimes.child import CHILD_DIR
from executor.secret_files import secret_files

if TYPE_CHECKING:
    from executor.config import Settings
    from executor.sandbox.process import SandboxOptions


def for_host(settings: Settings, options: SandboxOptions, environ: Mapping[str, str]) -> PolicySet:
    """The settings' policies, checked against what this host's sandbox can do.

    Raises:
        ConfigError: a policy is malformed, or asks for what the host cannot give
            (an empty network without namespaces; binds or a group without the hardened
            tier's private mounts and dedicated uids); each line after the config file's
            name, where the policies come from (as a top-level value's type error).
    """
    try:
        return _for_host(settings, options, environ)
    except ConfigError as err:
        if not settings.config_file:
            raise
        lines = str(err).splitlines()
        raise ConfigError("\n".join(f"{settings.config_file}: {line}" for line in lines)) from err


def _for_host(settings: Settings, options: SandboxOptions, environ: Mapping[str, str]) -> PolicySet:
    isolation = options.isolation
    keep = list(isolation.keep) if isolation is not None else [sys.prefix, str(CHILD_DIR)]
    tables = settings.policies
    if isinstance(tables, Mapping) and any(
        isinstance(table, Mapping) and table.get("binds") for table in tables.values()
    ):
        # Perl is asked for its @INC only when a bind needs checking against it.
        keep = list(dict.fromkeys([*interpreter_paths(), *keep]))
    policies = resolve(
        settings.policies,
        network_host=options.network,
        languages=settings.languages,
        default_limits=settings.default_limits,
        max_limits=settings.max_limits,
        data_dir=settings.data_dir,
        protected_files=[
            *(path for _, path in secret_files(settings)),
            settings.tls_cert,
            settings.tls_client_ca,
            settings.supervisor_tls_cert,
            settings.supervisor_tls_ca,
        ],
        keep=keep,
        environ=environ,
        masked=[*isolation.masks, *isolation.late_masks] if isolation is not None else [],
    )
    problems: list[str] = []  # every policy's, a line each
    for policy in policies:
        if not policy.host_network and not options.pid_namespace:
            problems.append(
                f"policies.{policy.name}.network: {no_empty_network(settings.pid_namespace)}"
            )
        needs_tier = [
            key
            for key, asked in (("binds", policy.binds), ("group", policy.group is not None))
            if asked
        ]
        if needs_tier and isolation is None:
            problems.append(
                f"policies.{policy.name}.{needs_tier[0]}: needs the hardened tier (private "
                "mounts and a dedicated uid: root, PID namespaces, dedicated_uid not off), "
                "which this executor does not have"
            )
    if problems:
        raise ConfigError("\n".join(problems))
    return policies


def allowed_languages(
    settings: Settings, environ: Mapping[str, str]
) -> dict[str, frozenset[Language]] | None:
    """Policy name -> the languages it allows, as configured (``--check-config``'s universal lines).

    None when the policies do not resolve: the sandbox's check says why. Binds are left
    out, as ``problems_beside`` leaves them: they need the host, and grant no language.
    """
    try:
        resolved = _resolve_without_the_host(settings, environ)
    except ConfigError:
        return None
    return {policy.name: policy.languages for policy in resolved}


def _resolve_without_the_host(settings: Settings, environ: Mapping[str, str]) -> PolicySet:
    """The ``[policies]`` tables resolved without what needs the host.

    Their binds are left out (judged against the host's mounts), and the network is
    taken as granted.
    """
    tables: Any = settings.policies
    if isinstance(tables, Mapping):
        tables = {
            name: {k: v for k, v in t.items() if k != "binds"} if isinstance(t, Mapping) else t
            for name, t in tables.items()
        }
    return resolve(
        tables,
        network_host=True,
        languages=settings.languages,
        default_limits=settings.default_limits,
        max_limits=settings.max_limits,
        data_dir=settings.data_dir,
        protected_files=[],
        keep=[],
        environ=environ,
    )


# Settings the policies build on: one refused leaves them unjudged (config_sources.layered's rule).
_BUILT_ON: Final = ("policies", "default_limits", "max_limits", "languages")


def problems_beside(
    settings: Settings, refused: frozenset[str], environ: Mapping[str, str]
) -> list[str]:
    """The ``[policies]`` tables' problems that need nothing of the host, as lines.

    For a config with other bad settings (``config_sources.layered``'s ``beside``): each is
    named with them, not after they are fixed. Their binds, and what the host's sandbox
    cannot give, are checked once the other settings are right (``for_host``); nothing
    is said while a setting they build on was refused.
    """
    if any(name.split(".")[0] in _BUILT_ON for name in refused):
        return []
    try:
        _resolve_without_the_host(settings, environ)
    except ConfigError as err:
        lines = str(err).splitlines()
        return (
            [f"{settings.config_file}: {line}" for line in lines] if settings.config_file else lines
        )
    return []


# Why no empty network comes without a PID namespace: the sandbox makes the two together.
_NETWORK_NEEDS_PID: Final = (
    "the executor makes an empty network namespace only with a PID namespace"
)


def no_empty_network(pid_namespace: str) -> str:
    """Why ``network = "none"`` cannot be had: ``pid_namespace = "off"``, or the host refuses."""
    if pid_namespace == "off":
        return (
            f"'none' needs namespaces, and pid_namespace is off ({_NETWORK_NEEDS_PID}); "
            'set pid_namespace = "auto"'
        )
    return "'none' needs namespaces, which this host does not allow"


def network_warnings(settings: Settings, options: SandboxOptions) -> list[str]:
    """The start-up WARNING when ``network = "auto"`` gives callbacks the host network.

    That they then reach this executor's port, with no token set, is each policy's
    warning (``exposure_warnings``).
    """
    if settings.network != "auto" or not options.network:
        return []
    why = (
        "pid_namespace is off"
        if settings.pid_namespace == "off"
        else "this host allows no PID namespace"
    )
    return [f'network = "auto" gives callbacks the host network here: {why} ({_NETWORK_NEEDS_PID})']


def exposure_warnings(policies: PolicySet, auth_token: str) -> list[str]:
    """What a host-network policy without ``auth_token`` lets its callbacks do, one line each.

    On the host network a callback reaches this executor's own port, which without a
    token answers anyone: it could Execute under another user's policy, or drive the
    farm as any Qube user.
    """
    if auth_token:
        return []
    return [
        f"policy {policy.name} gives its callbacks the host network and auth_token is not "
        "set: they can call this executor's port as anyone (set auth_token)"
        for policy in policies
        if policy.host_network
    ]
