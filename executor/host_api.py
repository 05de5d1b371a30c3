"""The host API: every ``qb`` function a callback calls, parsed and carried out in the executor.

One table for all languages: the Python ``qb`` module, the Perl ``qb`` package and the
qube code strings all send ``(fn, args, kwargs)`` here, so argument forms, range
expansion, permissions (the supervisor checks the callback owner, ``actor``) and the
recorded actions are the same everywhere.

Argument forms (Qube's, qube-callbacks.md §3.5; read by ``host_args.py``, which refuses
a call that does not fit its function with ``InvalidArgument``):
- jobs: an id (int or string of ASCII digits), or a list of them: ``qb.unblock(12)``;
- work items: ``'<jobid>:<workname>'``; a name may be a comma list and a numeric range
  ``'12:1-10'`` names frames 1..10, unless an item is literally named ``1-10`` (a chunk),
  which wins, as an item named exactly as the whole spec (``5,6``) does; a list of such
  strings is accepted; a qube ``<verb>-work-self`` sends the item that fired as an
  ``ExactWork``, never read as a spec;
- instances: ``'<jobid>.<subid>'``, or ``'<jobid>'`` for all instances;
- ``jobinfo('-id', n)``, ``jobinfo('-pgrp', n)``, ``jobinfo(id=n)``, ``jobinfo(pgrp=n)``,
  ``jobinfo(n)``, and no selector meaning the callback's own job, with Qube's client
  keywords (``callbacks``, ``fields``, ``status``, ``agenda``, ``subjobs``) as
  ``jobinfo_args.py`` reads them; an unknown job id reads ``[]``.

Effects are numbered: every supervisor action request (one per job, per work target,
per instance target) and every mail takes the run's next ``action_seq``, from 1, in the
order the callback makes them. A verb call takes one number per target as it is made,
before its arguments or the policy are checked or anything is read or sent, and keeps
them whether its requests are then sent or not (a work verb's read of the job failed,
an earlier target was refused, the policy refused it): what the supervisor answered,
now or before, never moves the numbers of later calls. So a re-run of the same
callback with the same invocation id numbers the same actions the same way, and the
supervisor applies each ``(invocation_id, action_seq)`` once (supervisor.proto). Reads
take no number.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from executor.bounds import (
    ACTION_FRAMING_BYTES,
    MAX_ACTIONS_BYTES,
    MAX_MESSAGE_CHARS,
    MAX_TARGET_CHARS,
    MAX_VERB_CHARS,
    cut,
    utf8_size,
)
from executor.child.protocol import CallFrame, ReplyFrame
from executor.dependency_release import dependency_release_verb
from executor.errors import HostCallError
from executor.host_args import (
    JOB_TARGETS,
    STATUS_SHAPES,
    SUBJOB_TARGETS,
    WORK_TARGETS,
    ExactWork,
    Shape,
    Spelling,
    check_shape,
    flatten,
    parse_job_id,
    parse_subjob_target,
    parse_work_target,
)
from executor.jobinfo_args import read_jobinfo
from executor.model import ActionRecord, Invocation
from executor.plurals import counted
from executor.policies import READ_FUNCTIONS, Policy, canonical_verb
from executor.supervisor_link import (
    JOB_VERBS,
    SUBJOB_VERBS,
    WORK_VERBS,
    ActionOutcome,
    SupervisorPort,
    not_one_job,
)

logger = logging.getLogger(__name__)

MAX_CALLS_PER_RUN: Final = 10_000
# action_seq is a uint32 on the wire.
MAX_ACTION_SEQ: Final = 2**32 - 1
# A work verb's range over an agenda of at least this many items is expanded on a thread.
THREADED_AGENDA: Final = 1000
CUT_SHORT: Final = "cut short: the run ended while the supervisor had it; it may have been applied"
# What a callback is told of a qb call an executor bug ended (the traceback is the log's).
INTERNAL_ERROR: Final = "internal error in the executor"
# ASCII digits only, as ids (host_args.py): a frame named with a full-width 1 is not frame 1.
_RANGE = re.compile(r"^(-?[0-9]+)-(-?[0-9]+)$")
_INTEGER = re.compile(r"-?[0-9]+")
_T = TypeVar("_T")
_ALIASES: Final = {"retire": "complete"}


def _checked_answer(job_id: int, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A supervisor's jobs for one id: none, or that one job; anything else is its error."""
    wrong = not_one_job(job_id, len(jobs), [job.get("id") for job in jobs[:5]])
    if wrong is not None:
        raise wrong
    return jobs


def _total(outcomes: list[ActionOutcome]) -> tuple[int, str]:
    """A verb's value (how many changed) and its recorded summary, over all its targets."""
    return sum(o.changed for o in outcomes), "; ".join(o.message for o in outcomes)


def _with_instances(missing: str, subjobs: list[Any]) -> str:
    """``job 12 has no instance 5`` saying the job is there, and how many instances it has."""
    has = counted(len(subjobs), "instance") if subjobs else "no instances"
    return f"{missing} (the job exists, with {has})"


async def _each(
    targets: list[_T], seqs: range, act: Callable[[_T, int], Awaitable[ActionOutcome]]
) -> tuple[int, str]:
    """A verb over its targets in order: how many changed, and its summary.

    Each target is its own supervisor request, with its own number from ``seqs``,
    applied as it comes. When one is refused, those before it stay applied, and the
    error the callback sees says so; those after it are not sent, and their numbers
    stay unused.
    """
    outcomes: list[ActionOutcome] = []
    for target, action_seq in zip(targets, seqs, strict=True):
        try:
            outcomes.append(await act(target, action_seq))
        except HostCallError as err:
            if not outcomes:
                raise
            changed, summary = _total(outcomes)
            raise HostCallError(
                err.kind,
                f"{err.message}; the {len(outcomes)} target(s) before it were acted on "
                f"({changed} changed: {summary})",
            ) from err
    return _total(outcomes)


def _spec_parts(spec: str) -> list[str]:
    """A work spec's comma-separated parts, stripped, each once, in order."""
    return list(dict.fromkeys(part.strip() for part in spec.split(",")))


def plain_work_names(spec: str) -> list[str] | None:
    """The names a spec of plain names selects; None when it holds a range.

    A range (``1-10``) is matched numerically against every frame (``007`` is frame 7),
    and may be a chunk's literal name, so only a whole agenda can expand it; a plain
    name selects the one item of that name, which a read of that item alone finds.
    """
    parts = _spec_parts(spec)
    return None if any(_RANGE.match(part) for part in parts) else parts


def expand_work_names(spec: str, agenda_names: list[str]) -> list[str]:
    """Work names a spec like '5', '1-10', 'a,b' or '3,7-9' selects in an agenda.

    Each item once, in the order the spec names them (a range's in frame order). A name
    not in the agenda is NoSuchWork; a range selects those of its frames that exist, and
    the spec is NoSuchWork only when it selects nothing at all: ``'3,7-9'`` is frame 3
    when 7-9 has none, as Qube applies a work list to the frames that exist. Linear in
    the spec and the agenda whatever the spec repeats or overlaps: it comes from a
    callback (on the event loop, unless the agenda has ``THREADED_AGENDA`` items).
    """
    selection = WorkSelection(agenda_names)
    selection.add(spec)
    return selection.names


class WorkSelection:
    """The items several work specs select in one agenda, each once, in the order named.

    What ``expand_work_names`` gives for the specs joined, each spec judged alone: one
    that names nothing in the agenda is NoSuchWork, one whose items an earlier spec took
    is not. The agenda is read once, so each spec costs
    only its own parts and the items it newly selects: a FarmService.ChangeWork listing
    30,000 names is one pass, not one pass over the agenda per name.
    """

    def __init__(self, agenda_names: list[str]) -> None:
        self._known = set(agenda_names)
        self._numbered = sorted(
            (int(name), position, name)
            for position, name in enumerate(agenda_names)
            if _INTEGER.fullmatch(name)
        )
        self._numbers = [number for number, _, _ in self._numbered]
        # Next position in ``_numbered`` not taken yet (a skip list with path halving), so
        # each agenda item is visited once over all the ranges of all the specs.
        self._following = list(range(len(self._numbered) + 1))
        self._selected: dict[str, None] = {}

    @property
    def names(self) -> list[str]:
        """The items selected so far, each once, in the order the specs named them."""
        return list(self._selected)

    def _untaken(self, position: int) -> int:
        following = self._following
        while following[position] != position:
            following[position] = following[following[position]]
            position = following[position]
        return position

    def add(self, spec: str) -> None:
        """Select the items ``spec`` names; HostCallError NoSuchWork when it names none.

        A spec that is exactly an item's name is that item, as a chunk named ``1-10``
        wins over the range: ``'12:' + qb.workid()`` names the item that fired, even one
        named ``5,6`` or `` 5``.
        """
        if spec in self._known:
            self._selected[spec] = None
            return
        selects = False
        empty_ranges: list[str] = []
        for part in _spec_parts(spec):
            if part in self._known:
                self._selected[part] = None
                selects = True
                continue
            match = _RANGE.match(part)
            if not match:
                raise HostCallError("NoSuchWork", f"no work item {part!r}")
            low, high = sorted((int(match.group(1)), int(match.group(2))))
            first = bisect.bisect_left(self._numbers, low)
            end = bisect.bisect_right(self._numbers, high)
            if first == end:
                empty_ranges.append(repr(part))
                continue
            selects = True
            position = self._untaken(first)
            while position < end:
                self._selected[self._numbered[position][2]] = None
                self._following[position] = position + 1
                position = self._untaken(position + 1)
        if not selects:
            named = ", ".join(empty_ranges[:3])
            if len(empty_ranges) > 3:  # a callback's spec may hold thousands
                named += f" and {len(empty_ranges) - 3} more"
            ranges = "range" if len(empty_ranges) == 1 else "ranges"
            raise HostCallError("NoSuchWork", f"no work items in {ranges} {named}")


def _target(args: list[Any], kwargs: dict[str, Any]) -> str:
    """What a call acted on, for its action record (built no longer than it can be kept)."""
    parts: list[str] = []
    size = 0
    for part in [*(str(a) for a in flatten(args))] or [f"{k}={v}" for k, v in kwargs.items()]:
        parts.append(part)
        size += len(part) + 2
        if size > MAX_TARGET_CHARS:
            break
    return cut(", ".join(parts), MAX_TARGET_CHARS)


class ActionLog:
    """A run's qb calls as action records, within a stated size.

    Each record's fields are cut to ``MAX_*_CHARS`` with a marker; once the records hold
    ``MAX_ACTIONS_BYTES`` (their UTF-8 text and ``ACTION_FRAMING_BYTES`` each), later
    calls are counted but not kept, and one last record says how many were left out.
    What a callback makes the executor hold and send for its actions is therefore
    bounded, however many calls it makes.
    """

    def __init__(self, budget_bytes: int = MAX_ACTIONS_BYTES) -> None:
        self._budget = budget_bytes
        self._used = 0
        self._kept: list[ActionRecord] = []
        self._left_out = 0

    def add(self, verb: str, target: str, ok: bool, message: str) -> None:
        record = ActionRecord(
            cut(verb, MAX_VERB_CHARS), target, ok, cut(message, MAX_MESSAGE_CHARS)
        )
        size = (
            utf8_size(record.verb)
            + utf8_size(record.target)
            + utf8_size(record.message)
            + ACTION_FRAMING_BYTES
        )
        if self._left_out or self._used + size > self._budget:
            self._left_out += 1
            return
        self._used += size
        self._kept.append(record)

    @property
    def records(self) -> list[ActionRecord]:
        if not self._left_out:
            return self._kept
        note = ActionRecord(
            "…",
            f"{self._left_out} more qb calls",
            False,
            f"not recorded: a run's actions are kept up to {self._budget} bytes",
        )
        return [*self._kept, note]


# What a verb returns in a shadow run: nothing was changed, so no item counts as changed.
SHADOW_VALUE: Final = 0


class HostApi:
    """The qb functions of one run; records every call as an action, failed or not.

    Its ``policy`` says which actions the run may take (``verbs``); a refused one raises
    ``PermissionDenied`` in the callback, naming the setting. The callback that releases
    its job as a dependency does may unblock it whatever the ``verbs``
    (dependency_release.py). In a *shadow* run
    (``invocation.shadow``) reading works as always, and each action is checked and
    recorded as ``shadow: would <verb> <target>`` but never sent to the supervisor: it
    returns ``SHADOW_VALUE`` (0, no item changed).
    """

    def __init__(
        self, supervisor: SupervisorPort, invocation: Invocation, policy: Policy | None = None
    ) -> None:
        self._supervisor = supervisor
        self._invocation = invocation
        self._policy = policy
        self._log = ActionLog()
        self._calls = 0
        self._action_seq = 0
        self._spelling = Spelling.of(invocation.callback.language)
        self._dependency_verb = dependency_release_verb(invocation)

    def take_action_seqs(self, count: int) -> range:
        """The numbers of the run's next ``count`` effects (supervisor actions, mail), from 1.

        A call takes all of its numbers at once, as it is made (the module docstring).
        """
        if self._action_seq + count > MAX_ACTION_SEQ:
            raise HostCallError(
                "QbError",
                f"a run's effects are numbered up to {MAX_ACTION_SEQ} (action_seq); "
                f"{self._action_seq} are taken, and this call's {count} target(s) would pass it",
            )
        first = self._action_seq + 1
        self._action_seq += count
        return range(first, first + count)

    def next_action_seq(self) -> int:
        """The number of the run's next effect: a supervisor action or a mail."""
        return self.take_action_seqs(1)[0]

    @property
    def actions(self) -> list[ActionRecord]:
        """The run's calls so far, within the action log's bounds."""
        return self._log.records

    def note(self, verb: str, target: str, message: str, *, ok: bool = True) -> None:
        """Record an action taken outside qb (a shadow run's unsent mail, a mail cut short)."""
        self._log.add(verb, target, ok, message)

    @functools.cached_property
    def _functions(self) -> dict[str, tuple[Callable[..., Awaitable[Any]], Shape | None]]:
        """Every qb function by name, with what it takes (None: jobinfo reads its own).

        A read is called with the call's arguments; a verb with its numbers and then its
        targets.
        """
        functions: dict[str, tuple[Callable[..., Awaitable[Any]], Shape | None]] = {
            "jobinfo": (self.jobinfo, None),
            "jobstatus": (self.jobstatus, STATUS_SHAPES["jobstatus"]),
            "workstatus": (self.workstatus, STATUS_SHAPES["workstatus"]),
            "subjobstatus": (self.subjobstatus, STATUS_SHAPES["subjobstatus"]),
        }
        for verb in (*JOB_VERBS, *_ALIASES):
            functions[verb] = (self._job_verb(_ALIASES.get(verb, verb)), JOB_TARGETS)
        for verb in (*WORK_VERBS, *_ALIASES):
            call = self._work_verb(_ALIASES.get(verb, verb))
            functions["work" + verb] = (call, WORK_TARGETS)
            functions[verb + "work"] = (call, WORK_TARGETS)
        for verb in SUBJOB_VERBS:
            functions["subjob" + verb] = (self._subjob_verb(verb), SUBJOB_TARGETS)
        return functions

    async def call(self, fn: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run one qb call; raises HostCallError for the callback to see."""
        if self._calls >= MAX_CALLS_PER_RUN:
            raise HostCallError(
                "QbError", f"a callback may make at most {MAX_CALLS_PER_RUN} qb calls"
            )
        self._calls += 1
        entry = self._functions.get(fn)
        target = _target(args, kwargs)
        if entry is None:
            error = HostCallError(
                "InvalidArgument", f"qb has no function {cut(fn, MAX_VERB_CHARS)!r}"
            )
            self._log.add(fn, target, False, error.message)
            raise error
        function, shape = entry
        try:
            # First, so that nothing this call or an earlier one met moves its numbers.
            seqs = None if fn in READ_FUNCTIONS else self.take_action_seqs(len(flatten(args)))
            self._check_policy(fn)
            if shape is not None:
                check_shape(fn, shape, args, kwargs, self._spelling)
            if seqs is None:
                value, summary = await function(*args, **kwargs)
            elif self._invocation.shadow:
                self._log.add(fn, target, True, f"shadow: would {fn} {target}; not applied")
                return SHADOW_VALUE
            else:
                value, summary = await function(seqs, *args)  # check_shape refused kwargs
        except HostCallError as err:
            self._log.add(fn, target, False, f"{err.kind}: {err.message}")
            raise
        except asyncio.CancelledError:
            # The run ended (its limit, a stop) while the supervisor had the request: it
            # was made, and may have been applied, so it is listed all the same.
            self._log.add(fn, target, False, CUT_SHORT)
            raise
        except Exception:
            # An executor bug: the call was made all the same (a verb may have been sent
            # before it), so it is listed, with what the callback is told (serve_frame).
            self._log.add(fn, target, False, f"QbError: {INTERNAL_ERROR}")
            raise
        self._log.add(fn, target, True, summary)
        return value

    def _check_policy(self, fn: str) -> None:
        """PermissionDenied, naming the setting, for a call the run's policy does not allow."""
        if (
            self._policy is not None
            and not self._policy.allows_function(fn)
            and canonical_verb(fn) != self._dependency_verb
        ):
            name = self._policy.name
            raise HostCallError(
                "PermissionDenied",
                f"qb.{fn} is not allowed by the sandbox policy {name!r} of this callback "
                f"(policies.{name}.verbs)",
            )

    async def serve_frame(self, frame: CallFrame) -> ReplyFrame:
        """Answer one ``call`` frame from the child (checked by the bridge) with a ``reply``."""
        call_id = frame["id"]
        try:
            value = await self.call(frame["fn"], frame["args"], frame["kwargs"])
        except HostCallError as err:
            return {
                "type": "reply",
                "id": call_id,
                "ok": False,
                "error": {"kind": err.kind, "message": err.message},
            }
        except Exception:
            # An executor bug must not leave the callback waiting for a reply forever.
            logger.exception("qb.%s failed inside the executor", frame["fn"])
            return {
                "type": "reply",
                "id": call_id,
                "ok": False,
                "error": {"kind": "QbError", "message": INTERNAL_ERROR},
            }
        return {"type": "reply", "id": call_id, "ok": True, "value": value}

    # -- reading --------------------------------------------------------------------

    async def _jobs(
        self,
        job_id: int | None = None,
        pgrp: int | None = None,
        include_callbacks: bool = False,
        work_names: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The jobs asked for; ``work_names`` as ``SupervisorPort.job_info`` takes it.

        A read asks for no more of the agenda than it needs: for a 20,000-frame job the
        whole agenda costs the event loop (an embedded supervisor's included) about
        100 ms per read, a status without it well under 1 ms.
        """
        return await self._supervisor.job_info(
            job_id=job_id,
            pgrp=pgrp,
            include_callbacks=include_callbacks,
            actor=self._invocation.actor,
            work_names=work_names,
        )

    async def _job(self, job_id: int, work_names: list[str] | None = None) -> dict[str, Any]:
        """The job ``job_id`` names: NoSuchJob when the supervisor has none."""
        jobs = _checked_answer(job_id, await self._jobs(job_id=job_id, work_names=work_names))
        if not jobs:  # a supervisor may answer an unknown id so, rather than NOT_FOUND
            raise HostCallError("NoSuchJob", f"the supervisor has no job {job_id}")
        return jobs[0]

    def _job_id(self, value: Any) -> int:
        return parse_job_id(value, self._spelling)

    async def jobinfo(self, *args: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], str]:
        """One job, or one pgrp's jobs, as ``jobinfo_args.py`` reads the call.

        An unknown job id reads no job (``[]``), as an unknown pgrp reads none: Qube's
        client answers so, and Qube code tests ``if not qb.jobinfo(...)``.
        """
        request = read_jobinfo(list(args), kwargs, self._spelling)
        if request.pgrp is not None:
            if request.pgrp == 0:  # no pgrp has it (nor may it read as "not given")
                return [], "no pgrp 0"
            jobs = await self._jobs(
                pgrp=request.pgrp,
                include_callbacks=request.include_callbacks,
                work_names=request.work_names,
            )
            jobs = self._as_callbacks_see(request.shape(jobs))
            return jobs, f"{counted(len(jobs), 'job')} of pgrp {request.pgrp}"
        job_id = self._invocation.job_id if request.job_id is None else request.job_id
        if job_id == 0:
            # No job has id 0: not the callback's own job, which a parentless job's pid
            # (0) would otherwise have named.
            return [], "no job 0"
        try:
            jobs = await self._jobs(
                job_id=job_id,
                include_callbacks=request.include_callbacks,
                work_names=request.work_names,
            )
        except HostCallError as err:
            if err.kind != "NoSuchJob":
                raise
            return [], f"no job {job_id}"
        jobs = self._as_callbacks_see(request.shape(_checked_answer(job_id, jobs)))
        return jobs, f"job {job_id}" if jobs else "no job"

    def _as_callbacks_see(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each callback record with its ``pid`` (its job), and this run's own count.

        The trigger engine counts a firing before it runs (``qb.callback()['count']`` is
        1 in the first run); a supervisor learns the count from the run's report, after
        it. The running callback's own record says this run's count, not the older one.
        """
        own = self._invocation.callback
        for job in jobs:
            for record in job.get("callbacks") or ():
                if not isinstance(record, dict):
                    continue
                record["pid"] = job["id"]
                if (
                    job["id"] == self._invocation.job_id
                    and not own.source
                    and record.get("id") == own.id
                    and record.get("triggers") == own.triggers
                ):
                    record["count"] = max(int(record.get("count") or 0), own.count)
        return jobs

    async def jobstatus(self, job: Any) -> tuple[str, str]:
        info = await self._job(self._job_id(job), work_names=[])
        return str(info["status"]), str(info["status"])

    async def workstatus(self, target: Any) -> tuple[str, str]:
        job_id, name = parse_work_target(target, self._spelling)
        # The named read first; when its answer lacks the item (a supervisor that bends
        # the hint, or no such item), the whole agenda decides, as for a work verb.
        for work_names in ([name], None):
            info = await self._job(job_id, work_names=work_names)
            for work in info["agenda"]:
                if work["name"] == name:
                    return str(work["status"]), str(work["status"])
        raise HostCallError("NoSuchWork", f"job {job_id} has no work item {name!r}")

    async def subjobstatus(self, target: Any) -> tuple[str, str]:
        job_id, subids = parse_subjob_target(target, self._spelling)
        info = await self._job(job_id, work_names=[])
        subjobs = info["subjobs"]
        for sub in subjobs:
            if not subids or sub["id"] == subids[0]:
                return str(sub["status"]), str(sub["status"])
        # NoSuchJob, as a subjob verb's (Qube names an instance as a job: '12.5'), and
        # saying the job is there, only the instance is not.
        if not subids:
            raise HostCallError("NoSuchJob", f"job {job_id} has no instances (the job exists)")
        raise HostCallError(
            "NoSuchJob", _with_instances(f"job {job_id} has no instance {subids[0]}", subjobs)
        )

    # -- verbs (check_shape has made sure each has a target) --------------------------

    def _job_verb(self, verb: str) -> Callable[..., Awaitable[tuple[int, str]]]:
        async def job_verb(seqs: range, *targets: Any) -> tuple[int, str]:
            ids = [self._job_id(t) for t in flatten(targets)]

            async def act(job_id: int, action_seq: int) -> ActionOutcome:
                return await self._supervisor.job_action(
                    verb,
                    job_id,
                    actor=self._invocation.actor,
                    invocation_id=self._invocation.invocation_id,
                    action_seq=action_seq,
                )

            return await _each(ids, seqs, act)

        return job_verb

    def _work_verb(self, verb: str) -> Callable[..., Awaitable[tuple[int, str]]]:
        async def work_verb(seqs: range, *targets: Any) -> tuple[int, str]:
            async def act(target: Any, action_seq: int) -> ActionOutcome:
                if isinstance(target, ExactWork):
                    job_id, names = target.job_id, [await self._exact_work(target)]
                else:
                    job_id, spec = parse_work_target(target, self._spelling)
                    names = await self._selected_work(job_id, spec)
                return await self._supervisor.work_action(
                    verb,
                    job_id,
                    names,
                    actor=self._invocation.actor,
                    invocation_id=self._invocation.invocation_id,
                    action_seq=action_seq,
                )

            return await _each(flatten(targets), seqs, act)

        return work_verb

    async def _exact_work(self, target: ExactWork) -> str:
        """The item ``target`` names, as the job has it: NoSuchWork when it has none."""
        job_id, name = target.job_id, target.name
        # The named read first; a supervisor that bends the hint gets a full read.
        for work_names in ([name], None):
            info = await self._job(job_id, work_names=work_names)
            if any(work["name"] == name for work in info["agenda"]):
                return name
        raise HostCallError("NoSuchWork", f"job {job_id} has no work item {name!r}")

    async def _selected_work(self, job_id: int, spec: str) -> list[str]:
        """The items ``spec`` selects in job ``job_id``, reading no more than it needs.

        Plain names are read alone (with the whole spec, which may be one item's name);
        when that item, or every one of them, is there, they are the selection.
        A range, or a name the job lacks, takes a read of the whole agenda, and the
        expansion (or its NoSuchWork) is then exactly a full read's.
        """
        plain = plain_work_names(spec)
        if plain is not None:
            # The whole spec too: an item may be named '5,6' (the whole name wins).
            info = await self._job(job_id, work_names=list(dict.fromkeys([spec, *plain])))
            found = [work["name"] for work in info["agenda"]]
            if spec in found or set(plain) <= set(found):
                return expand_work_names(spec, found)
        agenda = (await self._job(job_id))["agenda"]

        def expanded() -> list[str]:
            return expand_work_names(spec, [work["name"] for work in agenda])

        try:
            if len(agenda) < THREADED_AGENDA:
                return expanded()
            # 100,000 items take ~90 ms of Python: every other run's wait on the loop.
            return await asyncio.to_thread(expanded)
        except HostCallError as err:
            raise HostCallError(err.kind, f"job {job_id}: {err.message}") from err

    def _subjob_verb(self, verb: str) -> Callable[..., Awaitable[tuple[int, str]]]:
        async def subjob_verb(seqs: range, *targets: Any) -> tuple[int, str]:
            async def act(target: Any, action_seq: int) -> ActionOutcome:
                job_id, subids = parse_subjob_target(target, self._spelling)
                try:
                    return await self._supervisor.subjob_action(
                        verb,
                        job_id,
                        subids,
                        actor=self._invocation.actor,
                        invocation_id=self._invocation.invocation_id,
                        action_seq=action_seq,
                    )
                except HostCallError as err:
                    # An instance the job lacks: said as subjobstatus says it, the job
                    # being there (a read on this path only).
                    if err.kind != "NoSuchJob" or not err.message.startswith(
                        f"job {job_id} has no instance "
                    ):
                        raise
                    subjobs = (await self._job(job_id, work_names=[]))["subjobs"]
                    raise HostCallError("NoSuchJob", _with_instances(err.message, subjobs)) from err

            return await _each(flatten(targets), seqs, act)

        return subjob_verb
