"""The checks of what a Settings' values mean together: every bad setting named, a line each.

``validate`` runs them all; ``config_sources.layered`` runs them after reading every
source, leaving out what a source's value of the wrong type left unjudged.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from executor.bounds import MAX_REQUEST_BYTES
from executor.config import MIB, Settings, shown
from executor.errors import ConfigError
from executor.model import Limits
from executor.sandbox.limits import as_written
from executor.sandbox.limits import setting_problem as limit_problem
from supervisor_client.credentials import token_length_problem
from supervisor_client.targets import check_address

# logging's level names, any case (logs.configure upper-cases them).
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_LIMIT_FIELDS = {f.name: f.type for f in dataclasses.fields(Limits)}


def _address_problem(name: str, value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"{name}: expected host:port, got {value!r}"
    if int(port) > 65535:
        return f"{name}: port {port} is out of range (1-65535, or 0 for any free port)"
    # gRPC reads '::1:50051' as a name it cannot look up (so serve failed where the
    # check passed): the clients' rule and words (supervisor_client.targets).
    bracketed = host.startswith("[") and host.endswith("]")
    if (":" in host.strip("[]") and not bracketed) or host.startswith("[") != host.endswith("]"):
        return f"{name}: address {value!r}: write an IPv6 address in brackets, [IPv6]:PORT"
    if bracketed:
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{name}: address {value!r}: {host} is not an IPv6 address"
    elif host.replace(".", "").isdigit():
        # The C library reads '127.1' as 127.0.0.1 (so the check passed) where gRPC's
        # resolver refuses it (probe 112): an IPv4 address is its four parts.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return (
                f"{name}: address {value!r}: {host} is not an IPv4 address "
                "(write its four parts, as 127.0.0.1)"
            )
    return None


def _store_url_problem(url: str) -> str | None:
    """Why libpq cannot parse a ``store`` URL, without the URL's password; None if it can."""
    try:
        from psycopg import Error, conninfo
    except ImportError:
        return None  # connecting says psycopg is needed
    try:
        params = conninfo.conninfo_to_dict(url)
    except Error as err:
        return f"store: not a valid PostgreSQL URL: {_url_problem(err, url)}"
    # libpq parses any port and refuses it only when connecting, which is no bad setting
    # but "unreachable" (exit 3, which a unit retries). One a host each: "5432,5433".
    for port in str(params.get("port") or "").split(","):
        if port and not port.isdigit():
            return f"store: port {port!r} is not a number"
        if port and not 1 <= int(port) <= 65535:
            return f"store: port {port} is out of range (1 to 65535)"
    return None


def _url_problem(err: Exception, url: str) -> str:
    """What libpq says is wrong with ``url``, in one line, without the URL or its password."""
    reason = (str(err).strip().splitlines() or ["unreadable"])[0]
    reason = re.sub(r'\s*in URI: ".*"\s*$', "", reason)
    password = re.match(r"[^:]*://[^:@/]*:([^@/]*)@", url)
    if password and password.group(1):
        reason = reason.replace(password.group(1), "(password)")
    return reason.replace(url, shown("store", url))


# gRPC targets other than host:port that the supervisor address may be (open_channel).
GRPC_TARGET_SCHEMES: Final = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")


def _not_a_directory(name: str, path: Path | None) -> str | None:
    """A directory start-up makes (or uses) must not already be something else."""
    if path is not None and path.exists() and not path.is_dir():
        return f"{name}: {path} exists and is not a directory"
    return None


# Each check below yields a line per bad setting it finds, never stopping at the first:
# an admin fixing a file sees every bad setting at once, not three, then the next three.
Check = Callable[[Settings], Iterator[str]]


# A DNS name as a Host header carries it: labels of letters, digits, '-' and '_'.
_HOST_NAME: Final = re.compile(
    r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*"
)


def _check_endpoints(settings: Settings) -> Iterator[str]:
    if problem := _address_problem("bind", settings.bind):
        yield problem
    if settings.http_bind:
        if problem := _address_problem("http_bind", settings.http_bind):
            yield problem
        elif settings.http_bind == settings.bind and not settings.bind.endswith(":0"):
            yield "http_bind: must differ from bind (the gRPC port)"
    for name in settings.http_allowed_host_names:
        if name != "*" and not _HOST_NAME.fullmatch(name):
            yield (
                f"http_allowed_hosts: {name!r} is not a host name (letters, digits, '-', '_',"
                " dots; no port: any port is taken; addresses need no entry), nor '*' for any"
            )


def _check_limits(settings: Settings) -> Iterator[str]:
    named = set()  # limits refused already: comparing them would name them twice
    for name in ("default_limits", "max_limits"):
        limits: Limits = getattr(settings, name)
        for key in _LIMIT_FIELDS:
            problem = limit_problem(key, getattr(limits, key))
            if problem:
                named.add(key)
                yield f"{name}.{key}: {problem}"
    for key in _LIMIT_FIELDS:
        default, cap = getattr(settings.default_limits, key), getattr(settings.max_limits, key)
        if key not in named and default > cap:
            yield (
                f"default_limits.{key}: {as_written(default)} exceeds max_limits.{key} "
                f"{as_written(cap)}"
            )


def _check_supervisor(settings: Settings) -> Iterator[str]:
    address = settings.supervisor
    if address and not address.startswith(GRPC_TARGET_SCHEMES) and ":" not in address:
        yield f"supervisor: expected host:port, got {address!r}"
    elif address:
        # The clients' rule (cbexec --address, ExecutorClient): an address gRPC could
        # never reach (http://h:p, port 0, a space) would be retried for ever.
        try:
            check_address(address)
        except ValueError as err:
            yield f"supervisor: {err}"
    if problem := _timeout_problem(
        "supervisor_timeout_seconds", settings.supervisor_timeout_seconds
    ):
        yield problem
    if settings.supervisor_max_message_bytes < 256 << 10:
        yield "supervisor_max_message_bytes: must be at least 262144 (256 KiB)"
    elif settings.supervisor_max_message_bytes > MAX_MESSAGE_BYTES:
        yield (
            f"supervisor_max_message_bytes: must be at most {MAX_MESSAGE_BYTES} (gRPC's largest"
            f" message), got {settings.supervisor_max_message_bytes}"
        )


# The longest a supervisor or SMTP call may be given. Far more broke them: gRPC turns a
# deadline of ~1e10 s into one already passed (every call DEADLINE_EXCEEDED), and a socket
# refuses a timeout past ~9e9 s. An hour is longer than any sane call, and than the
# callback making it may run by default (max_limits.wall_seconds).
MAX_TIMEOUT_S: Final = 3600.0
MAX_GRACE_S: Final = 60.0
# gRPC's message lengths are signed 32-bit: a larger limit stopped the embedded
# supervisor from starting (OverflowError).
MAX_MESSAGE_BYTES: Final = (1 << 31) - 1


def _timeout_problem(name: str, seconds: float) -> str | None:
    if seconds <= 0:
        return f"{name}: must be positive, got {seconds:g}"
    if seconds > MAX_TIMEOUT_S:
        return f"{name}: must be at most {MAX_TIMEOUT_S:g} (an hour), got {seconds:g}"
    return None


# GetMetrics carries max_queue (queue_limit) and max_concurrent (slots) as uint32 fields: a
# larger value failed every GetMetrics (INTERNAL), so cbexec metrics and the dashboard's
# /health page, while /metrics showed it.
MAX_QUEUE: Final = (1 << 32) - 1
# Far below that, and far beyond what a host runs at once: each slot holds two sandbox cells
# (python, perl), each with a memory and a pids cgroup, made at start (and by
# --check-config). 40,000 slots ran into cgroup v1's host-wide 65535 memory cgroups, and
# the kernel's 4194304 processes (the bound before) kept --check-config at full CPU for
# over a minute. 4096 is 16,384 cgroups (made in about 4 s), the default of a 2048-CPU host.
MAX_CONCURRENT: Final = 4096


# grpc takes a connection or stream count as a signed 32-bit number.
MAX_CONNECTION_COUNT: Final = (1 << 31) - 1


def _check_connections(settings: Settings) -> Iterator[str]:
    for name in ("max_connections", "max_streams"):
        value = getattr(settings, name)
        if not 1 <= value <= MAX_CONNECTION_COUNT:
            yield f"{name}: must be 1 to {MAX_CONNECTION_COUNT}, got {value}"
    for name in ("keepalive_seconds", "keepalive_timeout_seconds", "handshake_timeout_seconds"):
        problem = _timeout_problem(name, getattr(settings, name))
        if problem is not None:
            yield problem


def _check_runs(settings: Settings) -> Iterator[str]:
    if settings.grace_seconds < 0:
        yield f"grace_seconds: must be 0 or more, got {settings.grace_seconds:g}"
    elif settings.grace_seconds > MAX_GRACE_S:
        # Every stopped run holds its slot for the grace: a long one only stalls the farm.
        yield f"grace_seconds: must be at most {MAX_GRACE_S:g}, got {settings.grace_seconds:g}"
    if not settings.languages:
        yield "languages: none is enabled, so no callback could run; name at least one"
    if settings.max_concurrent < 1:
        yield (
            f"max_concurrent: must be at least 1 (0 means the default), got {settings.max_concurrent}"
        )
    elif settings.max_concurrent > MAX_CONCURRENT:
        yield (
            f"max_concurrent: must be at most {MAX_CONCURRENT} (each slot makes 4 cgroups),"
            f" got {settings.max_concurrent}"
        )
    if settings.max_queue < 0:
        yield f"max_queue: must be 0 or more, got {settings.max_queue}"
    elif settings.max_queue > MAX_QUEUE:
        yield (
            f"max_queue: must be at most {MAX_QUEUE} (GetMetrics carries it in 32 bits),"
            f" got {settings.max_queue}"
        )
    if settings.unread_answers_max_bytes < MIB:
        yield (
            "unread_answers_max_bytes: must be at least 1048576 (1 MiB; the value is in"
            f" bytes), got {settings.unread_answers_max_bytes}"
        )
    if settings.max_queue_bytes < MAX_REQUEST_BYTES:
        yield (
            f"max_queue_bytes: must be at least {MAX_REQUEST_BYTES} (16 MiB, the largest"
            f" request, which may then wait; the value is in bytes), got {settings.max_queue_bytes}"
        )


def _check_outputs(settings: Settings) -> Iterator[str]:
    """Where logs and mail go."""
    # The default, <data_dir>/logs, too: a file there would lose every .cb log in silence.
    log_dir = settings.callback_log_dir
    if problem := _not_a_directory(
        "log_dir" if settings.log_dir else "log_dir (the default)", log_dir
    ):
        yield problem
    if problem := _not_a_directory("mail.directory", settings.mail_settings.directory):
        yield problem
    templates = settings.mail.templates_dir
    if templates is not None and str(templates) not in ("", ".") and not templates.is_dir():
        yield f"mail.templates_dir: {templates} is not a directory"


# Settings that take one of a few words, and those words.
_CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "network": ("auto", "none", "host"),
    "pid_namespace": ("auto", "on", "off"),
    "cgroup": ("auto", "on", "off"),
    "dedicated_uid": ("auto", "on", "off"),
    "launcher": ("zygote", "cold"),
    "event_loop": ("auto", "asyncio", "uvloop"),
    "log_format": ("text", "json"),
}


def _check_choices(settings: Settings) -> Iterator[str]:
    for name, choices in _CHOICES.items():
        if getattr(settings, name) not in choices:
            yield (
                f"{name}: expected {', '.join(choices[:-1])} or {choices[-1]},"
                f" got {getattr(settings, name)!r}"
            )


def _check_log_level(settings: Settings) -> Iterator[str]:
    if settings.log_level.upper() not in LOG_LEVELS:
        yield f"log_level: expected {', '.join(LOG_LEVELS)}, got {settings.log_level!r}"


# The least history_max_bytes: below it the history holds a handful of runs, and a value
# this small is more likely meant in KiB or MiB than in bytes.
MIN_HISTORY_BYTES: Final = MIB


def _check_history(settings: Settings) -> Iterator[str]:
    for name in ("callback_log_max_bytes", "history_max_runs"):
        if getattr(settings, name) < 1:
            yield f"{name}: must be at least 1, got {getattr(settings, name)}"
    if settings.history_max_bytes < MIN_HISTORY_BYTES:
        yield (
            f"history_max_bytes: must be at least {MIN_HISTORY_BYTES} (1 MiB; the value is "
            f"in bytes), got {settings.history_max_bytes}"
        )
    if settings.callback_log_total_max_bytes < MIN_HISTORY_BYTES:
        yield (
            f"callback_log_total_max_bytes: must be at least {MIN_HISTORY_BYTES} (1 MiB; the value"
            f" is in bytes), got {settings.callback_log_total_max_bytes}"
        )
    if settings.outbox_max_bytes < MIN_HISTORY_BYTES:
        yield (
            f"outbox_max_bytes: must be at least {MIN_HISTORY_BYTES} (1 MiB; the value is "
            f"in bytes), got {settings.outbox_max_bytes}"
        )
    if settings.triggers_max_bytes < MIN_HISTORY_BYTES:
        yield (
            f"triggers_max_bytes: must be at least {MIN_HISTORY_BYTES} (1 MiB; the value is "
            f"in bytes), got {settings.triggers_max_bytes}"
        )
    if settings.history_retention_days <= 0:
        yield "history_retention_days: must be positive"


def _check_journal(settings: Settings) -> Iterator[str]:
    if settings.trigger_journal_entries < 1:
        yield "trigger_journal_entries: must be >= 1"
    if settings.trigger_journal_days <= 0:
        yield "trigger_journal_days: must be positive"


# The least event_id_retention_hours: a publisher resends an event it is unsure of after
# its own retries and timeouts, which take minutes; shorter, such a resend applies twice.
MIN_EVENT_ID_RETENTION_HOURS: Final = 1.0


# The least event_id_max_count: a minute of 1,000 events/s, a hundred full PublishEvents.
MIN_EVENT_ID_MAX_COUNT: Final = 100_000


def _check_event_ids(settings: Settings) -> Iterator[str]:
    if settings.event_id_retention_hours < MIN_EVENT_ID_RETENTION_HOURS:
        yield (
            f"event_id_retention_hours: must be at least {MIN_EVENT_ID_RETENTION_HOURS:g} "
            "(a publisher's resend of an event must still find its id), "
            f"got {settings.event_id_retention_hours:g}"
        )
    if settings.event_id_max_count < MIN_EVENT_ID_MAX_COUNT:
        yield (
            f"event_id_max_count: must be at least {MIN_EVENT_ID_MAX_COUNT} (a PublishEvents'"
            " ids, and minutes of them, must be kept for their resends),"
            f" got {settings.event_id_max_count}"
        )


def _check_tls(settings: Settings) -> Iterator[str]:
    if bool(settings.tls_cert) != bool(settings.tls_key):
        yield "tls_cert and tls_key: set both (TLS) or neither (plaintext)"
    if settings.tls_client_ca and not settings.tls_cert:
        yield "tls_client_ca: mutual TLS needs tls_cert and tls_key too"


def _check_smtp_timeout(settings: Settings) -> Iterator[str]:
    if problem := _timeout_problem("mail.smtp_timeout_seconds", settings.mail.smtp_timeout_seconds):
        yield problem


def _check_auth_token(settings: Settings) -> Iterator[str]:
    """A token clients can send: gRPC metadata carries printable ASCII only, and not much of it."""
    if problem := _token_problem(
        "auth_token",
        settings.auth_token,
        "which no client can send (gRPC metadata carries nothing else)",
    ):
        yield problem


def _token_problem(name: str, token: str, unsendable: str) -> str:
    """What is wrong with the token setting ``name`` ("" for nothing), never showing any of it.

    ``unsendable``: why a character that is not printable ASCII cannot be sent.
    """
    if token and not token.strip():
        return f"{name}: only whitespace; leave it empty for no token"
    if bad := _not_ascii(token):
        return f"{name}: character {bad} is not printable ASCII, {unsendable}"
    if problem := token_length_problem(token.strip()):
        return f"{name}: {problem}"
    return ""


def _not_ascii(token: str) -> int:
    """The position of the token's first character gRPC metadata cannot carry; 0 for none.

    The position only: a message must not show any of the secret.
    """
    return next((n for n, c in enumerate(token.strip(), 1) if not " " <= c <= "~"), 0)


# The settings of the link to a remote supervisor (supervisor_channel.py loads the files).
SUPERVISOR_LINK: Final = (
    "supervisor_tls_ca",
    "supervisor_tls_cert",
    "supervisor_tls_key",
    "supervisor_token",
)


def _check_supervisor_link(settings: Settings) -> Iterator[str]:
    given = [name for name in SUPERVISOR_LINK if getattr(settings, name)]
    if given and not settings.supervisor:
        yield (
            f"{given[0]}: only for a remote supervisor (set supervisor); "
            "the embedded one is reached over a private socket"
        )
        return
    if bool(settings.supervisor_tls_cert) != bool(settings.supervisor_tls_key):
        yield (
            "supervisor_tls_cert and supervisor_tls_key: set both (a client certificate, "
            "for mutual TLS) or neither"
        )
    elif settings.supervisor_tls_cert and not settings.supervisor_tls_ca:
        yield (
            "supervisor_tls_cert: a client certificate is sent over TLS only: "
            "set supervisor_tls_ca too"
        )
    if problem := _token_problem(
        "supervisor_token", settings.supervisor_token, "which gRPC metadata cannot carry"
    ):
        yield problem


def _check_store(settings: Settings) -> Iterator[str]:
    if settings.store and not settings.store.startswith(("postgresql://", "postgres://")):
        yield "store: expected a postgresql://user@host/db URL, or empty for SQLite in data_dir"
    elif settings.store and (problem := _store_url_problem(settings.store)):
        yield problem
    if settings.store_lease_seconds < 1:
        yield "store_lease_seconds: must be at least 1"
    elif settings.store_lease_seconds > MAX_TIMEOUT_S:
        # A dead replica's work waits this long for another: beyond an hour, never in practice.
        yield (
            f"store_lease_seconds: must be at most {MAX_TIMEOUT_S:g} (an hour), "
            f"got {settings.store_lease_seconds:g}"
        )


def _check_universal_path(settings: Settings) -> Iterator[str]:
    try:
        settings.universal_callback_policies  # noqa: B018 - raises for a malformed entry
    except ConfigError as err:
        yield str(err)


_CHECKS: Final[tuple[Check, ...]] = (
    _check_endpoints,
    _check_limits,
    _check_supervisor,
    _check_runs,
    _check_connections,
    _check_outputs,
    _check_smtp_timeout,
    _check_choices,
    _check_log_level,
    _check_history,
    _check_journal,
    _check_event_ids,
    _check_tls,
    _check_auth_token,
    _check_supervisor_link,
    _check_store,
    _check_universal_path,
)


def validate(settings: Settings) -> Settings:
    """Reject settings that cannot work, naming every bad setting (a line each); else return them."""
    problems = meaning_problems(settings, frozenset())
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


def meaning_problems(settings: Settings, refused: frozenset[str]) -> list[str]:
    """Every check's lines, but those naming a setting in ``refused`` (its value was not taken)."""
    problems = [problem for check in _CHECKS for problem in check(settings)]
    if not refused:
        return problems
    # A name as a whole: "mail" in "mail.directory", not "max_queue" in "max_queue_x".
    named = re.compile(
        r"(?<![\w.])(" + "|".join(re.escape(name) for name in sorted(refused)) + r")(?!\w)"
    )
    return [problem for problem in problems if not named.search(problem)]
