"""``cbexec serve --check-config``: check everything start-up would, print the effective settings.

Start-up refuses bad TLS files (the supervisor link's too), a port it cannot bind, a data dir it cannot use, a
damaged database, a PostgreSQL store it cannot reach, that is not migrated or whose role
lacks a privilege the executor needs (asked, not tried), a sandbox
setting the host cannot satisfy, a sandbox uid range another executor holds; and with
``strict`` a broken ``callbacks.conf`` (without it, a warning: start-up runs without
them). The check runs each of those (collecting every problem
rather than stopping at the first), loads and compiles the universal callbacks as
start-up does, and prints the settings start-up would run with, one ``name = value``
line each, so a systemd ``ExecStartPre`` or a person sees the whole picture at once.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import TextIO

from executor import config, data_dir, open_files, process_limit
from executor.api import certificate_checks, security, supervisor_channel
from executor.data_dir_lock import DataDirLock
from executor.errors import ConfigError
from executor.plurals import counted
from executor.policies import BUILT_IN, report
from executor.policy_binds import bind_warnings
from executor.policy_host import allowed_languages, exposure_warnings, for_host, network_warnings
from executor.runtimes import mail
from executor.runtimes.check import check_source
from executor.sandbox import host_limits
from executor.sandbox.identity import UidClaim
from executor.sandbox.tier import describe_sandbox, root_warnings, sandbox_options
from executor.secret_files import open_to_others, with_other_links
from executor.storage import check_database
from executor.triggers.parsed import check_trigger
from executor.triggers.universal import (
    CONF_NAME,
    LAST_GOOD_NAME,
    UniversalConfigError,
    load_last_good,
    load_universal,
)
from executor.triggers.universal_set import kept_line_problem


def _data_dir(settings: config.Settings) -> str:
    """How the data dir and the databases start-up opens in it look: usable, or why not."""
    found = data_dir.inspect(settings.data_dir)
    DataDirLock.check(settings.data_dir)
    checked: list[str] = []
    problems: list[str] = []
    for name in data_dir.databases(settings):
        try:
            if check_database(settings.data_dir / name) != "made at start-up":
                checked.append(name)
        except ConfigError as err:
            problems.append(str(err))
    if full := data_dir.space_problem(settings.data_dir, data_dir.databases(settings)):
        problems.append(full)
    if problems:
        raise ConfigError("\n".join(problems))
    return found + (f"; {', '.join(checked)} sound" if checked else "")


def _sandbox(settings: config.Settings) -> str:
    """The tier, then each policy and what it grants (as the start-up log lists them).

    As start-up does, the dedicated uids' range must be free: only looked at here (each
    uid's lock tried and let go), never claimed.
    """
    options = sandbox_options(settings)
    try:
        if options.isolation is not None:
            UidClaim.check(options.isolation.uid_base, options.isolation.uid_count)
        policies = for_host(settings, options, os.environ)
        tier = describe_sandbox(options, settings.launcher)
        warnings = [
            f"  WARNING: {w}"
            for w in [
                *root_warnings(options),
                *network_warnings(settings, options),
                *exposure_warnings(policies, settings.auth_token),
                *bind_warnings(policies),
                *open_to_others(settings),
                *with_other_links(settings),
                *host_limits.warnings(
                    settings.default_limits,
                    settings.max_limits,
                    nproc=options.caps_processes_with_nproc,
                ),
            ]
        ]
        return "\n".join([tier, *(f"  {line}" for line in report(policies)), *warnings])
    finally:
        if options.cgroups is not None:
            options.cgroups.close()
        if options.bridge_network is not None:
            options.bridge_network.close()


def _universal(settings: config.Settings) -> str:
    """How many universal callbacks start-up would load, from where; every problem otherwise."""
    dirs = settings.universal_callback_dirs
    # [policies.job] widens a built-in one: each name once.
    known_policies = list(dict.fromkeys([*BUILT_IN, *settings.policies]))
    try:
        loaded = load_universal(
            dirs,
            check_trigger,
            check_code=check_source,
            policies=settings.universal_callback_policies,
            known_policies=known_policies,
            languages=settings.languages,
            policy_languages=allowed_languages(settings, os.environ),
        )
    except UniversalConfigError as err:
        if settings.strict:
            raise ConfigError("\n".join(f"universal callbacks: {e}" for e in err.errors)) from err
        # Without strict, start-up keeps the set loaded last, or runs without them (one
        # ERROR line): a warning, not a refusal, or a systemd ExecStartPre would keep
        # the service down for it.
        count = counted(len(err.errors), "problem")
        try:
            kept = load_last_good(settings.data_dir / LAST_GOOD_NAME)
        except UniversalConfigError:
            kept = None
        # As start-up (TriggerEngine.keep_last_good): the kept lines it would leave out.
        left_out = [
            f"{line.source} = {line.triggers} left out of the set kept from before: {problem}"
            for line in (kept[0] if kept is not None else [])
            if (problem := kept_line_problem(line, known_policies)) is not None
        ]
        would = (
            "without universal callbacks"
            if kept is None
            else f"with the set loaded last before it ({len(kept[0]) - len(left_out)} callbacks)"
        )
        return "\n".join(
            [
                f"NOT LOADED: callbacks.conf has {count}; start-up would run {would} "
                "(strict = true refuses to start instead)",
                *(f"  WARNING: {e}" for e in [*err.errors, *left_out]),
            ]
        )
    missing = (
        [d for d in dirs if not d.is_dir()] if settings.universal_callback_path.strip() else []
    )
    warnings = [
        f"\n  WARNING: {d}: no such directory (universal_callback_path); none of its callbacks is loaded"
        for d in missing
    ] + [f"\n  WARNING: {warning}" for callback in loaded for warning in callback.warnings]
    confs = [str(d / CONF_NAME) for d in dirs if (d / CONF_NAME).is_file()]
    if not confs:
        return f"none (no {CONF_NAME} in {', '.join(map(str, dirs))})" + "".join(warnings)
    return f"{len(loaded)} from {', '.join(confs)}" + "".join(warnings)


def _store(settings: config.Settings) -> str:
    """Where the triggers, outbox and history live; a fleet's database reached, migrated, usable."""
    if not settings.store:
        return f"SQLite in {settings.data_dir}"
    from executor.errors import UnavailableError
    from executor.migrations import open_postgres, schema_version

    try:
        open_postgres(settings.store, application_name="cbexec-check").close()
    except UnavailableError as err:
        raise ConfigError(f"store: {err}") from err
    except ConfigError as err:
        raise ConfigError(f"store: {err}") from err
    found = f"PostgreSQL, schema version {schema_version()} (a fleet's shared store)"
    if settings.supervisor:
        return found
    from executor.api.embedded import shared_store_warnings

    return "\n".join([found, *(f"  WARNING: {w}" for w in shared_store_warnings(settings.store))])


def check(settings: config.Settings, out: TextIO) -> list[str]:
    """Print the effective settings and each check's finding; the problems found."""
    # As start-up does (serve_forever), before the sandbox's check makes the cells.
    soft, _ = open_files.raise_soft_limit()
    print("effective settings (defaults < config file < CBEXEC_* < flags):", file=out)
    for line in config.describe(settings):
        print(f"  {line}", file=out)
    checks: list[tuple[str, Callable[[], str]]] = [
        ("endpoint", lambda: _endpoint(settings)),
        ("supervisor", lambda: _supervisor(settings)),
        ("data dir", lambda: _data_dir(settings)),
        ("store", lambda: _store(settings)),
        ("sandbox", lambda: _sandbox(settings)),
        ("universal callbacks", lambda: _universal(settings)),
        ("open files", lambda: _open_files(settings, soft)),
        ("processes", lambda: _processes(settings)),
        ("mail", lambda: _mail(settings)),
    ]
    problems: list[str] = []
    for name, run in checks:
        try:
            print(f"{name}: {run()}", file=out)
        except ConfigError as err:
            problems += str(err).splitlines()
    return problems


def check_tls(settings: config.Settings, out: TextIO) -> list[str]:
    """``--check-tls``: only the TLS files (and the token), so it runs beside a live executor.

    ``--check-config`` also takes the data dir's lock, the port and the uid range, which
    the running executor holds: it cannot check new files before the restart that
    loads them. The settings were validated when loaded (the token's length with them).
    The supervisor link's files are checked too when it has any.
    """
    link = bool(settings.supervisor and settings.supervisor_tls_ca)
    if not settings.tls_cert and not link:
        return ["tls_cert: not set (plaintext): no TLS files to check"]
    problems: list[str] = []
    if settings.tls_cert:
        try:
            security.server_credentials(settings)  # each file loads, the key the certificate's
        except ConfigError as err:
            problems += str(err).splitlines()
        else:
            print(f"endpoint: {security.describe(settings)}", file=out)
            for line in certificate_checks.describe(settings):
                print(line, file=out)
            now = datetime.datetime.now(datetime.UTC)
            for warning in certificate_checks.warnings(settings, now):
                print(f"  WARNING: {warning}", file=out)
    if link:
        try:
            supervisor_channel.link_material(settings)
        except ConfigError as err:
            problems += str(err).splitlines()
        else:
            print(f"supervisor: {supervisor_channel.describe(settings)}", file=out)
    return problems


def _open_files(settings: config.Settings, soft: int) -> str:
    """The open-file limit start-up would raise itself to, against what the slots want.

    ``soft``: the soft limit the check was started with (``check`` raises it as start-up does).
    """
    reachable = open_files.reachable_limit()
    idle, wanted = open_files.wanted(settings.max_concurrent, settings.launcher)
    raised = "" if soft == reachable else f" (start-up raises the soft limit, {soft} here, to it)"
    found = (
        f"limit {reachable}{raised}; max_concurrent = {settings.max_concurrent} wants "
        f"~{wanted} (~{idle} at idle)"
    )
    if open_files.start_problem(reachable, settings.max_concurrent) is not None:
        return found  # refused by the sandbox's check: start-up could not make the cells
    warning = open_files.limit_warning(reachable, settings.max_concurrent, settings.launcher)
    return found if warning is None else f"{found}\n  WARNING: {warning}"


def _processes(settings: config.Settings) -> str:
    """This process's task limit (``serve`` runs under the same), against what the slots want."""
    limit = process_limit.own_limit()
    wanted = process_limit.wanted(settings.max_concurrent)
    found = (
        f"limit {limit[0]} ({limit[1]})" if limit is not None else "no limit"
    ) + f"; max_concurrent = {settings.max_concurrent} may want ~{wanted} tasks"
    warning = process_limit.limit_warning(limit, settings.max_concurrent)
    return found if warning is None else f"{found}\n  WARNING: {warning}"


def _mail(settings: config.Settings) -> str:
    """Where mail goes; a WARNING when the relay's password would cross the network in clear."""
    found = mail.describe(settings.mail_settings)
    return "\n".join([found, *(f"  WARNING: {w}" for w in mail.login_warnings(settings.mail))])


def _supervisor(settings: config.Settings) -> str:
    """Where the supervisor is, how its link is secured (its files loaded), and a plaintext one's WARNING."""
    if settings.supervisor:
        supervisor_channel.link_material(settings)
    warnings = "".join(f"\n  WARNING: {w}" for w in supervisor_channel.link_warnings(settings))
    return f"{supervisor_channel.describe(settings)}{warnings}"


def _endpoint(settings: config.Settings) -> str:
    security.server_credentials(settings)  # TLS files load, the key the certificate's
    security.check_bindable(settings.bind)
    if settings.http_bind:
        security.check_bindable(settings.http_bind, setting="http_bind")
    http = f"; HTTP side port {settings.http_bind}" if settings.http_bind else ""
    now = datetime.datetime.now(datetime.UTC)
    found = [*security.open_port_warnings(settings), *certificate_checks.warnings(settings, now)]
    warnings = "".join(f"\n  WARNING: {w}" for w in found)
    return f"{settings.bind}, {security.describe(settings)}{http}{warnings}"
