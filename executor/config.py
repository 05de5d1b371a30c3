"""Settings: every default in one frozen dataclass, and the effective values as lines.

Reading them from a TOML file, the environment and flags is ``config_sources``'s;
turning a raw value into its setting's type ``config_values``'s; the checks of what
the values mean ``config_checks``'s.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from executor.directory_names import DirectoryNames
from executor.errors import ConfigError
from executor.model import Language, Limits
from executor.runtimes.mail import MailSettings

MIB: Final = 1 << 20
GIB: Final = 1 << 30


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cbexec"


def default_max_concurrent() -> int:
    """Two children per CPU, at least two: callbacks mostly wait on I/O and the supervisor."""
    return max(2, 2 * (os.cpu_count() or 1))


@dataclass(frozen=True, slots=True)
class Settings:
    """The executor's configuration."""

    # host:port to serve on; loopback unless a site opens it on purpose.
    bind: str = "127.0.0.1:50051"
    # SQLite databases, callback logs and the embedded supervisor live here.
    data_dir: Path = field(default_factory=default_data_dir)
    # Supervisor service address; empty runs the embedded reference supervisor.
    supervisor: str = ""
    # Where the trigger store, the outbox and the run history live: "" = SQLite files in
    # data_dir (one executor); a postgresql:// URL = that database, shared by a fleet of
    # executors (its schema made by `cbexec store migrate`).
    store: str = ""
    # In a fleet, how long a replica's claim on a firing or a result lasts without renewal:
    # a replica that dies has its work taken over this long after its last renewal.
    store_lease_seconds: float = 15.0
    # Limits a request gets for the fields it leaves at zero.
    default_limits: Limits = Limits(
        cpu_seconds=10,
        wall_seconds=30,
        memory_bytes=512 * MIB,
        output_bytes=1 * MIB,
        max_processes=64,
        disk_bytes=256 * MIB,
    )
    # The most a request may ask for; more is INVALID_ARGUMENT.
    max_limits: Limits = Limits(
        cpu_seconds=600,
        wall_seconds=3600,
        memory_bytes=16 * GIB,
        # Each byte of output is held several times over while a result is answered,
        # recorded and reported (see the README's Limits): keep this modest.
        output_bytes=16 * MIB,
        max_processes=1024,
        disk_bytes=16 * GIB,
    )
    # Children running at once; further requests queue. 0 (in a file, the environment or a
    # flag) means this default, which depends on the host: 2 x CPUs, at least 2.
    max_concurrent: int = field(default_factory=default_max_concurrent)
    # Requests waiting for a slot; beyond it RESOURCE_EXHAUSTED.
    max_queue: int = 256
    # What the requests waiting for a slot may total, in bytes as received (each up to
    # 16 MiB); beyond it RESOURCE_EXHAUSTED, as past max_queue. A waiting request is held
    # about twice over (its bytes, the job dict made of them): max_queue alone let 256
    # requests of 16 MiB hold ~8 GiB (~15 GB before the parsed copy was let go of).
    max_queue_bytes: int = 256 * MIB
    # What the answers made and not yet read by their clients may total, by their size as
    # sent (gRPC holds each about three times over until it is read): past it, or past a
    # connection's quarter of it, Execute and GetRun are refused RESOURCE_EXHAUSTED
    # (api/unread_answers.py). 80 unread 32 MiB answers had the executor killed for memory.
    unread_answers_max_bytes: int = 256 * MIB
    # The gRPC port's connections (api/connections.py): at most this many at once (a further
    # one is closed as it comes), each with at most max_streams calls open at once (a client
    # queues most of the rest until one ends). gRPC counts a connection from accept, before
    # any handshake: 256 (the default before) silent TCP connections shut everyone out.
    max_connections: int = 1024
    max_streams: int = 1000
    # A connection that has not finished its TLS handshake and sent HTTP/2's preface and
    # SETTINGS within this long is closed (gRPC's own default: 120 s, and 60 s in effect
    # for plaintext), so a silent one holds its place this long at most.
    handshake_timeout_seconds: float = 5.0
    # The server pings each connection after this long without a frame from the peer, and
    # closes it when the ping is not answered within keepalive_timeout_seconds: a frozen or
    # vanished client lets go of the answers it was sent but never read.
    keepalive_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    # Enabled languages (Qube's supervisor_language_flags). Unlike Qube, python and perl are
    # on: they run sandboxed here, not inside the supervisor.
    languages: frozenset[Language] = frozenset(Language)
    # How children start: "zygote" (fork of a warm helper process) or "cold" (fork+exec).
    launcher: str = "zygote"
    # The service's event loop: "auto" (uvloop, a dependency, where it imports; else
    # asyncio's), "asyncio", "uvloop" (an error where it does not import).
    event_loop: str = "auto"
    # Start each slot's next child (confined, its runtime loaded) as soon as a run ends, so
    # the next run with the same limits only hands it the code.
    prepare_ahead: bool = True
    # SIGTERM-to-SIGKILL grace at the wall deadline.
    grace_seconds: float = 0.5
    # Run callbacks in their own PID namespace: "auto" (when the host allows), "on", "off".
    pid_namespace: str = "auto"
    # Callback networking: "auto" (a private, empty network namespace where the host allows
    # namespaces, else the host network), "none" (always empty; an error where impossible),
    # "host". With the host network a callback can reach the executor's own port, so
    # turn it on only with auth_token set (callbacks cannot read it).
    network: str = "auto"
    # Run callbacks as a dedicated unprivileged uid per slot, in a private mount namespace
    # that hides the data dir, /tmp and /dev/shm: "auto" (when running as root with
    # namespaces), "on", "off".
    dedicated_uid: str = "auto"
    # Cell n (slot n // 2; python even, perl odd) runs as uid/gid sandbox_uid_base + n.
    sandbox_uid_base: int = 64000
    # Cap processes and memory with per-slot pids and memory cgroups: "auto", "on", "off".
    cgroup: str = "auto"
    # Comma-separated directories holding callbacks.conf (Qube's
    # supervisor_universal_callback_path); empty means <data_dir>/callback.
    universal_callback_path: str = ""
    # Mail for the qube mail-* codes: [mail] table; delivery "file" writes a maildir
    # under <data_dir>/mail unless mail.directory is set.
    mail: MailSettings = MailSettings(directory=Path(""))
    # Seconds a qb call may wait for the supervisor.
    supervisor_timeout_seconds: float = 10.0
    # The largest message the supervisor takes (gRPC's default receive limit is 4 MiB):
    # reports, and batches of them, stay under it; a larger result is reported reduced.
    supervisor_max_message_bytes: int = 4 * MIB
    # The link to a remote supervisor (PEM files): the CA its certificate is checked
    # against (TLS on when set), and a client certificate and key for mutual TLS.
    supervisor_tls_ca: str = ""
    supervisor_tls_cert: str = ""
    supervisor_tls_key: str = ""
    # Sent to a remote supervisor as "authorization: Bearer <token>"; "" = none. Its own,
    # never auth_token: the supervisor is not a caller of ours.
    supervisor_token: str = field(default="", repr=False)
    log_level: str = "INFO"
    # "text" or "json".
    log_format: str = "text"
    # Root of Qube-style callback logs (job/<id//1000*1000>/<id>/<id>.cb); "" = <data_dir>/logs.
    log_dir: str = ""
    # Size at which a .cb file is rotated to .cb.1 (one old generation is kept).
    callback_log_max_bytes: int = 10 * MIB
    # What all the .cb logs may take (the logs written longest ago go first, whole, never
    # the newest); they also go after history_retention_days without being written.
    callback_log_total_max_bytes: int = 1 * GIB
    # Run history (<data_dir>/runs.db) keeps runs younger than this many days...
    history_retention_days: float = 30.0
    # ...and at most this many of them (the oldest go first)...
    history_max_runs: int = 100_000
    # ...taking at most this many bytes (the oldest go first, never the newest): a run
    # keeps its whole output, up to 2 x output_bytes. A run with little output takes
    # ~1.1 KB, so this is ~10 x what 100,000 of them take, and ~30 runs of 2 x 16 MiB.
    history_max_bytes: int = 1 * GIB
    # The results the supervisor has not taken may fill outbox.db this far: past it no run
    # starts (Execute UNAVAILABLE, fired callbacks wait) until it takes them. The dead
    # letters keep to as much besides (the oldest dropped first).
    outbox_max_bytes: int = 1 * GIB
    # What registrations may take triggers.db to (its pages in use): past it RegisterJob
    # is refused RESOURCE_EXHAUSTED until jobs are removed; events are never refused.
    # Room for ~0.9 GB of event ids (event_id_max_count) and ~230 jobs of 14 MB besides.
    triggers_max_bytes: int = 4 * GIB
    # The trigger engine's journal (cbexec triggers why) keeps this many entries per
    # callback (per work item of a {work} callback)...
    trigger_journal_entries: int = 20
    # ...none older than this many days.
    trigger_journal_days: float = 7.0
    # A published event's event_id is remembered this many hours (a repeat of its event
    # within them is ignored, another event under it refused), then forgotten within
    # about a minute: a publisher's resend after an outage of a day or two is still a
    # repeat, and triggers.db does not keep every id for ever.
    event_id_retention_hours: float = 72.0
    # ...and at most this many ids are (the oldest forgotten first, with a WARNING): about
    # 0.9 GB of triggers.db whatever their length (event_ids.SQLITE_BYTES_PER_ID). The
    # farm's work verbs publish an event per frame changed, so age alone let a callback's
    # loop keep ~25 GB of ids an hour (probe 75).
    event_id_max_count: int = 10_000_000
    # PEM files: server certificate chain and key (TLS); a client CA turns on mutual TLS.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Shared token callers must send as "authorization: Bearer <token>"; "" = no token.
    # Printable ASCII; surrounding whitespace (a token file's newline) is not part of it.
    auth_token: str = field(default="", repr=False)
    # Report every finished run to the supervisor (ReportResult) through the durable outbox.
    report_results: bool = True
    # host:port of the HTTP side port (/metrics, /healthz, the read-only dashboard); "" = off.
    # It takes the TLS settings and the token of the gRPC port.
    http_bind: str = ""
    # Serve /metrics and /healthz without the token (for a scraper or load balancer that
    # cannot send one); the dashboard still asks for it.
    http_exempt_metrics: bool = False
    # Without auth_token the side port answers only requests whose Host is localhost, an
    # IP address, http_bind's name or this machine's name (against DNS rebinding): the
    # further names it is reached by, a comma list ("dash.studio.example"); "*" for any.
    http_allowed_hosts: str = ""
    # Refuse to start when callbacks.conf has a problem, instead of starting (and saying
    # so in one line) without universal callbacks.
    strict: bool = False
    # Sandbox policies, [policies.NAME] tables (executor/policies.py; README "Policies"):
    # kept as TOML gave them, resolved and checked at start-up (policies.resolve).
    policies: Mapping[str, Any] = field(default_factory=dict)
    # The TOML file these settings came from (set by --config / CBEXEC_CONFIG, not a key):
    # no policy may bind it into a callback.
    config_file: str = ""

    @property
    def mail_settings(self) -> MailSettings:
        """The mail settings with the maildir defaulted into the data dir, "" templates built in."""
        mail = self.mail
        if str(mail.directory) in ("", "."):
            mail = dataclasses.replace(mail, directory=self.data_dir / "mail")
        # Path("") is ".": the working directory (/ under systemd), not the default an
        # empty path is for every other path setting (probe 120).
        if mail.templates_dir is not None and str(mail.templates_dir) in ("", "."):
            mail = dataclasses.replace(mail, templates_dir=None)
        return mail

    @property
    def http_allowed_host_names(self) -> list[str]:
        """``http_allowed_hosts`` as names: lower case, no final dot, no empty entry."""
        names = (
            name.strip().lower().removesuffix(".") for name in self.http_allowed_hosts.split(",")
        )
        return [name for name in names if name]

    @property
    def callback_log_dir(self) -> Path:
        """``log_dir``, or ``<data_dir>/logs`` when it is empty."""
        return Path(self.log_dir).expanduser() if self.log_dir else self.data_dir / "logs"

    @property
    def universal_callback_dirs(self) -> list[Path]:
        return list(self.universal_callback_policies)

    @property
    def universal_callback_policies(self) -> dict[Path, str]:
        """Each universal-callback directory and the policy it names (``"/d [policy=x]"``), or ""."""
        if not self.universal_callback_path.strip():
            return {self.data_dir / "callback": ""}
        found: dict[Path, str] = {}
        # Each directory by its real path too: a second name of one (a symbolic link,
        # "/a/b/../cb", "//cb") would have each of its callbacks fire twice.
        names = DirectoryNames()
        for entry in (p.strip() for p in self.universal_callback_path.split(",")):
            if not entry:
                continue  # a stray comma ("/a, /b,") names nothing
            directory, _, option = entry.partition("[")
            if not directory.strip():
                raise ConfigError(
                    f"universal_callback_path: {entry!r}: no directory before the options;"
                    " expected '<dir> [policy=NAME]'"
                )
            policy = ""
            if option:
                key, _, value = option.removesuffix("]").partition("=")
                if not option.endswith("]") or key.strip() != "policy" or not value.strip():
                    raise ConfigError(
                        f"universal_callback_path: {entry!r}: expected '<dir> [policy=NAME]'"
                    )
                policy = value.strip()
            path = Path(directory.strip()).expanduser()
            if path in found:
                # Taking the last would give its callbacks whichever policy came last.
                raise ConfigError(
                    f"universal_callback_path: {str(path)!r} is named twice; name each "
                    "directory once, with its [policy=NAME] if any"
                )
            if alias := names.alias(path):
                raise ConfigError(
                    f"universal_callback_path: {str(path)!r} names the same directory as "
                    f"{str(alias.first)!r} ({alias.real}); name each directory once, with "
                    "its [policy=NAME] if any"
                )
            found[path] = policy
        if not found:
            # Commas alone: whoever set it meant some directory, not none (nor the default).
            raise ConfigError(
                f"universal_callback_path: {self.universal_callback_path!r} names no directory;"
                " leave it unset for <data_dir>/callback"
            )
        return found

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# Settings whose values are secrets: shown as set or not, never printed.
SECRETS: Final = frozenset({"auth_token", "supervisor_token", "mail.smtp_password"})
# Settings that may carry a password inside (a database URL): shown without it.
_URLS: Final = frozenset({"store"})


def without_passwords(url: str) -> str:
    """A database URL with every password in it shown as (set).

    The user info's, and a ``password=`` parameter (libpq takes one in the query too).
    """
    url = re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:(set)@", url)
    return re.sub(r"(?i)(\bpassword=)[^&\s]*", r"\1(set)", url)


def shown(name: str, value: Any) -> str:
    if name in SECRETS:
        return '"(set)"' if value else '""'
    if name in _URLS:
        value = without_passwords(str(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, frozenset):
        return "[" + ", ".join(f'"{v}"' for v in sorted(value)) + "]"
    if value is None:
        return "(unset)"
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def describe(settings: Settings) -> list[str]:
    """The effective settings as ``name = value`` lines, in TOML's spelling.

    Tables are ``table.key``; secrets only say whether they are set.
    """
    lines = []
    for f in dataclasses.fields(settings):
        if f.name in ("policies", "config_file"):
            continue  # the policies are listed on their own (cbexec serve --check-config)
        value = getattr(settings, f.name)
        # What start-up uses where a setting's empty value means a default in the data dir.
        if f.name == "mail":
            value = settings.mail_settings
        elif f.name == "log_dir":
            value = str(settings.callback_log_dir)
        elif f.name == "universal_callback_path" and not value.strip():
            value = str(settings.data_dir / "callback")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for sub in dataclasses.fields(value):
                name = f"{f.name}.{sub.name}"
                lines.append(f"{name} = {shown(name, getattr(value, sub.name))}")
        else:
            lines.append(f"{f.name} = {shown(f.name, value)}")
    return lines
