"""Pure conversions between the wire contract and the domain types, with request validation.

The one place where a message becomes a domain value and back: every servicer and every
client of another service in ``executor/api/`` converts here, so the shape of an
outcome, a usage or an event on the wire is written once.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Sequence
from typing import Final

from executor.api.struct_values import job_dict
from executor.bounds import MAX_ID, MAX_NAME_CHARS, MAX_SUBJOB_ID, code_size_problem
from executor.errors import InvalidRequestError
from executor.model import (
    ActionRecord,
    CallbackSpec,
    Event,
    Invocation,
    Language,
    Limits,
    Outcome,
    RunResult,
    Usage,
)
from executor.runs.history import RunRecord
from executor.runs.outbox_dead import DeadLetter
from executor.sandbox.limits import merge
from executor.triggers.decide import Fired
from executor.triggers.nodes import GLOBAL_TYPES, EventName, EventType
from executor.triggers.parsed import canonical_triggers, is_per_work
from executor.triggers.store_rows import LEVEL, StoredCallback
from supervisor_client.qbcallback.v1 import executor_pb2, types_pb2

# It names the run in logs, `.cb` headers and reports: nothing there may break a line.
_INVOCATION_ID: Final = re.compile(r"[!-~]{1,128}")
MAX_TRIGGER_BYTES: Final = 64 << 10
MAX_UINT32: Final = (1 << 32) - 1


def check_id(field: str, value: int, *, required: bool = False) -> int:
    """``value`` when it fits a stored id; InvalidRequestError naming the field otherwise.

    ``required``: the field names a job (no job has id 0), so 0 "is required" and the
    range stated starts at 1; otherwise 0 means none, or all.
    """
    if required and not value:
        raise InvalidRequestError(f"{field} is required")
    lowest = 1 if required else 0
    if not lowest <= value <= MAX_ID:
        raise InvalidRequestError(f"{field} = {value} is out of range ({lowest} to {MAX_ID})")
    return value


def check_text(field: str, value: str) -> str:
    """``value`` when it holds no NUL; InvalidRequestError naming the field otherwise.

    PostgreSQL's text cannot hold U+0000, so a fleet would fail to store it (INTERNAL)
    where SQLite keeps it: every stored string is refused alike on both stores.
    """
    if "\0" in value:
        raise InvalidRequestError(
            f"{field} holds a NUL character (U+0000), which no stored text may hold"
        )
    return value


def check_name(field: str, value: str) -> str:
    """``value`` when it is at most MAX_NAME_CHARS characters without a NUL (``check_text``).

    InvalidRequestError naming the field otherwise.
    """
    if len(value) > MAX_NAME_CHARS:
        raise InvalidRequestError(
            f"{field} is {len(value)} characters; the limit is {MAX_NAME_CHARS}"
        )
    return check_text(field, value)


def check_instance(field: str, value: int, *, none: bool = True, presence: bool = True) -> int:
    """An instance number, 0 or more (-1 too, meaning none, when ``none``); InvalidRequestError else.

    -1 is what a wire field without presence says for "no instance" (WorkItem.subid), and
    what ``qb.subid()`` answers then; any other negative number is no instance's. The
    message says what unset means: none for an ``optional`` field (``presence``), instance 0
    for one without presence (WorkItem.subid).
    """
    if value < (-1 if none else 0):
        meaning = ""
        if none:
            unset = "(or unset) means none" if presence else "means none (unset is 0, instance 0)"
            meaning = f"; -1 {unset}"
        raise InvalidRequestError(f"{field} = {value}: an instance number is 0 or more{meaning}")
    return value


def _in(where: str, field: str) -> str:
    """``field`` of the message ``where`` names ("job" -> "job.name"); alone when ``where`` is ""."""
    return f"{where}.{field}" if where else field


# The Job fields that name something (each at most MAX_NAME_CHARS).
_JOB_NAMES: Final = ("name", "label", "status", "user", "prototype", "mailaddress")


def check_job(job: types_pb2.Job, where: str) -> None:
    """A job as a request gives it is one the executor can keep; ``where`` names the job field.

    (``where`` "": the fields are named alone, as the farm names them in a submitted job.)

    Its id is required (a pgrp of 0 is the job's own id, a pid of 0 no parent) and its ids
    fit what the executor stores, its instance numbers are 0 or more (a work item's
    ``subid`` -1: none), and its names fit MAX_NAME_CHARS; neither they nor its callbacks'
    code and triggers hold a NUL (``check_text``).
    """
    check_id(_in(where, "id"), job.id, required=True)
    for name in ("pgrp", "pid"):
        check_id(_in(where, name), getattr(job, name))
    for name in _JOB_NAMES:
        check_name(_in(where, name), getattr(job, name))
    limit = MAX_NAME_CHARS
    for index, item in enumerate(job.agenda):
        # A big job's 20,000 items: the field names are only spelled out for a bad one.
        names = (item.name, item.status, item.host)
        if max(map(len, names)) > limit or item.subid < -1 or any("\0" in n for n in names):
            at = _in(where, f"agenda[{index}]")
            for name in ("name", "status", "host"):
                check_name(f"{at}.{name}", getattr(item, name))
            check_instance(f"{at}.subid", item.subid, presence=False)
    for index, sub in enumerate(job.subjobs):
        at = _in(where, f"subjobs[{index}]")
        check_instance(f"{at}.id", sub.id, none=False)
        check_name(f"{at}.status", sub.status)
        check_name(f"{at}.host", sub.host)
    for index, callback in enumerate(job.callbacks):
        check_name(_in(where, f"callbacks[{index}].user"), callback.user)
        check_name(_in(where, f"callbacks[{index}].language"), callback.language)
        check_text(_in(where, f"callbacks[{index}].triggers"), callback.triggers)
        check_text(_in(where, f"callbacks[{index}].code"), callback.code)


def check_agenda(job: types_pb2.Job, where: str) -> None:
    """Each work item of the job's agenda has a name, one no other item has."""
    first: dict[str, int] = {}
    for index, item in enumerate(job.agenda):
        if not item.name:
            raise InvalidRequestError(f"{_in(where, f'agenda[{index}].name')} is empty")
        seen = first.setdefault(item.name, index)
        if seen != index:
            raise InvalidRequestError(
                f"{_in(where, f'agenda[{index}].name')}: {item.name!r} is also"
                f" {_in(where, f'agenda[{seen}]')}'s; a job's work names are unique"
            )


def saturated(count: int) -> int:
    """A count as a uint32 field carries it: at most 2^32-1 (counts saturate, never wrap)."""
    return min(count, MAX_UINT32)


_OUTCOMES: Final = {
    outcome: executor_pb2.Outcome.Value(f"OUTCOME_{outcome.value}") for outcome in Outcome
}


def outcome_message(outcome: Outcome) -> executor_pb2.Outcome.ValueType:
    """The wire enum of an outcome."""
    return _OUTCOMES[outcome]


def outcome_from_message(value: int) -> Outcome | None:
    """The outcome a wire enum value names; None for OUTCOME_UNSPECIFIED.

    Raises InvalidRequestError for a number this contract does not know.
    """
    if value == 0:
        return None
    if value not in executor_pb2.Outcome.values():
        raise InvalidRequestError(f"outcome: unknown value {value}")
    return Outcome(
        executor_pb2.Outcome.Name(executor_pb2.Outcome.ValueType(value)).removeprefix("OUTCOME_")
    )


def usage_message(usage: Usage) -> executor_pb2.Usage:
    """The wire form of a run's resource usage."""
    return executor_pb2.Usage(
        wall_seconds=usage.wall_seconds,
        cpu_seconds=usage.cpu_seconds,
        peak_rss_bytes=usage.peak_rss_bytes,
        queue_seconds=usage.queue_seconds,
    )


_LIMIT_NAMES: Final = tuple(f.name for f in dataclasses.fields(Limits))


def _limits(message: executor_pb2.Limits) -> Limits:
    # The proto message and the dataclass name their fields alike, one for one.
    return Limits(**{name: getattr(message, name) for name in _LIMIT_NAMES})


def event_message(event: Event) -> types_pb2.Event:
    """The wire form of a triggering event: the job id as context, the item as extra."""
    return types_pb2.Event(
        name=event.name, type=event.type, context=event.context, extra=event.item
    )


def invocation_from_request(
    request: executor_pb2.ExecuteRequest,
    *,
    default_limits: Limits,
    max_limits: Limits,
    policy: str = "job",
    cap_name: str = "the server's cap",
) -> Invocation:
    """Validate an ExecuteRequest into an Invocation under ``policy``; InvalidRequestError names the field."""
    callback = request.callback
    if not callback.language.strip():
        raise InvalidRequestError("callback.language is required (python, perl, qube or mail)")
    check_name("callback.language", callback.language)  # before it is named as unsupported
    if not callback.code.strip() and callback.language.strip().lower() != Language.MAIL:
        raise InvalidRequestError("callback.code is empty: there is nothing to run")
    if (too_large := code_size_problem(callback.code)) is not None:
        raise InvalidRequestError(f"callback.code {too_large}")
    # Carried, never parsed: the caller matched it (Execute runs what a scheduler fired
    # with its own engine, whose grammar may differ); it labels the run, the ALREADY_EXISTS
    # identity, the report and a mail.
    if len(callback.triggers.encode()) > MAX_TRIGGER_BYTES:
        raise InvalidRequestError(f"callback.triggers is longer than {MAX_TRIGGER_BYTES} bytes")
    check_text("callback.triggers", callback.triggers)  # the history keeps it
    check_name("callback.user", callback.user)
    if request.invocation_id and not _INVOCATION_ID.fullmatch(request.invocation_id):
        raise InvalidRequestError(
            "invocation_id: 1 to 128 printable ASCII characters, no spaces (a UUID, say); "
            f"got {request.invocation_id[:40]!r}"
        )
    if not request.HasField("context") or not request.context.job.id:
        raise InvalidRequestError("context.job.id is required: a callback runs in a job's context")
    context = request.context
    check_job(context.job, "context.job")
    check_name("context.work_name", context.work_name)
    if context.HasField("subjob_id"):
        check_instance("context.subjob_id", context.subjob_id)
    return Invocation(
        invocation_id=request.invocation_id or str(uuid.uuid4()),
        callback=CallbackSpec(
            language=callback.language.strip().lower(),
            code=callback.code,
            triggers=callback.triggers,
            id=callback.id,
            user=callback.user,
            count=callback.count,
            maximum=callback.maximum,
        ),
        job=job_dict(context.job, "context.job"),
        # Without limits the defaults hold, and they are within the caps (config).
        limits=(
            merge(_limits(request.limits), default_limits, max_limits, cap_name)
            if request.HasField("limits")
            else default_limits
        ),
        event=_triggering_event(context.event, context.job) if context.HasField("event") else None,
        work_name=context.work_name,
        subjob_id=context.subjob_id if context.HasField("subjob_id") else -1,
        policy=policy,
    )


# What an Execute's triggering event may be called: any event the trigger grammar
# knows, clock events and `done` included (a scheduler describes what fired the
# callback), as `cbexec run --event` takes them.
_EVENT_NAMES: Final = tuple(name.value for name in EventName)
_EVENT_TYPES: Final = tuple(type_.value for type_ in EventType)


def _subjob_extra(text: str) -> bool:
    """Whether ``text`` is what a subjob event's extra may be: none, '*' or an instance."""
    if text in ("", "*"):
        return True
    return text.isascii() and text.isdigit() and len(text) <= 12 and int(text) <= MAX_SUBJOB_ID


def _triggering_event(wire: types_pb2.Event, job: types_pb2.Job) -> Event | None:
    """ExecuteRequest's ``context.event``; None when it is empty, else checked by field.

    Its context names a job as the trigger engine resolves one for ``job``, as far as
    the request tells: ``self``, ``parent`` (its pid), its own label. Another label is
    left unresolved here (the servicer asks the trigger engine's registrations).
    """
    if not wire.name:
        if wire.type or wire.context or wire.extra:
            raise InvalidRequestError(
                "context.event.name is required for an event with a type, context or extra"
                f" ({', '.join(_EVENT_NAMES)})"
            )
        return None
    if wire.name not in _EVENT_NAMES:
        raise InvalidRequestError(
            f"context.event.name: unknown event name {wire.name!r}; expected one of "
            f"{', '.join(_EVENT_NAMES)}"
        )
    if wire.type not in _EVENT_TYPES:
        raise InvalidRequestError(
            f"context.event.type: unknown event type {wire.type!r}; expected one of "
            f"{', '.join(_EVENT_TYPES)}"
        )
    check_name("context.event.context", wire.context)
    check_name("context.event.extra", wire.extra)
    if wire.context.isascii() and wire.context.isdigit():  # the job it happened to, by id
        check_id("context.event.context", int(wire.context))
    if wire.type == EventType.SUBJOB and not _subjob_extra(wire.extra.strip()):
        # As the grammar reads a subjob atom's extra: qb.subid() would show -5 otherwise.
        raise InvalidRequestError(
            f"context.event.extra: bad subjob id {wire.extra!r}; expected a subjob id "
            f"(0, 1, ... {MAX_SUBJOB_ID}) or '*'"
        )
    # The grammar reads `self` and `parent` as contexts, never as a job's label. None
    # given (`cbexec run --event complete-job`) is the job's own, but for a global event.
    jobs = {job.label: job.id} if job.label else {}
    jobs |= {"self": job.id, **({"parent": job.pid} if job.pid else {})}
    if wire.type not in GLOBAL_TYPES:
        jobs[""] = job.id
    return Event.from_atom_form(wire.name, wire.type, wire.context, wire.extra, jobs=jobs)


def response_from_result(result: RunResult) -> executor_pb2.ExecuteResponse:
    """The wire form of a run's result."""
    response = executor_pb2.ExecuteResponse(
        invocation_id=result.invocation_id,
        outcome=outcome_message(result.outcome),
        exit_code=result.exit_code,
        signal=result.signal,
        stdout=result.stdout,
        stderr=result.stderr,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
        usage=usage_message(result.usage),
    )
    if result.failure is not None:
        response.failure.message = result.failure.message
        response.failure.exception_type = result.failure.exception_type
        response.failure.traceback = result.failure.traceback
    response.actions.extend(action_message(action) for action in result.actions)
    return response


def action_message(action: ActionRecord) -> executor_pb2.Action:
    """The wire form of one action record."""
    return executor_pb2.Action(
        verb=action.verb, target=action.target, ok=action.ok, message=action.message
    )


# -- the event path ---------------------------------------------------------------------

# The event types a scheduler publishes; clock events are the executor's own.
PUBLISHABLE_TYPES: Final = frozenset({"job", "work", "subjob", "host"})
# The item fields each event type has; the others are dropped, so a stray work_name on
# a job event never reaches qb.workid(). A work event may say which instance worked the
# item (qb.subid()) and where; a subjob event where its instance ran.
EVENT_FIELDS: Final[dict[str, frozenset[str]]] = {
    "job": frozenset(),
    "work": frozenset({"work_name", "subjob_id", "host"}),
    "subjob": frozenset({"subjob_id", "host"}),
    "host": frozenset({"host"}),
}
# The event names a scheduler publishes: every name the trigger grammar knows (Qube's
# list and timeout) but `done`, which the engine derives from complete, failed and
# killed, and `dummy`, the name of the executor's own clock events. The grammar takes
# each of them with any of the publishable types, so they are accepted with any.
PUBLISHABLE_NAMES: Final = tuple(
    name.value for name in EventName if name not in (EventName.DONE, EventName.DUMMY)
)
_PUBLISHABLE_TYPE_ORDER: Final = ("job", "work", "subjob", "host")
# Items of one RegisterJob's published_events: the names in all their forms are some
# fifty, and each item is checked on the event loop (2 million took 0.6 s).
MAX_PUBLISHED_EVENTS: Final = 1000


def _event_name(name: str, field: str) -> None:
    """InvalidRequestError (naming ``field``) for a name no trigger can wait for."""
    if name == EventName.DONE:
        raise InvalidRequestError(
            f"{field}: 'done' is derived from complete, failed and killed; publish those"
        )
    if name not in PUBLISHABLE_NAMES:
        raise InvalidRequestError(
            f"{field}: unknown event name {name!r}; expected one of {', '.join(PUBLISHABLE_NAMES)}"
        )


def event_from_request(
    request: executor_pb2.PublishEventRequest | executor_pb2.DryRunRequest,
) -> Event:
    """Validate a published (or simulated) event; InvalidRequestError names the field."""
    if not request.name:
        raise InvalidRequestError("name is required (complete, failed, killed, running, ...)")
    _event_name(request.name, "name")
    if request.type not in PUBLISHABLE_TYPES:
        raise InvalidRequestError(
            f"type {request.type!r} cannot be published; "
            f"expected one of {', '.join(sorted(PUBLISHABLE_TYPES))}"
        )
    check_id("job_id", request.job_id, required=True)
    event_id = request.event_id if isinstance(request, executor_pb2.PublishEventRequest) else ""
    check_name("work_name", request.work_name)
    check_name("host", request.host)
    check_name("event_id", event_id)
    # -1 says "no instance" as leaving it unset does (qb.subid() answers -1 then).
    subjob_id = (
        check_instance("subjob_id", request.subjob_id) if request.HasField("subjob_id") else -1
    )
    if request.type == "work" and not request.work_name:
        raise InvalidRequestError("work_name is required for work events")
    if request.type == "subjob" and subjob_id == -1:
        raise InvalidRequestError("subjob_id is required for subjob events (0 or more)")
    if request.type == "host" and not request.host:
        raise InvalidRequestError("host is required for host events")
    has = EVENT_FIELDS[request.type]
    return Event(
        name=request.name,
        type=request.type,
        job_id=request.job_id,
        work_name=request.work_name if "work_name" in has else "",
        subjob_id=subjob_id if "subjob_id" in has else -1,
        host=request.host if "host" in has else "",
        event_id=event_id,
    )


def published_events(values: Sequence[str]) -> frozenset[str]:
    """RegisterJobRequest.published_events, validated: each "NAME" or "NAME-TYPE".

    Blank items are skipped. InvalidRequestError naming ``published_events[i]`` for an
    item that is not a publishable event name, optionally with a publishable type, and
    for more than ``MAX_PUBLISHED_EVENTS`` items.
    """
    if len(values) > MAX_PUBLISHED_EVENTS:
        raise InvalidRequestError(
            f"published_events: at most {MAX_PUBLISHED_EVENTS} items, got {len(values)};"
            " each NAME or NAME-TYPE once is enough"
        )
    found: set[str] = set()
    for index, raw in enumerate(values):
        text = raw.strip()
        if not text:
            continue
        field = f"published_events[{index}]"
        name, dash, type_ = text.partition("-")
        _event_name(name, field)
        if dash and type_ not in PUBLISHABLE_TYPES:
            raise InvalidRequestError(
                f"{field}: unknown event type {type_!r} in {text!r}; expected NAME or NAME-TYPE "
                f"with a type of {', '.join(_PUBLISHABLE_TYPE_ORDER)}"
            )
        found.add(text)
    return frozenset(found)


def mode_message(mode: str) -> types_pb2.TriggerMode.ValueType:
    """The wire enum of a callback's trigger mode."""
    return types_pb2.TRIGGER_MODE_LEVEL if mode == LEVEL else types_pb2.TRIGGER_MODE_EDGE


def registered_message(
    callback: StoredCallback, latches: tuple[bool, ...] | None = None
) -> executor_pb2.RegisteredCallback:
    """The wire form of a registered callback (with ``latches`` instead of its own, if given)."""
    return executor_pb2.RegisteredCallback(
        mode=mode_message(callback.mode),
        per_work_item=is_per_work(callback.triggers),
        job_id=callback.job_id,
        id=callback.callback_id,
        triggers=callback.triggers,
        canonical_triggers=canonical_triggers(callback.triggers),
        language=callback.language,
        universal=callback.universal,
        source=callback.source,
        count=saturated(callback.count),
        maximum=saturated(callback.maximum),
        latches=list(callback.latches if latches is None else latches),
    )


def firing_message(fired: Fired) -> executor_pb2.Firing:
    """The wire form of one callback an event fired (with its result, when it has one)."""
    message = executor_pb2.Firing(
        job_id=fired.callback.job_id,
        callback_id=fired.callback.callback_id,
        triggers=fired.callback.triggers,
        language=fired.callback.language,
        universal=fired.callback.universal,
        invocation_id=fired.invocation_id,
        work_name=fired.work_name,
        refusal=fired.refusal,
        shadow=fired.shadow,
    )
    if fired.result is not None:
        message.result.CopyFrom(response_from_result(fired.result))
    return message


# -- run history ----------------------------------------------------------------------


def run_message(record: RunRecord) -> executor_pb2.Run:
    """The wire form of a history record (with ``result`` when the record has it)."""
    run = executor_pb2.Run(
        invocation_id=record.invocation_id,
        job_id=record.job_id,
        callback_id=record.callback_id,
        triggers=record.triggers,
        language=record.language,
        outcome=outcome_message(record.outcome),
        started_at=record.started_at,
        usage=usage_message(record.usage),
        work_name=record.work_name,
        source=record.source,
        policy=record.policy,
        shadow=record.shadow,
    )
    if record.event is not None:
        run.event.CopyFrom(event_message(record.event))
    if record.result is not None:
        run.result.CopyFrom(response_from_result(record.result))
    return run


def dead_letter_message(letter: DeadLetter) -> executor_pb2.DeadLetter:
    """The wire form of a result the outbox set aside."""
    return executor_pb2.DeadLetter(
        invocation_id=letter.key,
        created_at=letter.created_at,
        dead_at=letter.dead_at,
        attempts=letter.attempts,
        last_error=letter.last_error,
        size_bytes=letter.size_bytes,
    )
