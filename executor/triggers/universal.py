"""Universal callbacks: ``callbacks.conf`` in each universal-callback directory.

Format (qube-callbacks.md §4): one ``filename = trigger`` per line, ``#`` starts a
comment line, blank lines are ignored. The file named sits in the same directory and
its extension picks the language: ``.py`` python, ``.pl`` perl, ``.qcb`` qube (the
file holds the code string). A directory without a ``callbacks.conf`` contributes
nothing. Every problem is reported as ``file:line: message``; a load with any problem
is refused as a whole, so a reload keeps the last good set.

Our extension: options in square brackets after the file name, ``filename [level] =
trigger``. The one option today is the trigger mode, ``level`` or ``edge`` (the
default): a level callback latches, when a job registers, the events of its trigger
that have already happened. Brackets cannot start a Qube file name's extension, so
a Qube ``callbacks.conf`` reads the same here.

Triggers get the registration checks a trigger alone allows (checks.static_checks) at
load: those are warnings (``file:line: message``), not errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CONF_NAME: Final = "callbacks.conf"
MODES: Final = ("edge", "level")
_OPTIONS: Final = re.compile(r"(?P<file>[^\[]*?)\s*\[(?P<options>[^\]]*)\]")
LANGUAGE_BY_SUFFIX: Final = {".py": "python", ".pl": "perl", ".qcb": "qube"}
MAX_FILE_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class UniversalCallback:
    """One line of a callbacks.conf, with the code it names."""

    source: str  # "<dir>/<file>"
    language: str
    code: str
    triggers: str
    mode: str = "edge"
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


def _options(where: str, left: str) -> tuple[str, str, str | None]:
    """(file name, mode, error) of the left side of a line: ``file [option ...]``."""
    found = _OPTIONS.fullmatch(left)
    if found is None:
        return left, "edge", None
    mode = "edge"
    for option in found.group("options").replace(",", " ").split():
        if option not in MODES:
            return "", "", f"{where}: unknown option {option!r}; expected {' or '.join(MODES)}"
        mode = option
    return found.group("file"), mode, None


def load_universal(
    directories: list[Path],
    check_trigger: Callable[[str], str | None],
    warn: Callable[[str], list[str]] | None = None,
) -> list[UniversalCallback]:
    """Load every directory's callbacks.conf.

    Args:
        directories: Where the callbacks.conf files are.
        check_trigger: An error for a trigger that cannot be used, or None.
        warn: The warnings for a usable trigger (kept on the callback, not errors).
    """
    callbacks: list[UniversalCallback] = []
    errors: list[str] = []
    for directory in directories:
        conf = directory / CONF_NAME
        if not conf.is_file():
            continue
        try:
            lines = conf.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            errors.append(f"{conf}: cannot read: {err}")
            continue
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{conf}:{number}"
            left, sep, triggers = (part.strip() for part in line.partition("="))
            filename, mode, problem = _options(where, left)
            if problem is not None:
                errors.append(problem)
                continue
            if not sep or not filename or not triggers:
                errors.append(
                    f"{where}: expected 'filename [options] = trigger', got {raw.strip()!r}"
                )
                continue
            language = LANGUAGE_BY_SUFFIX.get(Path(filename).suffix)
            if language is None:
                valid = ", ".join(LANGUAGE_BY_SUFFIX)
                errors.append(f"{where}: {filename!r} has no known extension ({valid})")
                continue
            path = directory / filename
            if Path(filename).name != filename:
                errors.append(f"{where}: {filename!r} must be a file in {directory}")
                continue
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    errors.append(f"{where}: {filename} is larger than {MAX_FILE_BYTES} bytes")
                    continue
                code = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                errors.append(f"{where}: cannot read {filename}: {getattr(err, 'strerror', err)}")
                continue
            problem = check_trigger(triggers)
            if problem:
                errors.append(f"{where}: {problem}")
                continue
            callbacks.append(
                UniversalCallback(
                    str(path),
                    language,
                    code.strip() if language == "qube" else code,
                    triggers,
                    mode,
                    tuple(f"{where}: {warning}" for warning in (warn or _none)(triggers)),
                )
            )
    if errors:
        raise UniversalConfigError(errors)
    return callbacks


def _none(triggers: str) -> list[str]:
    return []
