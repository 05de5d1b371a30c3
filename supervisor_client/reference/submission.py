"""Submission parsing for the reference supervisor: Qube job dicts in, validated values out.

Everything a submission can get wrong is found here, before any SQL runs, so a rejected
submission changes nothing and uses up no ids.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from supervisor_client.jobdict import triggers_text
from supervisor_client.mailaddress import EXPECTED, first_non_address
from supervisor_client.reference.dependency import is_holding_callback, parse_dependency
from supervisor_client.reference.errors import SubmitError
from supervisor_client.reference.job_flags import MAIL_CALLBACK, has_done_mail, wants_done_mail
from supervisor_client.reference.states import Status

# The executor's limit on a callback's code (executor/bounds.py; a test keeps the two
# equal): a job stored here whose callback the executor would refuse could never run.
MAX_CODE_BYTES: Final = 1 << 20
# The executor's limit on a name (executor/bounds.py; a test keeps the two equal): the
# forwarder registers each job and publishes each event with the job's names, which the
# executor would refuse beyond it, and the job's callbacks would never hear of them.
MAX_NAME_CHARS: Final = 1024

#: Fields the supervisor assigns, or (the tallies) a reader derives. A resubmitted jobinfo
#: dict carries them; they are ignored (as is a label the supervisor gave: the store tells
#: it apart, store.py _assign_labels). Its status and its work items' are a run's too:
#: see _status. Of a work item only the name and the status are read.
_ASSIGNED_FIELDS: Final = frozenset(
    {
        "id",
        "timesubmit",
        "timestart",
        "timecomplete",
        "subjobs",
        "todo",
        "todotally",
        "cpustally",
    }
)
_INPUT_FIELDS: Final = frozenset(
    {
        "name",
        "label",
        "user",
        "status",
        "priority",
        "prototype",
        "cpus",
        "pid",
        "pgrp",
        "mailaddress",
        "agenda",
        "callbacks",
    }
)
#: A guard against a typo creating millions of instance rows; Qube farms are far smaller.
MAX_CPUS: Final = 10_000
#: The largest id (job, pgrp, pid) or count the store can hold: SQLite's INTEGER.
MAX_ID: Final = 2**63 - 1
#: A callback's ``maximum`` travels as a uint32 (types.proto ``Callback``).
MAX_RUNS: Final = 2**32 - 1
#: Qube's priority is a C int.
MAX_PRIORITY: Final = 2**31 - 1
#: The most jobs one submission holds: far more than a pipeline's process group. Each is
#: stored, then registered with the trigger engine (a RegisterJob each), so the answer to
#: 1,000 takes about a second; a 16 MiB request of empty jobs held millions, stored on the
#: executor's loop for minutes, health unanswered.
MAX_SUBMIT_JOBS: Final = 1_000
#: The most work items all of a submission's agendas hold together: a 100,000-frame job,
#: as many items as a ChangeWork's 100,000 entries. Four jobs of 250,000 frames (10 MB)
#: held the loop for half a minute.
MAX_SUBMIT_WORK_ITEMS: Final = 100_000

#: Checks one trigger expression: None when it can be used, else what is wrong with it.
#: Given a list-valued trigger's items, it checks them as the one expression they are
#: stored as (``jobdict.triggers_text``), naming the item in its answer. The reference
#: supervisor knows no trigger grammar (supervisor_client never imports the executor);
#: whoever embeds it passes the trigger engine's check, and a submission with a trigger
#: the engine would refuse is then refused whole.
TriggerCheck = Callable[[str | list[str]], str | None]
#: Checks one callback language the same way: a submission with a callback the executor
#: cannot run (``ruby``, a typo) is refused instead of being dropped when it fires.
LanguageCheck = Callable[[str], str | None]
#: Checks one job as it would be stored (its job dict with callbacks, ids and labels
#: assigned: what the forwarder registers): None when the executor can register it, else
#: why not. The executor passes its RegisterJob checks: a job it would refuse is refused
#: with the submission instead of being stored with callbacks that could never run.
JobCheck = Callable[[Mapping[str, Any]], str | None]
#: The labels held in a pgrp outside the farm's own store (label -> job id): the trigger
#: engine's, where another scheduler's RegisterJob may have put one in a pgrp the farm
#: leads or joins (a pgrp is a job id). The farm refuses a label given it that one holds,
#: and passes over it when it gives a label (``qube<N>``).
LabelHolders = Callable[[int], Mapping[str, int]]


@dataclass(frozen=True, slots=True)
class Checks:
    trigger: TriggerCheck | None = None
    language: LanguageCheck | None = None


@dataclass(frozen=True, slots=True)
class _NewWork:
    name: str
    status: str


@dataclass(frozen=True, slots=True)
class NewCallback:
    triggers: str
    language: str
    code: str
    user: str
    maximum: int
    # The trigger engine's mode, "edge" or "level"; "" leaves it to the engine (edge).
    mode: str = ""


#: A callback's ``mode`` values (the trigger engine's; not Qube's).
_MODES: Final = ("", "edge", "level")


@dataclass(frozen=True, slots=True)
class NewJob:
    """A submitted job: its own fields (as a held job's, given_job.py) and its state."""

    fields: JobFields
    status: str
    agenda: tuple[_NewWork, ...]
    callbacks: tuple[NewCallback, ...]
    #: The jobs its dependency names (item, id or label): none may be itself.
    waits_for: tuple[tuple[str, str], ...] = ()


def check_utf8_text(where: str, job: Mapping[str, Any]) -> None:
    r"""Refuse a string anywhere in ``job`` (a value or a key, at any depth) that is not UTF-8 text.

    JSON can spell a lone surrogate (``"\ud800"``), which neither the store (SQLite) nor
    the wire (protobuf) can carry: refused here by its field, not as an encoding error
    from deep in an INSERT. Walked without recursion, as JSON nests as deep as it likes;
    each value's place is a (parent's place, key) pair, spelt out only for the error.
    """
    pending: list[tuple[Any, _Place]] = [(job, None)]
    while pending:
        value, place = pending.pop()
        if isinstance(value, str):
            _check_encodable(where, value, place, "is not UTF-8 text")
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str):
                    _check_encodable(where, key, place, "has a field name that is not UTF-8 text")
                pending.append((item, (place, key)))
        elif isinstance(value, list | tuple):
            pending.extend((item, (place, index)) for index, item in enumerate(value))


#: Where a value is in a job: None for the job itself, else (its parent's place, its key).
_Place = tuple["_Place", object] | None


def _spelt_out(place: _Place) -> str:
    """``callbacks[0].code`` for (((None, "callbacks"), 0), "code")."""
    steps: list[str] = []
    while place is not None:
        place, key = place
        steps.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    return "".join(reversed(steps)).lstrip(".") or "the job"


def _check_encodable(where: str, text: str, place: _Place, problem: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SubmitError(f"{where}: {_spelt_out(place)} {problem}: {err}") from None


def text_field(where: str, fields: Mapping[str, Any], key: str, default: str) -> str:
    value = fields.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise SubmitError(f"{where}: {key} must be a string, got {value!r}")
    return value


def name_field(where: str, fields: Mapping[str, Any], key: str, default: str) -> str:
    """A text field that names something: at most MAX_NAME_CHARS characters."""
    value = text_field(where, fields, key, default)
    if len(value) > MAX_NAME_CHARS:
        raise SubmitError(
            f"{where}: {key} is {len(value)} characters; the limit is {MAX_NAME_CHARS}"
        )
    return value


def integer_field(
    where: str,
    fields: Mapping[str, Any],
    key: str,
    default: int,
    minimum: int,
    maximum: int = MAX_ID,
) -> int:
    """An int field; decimal strings are accepted because Perl submitters send them."""
    value = fields.get(key)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SubmitError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    if value > maximum:
        raise SubmitError(f"{where}: {key} = {value} is above the largest allowed, {maximum}")
    return value


#: Every state a job dict read back can show.
_STATES: Final = frozenset(Status)


def _status(where: str, value: Any) -> str:
    """A new job's (or work item's) status: blocked if it says so, else pending.

    A dict read back (Qube's resubmit) shows where its job got to (running, complete,
    killed, ...): the new job starts afresh, as Qube's resubmit makes a new job. Only
    what is no state at all is refused.
    """
    if value == Status.BLOCKED:
        return Status.BLOCKED
    if value is None or (isinstance(value, str) and value in _STATES):
        return Status.PENDING
    raise SubmitError(
        f"{where}: status must be 'pending' or 'blocked' (or, in a job dict read back, "
        f"any state it shows: it starts pending), got {value!r}"
    )


def agenda_entries(where: str, entries: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """An agenda's items as (name, the item's fields): names checked, each once.

    An item is a work name (str or int) or a dict with ``name``.
    """
    if entries is None:
        return []
    if not isinstance(entries, list | tuple):
        raise SubmitError(f"{where}: agenda must be a list, got {type(entries).__name__}")
    items: list[tuple[str, Mapping[str, Any]]] = []
    seen: set[str] = set()
    for entry in entries:
        fields = entry if isinstance(entry, Mapping) else {"name": entry}
        name = fields.get("name")
        if isinstance(name, bool) or not isinstance(name, str | int) or str(name) == "":
            raise SubmitError(f"{where}: a work item needs a name (str or int), got {entry!r}")
        if len(str(name)) > MAX_NAME_CHARS:
            raise SubmitError(
                f"{where}: work name {str(name)[:40]!r}... is {len(str(name))} characters;"
                f" the limit is {MAX_NAME_CHARS}"
            )
        if str(name) in seen:
            raise SubmitError(f"{where}: work name {str(name)!r} appears twice in the agenda")
        seen.add(str(name))
        items.append((str(name), fields))
    return items


def _parse_agenda(where: str, entries: Any) -> tuple[_NewWork, ...]:
    """Work names (str/int) or dicts with ``name`` and optional ``status``.

    Items are pending unless they say "blocked", also in a blocked job: the job's own
    status is what holds them back, as in Qube. What a read-back item shows of its run
    (``host``, ``subid``, ``count``, ``resultpackage``) is not read: it runs afresh.
    """
    return tuple(
        _NewWork(name, _status(f"{where}, work {name}", fields.get("status")))
        for name, fields in agenda_entries(where, entries)
    )


def _triggers(at: str, value: Any, check: TriggerCheck | None) -> str:
    """A callback's ``triggers`` as stored: one expression (a list is the OR of its items).

    With ``check``, each item of a list alone, then the items as the one expression they
    are stored as: either error names the item and counts columns within it (a list's
    items share a trigger's size, ``jobdict.triggers_text``).
    """
    try:
        text = triggers_text(value)
    except ValueError as err:
        raise SubmitError(f"{at}: {err}") from err
    if check is None or not text:
        return text
    if not isinstance(value, str) and len(value) > 1:
        items = [item.strip() for item in value]
        for index, item in enumerate(items):
            problem = check(item)
            if problem is not None:
                raise SubmitError(f"{at}: triggers[{index}]: {problem}")
        problem = check(items)
    else:
        problem = check(text)
    if problem is not None:
        raise SubmitError(f"{at}: triggers: {problem}")
    return text


def parse_callbacks(
    where: str, entries: Any, checks: Checks, owner: str
) -> tuple[NewCallback, ...]:
    """Callback dicts; ``id``, ``count`` and the like are assigned here, so they are ignored.

    ``triggers`` is a string, or a list of them meaning the OR of its items (the README's
    reading of Qube's undocumented list form, qube-callbacks.md §8), stored joined into
    one expression (``jobdict.triggers_text``). With ``check`` (the trigger engine's), a
    trigger the engine would refuse refuses the submission, naming the job, the callback
    (numbered from 1, as the ids it would get) and the parse error.
    """
    if entries is None:
        return ()
    if not isinstance(entries, list | tuple):
        raise SubmitError(f"{where}: callbacks must be a list, got {type(entries).__name__}")
    callbacks = []
    for n, entry in enumerate(entries, start=1):
        at = f"{where}, callback {n}"
        if not isinstance(entry, Mapping):
            raise SubmitError(f"{at}: must be a dict, got {entry!r}")
        # As RegisterJob takes it (README): a callback without a language is qube.
        language = name_field(at, entry, "language", "") or "qube"
        if entry.get("triggers") in (None, "", [], ()):
            raise SubmitError(f"{at}: triggers is required (a trigger expression, or a list)")
        if checks.language is not None and (problem := checks.language(language)) is not None:
            raise SubmitError(f"{at}: language: {problem}")
        triggers = _triggers(at, entry["triggers"], checks.trigger)
        mode = text_field(at, entry, "mode", "")
        if mode not in _MODES:
            raise SubmitError(f"{at}: mode must be 'edge' or 'level', got {mode!r}")
        code = text_field(at, entry, "code", "")
        if (size := len(code.encode("utf-8", "surrogatepass"))) > MAX_CODE_BYTES:
            raise SubmitError(f"{at}: code is {size} bytes; the limit is {MAX_CODE_BYTES} (1 MiB)")
        callbacks.append(
            NewCallback(
                triggers,
                language,
                code,
                _callback_user(at, entry, owner),
                integer_field(at, entry, "maximum", 0, 0, MAX_RUNS),
                mode,
            )
        )
    return tuple(callbacks)


def _callback_user(at: str, entry: Mapping[str, Any], owner: str) -> str:
    """A callback's ``user``: unset or the job's owner, whom it acts as.

    It gets that user's rights and sandbox policy, so a submission naming anyone else
    would borrow theirs.
    """
    user = text_field(at, entry, "user", "")
    if user and user != owner:
        raise SubmitError(
            f"{at}: user {user!r} is not the job's owner {owner!r}; a job's callbacks act "
            "as its owner (leave user out)"
        )
    return user


@dataclass(frozen=True, slots=True)
class JobFields:
    """What a job dict says of itself besides its state: a submitted and a held job's alike."""

    name: str
    label: str | None
    user: str
    priority: int
    prototype: str
    cpus: int
    pid: int
    pgrp: int | None
    mailaddress: str
    extra: str


def parse_job_fields(where: str, job: Mapping[str, Any]) -> JobFields:
    """The job's own fields, validated: its names, owner, mail, priority, instances, extra."""
    cpus = integer_field(where, job, "cpus", 1, 1)
    if cpus > MAX_CPUS:
        raise SubmitError(f"{where}: cpus = {cpus} is above the limit of {MAX_CPUS}")
    extra = {k: v for k, v in job.items() if k not in _INPUT_FIELDS | _ASSIGNED_FIELDS}
    try:
        extra_json = json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise SubmitError(f"{where}: fields {sorted(extra)} are not JSON values: {err}") from err
    user = name_field(where, job, "user", "qube") or "qube"
    if user != user.strip() or not user.isprintable():
        # A user is a Qube account name: "  " or "bob\n" would be an owner no one is.
        raise SubmitError(f"{where}: user {user!r} is not a user name")
    mailaddress = name_field(where, job, "mailaddress", "")
    if not mailaddress.replace("\t", " ").isprintable():
        # A list of addresses is one line: a CR/LF would reach the mail's To: header.
        raise SubmitError(
            f"{where}: mailaddress {mailaddress!r} holds a control character; separate "
            "addresses with ',', ';' or spaces"
        )
    bad = first_non_address(mailaddress)
    if bad is not None:
        # The mail would refuse it when the job ends (executor/runtimes/mail.py, same rule).
        raise SubmitError(
            f"{where}: mailaddress {mailaddress!r}: {bad!r} is not a mail address ({EXPECTED}, "
            "separated by ',', ';' or spaces)"
        )
    return JobFields(
        name=name_field(where, job, "name", ""),
        label=name_field(where, job, "label", "") or None,
        user=user,
        priority=integer_field(where, job, "priority", 9999, -(2**31), MAX_PRIORITY),
        prototype=name_field(where, job, "prototype", "cmdline"),
        cpus=cpus,
        pid=integer_field(where, job, "pid", 0, 0),
        pgrp=integer_field(where, job, "pgrp", 0, 0) or None,
        mailaddress=mailaddress,
        extra=extra_json,
    )


def _parse_job(number: int, job: Any, checks: Checks) -> NewJob:
    """The job at ``number`` (from 1, as its callbacks are numbered) of a submission."""
    if not isinstance(job, Mapping):
        raise SubmitError(f"job {number} of the submission must be a dict, got {job!r}")
    where = f"job {number} of the submission"
    check_utf8_text(where, job)
    status = _status(where, job.get("status"))
    fields = parse_job_fields(where, job)
    dependency = parse_dependency(where, {**job, "user": fields.user})
    own = _own_callbacks(job)
    done_mail = wants_done_mail(where, job) and not has_done_mail(own)
    callbacks = (  # after the job's own, the dependency's and the mail flag's, checked alike
        *parse_callbacks(where, own, checks, fields.user),
        *parse_callbacks(f"{where}, dependency", list(dependency.callbacks), checks, fields.user),
        *parse_callbacks(
            f"{where}, flags mail", [MAIL_CALLBACK] if done_mail else [], checks, fields.user
        ),
    )
    agenda = _parse_agenda(where, job.get("agenda"))
    if dependency.holds_frames:
        agenda = tuple(_NewWork(work.name, Status.BLOCKED) for work in agenda)
    return NewJob(
        fields,
        status=Status.BLOCKED if dependency.holds_job else status,
        agenda=agenda,
        callbacks=callbacks,
        waits_for=dependency.names,
    )


def _own_callbacks(job: Mapping[str, Any]) -> Any:
    """The job's callbacks less those its ``dependency``/``waitfor`` make (made again after).

    A resubmitted jobinfo dict lists the ones made for the dependency it had: kept, they
    would release the job on that condition (level mode: at once, if it was met), whatever
    its dependency says now, and an unchanged one would get a second copy.
    """
    own = job.get("callbacks")
    if ("dependency" not in job and "waitfor" not in job) or not isinstance(own, list | tuple):
        return own
    return [callback for callback in own if not is_holding_callback(callback)]


def check_submission_size(jobs: int, work_items: int) -> None:
    """Refuse a submission of more than MAX_SUBMIT_JOBS jobs or MAX_SUBMIT_WORK_ITEMS items.

    Asked before any job is read (SubmitError naming the bound), so a submission far above
    them costs no more than their count.
    """
    if jobs > MAX_SUBMIT_JOBS:
        raise SubmitError(
            f"jobs: at most {MAX_SUBMIT_JOBS} jobs a submission, got {jobs}; submit more in"
            " several calls (each its own pgrp unless a job names one)"
        )
    if work_items > MAX_SUBMIT_WORK_ITEMS:
        raise SubmitError(
            f"jobs: at most {MAX_SUBMIT_WORK_ITEMS} work items a submission (all its jobs'"
            f" agendas), got {work_items}; submit more in several calls"
        )


def parse_submission(
    jobs: Any,
    check_trigger: TriggerCheck | None = None,
    check_language: LanguageCheck | None = None,
) -> list[NewJob]:
    """Every job of a submission, validated (SubmitError naming the first problem).

    ``check_trigger`` and ``check_language``: the executor's checks of a trigger
    expression and of a callback language (see ``TriggerCheck``); without them triggers
    and languages are stored unchecked.
    """
    if isinstance(jobs, Mapping | str | bytes) or not isinstance(jobs, Sequence):
        raise SubmitError("submit takes a list of job dicts")
    check_submission_size(len(jobs), 0)  # before counting the agendas of millions
    check_submission_size(len(jobs), sum(_agenda_length(job) for job in jobs))
    checks = Checks(check_trigger, check_language)
    # Counted from 1 like callbacks: "job 0" would read as a job id, which none has.
    return [_parse_job(number, job, checks) for number, job in enumerate(jobs, start=1)]


def _agenda_length(job: Any) -> int:
    """How many items a job's agenda lists; 0 for what is no agenda (refused later)."""
    agenda = job.get("agenda") if isinstance(job, Mapping) else None
    return len(agenda) if isinstance(agenda, list | tuple) else 0


# -- the store ----------------------------------------------------------------------------
