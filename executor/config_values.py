"""A setting's value as TOML or the environment wrote it, turned into the setting's type.

Each refusal says what the setting takes and what it got, as it was written
(``as_written``): TOML's ``true``, never Python's ``True``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from executor.errors import ConfigError
from executor.model import Language, Limits
from executor.runtimes.mail import MailSettings

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


def parse_languages(value: object, name: str = "languages") -> frozenset[Language]:
    """Parse ``supervisor_language_flags`` style: names (comma list) or the numeric sum.

    A bit that is no language here is refused, naming it, as an unknown name is: dropped
    in silence, it would leave a language off that its writer meant on, or the reverse.
    A TOML value of another type (``1.5``, a table, a list holding a number) is refused too.

    Raises:
        ConfigError: naming the setting as ``name`` (``environment: languages``,
            ``policies.job.languages``).
    """
    try:
        return _languages(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name}: {err}") from None


def _languages(value: object) -> frozenset[Language]:
    expected = "expected names (a comma list, or a list of names) or Qube's numeric flags"
    if isinstance(value, bool) or not isinstance(value, str | int | list):
        # TOML's true is no sum of flags (bool is an int), nor is 1.5 or a table.
        raise TypeError(f"{expected}, got {as_written(value)}")
    if isinstance(value, int):
        return _flag_languages(value)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return _flag_languages(int(value))
    if isinstance(value, list) and (odd := [v for v in value if not isinstance(v, str)]):
        raise TypeError(f"expected language names in the list, got {as_written(odd[0])}")
    names = value if isinstance(value, list) else value.split(",")
    languages = set()
    for name in (n.strip().lower() for n in names):
        if not name:
            continue
        try:
            languages.add(Language(name))
        except ValueError:
            valid = ", ".join(lang.value for lang in Language)
            raise ValueError(f"unknown language {name!r}; expected {valid}") from None
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
        raise ValueError(f"{flags} is not a sum of the flags {known}")
    bits = (1 << n for n in range(flags.bit_length()))
    unknown = [bit for bit in bits if flags & bit and bit not in LANGUAGE_BITS.values()]
    if unknown:
        named = ", ".join(
            f"{bit} (Qube's {QUBE_OTHER_BITS[bit]})" if bit in QUBE_OTHER_BITS else str(bit)
            for bit in unknown
        )
        raise ValueError(
            f"{flags} holds flags that are no language here: {named}; the flags are {known}"
        )
    return frozenset(lang for lang, bit in LANGUAGE_BITS.items() if flags & bit)


# The words a boolean setting may be given as text (an environment variable).
_TRUE_WORDS: Final = ("1", "true", "yes", "on")
_FALSE_WORDS: Final = ("0", "false", "no", "off")


def coerce(name: str, raw: Any, current: Any, *, text: bool, typed: bool = False) -> Any:
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
            return parse_languages(raw, name)
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


class MeaningLine(str):
    """A table's problem with what a value means, not with its type.

    Its source is named as the meaning checks name theirs: the environment or a flag,
    never the config file (README: a value the file gave is named by its setting alone).
    """


class TableError(ConfigError):
    """Some keys of a settings table are refused: a line each, which keys, and the rest applied.

    ``partial`` is the table with its good values laid over it, so the checks of what
    they mean still see them (a bad ``mail.delivery`` leaves ``mail.smtp_timeout_seconds``
    checked).
    """

    def __init__(self, problems: list[str], keys: list[str], partial: Any) -> None:
        super().__init__("\n".join(problems))
        self.lines = problems
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
            changes[key] = coerce(f"{name}.{key}", value, like, text=text, typed=typed)
        except ConfigError as err:
            problems.append(str(err))
            keys.append(key)
            continue
        # Checked a key at a time, not by the table's constructor, which names only
        # its first bad value: each fix would reveal the next.
        if isinstance(current, MailSettings) and (
            problem := MailSettings.value_problem(key, changes[key])
        ):
            problems.append(MeaningLine(f"{name}.{key}: {problem}"))
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
