"""Settings: every default in one frozen dataclass, read from TOML, environment and flags.

Precedence, lowest first: the defaults below, a TOML file (``--config``), ``CBEXEC_*``
environment variables (named after the fields, e.g. ``CBEXEC_MAX_CONCURRENT``,
``CBEXEC_DEFAULT_LIMITS__WALL_SECONDS``), then command-line flags. ``layered`` reads them
all and raises one ``ConfigError`` naming every bad setting, a line each: values of the
wrong type first, then the checks of what the others mean (``validate``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from executor.bounds import MAX_REQUEST_BYTES
from executor.directory_names import DirectoryNames
from executor.errors import ConfigError
from executor.model import Language, Limits
from executor.runtimes.mail import MailSettings
from executor.sandbox.limits import setting_problem as limit_problem
from supervisor_client.credentials import token_length_problem
from supervisor_client.targets import check_address

MIB: Final = 1 << 20
GIB: Final = 1 << 30
ENV_PREFIX: Final = "CBEXEC_"
# logging's level names, any case (logs.configure upper-cases them).
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
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

# Qube's supervisor_language_flags bits (qube-callbacks.md §6) for the languages we run.
LANGUAGE_BITS: Final = {
    Language.QUBE: 1,
    Language.PERL: 2,
    Language.PYTHON: 4,
    Language.MAIL: 16,
}
# Qube's other supervisor_language_flags bits: features of Qube's supervisor, not languages
# a callback can be written in here. Named when refused, for a value copied from qb.conf.
QUBE_OTHER_BITS: Final = {8: "post", 32: "dependency", 64: "auto_wrangling"}


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cbexec"


def default_max_concurrent() -> int:
    """Two children per CPU, at least two: callbacks mostly wait on I/O and the supervisor."""
    return max(2, 2 * (os.cpu_count() or 1))


def parse_languages(value: object) -> frozenset[Language]:
    """Parse ``supervisor_language_flags`` style: names (comma list) or the numeric sum.

    A bit that is no language here is refused, naming it, as an unknown name is: dropped
    in silence, it would leave a language off that its writer meant on, or the reverse.
    A TOML value of another type (``1.5``, a table, a list holding a number) is refused too.
    """
    expected = "expected names (a comma list, or a list of names) or Qube's numeric flags"
    if isinstance(value, bool) or not isinstance(value, str | int | list):
        # TOML's true is no sum of flags (bool is an int), nor is 1.5 or a table.
        raise ConfigError(f"languages: {expected}, got {as_written(value)}")
    if isinstance(value, int):
        return _flag_languages(value)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return _flag_languages(int(value))
    if isinstance(value, list) and (odd := [v for v in value if not isinstance(v, str)]):
        raise ConfigError(
            f"languages: expected language names in the list, got {as_written(odd[0])}"
        )
    names = value if isinstance(value, list) else value.split(",")
    languages = set()
    for name in (n.strip().lower() for n in names):
        if not name:
            continue
        try:
            languages.add(Language(name))
        except ValueError:
            valid = ", ".join(lang.value for lang in Language)
            raise ConfigError(f"languages: unknown language {name!r}; expected {valid}") from None
    return frozenset(languages)


def as_written(value: object) -> str:
    """A raw setting's value in a refusal, as TOML spells it where Python's differs (true)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _flag_languages(flags: int) -> frozenset[Language]:
    """The languages of a numeric ``supervisor_language_flags``; ConfigError for other bits."""
    known = ", ".join(f"{lang.value} {bit}" for lang, bit in LANGUAGE_BITS.items())
    if not 0 <= flags <= MAX_WHOLE:
        raise ConfigError(f"languages: {flags} is not a sum of the flags {known}")
    bits = (1 << n for n in range(flags.bit_length()))
    unknown = [bit for bit in bits if flags & bit and bit not in LANGUAGE_BITS.values()]
    if unknown:
        named = ", ".join(
            f"{bit} (Qube's {QUBE_OTHER_BITS[bit]})" if bit in QUBE_OTHER_BITS else str(bit)
            for bit in unknown
        )
        raise ConfigError(
            f"languages: {flags} holds flags that are no language here: {named};"
            f" the flags are {known}"
        )
    return frozenset(lang for lang, bit in LANGUAGE_BITS.items() if flags & bit)


@dataclass(frozen=True, slots=True)
class Settings:
    """The executor's configuration."""

    # host:port to serve on; loopback unless a site opens it on purpose.
    bind: str = "127.0.0.1:50051"
    # SQLite databases, callback logs and the embedded supervisor live here.
    data_dir: Path = field(default_factory=_default_data_dir)
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


_LIMIT_FIELDS = {f.name: f.type for f in dataclasses.fields(Limits)}


# The words a boolean setting may be given as text (an environment variable).
_TRUE_WORDS: Final = ("1", "true", "yes", "on")
_FALSE_WORDS: Final = ("0", "false", "no", "off")


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


def _coerce(name: str, raw: Any, current: Any, *, text: bool, typed: bool = False) -> Any:
    """Turn a TOML/env value into the type of the current value (``text``: from the environment).

    ``typed``: the value carries the type it was written with (TOML), which must be the
    setting's: a string is no number, nor 2e6 or 5.0 a whole number, nor 5 a string.

    Raises:
        ConfigError: the value has the wrong type, naming ``name``; for a table, a line
            per bad key, and ``refused_keys`` on the error names them.
    """
    try:
        if typed:
            check_written_type(raw, current, name)
        if isinstance(current, bool):
            if isinstance(raw, bool):
                return raw
            # Only text spells a boolean as a word: a TOML "yes" or 1 is a typing slip
            # (once read as false), not a choice.
            lowered = str(raw).strip().lower() if text else None
            if lowered not in (*_TRUE_WORDS, *_FALSE_WORDS):
                words = " (or 1/0, yes/no, on/off)" if text else ""
                raise ValueError(f"expected true or false{words}, got {as_written(raw)}")
            return lowered in _TRUE_WORDS
        if isinstance(current, Path) or (current is None and name.endswith("_dir")):
            return Path(str(raw)).expanduser()
        if isinstance(current, frozenset):
            return parse_languages(raw)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            return _coerce_table(name, raw, current, text=text, typed=typed)
        if isinstance(current, float):
            return finite_number(raw)
        if isinstance(current, int):
            return whole_number(raw)
        return str(raw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: {err}") from err


def check_written_type(raw: Any, current: Any, name: str) -> None:
    """Refuse a TOML value whose type is not the setting's (TypeError saying which it takes)."""
    if isinstance(current, bool | frozenset) or (
        dataclasses.is_dataclass(current) and not isinstance(current, type)
    ):
        return  # their own checks name what they take; a table's keys are checked in turn
    if isinstance(current, float):
        expected, fits = "a number", isinstance(raw, int | float)
    elif isinstance(current, int):
        expected, fits = "a whole number", isinstance(raw, int)
    elif isinstance(current, str | Path) or name.endswith("_dir"):
        expected, fits = "a string", isinstance(raw, str)
    else:
        return
    if isinstance(raw, bool) or not fits:
        raise TypeError(f"expected {expected}, got {as_written(raw)}")


class TableError(ConfigError):
    """Some keys of a settings table are refused: a line each, which keys, and the rest applied.

    ``partial`` is the table with its good values laid over it, so the checks of what
    they mean still see them (a bad ``mail.delivery`` leaves ``mail.smtp_timeout_seconds``
    checked).
    """

    def __init__(self, problems: list[str], keys: list[str], partial: Any) -> None:
        super().__init__("\n".join(problems))
        self.keys = keys
        self.partial = partial


def _coerce_table(name: str, raw: Any, current: Any, *, text: bool, typed: bool) -> Any:
    """A nested table ([default_limits], [mail]): each key coerced like the top level."""
    if not isinstance(raw, Mapping):
        raise TypeError("expected a table")
    # By the declared type: a float field's default may be a whole number (30).
    declared = {f.name: f.type for f in dataclasses.fields(current)}
    changes = {}
    problems, keys = [], []  # each key's, as for the top level
    for key, value in raw.items():
        if key not in declared:
            noun = "limit" if isinstance(current, Limits) else "setting"
            problems.append(f"{name}: unknown {noun} {key!r}")
            continue
        like = float(getattr(current, key)) if declared[key] == "float" else getattr(current, key)
        try:
            changes[key] = _coerce(f"{name}.{key}", value, like, text=text, typed=typed)
        except ConfigError as err:
            problems.append(str(err))
            keys.append(key)
            continue
        # Checked a key at a time, not by the table's constructor, which names only
        # its first bad value: each fix would reveal the next.
        if isinstance(current, MailSettings) and (
            problem := MailSettings.value_problem(key, changes[key])
        ):
            problems.append(f"{name}.{key}: {problem}")
            keys.append(key)
            del changes[key]
    if problems:
        raise TableError(problems, keys, dataclasses.replace(current, **changes))
    return dataclasses.replace(current, **changes)


def finite_number(raw: Any) -> float:
    """A float setting's value; NaN and infinities are refused, whatever the setting.

    No setting means anything by them, and some broke the service (a NaN wall limit
    failed every run; an infinite supervisor timeout every supervisor call). A boolean
    is refused too: TOML's true is no number of seconds.
    """
    try:
        if isinstance(raw, bool):
            raise TypeError
        value = float(raw)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a number, got {as_written(raw)}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


# The widest whole number a setting may be: SQLite's, and the kernel's for rlimits.
MAX_WHOLE: Final = (1 << 63) - 1


def whole_number(raw: Any) -> int:
    """An integer setting's value; 1.5 (never truncated to 1) and true are refused (ValueError)."""
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise ValueError(f"expected a whole number, got {as_written(raw)}")
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected a whole number, got {as_written(raw)}") from None
    if not -MAX_WHOLE - 1 <= value <= MAX_WHOLE:
        raise ValueError(f"expected a whole number of 64 bits (at most {MAX_WHOLE}), got {raw}")
    return value


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
            changes[key] = _default_data_dir()
        else:
            try:
                changes[key] = _coerce(
                    f"{origin}: {key}", raw, getattr(settings, key), text=text, typed=typed
                )
            except TableError as err:
                problems.append(str(err))
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
    for values, origin, text, typed in sources:
        laid = overlay(settings, values, origin, text=text, typed=typed)
        settings = laid.settings
        problems += laid.problems
        # A setting a later source gives again is checked again if that value is taken.
        given = {
            f"{key}.{sub}" for key, raw in values.items() if isinstance(raw, Mapping) for sub in raw
        }
        refused = (refused - set(values) - given) | laid.refused
    if config_file is not None:
        settings = settings.replace(config_file=str(config_file))
    problems += _meaning_problems(settings, frozenset(refused))
    if problems and beside is not None:
        problems += beside(settings, frozenset(refused))
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


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
    return reason.replace(url, _shown("store", url))


# gRPC targets other than host:port that the supervisor address may be (open_channel).
GRPC_TARGET_SCHEMES: Final = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")


def _not_a_directory(name: str, path: Path | None) -> str | None:
    """A directory start-up makes (or uses) must not already be something else."""
    if path is not None and path.exists() and not path.is_dir():
        return f"{name}: {path} exists and is not a directory"
    return None


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


def _shown(name: str, value: Any) -> str:
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
                lines.append(f"{name} = {_shown(name, getattr(value, sub.name))}")
        else:
            lines.append(f"{f.name} = {_shown(f.name, value)}")
    return lines


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
            yield f"default_limits.{key}: {default} exceeds max_limits.{key} {cap}"


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
    token = settings.auth_token
    if token and not token.strip():
        yield "auth_token: only whitespace; leave it empty for no token"
        return
    if bad := _not_ascii(token):
        yield (
            f"auth_token: character {bad} is not printable ASCII, which no client can send "
            "(gRPC metadata carries nothing else)"
        )
    elif problem := token_length_problem(token.strip()):
        yield f"auth_token: {problem}"


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
    token = settings.supervisor_token
    if token and not token.strip():
        yield "supervisor_token: only whitespace; leave it empty for no token"
    elif bad := _not_ascii(token):
        yield (
            f"supervisor_token: character {bad} is not printable ASCII, which gRPC "
            "metadata cannot carry"
        )
    elif problem := token_length_problem(token.strip()):
        yield f"supervisor_token: {problem}"


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
    problems = _meaning_problems(settings, frozenset())
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


def _meaning_problems(settings: Settings, refused: frozenset[str]) -> list[str]:
    """Every check's lines, but those naming a setting in ``refused`` (its value was not taken)."""
    problems = [problem for check in _CHECKS for problem in check(settings)]
    if not refused:
        return problems
    # A name as a whole: "mail" in "mail.directory", not "max_queue" in "max_queue_x".
    named = re.compile(
        r"(?<![\w.])(" + "|".join(re.escape(name) for name in sorted(refused)) + r")(?!\w)"
    )
    return [problem for problem in problems if not named.search(problem)]
