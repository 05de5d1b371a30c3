"""Universal callbacks: ``callbacks.conf`` in each universal-callback directory.

Format (qube-callbacks.md §4): one ``filename = trigger`` per line, ``#`` starts a
comment line, blank lines are ignored. The file named sits in the same directory and
its extension picks the language: ``.py`` python, ``.pl`` perl, ``.qcb`` qube (the
file holds the code strings); a byte order mark at the start of any of them is dropped.
A directory without a ``callbacks.conf`` contributes nothing. Each file's code is checked
at load by ``check_code`` (Python is compiled, qube code strings are looked up), so a
syntax error is reported when the file is installed, not when it first fires; an empty
``.py`` or ``.pl`` file is refused (a save caught half-way). Every problem
is reported as ``file:line: message``; a load with any problem is refused as a whole,
so a reload keeps the last good set. A line the loader cannot take, however it fails,
is such a problem: never an exception out of the load (start-up and a reload would go
down with it).

Every file is read only if it really is a regular file in its directory that only root or
the executor's user may change, and as one saved state (universal_files.py), callbacks.conf
too: whoever may write a universal directory must not get any file the
executor can read quoted back, line by line, in the errors; and a directory is known by
its real path, so one named twice (through a link or "..") is an error, not a second copy
of each of its callbacks.

Our extension: options in square brackets after the file name, ``filename [level,
policy=admin, shadow] = trigger``, separated by commas or spaces:

- the trigger mode, ``level`` or ``edge`` (the default): a level callback latches, when
  a job registers, the events of its trigger that have already happened;
- ``policy=NAME``: the sandbox policy its runs get (executor/policies.py), instead of
  the one its directory names in ``universal_callback_path`` or else ``universal``;
- ``shadow``: it fires and runs for real, but its qb actions are recorded and not
  applied and its mail is rendered, not sent (host_api.py); its runs are flagged.

Each may be given once: a repeated option, or two that contradict each other (two
modes, two policies), is an error of the line, not the last one taken.

Brackets cannot start a Qube file name's extension, so a Qube ``callbacks.conf`` reads
the same here. A directory's policy and the options are read at each load: turning
shadow off, or changing a policy, is a reload.

A line is its directory as configured, its file and its trigger in canonical form
(``trigger_key``, ``find_line``): one file may be named on several lines, each a callback
with its own options (Qube maps a file to several triggers), so a ``[shadow]`` line never
takes another line's options, and a line removed (or whose trigger changed, not merely its
spacing) is gone for the jobs it was attached to even while the file is still named, in
its directory or another (whose line would run it under that one's policy). The same file with the
same trigger twice in one directory is a load error: the lines could not be told apart.

Triggers get the registration checks a trigger alone allows (checks.static_checks) at
load: those are warnings (``file:line: message``), not errors. So is a line in a
language the executor's ``languages``, or its policy's, leaves out: each of its firings
is refused (the dispatcher's check, said ahead of it).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Final

from executor.directory_names import DirectoryNames
from executor.triggers.errors import TriggerSyntaxError
from executor.triggers.nodes import render
from executor.triggers.parser import parse
from executor.triggers.universal_files import Reads, Unreadable, unsafe_directory
from executor.visible_text import escaped

logger = logging.getLogger(__name__)

CONF_NAME: Final = "callbacks.conf"
MODES: Final = ("edge", "level")
_OPTIONS: Final = re.compile(r"(?P<file>[^\[]*?)\s*\[(?P<options>[^\]]*)\]")
LANGUAGE_BY_SUFFIX: Final = {".py": "python", ".pl": "perl", ".qcb": "qube"}
# The policy of a line that names none, nor its directory (policies.UNIVERSAL).
DEFAULT_POLICY: Final = "universal"
# A load that meets its files changing (an editor's save, a git checkout) reads them
# again, pausing longer each time, this many times in all; then it is refused.
READ_TRIES: Final = 5
READ_PAUSE_S: Final = 0.05
# A callbacks.conf that holds no line where the set before had lines is looked at again
# after this pause before it is taken: an editor's save (vim renames the file away and
# writes a new one; others truncate, then write) leaves it missing or empty for a moment.
EMPTY_CONF_PAUSE_S: Final = 0.3
# How much of a line, file name or option an error quotes: enough to find it in the file.
MAX_QUOTED_CHARS: Final = 60
# The most lines of callbacks all directories' callbacks.conf hold together. Each is a
# callback of every job: 32,000 lines made each RegisterJob take 2.4 s and each reload
# seconds of checks (probe 109); a site has tens.
MAX_UNIVERSAL_LINES: Final = 1000

# (language, code, path) -> "line: message" or "message" when the code cannot run, else None.
CodeCheck = Callable[[str, str, Path], str | None]


def no_code_check(language: str, code: str, path: Path) -> str | None:
    """Accept any code (the check for callers that only read callbacks.conf)."""
    return None


@dataclass(frozen=True, slots=True)
class UniversalCallback:
    """One line of a callbacks.conf, with the code it names."""

    source: str  # "<dir>/<file>"
    language: str
    code: str
    triggers: str
    mode: str = "edge"
    # The policy its line or its directory names; "" for the built-in "universal".
    policy: str = ""
    shadow: bool = False
    # "file:line: message" for each check the trigger failed at load.
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """The last load of callbacks.conf: when it was tried, what it found wrong, when a set was taken."""

    # Unix seconds; 0 when it never happened.
    attempted_at: float = 0.0
    loaded_at: float = 0.0
    # 'file:line: message' of the last attempt; empty when it was taken.
    errors: tuple[str, ...] = ()


class UniversalConfigError(Exception):
    """callbacks.conf could not be loaded; ``errors`` holds 'file:line: message' lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class _LineOptions:
    mode: str = "edge"
    policy: str = ""
    shadow: bool = False


def _options(where: str, left: str) -> tuple[str, _LineOptions, str | None]:
    """(file name, options, error) of the left side of a line: ``file [option ...]``."""
    found = _OPTIONS.fullmatch(left)
    if found is None:
        return left, _LineOptions(), None
    options = _LineOptions()
    # What each kind of option was set by: a second one is refused, not the last taken
    # (an admin adding policy=... to a line that had one would otherwise get either).
    given: dict[str, str] = {}
    for option in found.group("options").replace(",", " ").split():
        key, equals, value = option.partition("=")
        if option in MODES:
            kind, options = "mode", replace(options, mode=option)
        elif option == "shadow":
            kind, options = "shadow", replace(options, shadow=True)
        elif key == "policy" and equals and value:
            kind, options = "policy", replace(options, policy=value)
        else:
            expected = f"{' or '.join(MODES)}, policy=NAME or shadow"
            return "", options, f"{where}: unknown option {_quoted(option)}; expected {expected}"
        if kind in given:
            return "", options, f"{where}: {_repeated(given[kind], option, kind)}"
        given[kind] = option
    return found.group("file"), options, None


def _repeated(first: str, second: str, kind: str) -> str:
    """Why a line's options may not set ``kind`` twice (``first``, then ``second``)."""
    if first == second:
        return f"option {second!r} is given twice"
    one = {"mode": "trigger mode (level or edge)", "policy": "policy"}[kind]
    return f"options {first!r} and {second!r} contradict each other: a line has one {one}"


def _disabled(language: str) -> str:
    """The warning for a line in a language the executor does not run (the dispatcher's words)."""
    return (
        f"{language} callbacks are disabled by the executor's 'languages' setting: each "
        "firing of this line is refused (REJECTED)"
    )


def _not_allowed(language: str, policy: str) -> str:
    """The warning for a line in a language its policy leaves out (the dispatcher's words)."""
    return (
        f"{language} callbacks are not allowed by policy {policy!r} (policies.{policy}.languages):"
        " each firing of this line is refused (REJECTED)"
    )


def _language_warning(
    line: UniversalCallback,
    languages: Collection[str] | None,
    policy_languages: Mapping[str, Collection[str]] | None,
) -> list[str]:
    """Why each firing of a line would be refused for its language (as the dispatcher checks)."""
    if languages is not None and line.language not in languages:
        return [_disabled(line.language)]
    policy = line.policy or DEFAULT_POLICY
    allowed = (policy_languages or {}).get(policy)
    if allowed is not None and line.language not in allowed:
        return [_not_allowed(line.language, policy)]
    return []


def load_universal(
    directories: list[Path],
    check_trigger: Callable[[str], str | None],
    *,
    check_code: CodeCheck = no_code_check,
    warn: Callable[[str], list[str]] | None = None,
    policies: Mapping[Path, str] | None = None,
    known_policies: Collection[str] | None = None,
    languages: Collection[str] | None = None,
    policy_languages: Mapping[str, Collection[str]] | None = None,
    had_lines: Collection[Path] = (),
) -> list[UniversalCallback]:
    """Load every directory's callbacks.conf, as the files stand between two saves.

    A load whose files changed while it read them (``Reads.changed``) reads again, up
    to READ_TRIES times, and is refused when they never hold still; one with problems
    is read once more after READ_PAUSE_S, and refused when they are still there. A directory of
    ``had_lines`` whose callbacks.conf is missing or holds no line is looked at again
    after EMPTY_CONF_PAUSE_S before that is taken: an editor's save window, not "nothing".

    Args:
        directories: Where the callbacks.conf files are.
        policies: The policy each directory names (``universal_callback_path``).
        known_policies: The configured policy names; a line or directory naming another
            is an error (a directory's names ``universal_callback_path``, not a line).
        check_trigger: An error for a trigger that cannot be used, or None.
        check_code: An error for a file's code that cannot run, or None.
        warn: The warnings for a usable trigger (kept on the callback, not errors).
        languages: The languages the executor runs (its ``languages`` setting); a line in
            another loads, with a warning: each of its firings is refused.
        policy_languages: Policy name -> the languages it allows (``policies.NAME.languages``);
            a line in another than its policy's (its line's, its directory's, else
            ``universal``) loads with a warning too.
        had_lines: The directories the set loaded before had lines from.
    """
    waited = rechecked = False
    tries = 0
    while True:
        tries += 1
        reads = Reads()
        empty: set[Path] = set()
        loaded = _load_once(
            directories,
            reads,
            empty,
            check_trigger,
            check_code=check_code,
            warn=warn,
            policies=policies,
            known_policies=known_policies,
            languages=languages,
            policy_languages=policy_languages,
        )
        if changed := reads.changed():
            if tries < READ_TRIES:
                time.sleep(READ_PAUSE_S * tries)
                continue
            raise UniversalConfigError(
                [
                    f"{directory}: files changed while being read ({READ_TRIES} tries): not "
                    "loaded; the previous set stays (reload again once the files are saved)"
                    for directory in directories
                    if directory in changed
                ]
            )
        if not waited and empty & set(had_lines):
            waited = True
            tries -= 1
            time.sleep(EMPTY_CONF_PAUSE_S)
            continue
        if not isinstance(loaded, UniversalConfigError):
            return loaded
        if rechecked:
            raise loaded
        # Problems are read once more after a pause: a file caught between its creation
        # and its write (git's, an editor's) is empty, and as empty a moment later.
        rechecked = True
        tries -= 1
        time.sleep(READ_PAUSE_S)


def _load_once(
    directories: list[Path],
    reads: Reads,
    empty: set[Path],
    check_trigger: Callable[[str], str | None],
    *,
    check_code: CodeCheck,
    warn: Callable[[str], list[str]] | None,
    policies: Mapping[Path, str] | None,
    known_policies: Collection[str] | None,
    languages: Collection[str] | None,
    policy_languages: Mapping[str, Collection[str]] | None,
) -> list[UniversalCallback] | UniversalConfigError:
    """One pass over the directories: the set, or its errors.

    ``reads`` notes each file read; ``empty`` gets each directory whose callbacks.conf
    is missing or holds no line.
    """
    callbacks: list[UniversalCallback] = []
    errors: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    # Each directory by its real path: one reached by two names (a symbolic link, "..")
    # would have every callback of it fire twice. Checked at each load, as a link may
    # have been changed since start-up.
    names = DirectoryNames()
    total = 0  # lines of callbacks in the directories read so far
    for directory in directories:
        if refused := _directory_refused(directory, names, policies, known_policies):
            errors.append(refused)
            continue
        conf = directory / CONF_NAME
        text = _conf_text(directory, reads)
        if isinstance(text, _Refused):
            errors.append(f"{conf}: {text.why}")
            continue
        lines = sum(1 for raw in text.splitlines() if _is_line(raw))
        if not lines:
            empty.add(directory)
        if (total := total + lines) > MAX_UNIVERSAL_LINES:
            errors.append(
                f"{conf}: {lines} lines of callbacks, {total} with the directories before "
                f"it: at most {MAX_UNIVERSAL_LINES} in all (each is a callback of every job): "
                "not read"
            )
            continue
        for number, raw in enumerate(text.splitlines(), start=1):
            if not _is_line(raw):
                continue
            line, where = raw.strip(), f"{conf}:{number}"
            try:
                loaded = _load_line(directory, where, line, reads, check_trigger, check_code)
            except Exception as err:  # one line's fault, never the whole load's
                # A line that breaks the loader in a way not foreseen is this line's error:
                # an exception out of here would take start-up, or a reload, down with it.
                logger.exception("universal callbacks: %s: loading the line failed", where)
                loaded = f"{where}: internal error while loading: {type(err).__name__}"
            if isinstance(loaded, str):
                errors.append(loaded)
                continue
            if not loaded.policy and policies:
                loaded = replace(loaded, policy=policies.get(directory, ""))
            if known_policies is not None and loaded.policy and loaded.policy not in known_policies:
                known = ", ".join(known_policies)
                errors.append(f"{where}: no policy {loaded.policy!r} (configured: {known})")
                continue
            key = (loaded.source, trigger_key(loaded.triggers))
            if key in seen:
                errors.append(
                    f"{where}: {Path(loaded.source).name} = {loaded.triggers} is also "
                    f"{seen[key]}; one file's lines need different triggers"
                )
                continue
            seen[key] = f"line {number}"
            warnings = (warn or _none)(loaded.triggers)
            warnings += _language_warning(loaded, languages, policy_languages)
            shown = tuple(escaped(f"{where}: {w}") for w in warnings)
            callbacks.append(replace(loaded, warnings=shown))
    if errors:
        # A file name or trigger is the admin's text: its control characters are shown
        # as escapes in `triggers reload`, the log and the dashboard (executor.visible_text).
        return UniversalConfigError([escaped(error) for error in errors])
    return callbacks


def _directory_refused(
    directory: Path,
    names: DirectoryNames,
    policies: Mapping[Path, str] | None,
    known_policies: Collection[str] | None,
) -> str | None:
    """Why a directory's callbacks.conf is not read, or None."""
    if alias := names.alias(directory):
        return (
            f"universal_callback_path: {str(directory)!r} is the directory "
            f"{str(alias.first)!r} names too ({alias.real}); name each directory once"
        )
    named = (policies or {}).get(directory, "")
    if known_policies is not None and named and named not in known_policies:
        # The setting names it, not a line of the file: say so, once for the directory.
        return (
            f"universal_callback_path: '{directory} [policy={named}]': no policy "
            f"{named!r} (configured: {', '.join(known_policies)})"
        )
    return unsafe_directory(directory)


def _is_line(raw: str) -> bool:
    """Whether a line of callbacks.conf names a callback (not blank, not a comment)."""
    line = raw.strip()
    return bool(line) and not line.startswith("#")


@dataclass(frozen=True, slots=True)
class _Refused:
    why: str


def _conf_text(directory: Path, reads: Reads) -> str | _Refused:
    """A directory's callbacks.conf ("" when it has none), or why it was not read."""
    try:
        # As a callback file is read (a link out of the directory would show whoever
        # may write there any file the executor can, quoted line by line in errors).
        return reads.read(directory, directory / CONF_NAME)
    except FileNotFoundError:
        return ""  # no callbacks.conf (or a dangling link): the directory adds nothing
    except Unreadable as err:
        return _Refused(err.why(CONF_NAME, directory))
    except (OSError, UnicodeDecodeError) as err:
        return _Refused(f"cannot read: {getattr(err, 'strerror', None) or err}")


def _load_line(
    directory: Path,
    where: str,
    line: str,
    reads: Reads,
    check_trigger: Callable[[str], str | None],
    check_code: CodeCheck,
) -> UniversalCallback | str:
    """One ``filename [options] = trigger`` line's callback, or its problem."""
    # The options may hold "=" (policy=NAME): the line's own "=" is the first after them.
    close = line.find("]") if "[" in line.partition("=")[0] else -1
    head, sep, triggers = line[close + 1 :].partition("=")
    left, triggers = (line[: close + 1] + head).strip(), triggers.strip()
    filename, options, problem = _options(where, left)
    if problem is not None:
        return problem
    if not sep or not filename or not triggers:
        return f"{where}: expected 'filename [options] = trigger', got {_quoted(line)}"
    language = LANGUAGE_BY_SUFFIX.get(Path(filename).suffix)
    if language is None:
        valid = ", ".join(LANGUAGE_BY_SUFFIX)
        return f"{where}: {_quoted(filename)} has no known extension ({valid})"
    if _CONTROL.search(filename):
        # A NUL cannot be in a path at all (os.open raises), nor would a name with a
        # control character be one anybody meant: file damage, most likely.
        return f"{where}: {_quoted(filename)} holds a control character: not a file name"
    path = directory / filename
    if Path(filename).name != filename:
        return f"{where}: {_quoted(filename)} must be a file in {directory}"
    try:
        code = reads.read(directory, path)
    except Unreadable as err:
        return f"{where}: {err.why(_cut(filename), directory)}"
    except (OSError, UnicodeDecodeError) as err:
        return f"{where}: cannot read {_cut(filename)}: {getattr(err, 'strerror', None) or err}"
    if language != "qube" and not code.strip():
        # Never a callback anyone meant: a save caught half-way, most likely; it would
        # run as a no-op for every job registered meanwhile. (An empty .qcb is refused
        # by check_code: it names no code string.)
        return f"{where}: {_cut(filename)} is empty: no callback (saved half-way?)"
    problem = check_trigger(triggers)
    if problem:
        return f"{where}: {problem}"
    problem = check_code(language, code, path)
    if problem:
        return f"{path}:{problem} (named at {where})"
    return UniversalCallback(
        str(path),
        language,
        code.strip() if language == "qube" else code,
        triggers,
        options.mode,
        options.policy,
        options.shadow,
    )


@functools.lru_cache(maxsize=4096)
def trigger_key(triggers: str) -> str:
    """A trigger as lines are told apart by: its canonical form (``nodes.render``).

    Spacing (``a&&b`` is ``a && b``), the ``and``/``or`` aliases and redundant
    parentheses are how a trigger is written, not which one it is: a reload that only
    re-writes them keeps the line for the jobs it is attached to. Cached, as every
    firing of a universal callback looks its line up (``find_line``); a text that no
    longer parses (stored by an older grammar) is told apart by its words.
    """
    try:
        return render(parse(triggers, stored=True))
    except TriggerSyntaxError:
        return " ".join(triggers.split())


# A line as every replica names it (``line_name``): its directory's name, its file name
# and its trigger in canonical form.
LineName = tuple[str, str, str]


def line_name(source: str, triggers: str) -> LineName:
    """A line as every replica names it: its directory's name, its file's, its trigger (``find_line``)."""
    directory, file = os.path.split(source)
    return os.path.basename(directory), file, trigger_key(triggers)


def found_by_name(source: str, directories: Collection[Path]) -> bool:
    """Whether a registered line's file may be found by its ``line_name``: its directory is not configured.

    A directory configured here is its lines' own: one of them gone from it is gone,
    never taken for a line of another directory (it would run under that one's policy).
    """
    return Path(source).parent not in directories


def find_line(
    loaded: Sequence[UniversalCallback],
    source: str,
    triggers: str,
    directories: Collection[Path],
) -> UniversalCallback | None:
    """The loaded line a registered universal callback came from: same directory, file and trigger.

    By its path; else, when its directory is not one of ``directories`` (those
    configured here), by its ``line_name`` (the directory's name, the file's, the
    trigger), when exactly one loaded line has it: in a fleet each replica may keep the
    same callbacks.conf in a directory of its own (the default ``<data_dir>/callback``),
    and a job registered at one replica fires at another; a data dir may have moved
    since. Never a line of a directory of another name: a directory dropped from
    ``universal_callback_path`` does not hand its lines to another. None when the line
    is gone.
    """
    key = trigger_key(triggers)
    name = line_name(source, triggers) if found_by_name(source, directories) else None
    named = []
    for line in loaded:
        if trigger_key(line.triggers) != key:
            continue
        if line.source == source:
            return line
        if name is not None and line_name(line.source, line.triggers) == name:
            named.append(line)
    return named[0] if len(named) == 1 else None


def lines_not_attached(
    loaded: Sequence[UniversalCallback],
    attached: Iterable[tuple[str, str]],
    directories: Collection[Path],
) -> list[UniversalCallback]:
    """The loaded lines none of a job's universal callbacks (``attached``: source, trigger) is.

    Each callback's line as ``find_line`` finds it, asked among the loaded lines of its
    file name and canonical trigger only (``find_line`` takes no other): a job holds up
    to 1,000 lines, each asked of up to 1,000 loaded ones.
    """
    alike: dict[tuple[str, str], list[UniversalCallback]] = {}
    for line in loaded:
        alike.setdefault(_file_and_trigger(line.source, line.triggers), []).append(line)
    held: set[int] = set()
    for source, triggers in attached:
        candidates = alike.get(_file_and_trigger(source, triggers), [])
        if (found := find_line(candidates, source, triggers, directories)) is not None:
            held.add(id(found))
    return [line for line in loaded if id(line) not in held]


def _file_and_trigger(source: str, triggers: str) -> tuple[str, str]:
    return os.path.basename(source), trigger_key(triggers)


_CONTROL: Final = re.compile("[\x00-\x1f\x7f]")


def _quoted(text: str) -> str:
    """``text`` quoted in an error, cut short: errors are shown widely, a file's lines are not."""
    if len(text) <= MAX_QUOTED_CHARS:
        return repr(text)
    return f"{text[:MAX_QUOTED_CHARS]!r}... ({len(text)} characters)"


def _cut(name: str) -> str:
    """A file name as an error names it: unquoted, cut short as ``_quoted`` cuts."""
    if len(name) <= MAX_QUOTED_CHARS:
        return name
    return f"{name[:MAX_QUOTED_CHARS]}... ({len(name)} characters)"


def _none(triggers: str) -> list[str]:
    return []


# -- the last good set, kept across restarts ---------------------------------------------

LAST_GOOD_NAME: Final = "universal-last-good.json"


def save_last_good(path: Path, callbacks: list[UniversalCallback], loaded_at: float) -> None:
    """Keep the set just loaded, so a start-up that meets a broken callbacks.conf keeps it.

    Written whole or not at all (a new file renamed over the old); a write that fails
    (a full disk, a directory at ``path``) leaves no ``.partial`` file behind.
    """
    data = {"loaded_at": loaded_at, "callbacks": [asdict(callback) for callback in callbacks]}
    partial = path.with_name(path.name + ".partial")
    try:
        # 0600, as every file of the executor's in the data dir, whatever the dir's mode.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(json.dumps(data, separators=(",", ":")))
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def load_last_good(path: Path) -> tuple[list[UniversalCallback], float] | None:
    """The set ``save_last_good`` kept and when it was loaded; None when there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        callbacks = [
            UniversalCallback(**{**fields, "warnings": tuple(fields.get("warnings", ()))})
            for fields in data["callbacks"]
        ]
        return callbacks, float(data["loaded_at"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:  # damaged: as if none
        raise UniversalConfigError([f"{path}: cannot read the last good set: {err}"]) from err
