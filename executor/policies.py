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
a problem is a ``ConfigError`` naming ``policies.NAME.key`` (``for_host``: after the
config file's name).
"""

from __future__ import annotations

import dataclasses
import functools
import grp
import os
import re
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from executor.child.isolation import FRESH_PER_CHILD, identity, mounts_under, open_directory
from executor.config_values import (
    as_written,
    check_written_type,
    finite_number,
    parse_languages,
    whole_number,
)
from executor.errors import ConfigError, NotFoundError, PermissionDeniedError
from executor.model import Language, Limits
from executor.runtimes.child import CHILD_DIR, PerlRuntime
from executor.sandbox.limits import setting_problem
from executor.secret_files import secret_files
from executor.supervisor_link import JOB_VERBS, SUBJOB_VERBS, WORK_VERBS

if TYPE_CHECKING:
    from executor.config import Settings
    from executor.sandbox.process import SandboxOptions

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


# An environment file larger than this is a mistake (a credential is a line).
MAX_ENV_FILE_BYTES: Final = 64 << 10
# Variables a policy may not set: the sandbox's own (see process.child_environment).
RESERVED_ENV: Final = frozenset({"PATH", "HOME", "TMPDIR", "CBEXEC_SANDBOX", "LD_PRELOAD"})


@dataclass(frozen=True, slots=True)
class Bind:
    """A host directory mounted at ``target`` in the callback's mount namespace.

    Both paths are resolved (no symbolic link left); the identities, (st_dev, st_ino,
    mounted there), are the directories start-up checked, which a run mounts or is
    refused (``isolation.BindChangedError``).
    """

    path: str
    target: str
    writable: bool
    path_identity: tuple[int, int, int]
    # None: the target lies under a masked directory, made afresh in each run's tmpfs.
    target_identity: tuple[int, int, int] | None


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


def _error(name: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"policies.{name}.{key}: {message}")


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _perl_inc(perl: str) -> tuple[str, ...]:
    """Perl's library directories (``@INC``), asked of ``perl``; () where it does not run."""
    try:
        found = subprocess.run(
            [perl, "-e", 'print join("\\0", @INC)'],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(p for p in found.stdout.decode(errors="replace").split("\0") if os.path.isabs(p))


@functools.cache
def interpreter_paths() -> tuple[str, ...]:
    """What the callbacks' interpreters need, which no bind target may hide, hold or lie in.

    Perl as the executor runs it (``PerlRuntime``) and its directory, then Python's
    executable (as named and resolved) and its directory, its library directories (the
    standard library, and the venv's and the installation's site-packages: not the whole
    prefix, which for a system Python is all of /usr), the child code, and Perl's
    ``@INC``. Perl is asked for its ``@INC`` once per process, at start-up: never on a
    run's path.
    """
    perl = PerlRuntime().perl
    found: list[str] = []
    for executable in (perl, sys.executable):
        found += [executable, os.path.realpath(executable)]
    for executable in (perl, sys.executable):
        found += [os.path.dirname(executable), os.path.dirname(os.path.realpath(executable))]
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        paths = sysconfig.get_paths(vars=scheme_vars)
        found += [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    found.append(str(CHILD_DIR))
    found += _perl_inc(perl)
    resolved = [q for p in found if p for q in (os.path.normpath(p), os.path.realpath(p))]
    return tuple(p for p in dict.fromkeys(resolved) if p != "/")


def _protected(data_dir: Path, protected_files: list[str]) -> list[tuple[str, str, bool]]:
    """(path, what, is a directory) a bind may not reach."""
    found = [(os.path.realpath(data_dir), "the data dir", True)]
    found += [(os.path.realpath(f), f, False) for f in protected_files if f]
    return found


def _identity(name: str, key: str, path: str) -> tuple[int, int, int]:
    """Which directory ``path`` (resolved) is, reached as a run will: no symbolic link followed."""
    try:
        fd = open_directory(path)
    except OSError as err:
        raise _error(name, key, f"{path} changed while it was checked: {err.strerror}") from None
    try:
        device, inode, mounted = identity(fd)
    finally:
        os.close(fd)
    return device, inode, mounted


def directories_now(binds: Sequence[Bind]) -> tuple[object, ...]:
    """Which directory each bind's path, and host target, names now (reached as a run will), and what is mounted inside.

    A child started ahead checked and mounted what they named then; a directory swapped
    since (for a symbolic link, or another file system mounted there) takes the child's
    mount on it away, and the path leads elsewhere. A file system mounted inside a path
    since (a share, an automount) is not in the child's copy: its callback would see the
    empty mount point, and write there. Such a child no longer fits a run.
    """
    named: list[object] = []
    for bind in binds:
        named.append(_directory_now(bind.path))
        named.append(tuple(mounts_under(bind.path)))
        if bind.target_identity is not None:
            named.append(_directory_now(bind.target))
    return tuple(named)


def _directory_now(path: str) -> object:
    try:
        fd = open_directory(path)
    except (OSError, ValueError) as err:
        return type(err).__name__
    try:
        return tuple(identity(fd))
    finally:
        os.close(fd)


def _bind(
    name: str,
    index: int,
    raw: Any,
    protected: list[tuple[str, str, bool]],
    keep: list[str],
    masked: list[str],
) -> Bind:
    key = f"binds[{index}]"
    if not isinstance(raw, Mapping):
        raise _error(name, key, "expected a table {path, target, mode}")
    unknown = set(raw) - {"path", "target", "mode"}
    if unknown:
        raise _error(name, key, f"unknown key {sorted(unknown)[0]!r}; expected path, target, mode")
    path = str(raw.get("path", ""))
    if not os.path.isabs(path):
        raise _error(name, f"{key}.path", f"must be an absolute path, got {path!r}")
    if not os.path.isdir(path):
        raise _error(name, f"{key}.path", f"{path} is not an existing directory")
    real = os.path.realpath(path)
    if real == "/":
        raise _error(name, f"{key}.path", "may not be / (it holds the data dir)")
    for protected_path, what, is_dir in protected:
        if _under(protected_path, real) or (is_dir and _under(real, protected_path)):
            raise _error(name, f"{key}.path", f"{path} would expose {what} to callbacks")
    target = os.path.normpath(str(raw.get("target") or path))
    if not os.path.isabs(target) or target == "/":
        raise _error(
            name, f"{key}.target", f"must be an absolute path other than /, got {target!r}"
        )
    # As the mount sees it too: a target through a symbolic link (/bin on a merged /usr).
    real_target = os.path.realpath(target)
    private_tmp = tempfile.gettempdir()
    if private_tmp in (target, real_target):
        # The working directory is made in it after the binds: in the bound directory.
        # Said first: a checkout under /tmp (the interpreters' files) is hidden as well.
        raise _error(
            name,
            f"{key}.target",
            f"{target} is each callback's private tmpfs, which holds its working directory "
            "(made after the binds, it would be made in the bound directory): choose a "
            f"target under {private_tmp} (made in the callback's private one)",
        )
    for where in dict.fromkeys((target, real_target)):
        for kept in keep:
            if _under(kept, where):
                raise _error(
                    name, f"{key}.target", f"{target} would hide {kept}, which callbacks need"
                )
        for kept in keep:
            if _under(where, kept):
                raise _error(
                    name,
                    f"{key}.target",
                    f"{target} would hide part of {kept}, which callbacks need",
                )
        if (meets := _meets_a_fresh_mount(where)) is not None:
            raise _error(name, f"{key}.target", f"{target} {meets}: choose another target")
    if not os.path.isdir(target) and not _under(target, private_tmp):
        raise _error(
            name,
            f"{key}.target",
            f"{target} is not an existing directory: make it on the host (an empty one, "
            f"the mount point) or choose a target under {private_tmp} (made in the "
            "callback's private one)",
        )
    mode = str(raw.get("mode", "ro"))
    if mode not in ("ro", "rw"):
        raise _error(name, f"{key}.mode", f"expected 'ro' or 'rw', got {mode!r}")
    # A run mounts these very directories, reached by these resolved paths, or none.
    fresh = any(_under(real_target, os.path.realpath(mask)) for mask in (private_tmp, *masked))
    if not fresh and (who := _renamed_by_others(real_target)) is not None:
        raise _error(
            name,
            f"{key}.target",
            f"{_swappable(target, who)}; make it and the directories on its way root's alone, "
            f"or choose a target under {private_tmp} (made in the callback's private one)",
        )
    return Bind(
        real,
        real_target,
        mode == "rw",
        path_identity=_identity(name, f"{key}.path", real),
        target_identity=None if fresh else _identity(name, f"{key}.target", real_target),
    )


def _meets_a_fresh_mount(target: str) -> str | None:
    """How ``target`` meets what the sandbox mounts afresh in every child; None if it does not.

    A bind there could not work: under ``/proc`` the child's own proc file system is
    there instead of the host's directory start-up noted; over ``/dev/pts`` its devpts
    goes on top; over ``/proc`` or ``/dev`` the mounts the sandbox makes next fail.
    """
    for mount, holding in FRESH_PER_CHILD.items():
        where = f"where the sandbox mounts each callback's own {holding}"
        if target == mount:
            return f"is {where}"
        if _under(mount, target):
            return f"would hide {mount}, {where}"
        if _under(target, mount):
            return f"lies inside {mount}, {where}"
    return None


def _renamed_by_others(path: str, *, group: bool = False) -> str | None:
    """Who other than root may rename ``path`` or a directory on its way; None when nobody.

    A directory's entries are renamed by whoever may write it: its owner, anyone when
    anyone may write it. In a sticky one (``/tmp``) only an entry's own owner may, so
    there the entry's owner counts. With ``group``: a group other than root's that may
    write a directory on the way (a system group's ``/var/log``), which is a warning.
    """
    parts = [part for part in path.split("/") if part]
    for depth in range(1, len(parts) + 1):
        parent = "/" + "/".join(parts[: depth - 1])
        entry = "/" + "/".join(parts[:depth])
        above, found = os.stat(parent), os.lstat(entry)
        mode = stat.S_IMODE(above.st_mode)
        sticky = bool(mode & stat.S_ISVTX)
        writers = (
            f"the users who may write {parent} (mode {mode:04o}, owner uid {above.st_uid}, "
            f"group gid {above.st_gid})"
        )
        if group:
            if mode & stat.S_IWGRP and above.st_gid != 0 and not sticky:
                return writers
        elif above.st_uid != 0 or (mode & stat.S_IWOTH and not sticky):
            return writers
        elif sticky and mode & (stat.S_IWOTH | stat.S_IWGRP) and found.st_uid != 0:
            return f"uid {found.st_uid}, the owner of {entry} in the sticky directory {parent}"
    return None


def _swappable(target: str, who: str) -> str:
    return (
        f"{target} can be renamed by {who}: they could leave a symbolic link in its place "
        "while a callback runs, and the callback's path would follow it"
    )


def _inside_a_writable_bind(policies: Mapping[str, Policy]) -> str | None:
    """The first bind path, or target on the host, inside a read-write bind's directory.

    The callbacks with that read-write bind could rename the directory away between two
    runs and leave a symbolic link or a directory of their own: the other bind's runs
    would then be refused (the path is no longer what start-up checked).
    """
    writable = [
        (policy.name, index, bind.path)
        for policy in policies.values()
        for index, bind in enumerate(policy.binds)
        if bind.writable
    ]
    for policy in policies.values():
        for index, bind in enumerate(policy.binds):
            places = [("path", bind.path)]
            if bind.target_identity is not None:  # the host's directory, not a tmpfs's
                places.append(("target", bind.target))
            for key, place in places:
                for writer, writer_index, directory in writable:
                    if place != directory and _under(place, directory):
                        return (
                            f"policies.{policy.name}.binds[{index}].{key}: {place} lies inside "
                            f"{directory}, which policies.{writer}.binds[{writer_index}] "
                            "mounts read-write: its callbacks could swap it for a symbolic "
                            "link between runs; bind a directory outside it"
                        )
    return None


def _group(name: str, raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        gid = raw
    elif isinstance(raw, str) and raw.strip().isdecimal():  # a gid written as a string
        gid = int(raw.strip())
    else:
        try:
            gid = grp.getgrnam(str(raw)).gr_gid
        except KeyError:
            raise _error(name, "group", f"no group {raw!r} on this host") from None
    if gid < 0 or gid >= 2**32 - 1:
        raise _error(name, "group", f"{gid} is not a gid")
    if gid == 0:
        raise _error(name, "group", "must be a group other than root's (gid 0)")
    return gid


_OCTAL_DIGITS: Final = re.compile(r"[0-7]{1,4}")


def _umask(name: str, raw: Any) -> int:
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
        raise _error(name, "umask", f"{expected}, got {as_written(raw)}{hint}")
    if not _OCTAL_DIGITS.fullmatch(raw):
        raise _error(name, "umask", f"{expected}, got {raw!r}")
    value = int(raw, 8)
    if value > 0o777:
        raise _error(name, "umask", f"{raw!r} is not a umask (000-777)")
    return value


def _names(name: str, key: str, raw: Any) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise _error(name, key, "expected a list of strings")
    return list(raw)


def _users(name: str, raw: Any) -> list[str]:
    """``users``: names a Qube user can have, every bad one named.

    Matched exactly: an empty name would give the policy to every request and job that
    names no user, and one with whitespace around it would match no user.
    """
    users = _names(name, "users", raw)
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
        problems.append(str(_error(name, f"users[{i}]", why)))
    if problems:
        raise ConfigError("\n".join(problems))
    return users


def _no_nul(name: str, key: str, value: str) -> str:
    """``value``, which an environment variable can hold: no NUL byte."""
    if "\0" in value:
        raise _error(name, key, "holds a NUL byte, which an environment variable cannot")
    return value


def _environment(
    name: str, table: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {}
    problems: list[str] = []  # every variable's, a line each
    for key in ("env", "env_files"):
        values = table.get(key, {})
        if not isinstance(values, Mapping):
            raise _error(name, key, "expected a table of VAR = value")
        for var, value in values.items():
            found = _named_each(
                problems, None, functools.partial(_env_value, name, key, var, value)
            )
            if found is not None:
                env[var] = found
    for var in _names(name, "env_pass", table.get("env_pass", [])):
        if var in RESERVED_ENV:
            problems.append(str(_error(name, f"env_pass.{var}", "not a variable a policy may set")))
        elif var not in environ:
            problems.append(
                str(_error(name, f"env_pass.{var}", "is not set in the executor's environment"))
            )
        else:
            env[var] = environ[var]
    if problems:
        raise ConfigError("\n".join(problems))
    return tuple(sorted(env.items()))


def _env_value(name: str, key: str, var: str, value: Any) -> str:
    """An ``env`` value, or an ``env_files`` file's content."""
    if var in RESERVED_ENV or not var.replace("_", "").isalnum():
        raise _error(name, f"{key}.{var}", "not a variable a policy may set")
    if not isinstance(value, str):
        # As str(): "True", "[1, 2]", Python's reprs, which no script expects.
        raise _error(name, f"{key}.{var}", f"expected a string, got {as_written(value)}")
    if key == "env":
        return _no_nul(name, f"{key}.{var}", value)
    if not os.path.isabs(value):  # as a bind's path: not another file under another cwd
        raise _error(name, f"{key}.{var}", f"must be an absolute path, got {value!r}")
    try:
        with open(value, "rb") as source:
            content = source.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as err:
        raise _error(name, f"{key}.{var}", f"cannot read {value}: {err.strerror}") from err
    if len(content) > MAX_ENV_FILE_BYTES:
        raise _error(name, f"{key}.{var}", f"{value} is larger than {MAX_ENV_FILE_BYTES} bytes")
    return _no_nul(name, f"{key}.{var}", content.decode(errors="replace").rstrip("\n"))


def _limits(name: str, key: str, raw: Any, base: Limits) -> Limits:
    if not isinstance(raw, Mapping):
        raise _error(name, key, "expected a table of limits")
    changes: dict[str, Any] = {}
    problems: list[str] = []  # every limit's, a line each
    for field, value in raw.items():
        number = _named_each(problems, None, functools.partial(_limit, name, key, field, value))
        if number is not None:
            changes[field] = number
    if problems:
        raise ConfigError("\n".join(problems))
    return dataclasses.replace(base, **changes)


def _limit(name: str, key: str, field: str, value: Any) -> float:
    """One limit of a policy's table, checked as the top-level tables' are."""
    declared = {f.name: f.type for f in dataclasses.fields(Limits)}
    if field not in declared:
        raise _error(name, key, f"unknown limit {field!r}")
    # By the declared type, as the top-level tables: the base's value may be a whole
    # number (cpu_seconds = 10) that would have cut 1.5 to 1. As TOML wrote it, too:
    # "7" is no number, 1e9 no whole number.
    whole = declared[field] != "float"
    try:
        check_written_type(value, 0 if whole else 0.0, field)
        number: float = whole_number(value) if whole else finite_number(value)
    except (TypeError, ValueError) as err:
        raise _error(name, f"{key}.{field}", str(err)) from None
    if problem := setting_problem(field, number):
        raise _error(name, f"{key}.{field}", problem)
    return number


_T = TypeVar("_T")


def _named_each(problems: list[str], fallback: _T, value: Callable[[], _T]) -> _T:
    """``value()``, or ``fallback`` with its ConfigError's lines added to ``problems``.

    So a policy's every bad key is named, a line each, as the top-level settings are,
    rather than only the first (each fix revealing the next).
    """
    try:
        return value()
    except ConfigError as err:
        problems += str(err).splitlines()
        return fallback


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
        str(_error(name, key, f"unknown key; expected one of {', '.join(sorted(KEYS))}"))
        for key in sorted(set(table) - KEYS)
    ]
    host_network = network_host
    if "network" in table:
        if table["network"] in ("none", "host"):
            host_network = table["network"] == "host"
        else:
            problems.append(
                str(_error(name, "network", f"expected 'none' or 'host', got {table['network']!r}"))
            )
    resolved: tuple[Bind, ...] = _named_each(
        problems, (), lambda: _binds(name, table, protected, keep, masked)
    )
    allowed = languages
    if "languages" in table:
        try:
            allowed = parse_languages(table["languages"])
        except ConfigError as err:
            problems.append(str(_error(name, "languages", str(err))))
    verbs = _named_each(problems, None, lambda: _verbs(name, table))
    default = _named_each(
        problems,
        default_limits,
        lambda: _limits(name, "default_limits", table.get("default_limits", {}), default_limits),
    )
    cap = _named_each(
        problems,
        max_limits,
        lambda: _limits(name, "max_limits", table.get("max_limits", {}), max_limits),
    )
    problems.extend(
        f"policies.{name}.default_limits.{f.name}: exceeds max_limits.{f.name}"
        for f in dataclasses.fields(Limits)
        if getattr(default, f.name) > getattr(cap, f.name)
    )
    group = _named_each(
        problems, None, lambda: _group(name, table["group"]) if "group" in table else None
    )
    umask = _named_each(
        problems,
        DEFAULT_UMASK,
        lambda: _umask(name, table["umask"]) if "umask" in table else DEFAULT_UMASK,
    )
    env: tuple[tuple[str, str], ...] = _named_each(
        problems, (), lambda: _environment(name, table, environ)
    )
    users: list[str] = _named_each(problems, [], lambda: _users(name, table.get("users", [])))
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


def _binds(
    name: str,
    table: Mapping[str, Any],
    protected: list[tuple[str, str, bool]],
    keep: list[str],
    masked: list[str],
) -> tuple[Bind, ...]:
    binds = table.get("binds", [])
    if not isinstance(binds, list):
        raise _error(name, "binds", "expected a list of tables {path, target, mode}")
    resolved = tuple(_bind(name, i, raw, protected, keep, masked) for i, raw in enumerate(binds))
    targets = [b.target for b in resolved]
    for i, target in enumerate(targets):
        for other in targets[:i]:
            if _under(target, other) or _under(other, target):
                raise _error(name, f"binds[{i}].target", f"{target} overlaps {other}")
    return resolved


def _verbs(name: str, table: Mapping[str, Any]) -> frozenset[str] | None:
    if "verbs" not in table:
        return None
    verbs = frozenset(canonical_verb(v) for v in _names(name, "verbs", table["verbs"]))
    unknown_verbs = sorted(verbs - VERBS)
    if unknown_verbs:
        raise _error(
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
    protected = _protected(data_dir, protected_files)
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
    if problem := _inside_a_writable_bind(resolved):
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


def report(policies: PolicySet) -> list[str]:
    """One line per policy: its name and what it grants (start-up log, check-config)."""
    return [f"policy {policy.name}: {policy.grants()}" for policy in policies]


def bind_warnings(policies: PolicySet) -> list[str]:
    """A WARNING for each bind target on the host that a group of users may rename.

    Anyone's or a user's own directory is refused (``_bind``); a group's (a system
    group such as syslog's /var/log on some distributions) is the site's to judge.
    """
    warnings = []
    for policy in policies:
        for index, bind in enumerate(policy.binds):
            if bind.target_identity is None:
                continue
            who = _renamed_by_others(bind.target, group=True)
            if who is not None:
                warnings.append(
                    f"policies.{policy.name}.binds[{index}].target: {_swappable(bind.target, who)}"
                )
    return warnings


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
