"""Universal callbacks: ``callbacks.conf`` in each universal-callback directory.

Format (qube-callbacks.md §4): one ``filename = trigger`` per line, ``#`` starts a
comment line, blank lines are ignored. The file named sits in the same directory and
its extension picks the language: ``.py`` python, ``.pl`` perl, ``.qcb`` qube (the
file holds the code string). A directory without a ``callbacks.conf`` contributes
nothing. Each file's code is checked at load by ``check_code`` (Python is compiled, qube
code strings are looked up), so a syntax error is reported when the file is installed,
not when it first fires. Every problem is reported as ``file:line: message``; a load
with any problem is refused as a whole, so a reload keeps the last good set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CONF_NAME: Final = "callbacks.conf"
LANGUAGE_BY_SUFFIX: Final = {".py": "python", ".pl": "perl", ".qcb": "qube"}
MAX_FILE_BYTES: Final = 1 << 20

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


class UniversalConfigError(Exception):
    """callbacks.conf could not be loaded; ``errors`` holds 'file:line: message' lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def load_universal(
    directories: list[Path],
    check_trigger: Callable[[str], str | None],
    check_code: CodeCheck = no_code_check,
) -> list[UniversalCallback]:
    """Load every directory's callbacks.conf; the checks return an error or None."""
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
            filename, sep, triggers = (part.strip() for part in line.partition("="))
            if not sep or not filename or not triggers:
                errors.append(f"{where}: expected 'filename = trigger', got {raw.strip()!r}")
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
            problem = check_code(language, code, path)
            if problem:
                errors.append(f"{path}:{problem} (named at {where})")
                continue
            callbacks.append(
                UniversalCallback(
                    str(path), language, code.strip() if language == "qube" else code, triggers
                )
            )
    if errors:
        raise UniversalConfigError(errors)
    return callbacks
