"""A policy's binds: each checked at start-up against what it could expose, hide or let swap.

Which host directory a bind mounts where, and the directories start-up noted, which a
run mounts or is refused (``isolation.BindChangedError``).
"""

from __future__ import annotations

import functools
import os
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from executor.child.isolation import FRESH_PER_CHILD, identity, mounts_under, open_directory
from executor.policy_keys import key_error
from executor.runtimes.child import CHILD_DIR, PerlRuntime

if TYPE_CHECKING:
    from executor.policies import Policy, PolicySet


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


def protected_paths(data_dir: Path, protected_files: list[str]) -> list[tuple[str, str, bool]]:
    """(path, what, is a directory) a bind may not reach."""
    found = [(os.path.realpath(data_dir), "the data dir", True)]
    found += [(os.path.realpath(f), f, False) for f in protected_files if f]
    return found


def _identity(name: str, key: str, path: str) -> tuple[int, int, int]:
    """Which directory ``path`` (resolved) is, reached as a run will: no symbolic link followed."""
    try:
        fd = open_directory(path)
    except OSError as err:
        raise key_error(name, key, f"{path} changed while it was checked: {err.strerror}") from None
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
        raise key_error(name, key, "expected a table {path, target, mode}")
    unknown = set(raw) - {"path", "target", "mode"}
    if unknown:
        raise key_error(
            name, key, f"unknown key {sorted(unknown)[0]!r}; expected path, target, mode"
        )
    path = str(raw.get("path", ""))
    if not os.path.isabs(path):
        raise key_error(name, f"{key}.path", f"must be an absolute path, got {path!r}")
    if not os.path.isdir(path):
        raise key_error(name, f"{key}.path", f"{path} is not an existing directory")
    real = os.path.realpath(path)
    if real == "/":
        raise key_error(name, f"{key}.path", "may not be / (it holds the data dir)")
    for protected_path, what, is_dir in protected:
        if _under(protected_path, real) or (is_dir and _under(real, protected_path)):
            raise key_error(name, f"{key}.path", f"{path} would expose {what} to callbacks")
    target = os.path.normpath(str(raw.get("target") or path))
    if not os.path.isabs(target) or target == "/":
        raise key_error(
            name, f"{key}.target", f"must be an absolute path other than /, got {target!r}"
        )
    # As the mount sees it too: a target through a symbolic link (/bin on a merged /usr).
    real_target = os.path.realpath(target)
    private_tmp = tempfile.gettempdir()
    if private_tmp in (target, real_target):
        # The working directory is made in it after the binds: in the bound directory.
        # Said first: a checkout under /tmp (the interpreters' files) is hidden as well.
        raise key_error(
            name,
            f"{key}.target",
            f"{target} is each callback's private tmpfs, which holds its working directory "
            "(made after the binds, it would be made in the bound directory): choose a "
            f"target under {private_tmp} (made in the callback's private one)",
        )
    for where in dict.fromkeys((target, real_target)):
        for kept in keep:
            if _under(kept, where):
                raise key_error(
                    name, f"{key}.target", f"{target} would hide {kept}, which callbacks need"
                )
        for kept in keep:
            if _under(where, kept):
                raise key_error(
                    name,
                    f"{key}.target",
                    f"{target} would hide part of {kept}, which callbacks need",
                )
        if (meets := _meets_a_fresh_mount(where)) is not None:
            raise key_error(name, f"{key}.target", f"{target} {meets}: choose another target")
    if not os.path.isdir(target) and not _under(target, private_tmp):
        raise key_error(
            name,
            f"{key}.target",
            f"{target} is not an existing directory: make it on the host (an empty one, "
            f"the mount point) or choose a target under {private_tmp} (made in the "
            "callback's private one)",
        )
    mode = str(raw.get("mode", "ro"))
    if mode not in ("ro", "rw"):
        raise key_error(name, f"{key}.mode", f"expected 'ro' or 'rw', got {mode!r}")
    # A run mounts these very directories, reached by these resolved paths, or none.
    fresh = any(_under(real_target, os.path.realpath(mask)) for mask in (private_tmp, *masked))
    if not fresh and (who := _renamed_by_others(real_target)) is not None:
        raise key_error(
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


def inside_a_writable_bind(policies: Mapping[str, Policy]) -> str | None:
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


def table_binds(
    name: str,
    table: Mapping[str, Any],
    protected: list[tuple[str, str, bool]],
    keep: list[str],
    masked: list[str],
) -> tuple[Bind, ...]:
    binds = table.get("binds", [])
    if not isinstance(binds, list):
        raise key_error(name, "binds", "expected a list of tables {path, target, mode}")
    resolved = tuple(_bind(name, i, raw, protected, keep, masked) for i, raw in enumerate(binds))
    targets = [b.target for b in resolved]
    for i, target in enumerate(targets):
        for other in targets[:i]:
            if _under(target, other) or _under(other, target):
                raise key_error(name, f"binds[{i}].target", f"{target} overlaps {other}")
    return resolved


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
