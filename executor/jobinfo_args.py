"""How the host API reads a ``jobinfo`` call: which jobs, and what of each, in Qube's spellings.

Qube callbacks write the call two ways, and both are taken: the embedded module's flags
(``'-id', n``, ``'-pgrp', n``, ``'-callbacks'``, ``'-fields', [...]``) and the client
API's keywords (``id=n``, ``pgrp=n``, ``callbacks=True``, ``fields=[...]``,
``status='running'``, ``agenda=True``, ``subjobs=True``). A job dict here holds its
agenda and instances unless ``agenda``/``subjobs`` is set false (the client leaves them
out unless asked: code that asks gets them, code that does not still does, as before).
What this API cannot honour is refused with ``InvalidArgument`` naming what it takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from executor.host_args import Spelling, invalid, parse_job_id

# What jobinfo takes by name, in the order its messages list them.
NAMES: Final = ("id", "pgrp", "status", "agenda", "subjobs", "callbacks", "fields")
# A value each name that takes one is shown with, in a message saying how to write it.
_EXAMPLES: Final = {"id": "12", "pgrp": "12", "fields": "['name']", "status": "'running'"}
# Qube's status words (qube-callbacks.md §5.1), the ones a status filter may name.
JOB_STATUSES: Final = frozenset(
    {
        "badlogin",
        "blocked",
        "complete",
        "dying",
        "exiting",
        "failed",
        "killed",
        "pending",
        "registering",
        "running",
        "suspended",
        "unknown",
        "waiting",
    }
)
# The job keys made from its agenda: a jobinfo whose fields hold none reads no item.
FROM_AGENDA: Final = frozenset({"agenda", "todo", "todotally"})


@dataclass(frozen=True, slots=True)
class JobinfoRequest:
    """A jobinfo call, read: which jobs, and what of each."""

    pgrp: int | None  # the pgrp asked for, or None for one job
    job_id: int | None  # the job asked for, or None for the callback's own (when no pgrp)
    include_callbacks: bool
    kept: frozenset[str] | None  # the only keys kept (and id); None keeps every key
    statuses: frozenset[str] | None  # only jobs in one of these; None: any
    left_out: frozenset[str]  # "agenda" / "subjobs" set false

    @property
    def work_names(self) -> list[str] | None:
        """The agenda a read needs (``SupervisorPort.job_info``): none when no kept key is made from it."""
        if self.kept is None or self.kept & FROM_AGENDA:
            return None
        return []

    def shape(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The jobs read, as the call asked for them: filtered by status, then cut to its keys.

        A kept name a job does not have is left out, not refused: a job holds whatever
        it was submitted with, so what one job of a pgrp lacks another may have.
        """
        if self.statuses is not None:
            jobs = [job for job in jobs if job.get("status") in self.statuses]
        return [
            {
                key: value
                for key, value in job.items()
                if key not in self.left_out
                and (self.kept is None or key in self.kept or key == "id")
            }
            for job in jobs
        ]


def read_jobinfo(args: list[Any], kwargs: dict[str, Any], spelling: Spelling) -> JobinfoRequest:
    """The request ``jobinfo(*args, **kwargs)`` makes; InvalidArgument when it does not fit.

    A second selector, list of fields or status is refused rather than one chosen.
    """
    reader = _Reader(spelling)
    rest = list(args)
    while rest:
        reader.positional(rest.pop(0), rest)
    for key, value in kwargs.items():
        reader.named(key, value)
    return reader.request()


class _Reader:
    """One jobinfo call's arguments, taken one by one."""

    def __init__(self, spelling: Spelling) -> None:
        self._spelling = spelling
        self._call = spelling.fn("jobinfo")
        self._include = False
        self._left_out: set[str] = set()
        self._fields: list[frozenset[str]] = []
        self._statuses: list[frozenset[str]] = []
        self._selectors: list[tuple[str, str, Any]] = []  # (as written, "id"/"pgrp", value)

    def named(self, key: str, value: Any) -> None:
        if key in ("id", "pgrp"):
            self._selectors.append((f"{key}={self._spelling.value(value)}", key, value))
        elif key == "callbacks":
            self._include = self._include or bool(value)
        elif key in ("agenda", "subjobs"):
            if not value:
                self._left_out.add(key)
        elif key == "fields":
            self._fields.append(self._field_names(value))
        elif key == "status":
            self._statuses.append(self._status_names(value))
        else:
            raise invalid(
                f"{self._call}: unknown argument {self._spelling.value(key)}; "
                f"expected {', '.join(NAMES)}"
            )

    def positional(self, head: Any, rest: list[Any]) -> None:
        """One positional argument; a flag that takes a value takes it from ``rest``."""
        if head == "-callbacks":
            self._include = True
        elif head in ("-agenda", "-subjobs"):
            pass  # a job dict holds both unless one is set false
        elif head in ("-id", "-pgrp", "-fields", "-status"):
            if not rest:
                raise invalid(f"{self._call}: {head} needs a value")
            value = rest.pop(0)
            if head == "-fields":
                self._fields.append(self._field_names(value))
            elif head == "-status":
                self._statuses.append(self._status_names(value))
            else:
                written = f"{head} {self._spelling.value(value)}"
                self._selectors.append((written, head[1:], value))
        elif isinstance(head, str) and head.startswith("-"):
            raise invalid(
                f"{self._call}: unknown flag {self._spelling.value(head)}; "
                f"expected {', '.join('-' + name for name in NAMES)}"
            )
        elif isinstance(head, str) and head in NAMES:
            raise invalid(self._undashed(head))
        else:
            self._selectors.append((f"job id {self._spelling.value(head)}", "id", head))

    def _undashed(self, name: str) -> str:
        """Why a flag's name written bare (``'id'``, not ``'-id'``) is refused, and how to write it.

        Read as a job id it made "it was given job id id, job id 1". Perl's qb.pm sends
        ``id => 12`` as the flag, so in Perl the name came with no value after it.
        """
        call, value = self._call, _EXAMPLES.get(name)
        start = f"{call}: '{name}' is not a job id; "
        if self._spelling.perl:
            if value is None:
                return (
                    f"{start}it takes a value, as in {call}({name} => 1), or is a flag with "
                    f"its dash, as in {call}('-{name}')"
                )
            return (
                f"{start}it takes a value, as in {call}({name} => {value}) or "
                f"{call}('-{name}', {value})"
            )
        dashed = f"{call}('-{name}')" if value is None else f"{call}('-{name}', {value})"
        return (
            f"{start}a flag is written with its dash, as in {dashed}, or by name, as in "
            f"{call}({name}={'True' if value is None else value})"
        )

    def request(self) -> JobinfoRequest:
        if len(self._selectors) > 1:
            given = ", ".join(written for written, _, _ in self._selectors)
            raise invalid(
                f"{self._call} takes one job (-id, id= or a job id) or one pgrp (-pgrp, pgrp=), "
                f"or neither for the callback's own job; it was given {given}"
            )
        for name, lists in (("list of fields", self._fields), ("status filter", self._statuses)):
            if len(lists) > 1:
                raise invalid(f"{self._call} takes one {name}; it was given {len(lists)}")
        kept = (
            self._fields[0] | ({"callbacks"} if self._include else set()) if self._fields else None
        )
        pgrp = job_id = None
        if self._selectors:
            _, kind, value = self._selectors[0]
            if kind == "pgrp":
                pgrp = parse_job_id(value, self._spelling, "pgrp")
            else:
                job_id = parse_job_id(value, self._spelling)
        return JobinfoRequest(
            pgrp=pgrp,
            job_id=job_id,
            include_callbacks=self._include or (kept is not None and "callbacks" in kept),
            kept=kept,
            statuses=self._statuses[0] if self._statuses else None,
            left_out=frozenset(self._left_out),
        )

    def _field_names(self, value: Any) -> frozenset[str]:
        """The job keys ``fields`` names: a list of strings, as Qube's client takes it."""
        if isinstance(value, list) and all(isinstance(name, str) for name in value):
            return frozenset(value)
        example = (
            "fields => ['name', 'status']" if self._spelling.perl else "fields=['name', 'status']"
        )
        raise invalid(
            f"{self._call}: fields takes a list of field names, as in {example}; "
            f"it was given {self._spelling.value(value)}"
        )

    def _status_names(self, value: Any) -> frozenset[str]:
        """The statuses ``status`` names: one, a comma list, or a list of them."""
        names = value.split(",") if isinstance(value, str) else value
        if isinstance(names, list) and names and all(isinstance(name, str) for name in names):
            wanted = frozenset(name.strip() for name in names)
            if wanted <= JOB_STATUSES:
                return wanted
        example = "status => 'running'" if self._spelling.perl else "status='running'"
        raise invalid(
            f"{self._call}: status takes a job status or a list of them "
            f"({', '.join(sorted(JOB_STATUSES))}), as in {example}; "
            f"it was given {self._spelling.value(value)}"
        )
