"""Sandbox policies: which confinement a callback gets, by where it came from and who owns it.

A policy is a named ``[policies.NAME]`` table of the config file. Two are built in and
always exist: ``job`` (callbacks submitted with jobs and Execute requests) and
``universal`` (callbacks from ``callbacks.conf``); both are today's confinement unless
the site widens them with a table of the same name. Any other name is the site's own.

Keys (every one optional):

- ``network``: ``"none"`` (an empty network namespace) or ``"host"``; default the
  top-level ``network`` setting's result.
- ``binds``: ``[{path, target, mode}]``: the host directory ``path`` is mounted at
  ``target`` (default ``path``) in the callback's mount namespace, ``mode`` ``"ro"``
  (default) or ``"rw"``. Outside the masks every callback sees the host's directories
  anyway: the directory's mode, and the policy's ``group``, decide who gets in.
  Checked at start-up: absolute, existing directories, none covering or
  inside the data dir, nor holding the config file, the TLS files or an ``env_files``
  file (a bind would show them past their covers); a target is an existing
  directory, or lies under the private ``/tmp`` (made there; not ``/tmp`` itself, which
  holds the working directory), and neither is, holds nor lies inside what the
  interpreters need (``interpreter_paths``) or what each child mounts afresh
  (``isolation.FRESH_PER_CHILD``: ``/proc``, ``/dev/pts``); no path, nor
  target on the host, lies inside a read-write bind's directory (its callbacks could
  swap it). Both are resolved, and the directories noted: a run mounts those (or a
  file system mounted again where one was mounted) or is refused
  (``isolation.BindChangedError``).
- ``group``: a host group (name or gid) the sandbox uid gets as its only supplementary
  group: how an admin lets the dedicated uids write to a bound directory.
- ``umask``: the callback's umask, a string of octal digits; default ``"077"``. A TOML
  number is refused: TOML keeps no base, so ``77`` (meant as 077, read as 0o115) and
  ``0o77`` cannot be told apart.
- ``env`` (``{VAR = "value"}``), ``env_files`` (``{VAR = "/path"}``: the file's content,
  read once at start-up, for credentials), ``env_pass`` (``["VAR"]``: taken from the
  executor's own environment at start-up). Never from a request.
- ``languages``: allowed languages (default the top-level ``languages``).
- ``verbs``: the qb actions allowed (``unblock``, ``workunblock``, ...); reading
  (``jobinfo`` and the status helpers) is always allowed; default all.
- ``default_limits`` / ``max_limits``: tables like the top-level ones; default theirs.
- ``users``: Qube users whose job callbacks get this policy, and whose Execute requests
  may ask for it (``ExecuteRequest.policy``).

A value of the wrong TOML type is refused as the top-level settings' are, never
converted (``env = {X = true}`` is no string, ``wall_seconds = "7"`` no number).
Everything is resolved once, at start-up, into frozen ``Policy`` values (``resolve``);
a problem is a ``ConfigError`` naming ``policies.NAME.key`` (``policy_host.for_host``:
after the config file's name).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from executor import policy_keys
from executor.config_values import parse_languages
from executor.errors import ConfigError, NotFoundError, PermissionDeniedError
from executor.model import Language, Limits
from executor.policy_binds import Bind, inside_a_writable_bind, protected_paths, table_binds
from executor.policy_keys import key_error
from executor.supervisor_link import JOB_VERBS, SUBJOB_VERBS, WORK_VERBS

JOB: Final = "job"
UNIVERSAL: Final = "universal"
BUILT_IN: Final = (JOB, UNIVERSAL)
DEFAULT_UMASK: Final = 0o077
KEYS: Final = frozenset(
    {
        "network",
        "binds",
        "group",
        "umask",
        "env",
        "env_files",
        "env_pass",
        "languages",
        "verbs",
        "default_limits",
        "max_limits",
        "users",
    }
)
# Reading the farm is every callback's: a policy's ``verbs`` names the actions.
READ_FUNCTIONS: Final = frozenset({"jobinfo", "jobstatus", "workstatus", "subjobstatus"})
# The actions by their canonical qb names: job verbs, work<verb>, subjob<verb>.
VERBS: Final = frozenset(
    {
        *JOB_VERBS,
        *(f"work{verb}" for verb in WORK_VERBS),
        *(f"subjob{verb}" for verb in SUBJOB_VERBS),
    }
)


def canonical_verb(fn: str) -> str:
    """A qb function's canonical action name: ``unblockwork`` is ``workunblock``, ``retire`` ``complete``."""
    fn = fn.replace("retire", "complete")
    if fn.endswith("work") and fn[: -len("work")] in WORK_VERBS:
        return "work" + fn[: -len("work")]
    return fn


@dataclass(frozen=True, slots=True)
class Policy:
    """One resolved policy: everything a callback under it gets."""

    name: str
    # True: the host network; False: an empty network namespace.
    host_network: bool
    binds: tuple[Bind, ...] = ()
    group: int | None = None
    umask: int = DEFAULT_UMASK
    # (name, value) pairs added to the callback's environment; values may be secrets.
    env: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)
    languages: frozenset[Language] = frozenset(Language)
    # None: every qb function; else the actions allowed (reads always are).
    verbs: frozenset[str] | None = None
    default_limits: Limits | None = None
    max_limits: Limits | None = None
    users: tuple[str, ...] = ()

    @property
    def limits(self) -> tuple[Limits, Limits]:
        """(default, cap) for this policy's runs."""
        assert self.default_limits is not None and self.max_limits is not None  # noqa: S101
        return self.default_limits, self.max_limits

    def allows_function(self, fn: str) -> bool:
        """Whether a callback under this policy may call qb function ``fn`` (any spelling)."""
        return self.verbs is None or fn in READ_FUNCTIONS or canonical_verb(fn) in self.verbs

    def grants(self) -> str:
        """What the policy grants, in one line (the start-up report, check-config)."""
        parts = ["host network" if self.host_network else "no network"]
        for bind in self.binds:
            where = bind.path if bind.target == bind.path else f"{bind.path} at {bind.target}"
            parts.append(f"{where} {'rw' if bind.writable else 'ro'}")
        if self.group is not None:
            parts.append(f"group {self.group}")
        if self.umask != DEFAULT_UMASK:
            parts.append(f"umask {self.umask:03o}")
        if self.env:
            parts.append("env " + ",".join(name for name, _ in self.env))
        parts.append("languages " + ",".join(sorted(self.languages)))
        parts.append(
            "qb verbs " + ("all" if self.verbs is None else ",".join(sorted(self.verbs)) or "none")
        )
        if self.default_limits is not None and self.max_limits is not None:
            parts.append(
                f"wall {self.default_limits.wall_seconds:g}s (max {self.max_limits.wall_seconds:g}s)"
            )
        if self.users:
            parts.append("users " + ",".join(self.users))
        return "; ".join(parts)


class PolicySet:
    """The resolved policies by name, and who gets which."""

    def __init__(self, policies: Mapping[str, Policy]) -> None:
        self._policies = dict(policies)
        self._by_user: dict[str, str] = {}
        for policy in self._policies.values():
            for user in policy.users:
                self._by_user.setdefault(user, policy.name)

    def __iter__(self) -> Iterator[Policy]:
        return iter(self._policies.values())

    def get(self, name: str) -> Policy:
        return self._policies[name]

    def names(self) -> list[str]:
        return list(self._policies)

    def for_job_callback(self, user: str) -> Policy:
        """A job's own callback: the policy its owner is mapped to, else ``job``."""
        return self._policies[self._by_user.get(user, JOB)]

    def for_execute(self, user: str, asked: str) -> Policy:
        """An Execute request's policy: the one asked for if ``user`` may have it.

        Raises:
            PermissionDeniedError: the name is unknown or ``user`` is not in its ``users``.
        """
        if not asked:
            return self.for_job_callback(user)
        policy = self._policies.get(asked)
        if policy is None:
            known = ", ".join(self._policies)
            raise PermissionDeniedError(
                f"policy {asked!r} does not exist (policies: {known}); an Execute request "
                "may ask only for a policy whose policies.NAME.users lists its callback.user"
            )
        if asked == JOB or user in policy.users:
            return policy
        raise PermissionDeniedError(
            f"user {user!r} (callback.user, else context.job.user) may not ask for policy "
            f"{asked!r}: it is not in policies.{asked}.users"
        )

    def for_universal(self, named: str) -> Policy:
        """A callbacks.conf callback: the policy its line or directory names, else ``universal``.

        Raises:
            NotFoundError: the name is not configured (a line kept from before a restart
                whose policy was removed since): never another policy in its place, whose
                grants (credentials, binds, verbs) the admin gave other callbacks.
        """
        policy = self._policies.get(named or UNIVERSAL)
        if policy is None:
            raise NotFoundError(not_configured(named, self._policies))
        return policy


def language_refusal(
    language: str, enabled: Collection[str] | None, policy: Policy | None
) -> str | None:
    """Why a run in ``language`` is refused, or None: the executor's ``languages``, then the policy's.

    The dispatcher's words for a run it refuses (REJECTED); the trigger engine says
    them ahead of time, in a registration's checks, a universal line's load warnings,
    ``why`` and a dry run. ``enabled`` None: not known (every language).
    """
    if enabled is not None and language not in enabled:
        return (
            f"{language} callbacks are disabled by the executor's 'languages' setting "
            "(Qube's supervisor_language_flags)"
        )
    if policy is not None and language not in policy.languages:
        return (
            f"{language} callbacks are not allowed by policy {policy.name!r} "
            f"(policies.{policy.name}.languages)"
        )
    return None


def not_configured(named: str, known: Iterable[str]) -> str:
    """Why a universal line naming policy ``named`` cannot run: the config has no such policy."""
    return f"policy {named!r} is not configured (policies: {', '.join(known)})"


def _policy(
    name: str,
    table: Mapping[str, Any],
    *,
    network_host: bool,
    languages: frozenset[Language],
    default_limits: Limits,
    max_limits: Limits,
    protected: list[tuple[str, str, bool]],
    keep: list[str],
    masked: list[str],
    environ: Mapping[str, str],
) -> Policy:
    problems = [
        str(key_error(name, key, f"unknown key; expected one of {', '.join(sorted(KEYS))}"))
        for key in sorted(set(table) - KEYS)
    ]
    host_network = network_host
    if "network" in table:
        if table["network"] in ("none", "host"):
            host_network = table["network"] == "host"
        else:
            problems.append(
                str(
                    key_error(
                        name, "network", f"expected 'none' or 'host', got {table['network']!r}"
                    )
                )
            )
    resolved: tuple[Bind, ...] = policy_keys.named_each(
        problems, (), lambda: table_binds(name, table, protected, keep, masked)
    )
    allowed = languages
    if "languages" in table:
        try:
            allowed = parse_languages(table["languages"], f"policies.{name}.languages")
        except ConfigError as err:
            problems.append(str(err))
    verbs = policy_keys.named_each(problems, None, lambda: _verbs(name, table))
    default = policy_keys.named_each(
        problems,
        default_limits,
        lambda: policy_keys.limits(
            name, "default_limits", table.get("default_limits", {}), default_limits
        ),
    )
    cap = policy_keys.named_each(
        problems,
        max_limits,
        lambda: policy_keys.limits(name, "max_limits", table.get("max_limits", {}), max_limits),
    )
    problems.extend(
        f"policies.{name}.default_limits.{f.name}: exceeds max_limits.{f.name}"
        for f in dataclasses.fields(Limits)
        if getattr(default, f.name) > getattr(cap, f.name)
    )
    group = policy_keys.named_each(
        problems,
        None,
        lambda: policy_keys.group(name, table["group"]) if "group" in table else None,
    )
    umask = policy_keys.named_each(
        problems,
        DEFAULT_UMASK,
        lambda: policy_keys.umask(name, table["umask"]) if "umask" in table else DEFAULT_UMASK,
    )
    env: tuple[tuple[str, str], ...] = policy_keys.named_each(
        problems, (), lambda: policy_keys.environment(name, table, environ)
    )
    users: list[str] = policy_keys.named_each(
        problems, [], lambda: policy_keys.users(name, table.get("users", []))
    )
    if problems:
        raise ConfigError("\n".join(problems))
    return Policy(
        name=name,
        host_network=host_network,
        binds=resolved,
        group=group,
        umask=umask,
        env=env,
        languages=allowed,
        verbs=verbs,
        default_limits=default,
        max_limits=cap,
        users=tuple(users),
    )


def _verbs(name: str, table: Mapping[str, Any]) -> frozenset[str] | None:
    if "verbs" not in table:
        return None
    verbs = frozenset(canonical_verb(v) for v in policy_keys.names(name, "verbs", table["verbs"]))
    unknown_verbs = sorted(verbs - VERBS)
    if unknown_verbs:
        raise key_error(
            name,
            "verbs",
            f"unknown qb action {unknown_verbs[0]!r}; expected some of "
            f"{', '.join(sorted(VERBS))} (reading is always allowed)",
        )
    return verbs


def resolve(
    tables: Mapping[str, Any],
    *,
    network_host: bool,
    languages: frozenset[Language],
    default_limits: Limits,
    max_limits: Limits,
    data_dir: Path,
    protected_files: list[str],
    keep: list[str],
    environ: Mapping[str, str],
    masked: Sequence[str] = (),
) -> PolicySet:
    """Every policy of the ``[policies]`` tables, the built-ins included, checked.

    Args:
        tables: ``[policies.NAME]`` tables as TOML gave them.
        network_host: Whether callbacks get the host network by default (the tier's).
        languages: The languages enabled executor-wide (a policy's default).
        default_limits: The executor's default limits (a policy's default).
        max_limits: The executor's caps (a policy's default caps).
        data_dir: The executor's data dir, which no bind may expose.
        protected_files: The config, TLS and ``env_files`` files no bind may expose.
        keep: Paths the callbacks need (the interpreters, the child code): no target may
            be one, hold one or lie inside one.
        environ: The executor's environment (``env_pass``).
        masked: The directories each callback gets an empty tmpfs over (``/tmp`` always
            counts): a target under one is made there, every run, not the host's.
    """
    if not isinstance(tables, Mapping):
        raise ConfigError("policies: expected tables [policies.NAME]")
    protected = protected_paths(data_dir, protected_files)
    resolved: dict[str, Policy] = {}
    problems: list[str] = []  # every policy's, a line each
    for name in (*BUILT_IN, *(n for n in tables if n not in BUILT_IN)):
        if not name.replace("-", "").replace("_", "").isalnum():
            problems.append(f"policies.{name}: a policy name is letters, digits, - and _")
            continue
        table = tables.get(name, {})
        if not isinstance(table, Mapping):
            problems.append(f"policies.{name}: expected a table")
            continue
        try:
            resolved[name] = _policy(
                name,
                table,
                network_host=network_host,
                languages=languages,
                default_limits=default_limits,
                max_limits=max_limits,
                protected=protected,
                keep=keep,
                masked=list(masked),
                environ=environ,
            )
        except ConfigError as err:
            problems += str(err).splitlines()
    if problems:
        raise ConfigError("\n".join(problems))
    if problem := inside_a_writable_bind(resolved):
        raise ConfigError(problem)
    if resolved[JOB].users:
        raise ConfigError("policies.job.users: job is every user's default; list users elsewhere")
    # Which policy a user's callbacks get must not hang on the order of the tables.
    listed_in: dict[str, str] = {}
    for policy in resolved.values():
        for user in policy.users:
            if user in listed_in:
                raise ConfigError(
                    f"policies.{policy.name}.users: user {user!r} is also in "
                    f"policies.{listed_in[user]}.users; a user gets one policy, list them once"
                )
            listed_in[user] = policy.name
    return PolicySet(resolved)


def report(policies: PolicySet) -> list[str]:
    """One line per policy: its name and what it grants (start-up log, check-config)."""
    return [f"policy {policy.name}: {policy.grants()}" for policy in policies]
