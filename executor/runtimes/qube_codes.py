"""The qube language's code strings: the table, a callback's code split into them, its check.

Stdlib only, so that the trigger engine checks a job's qube code when the job registers
(registration.py) without the interpreter (qube.py) and all it runs with.
"""

from __future__ import annotations

import string
from typing import Final

# What a job and each of its instances can be told (``unblock-self``, ``kill-subjob-self``).
_JOB_VERBS: Final = (
    "unblock",
    "block",
    "fail",
    "kill",
    "migrate",
    "preempt",
    "interrupt",
    "suspend",
    "resume",
)
JOB_CODES: Final[dict[str, str]] = {f"{verb}-self": verb for verb in _JOB_VERBS}
WORK_CODES: Final[dict[str, str]] = {
    f"{verb}-work-self": verb
    for verb in ("block", "unblock", "kill", "retry", "requeue", "complete", "fail")
}
SUBJOB_CODES: Final[dict[str, str]] = {f"{verb}-subjob-self": verb for verb in _JOB_VERBS}
UNBLOCK_SUBJOB_SINGLE: Final = "unblock-subjob-self-single"
#: The mail code strings (qube.py: the template each renders).
MAIL_CODES: Final[tuple[str, ...]] = (
    "mail-status",
    "mail-subjob-status",
    "mail-license-status",
    "mail-report-status",
)
#: Every code string the interpreter knows, in the order of qube-callbacks.md §2.
CODE_STRINGS: Final[tuple[str, ...]] = (
    *JOB_CODES,
    *WORK_CODES,
    *SUBJOB_CODES,
    UNBLOCK_SUBJOB_SINGLE,
    *MAIL_CODES,
)

# Around a code string; no other space (a no-break space is no separator, nor is a CR alone).
_SPACE: Final = " \t\r\f\v"
# Code strings are ASCII: str.lower() would make the Kelvin sign (U+212A) a 'k', so that
# "unbloc\u212a-self" ran as unblock-self.
_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# More is a loop, not a callback: 12,000 mail-status parts would mail 10,000 times.
MAX_CODE_STRINGS: Final = 64


# An error quotes at most this many unknown code strings, each cut to EXCERPT_CHARS.
MAX_QUOTED: Final = 3
EXCERPT_CHARS: Final = 40


def _excerpt(part: str) -> str:
    """``part`` quoted for an error: printable (escaped) and at most EXCERPT_CHARS long."""
    return ascii(part[:EXCERPT_CHARS]) + ("..." if len(part) > EXCERPT_CHARS else "")


def split_codes(code: str) -> list[str]:
    """The code strings of a qube callback, in order (see qube.py's docstring).

    A ``#`` starts a comment that runs to the end of its line, ``;`` and all: no code
    string holds a ``#``, and ``# not here; fail-self`` must run nothing. The checks
    at registration, a ``.qcb`` file's at load and the run all split here.
    """
    parts: list[str] = []
    for line in code.split("\n"):
        text = line.partition("#")[0]
        parts.extend(part.strip(_SPACE).translate(_ASCII_LOWER) for part in text.split(";"))
    return [part for part in parts if part]


def validate(code: str) -> str | None:
    """None when every code string is known; otherwise why not, listing the valid ones.

    A callback that is only a comment is valid and runs nothing (a TD commented it
    out); one with neither a code string nor a comment (blank, or only ``;``) names
    nothing anybody meant: a half-saved ``.qcb`` file, a code field left empty.
    """
    parts = split_codes(code)
    valid = ", ".join(CODE_STRINGS)
    if not parts and "#" not in code:
        return f"the qube callback has no code string; expected one of: {valid}"
    if len(parts) > MAX_CODE_STRINGS:
        return (
            f"the qube callback has {len(parts)} code strings; at most {MAX_CODE_STRINGS} "
            "run in one callback"
        )
    unknown = [part for part in parts if part not in CODE_STRINGS]
    if unknown:
        # The errors reach logs, the dashboard and RPC callers: quote a little, not the file.
        listed = ", ".join(_excerpt(part) for part in unknown[:MAX_QUOTED])
        more = f" and {len(unknown) - MAX_QUOTED} more" if len(unknown) > MAX_QUOTED else ""
        return f"unknown qube code string {listed}{more}; expected one of: {valid}"
    return None
