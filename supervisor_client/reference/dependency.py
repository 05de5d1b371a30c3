"""Qube's ``dependency`` and ``waitfor`` job attributes, as the callbacks that hold the job.

A job with a dependency is held blocked until the condition is met, then starts on its
own (qube-callbacks.md §1.9). The reference supervisor turns the attribute into
callbacks that the trigger engine runs like any other, the way Qube keeps dependencies
as internal callbacks; they are listed in the job's ``callbacks``, after its own:

- Items are comma-separated and all must hold (no ``||``, no parentheses, as in Qube).
- ``<jobid>`` waits for that job to complete; ``link-<state>-job-<job>`` (``link-`` may
  be left out) for it to reach ``state`` (complete, done, failed or killed). They make
  one callback, ``<state>-job-<job> && ...`` running ``unblock-self``, and the job is
  submitted blocked.
- ``link-<state>-work-<job>`` links frame by frame: each frame of this job is submitted
  blocked and unblocked when the same-named frame of ``<job>`` reaches the state (one
  callback, ``<state>-work-<job>-{work} && ...`` running ``unblock-work-self``).
- ``info-...`` only tells WranglerView how to draw the graph: kept, not acted on.
- ``waitfor`` (a job id, or a list of them; deprecated in Qube) adds
  ``link-done-job-<id>``.

``<job>`` is a job id or a label of the job's process group, as in triggers. The
callbacks are in level mode: a condition already met when the job is submitted (the job
it waits for is already complete) counts, so a late submission does not wait for ever.
Each runs at most once (per frame for a frame-by-frame link). The executor lets a
callback of exactly this form unblock its job whatever the owner's policy ``verbs``
(executor/dependency_release.py): a change of form here must be one there too.

A job dict read back with its callbacks (``qb.jobinfo``) lists the ones made here among
them. When it is submitted again, its ``dependency``/``waitfor`` say what it waits for
(perhaps changed): ``is_holding_callback`` finds the old ones, which the submission
leaves out and makes again from the attributes, so no stale condition releases the job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from supervisor_client.reference.errors import SubmitError

_STATES: Final = ("complete", "done", "failed", "killed")
# The job ids a trigger takes (64-bit signed, as the store): checked here, so a refusal
# names the dependency item as written, not the generated trigger's column.
_MOST_JOB_ID: Final = (1 << 63) - 1
_LINK: Final = re.compile(r"^(?:link-)?(complete|done|failed|killed)-(job|work|subjob)-(\S+)$")
# The triggers ``parse_dependency`` makes, by the code each runs: ``&&``-joined ends of
# other jobs (an id or a label: no '-'), or of their same-named frames.
_END: Final = "(?:complete|done|failed|killed)"
_JOB_END: Final = rf"{_END}-job-[^\s&|()-]+"
_WORK_END: Final = rf"{_END}-work-[^\s&|()-]+-\{{work\}}"
_HOLDING_TRIGGERS: Final = {
    "unblock-self": re.compile(rf"{_JOB_END}(?: && {_JOB_END})*"),
    "unblock-work-self": re.compile(rf"{_WORK_END}(?: && {_WORK_END})*"),
}


@dataclass(frozen=True, slots=True)
class Dependency:
    """What a job's dependency attributes ask: its callbacks, and what they hold blocked."""

    callbacks: tuple[dict[str, Any], ...] = ()
    holds_job: bool = False
    holds_frames: bool = False
    #: (item as written, the job it names): checked once the job's id and label are known.
    names: tuple[tuple[str, str], ...] = ()


def parse_dependency(where: str, job: Mapping[str, Any]) -> Dependency:
    """The callbacks of ``job``'s ``dependency`` and ``waitfor``; SubmitError naming a bad item."""
    items = [*_items(where, job.get("dependency")), *_waitfor(where, job.get("waitfor"))]
    job_atoms: list[str] = []
    work_atoms: list[str] = []
    names: list[tuple[str, str]] = []
    for item in items:
        if item.startswith("info-"):
            continue
        if item.isdigit():
            _check_job_id(where, "dependency item", item, item)
            job_atoms.append(f"complete-job-{item}")
            names.append((item, item))
            continue
        match = _LINK.match(item)
        if match is None:
            raise SubmitError(
                f"{where}: dependency item {item!r}: expected a job id, "
                f"link-<state>-<job|work>-<job> with state one of {', '.join(_STATES)}, "
                "or info-..."
            )
        state, kind, other = match.groups()
        if other in ("self", "parent") or "-" in other:
            raise SubmitError(
                f"{where}: dependency item {item!r}: {other!r} is not another job's id or "
                "label (a job cannot wait for itself, and labels hold no '-')"
            )
        if kind == "subjob":
            raise SubmitError(
                f"{where}: dependency item {item!r}: instance-by-instance links are not "
                "supported; use a job or work link, or a callback"
            )
        if other.isdigit():
            _check_job_id(where, "dependency item", item, other)
        names.append((item, other))
        if kind == "job":
            job_atoms.append(f"{state}-job-{other}")
        else:
            work_atoms.append(f"{state}-work-{other}-{{work}}")
    if work_atoms and not job.get("agenda"):
        raise SubmitError(
            f"{where}: a frame-by-frame dependency (link-...-work-...) needs an agenda"
        )
    callbacks = []
    if job_atoms:
        callbacks.append(_holding(" && ".join(job_atoms), "unblock-self", job))
    if work_atoms:
        callbacks.append(_holding(" && ".join(work_atoms), "unblock-work-self", job))
    return Dependency(
        tuple(callbacks),
        holds_job=bool(job_atoms),
        holds_frames=bool(work_atoms),
        names=tuple(names),
    )


def check_not_itself(where: str, names: Sequence[tuple[str, str]], job_id: int, label: str) -> None:
    """SubmitError for a dependency item naming its own job, by the id or label it got.

    Such a job waits for itself for ever, as ``self`` would; only known once the store
    has given the job its id and label (a submitter may predict either).
    """
    for item, other in names:
        if other.isdigit() and int(other) == job_id:
            what = f"{int(other)} is this job's own id"
        elif not other.isdigit() and other == label:
            what = f"{other!r} is this job's own label"
        else:
            continue
        raise SubmitError(
            f"{where}: dependency item {item!r}: {what} (a job cannot wait for itself)"
        )


def is_holding_callback(callback: Any) -> bool:
    """Whether a callback dict is of the one form ``parse_dependency`` makes, as read back.

    A hand-written callback of this form does what a ``dependency`` item does, nothing more
    (README, *The farm*): in a job dict that has the attributes it is taken as made from them.
    """
    if not isinstance(callback, Mapping):
        return False
    code, triggers = callback.get("code"), callback.get("triggers")
    pattern = _HOLDING_TRIGGERS.get(code) if isinstance(code, str) else None
    return (
        pattern is not None
        and isinstance(triggers, str)
        and pattern.fullmatch(triggers) is not None
        and (callback.get("language") or "qube") == "qube"
        and str(callback.get("maximum")) == "1"
        and callback.get("mode") == "level"
    )


def _check_job_id(where: str, field: str, written: object, job_id: str) -> None:
    if not 1 <= int(job_id) <= _MOST_JOB_ID:
        raise SubmitError(
            f"{where}: {field} {written!r}: job id {job_id} is out of range (1 to {_MOST_JOB_ID})"
        )


def _holding(triggers: str, code: str, job: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "triggers": triggers,
        "language": "qube",
        "code": code,
        "user": job.get("user") or "",
        "maximum": 1,
        "mode": "level",
    }


def _items(where: str, value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        parts = [str(part) for part in value]
    elif isinstance(value, str | int) and not isinstance(value, bool):
        parts = _split(str(value))
    else:
        raise SubmitError(f"{where}: dependency must be a string, got {value!r}")
    items = [part.strip() for part in parts if part.strip()]
    for item in items:
        if not item.startswith("info-") and any(m in item for m in ("(", ")", "||", "&&")):
            raise SubmitError(
                f"{where}: dependency item {item!r}: a dependency is a comma-separated "
                "list (all must hold), without operators or parentheses; use a callback"
            )
    return items


def _split(text: str) -> list[str]:
    """Comma-separated items; commas inside an ``info-{...}`` map do not separate."""
    parts, depth, start = [], 0, 0
    for at, char in enumerate(text):
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            parts.append(text[start:at])
            start = at + 1
    return [*parts, text[start:]]


def _waitfor(where: str, value: Any) -> list[str]:
    if value is None or value in ("", 0):
        return []
    ids = value if isinstance(value, list | tuple) else [value]
    items = []
    for job_id in ids:
        text = str(job_id).strip()
        if isinstance(job_id, bool) or not text.isdigit() or int(text) == 0:
            raise SubmitError(f"{where}: waitfor must be job ids, got {value!r}")
        _check_job_id(where, "waitfor item", job_id, text)
        items.append(f"link-done-job-{int(text)}")
    return items
