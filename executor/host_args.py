"""How the host API reads a qb call's arguments: ids, targets and their count, in the caller's words.

Every malformed argument is a ``HostCallError`` of kind ``InvalidArgument`` (the
callback's ``qb.InvalidArgument`` / Perl ``qb::Error``), worded as the callback's
language writes the call and the value: ``qb.jobstatus`` and ``None`` for Python,
``qb::jobstatus`` and ``undef`` for Perl. A call that does not fit its function's shape
is refused here, before anything runs, naming the function and what it takes, so no
Python ``TypeError`` (with the host's own parameter names) reaches a callback.

Ids are ASCII digits only: ``str.isdigit`` would also take a full-width 2 (U+FF12) as
job 2, and a superscript 2 (U+00B2), which ``int`` then refuses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from executor.bounds import MAX_ID, MAX_SUBJOB_ID, MAX_TARGET_CHARS, cut
from executor.errors import HostCallError
from executor.visible_text import printable, quoted

_JOB_ID: Final = re.compile(r"[0-9]+")
_SUBJOB_ID: Final = re.compile(r"[0-9]+")  # ASCII digits, as a job id: '-0' is not 0
# Taken around an id (a Perl line read from a file ends in "\n"); no other space.
_EDGE_SPACE: Final = " \t\r\n"


def invalid(message: str) -> HostCallError:
    """The error a malformed argument raises in the callback."""
    return HostCallError("InvalidArgument", message)


@dataclass(frozen=True, slots=True)
class Spelling:
    """How messages write a qb function and a value: the way the callback's language does."""

    prefix: str
    nothing: str
    perl: bool = False

    @staticmethod
    def of(language: str) -> Spelling:
        """Perl's words for a Perl callback, Python's for the rest (qube strings send no values)."""
        return PERL if language == "perl" else PYTHON

    def fn(self, name: str) -> str:
        """The function as the callback calls it: ``qb.jobstatus`` or ``qb::jobstatus``."""
        return f"{self.prefix}{name}"

    def value(self, value: Any) -> str:
        r"""``value`` as a message shows it, cut: a callback may send a megabyte of digits.

        A string as it is, or quoted when it is empty or holds a character that would act
        or draw nothing (``'\x1b[2J'``); anything else as the language writes it:
        ``[None]`` or ``[undef]``.
        """
        if value is None:
            return self.nothing
        if isinstance(value, str):
            shown = printable(value) if value else "''"
        else:
            shown = _perl_literal(value) if self.perl else repr(value)
        return cut(shown, MAX_TARGET_CHARS)


def _perl_literal(value: Any) -> str:
    """A value from a Perl callback's frame as Perl writes it: ``['name', undef]``."""
    if value is None:
        return "undef"
    if isinstance(value, str):
        return quoted(value)
    if isinstance(value, list):
        return "[" + ", ".join(_perl_literal(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{quoted(str(key))} => {_perl_literal(item)}" for key, item in value.items())
        return "{" + ", ".join(pairs) + "}"
    return repr(value)


PYTHON: Final = Spelling("qb.", "None")
PERL: Final = Spelling("qb::", "undef", perl=True)


def flatten(args: tuple[Any, ...] | list[Any]) -> list[Any]:
    """Targets with lists opened, one level: ``unblock([12, 13], 14)``.

    A list inside a list stays one target, which ``check_shape`` refuses: Qube's verbs
    take an id or a list of ids, and ``unblock([[1, 2]])`` is a mistake, not jobs 1 and 2.
    """
    flat: list[Any] = []
    for arg in args:
        flat.extend(arg if isinstance(arg, (list, tuple)) else [arg])
    return flat


def parse_job_id(value: Any, spelling: Spelling, what: str = "job id") -> int:
    """A job id (or, as ``what`` says, a pgrp) from an int or ASCII digits, 0 to MAX_ID."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise invalid(f"expected a {what}, got {spelling.value(value)}")
    text = str(value).strip(_EDGE_SPACE)
    if not _JOB_ID.fullmatch(text):
        raise invalid(f"expected a {what}, got {spelling.value(value)}")
    # Beyond it no supervisor request can carry the id, nor a store keep it.
    if len(text) > len(str(MAX_ID)) or int(text) > MAX_ID:
        raise invalid(f"{what} {spelling.value(value)} is out of range (0 to {MAX_ID})")
    return int(text)


@dataclass(frozen=True, slots=True)
class ExactWork:
    """One work item by its exact name: what a qube ``<verb>-work-self`` acts on.

    Only the executor makes one (a callback's frames carry JSON values), so the name is
    never read as a work spec: the item that fired, named ``5,6`` or `` 5``, is that
    item, not frames 5 and 6, or frame 5.
    """

    job_id: int
    name: str

    def __str__(self) -> str:
        """As the action records show a work target: ``'<jobid>:<workname>'``."""
        return f"{self.job_id}:{self.name}"


def parse_work_target(target: Any, spelling: Spelling) -> tuple[int, str]:
    """``'<jobid>:<workname>'`` split into the job id and the work spec."""
    # Not a text's: a dict's was cut at its first ':'.
    job, sep, names = target.partition(":") if isinstance(target, str) else ("", "", "")
    if not sep or not names:
        raise invalid(f"expected '<jobid>:<workname>', got {spelling.value(target)}")
    return parse_job_id(job, spelling), names


def parse_subjob_target(target: Any, spelling: Spelling) -> tuple[int, list[int]]:
    """``'<jobid>.<subid>'`` as the job id and ``[subid]``; ``'<jobid>'`` as ``[]`` (all)."""
    if not isinstance(target, str):
        if isinstance(target, int) and not isinstance(target, bool):
            return parse_job_id(target, spelling), []
        # Not its text: 2.5 read as instance 5 of job 2, a dict was cut at its first '.'.
        raise invalid(f"expected '<jobid>.<subid>', got {spelling.value(target)}")
    job, sep, sub = target.partition(".")
    if sep and not _SUBJOB_ID.fullmatch(sub):
        raise invalid(f"expected '<jobid>.<subid>', got {spelling.value(target)}")
    jid = parse_job_id(job, spelling)
    if not sep:
        return jid, []
    if len(sub) > len(str(MAX_SUBJOB_ID)) or int(sub) > MAX_SUBJOB_ID:
        raise invalid(
            f"instance id {cut(sub, MAX_TARGET_CHARS)} is out of range (at most {MAX_SUBJOB_ID})"
        )
    return jid, [int(sub)]


@dataclass(frozen=True, slots=True)
class Shape:
    """What a qb function takes: one value, or one or more targets (lists opened)."""

    takes: str
    example: str
    many: bool


STATUS_SHAPES: Final[Mapping[str, Shape]] = {
    "jobstatus": Shape("one job id", "12", many=False),
    "workstatus": Shape("one work item '<jobid>:<workname>'", "'12:5'", many=False),
    "subjobstatus": Shape("one instance '<jobid>.<subid>'", "'12.0'", many=False),
}
JOB_TARGETS: Final = Shape("one or more job ids (or a list of them)", "12", many=True)
WORK_TARGETS: Final = Shape(
    "one or more work items '<jobid>:<workname>' (or a list of them)", "'12:1-10'", many=True
)
SUBJOB_TARGETS: Final = Shape(
    "one or more instances '<jobid>.<subid>', or '<jobid>' for all (or a list of them)",
    "'12.0'",
    many=True,
)


def _container(value: list[Any] | tuple[Any, ...] | dict[Any, Any], spelling: Spelling) -> str:
    """What ``value`` is, in the callback's words: a list, an array reference, ..."""
    if isinstance(value, dict):
        return "a hash reference" if spelling.perl else "a dict"
    return "an array reference" if spelling.perl else "a list"


def check_shape(
    fn: str, shape: Shape, args: list[Any], kwargs: Mapping[str, Any], spelling: Spelling
) -> None:
    """Refuse a call whose arguments do not fit ``shape``, saying what the function takes."""
    call = spelling.fn(fn)
    usage = f"{call} takes {shape.takes}, as in {call}({shape.example})"
    if kwargs:
        names = cut(", ".join(sorted(str(key) for key in kwargs)), MAX_TARGET_CHARS)
        raise invalid(f"{usage}; it takes no named arguments, and was given {names}")
    if not shape.many and len(args) == 1 and isinstance(args[0], (list, tuple, dict)):
        # As the verbs take them: said whole, not read as text and cut at its first ':'.
        given = _container(args[0], spelling)
        raise invalid(f"{usage}; it was given {given}: {spelling.value(args[0])}")
    targets = flatten(args) if shape.many else args
    if shape.many and any(isinstance(target, (list, tuple)) for target in targets):
        nested = "an array reference" if spelling.perl else "a list"
        raise invalid(f"{usage}; it was given {nested} inside {nested}")
    count = len(targets)
    if count == 0 or (count > 1 and not shape.many):
        given = "none" if count == 0 else f"{count} arguments"  # a count, never read as an id
        raise invalid(f"{usage}; it was given {given}")
