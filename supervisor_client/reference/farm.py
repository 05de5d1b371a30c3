"""The farm: what workers and operators do to the reference supervisor's jobs, in Qube's terms.

A thin layer over ``ReferenceSupervisor``: every change is one of its own transitions
(``start_work``, ``complete_work``, ``fail_work``, ``work_action``, ``job_action``,
``start_job``...), so each becomes the same ``Transition`` a callback's verbs cause and
reaches the executor through the same forwarder. What this adds is the worker's view:

- ``take_work``: the next item a free worker would be dispatched, Qube's way. An instance
  runs one item at a time, so a job with ``cpus`` = 1 runs its frames one after the other
  however many workers there are; jobs are taken by priority (lower first), then age.
  A preempted job (its running frames finishing, store.job_action) is given none.
- ``change_work``: the worker's changes (start, complete, fail) and the operator's work
  verbs on a list of exact item names. Items a change does not apply to are left alone
  and named in the result, as the supervisor's verbs do. A start dispatches as
  ``take_work`` does: each frame on a free instance, and none of them when too few are
  free. It reads the job's row, its instances, the named items and, to start pending
  ones, the running items only: a worker's change of one frame costs the same on a job
  of ten frames or of 100,000 (where reading every item took 1-2 s of the executor's
  loop); only an error naming the agenda reads its names.
- messages that name the job or item and say what exists.

``take_work`` reads and then starts in one transaction (``together``), which holds the
store's lock: the Supervisor service's verbs, on a thread of their own, cannot come in
between.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from supervisor_client.reference.errors import NoSuchJobError, NoSuchWorkError
from supervisor_client.reference.states import Status
from supervisor_client.reference.store import ActionResult, ReferenceSupervisor
from supervisor_client.reference.submission import (
    JobCheck,
    LabelHolders,
    LanguageCheck,
    TriggerCheck,
)

#: A worker's changes: they move items along the dispatch path.
WORKER_CHANGES: Final = ("start", "complete", "fail")
#: The operator's work verbs (the supervisor's ``work_action``).
OPERATOR_CHANGES: Final = ("kill", "retry", "requeue", "block", "unblock")
DEFAULT_HOST: Final = "localhost"
_DISPATCHABLE: Final = (Status.PENDING, Status.RUNNING)


@dataclass(frozen=True, slots=True)
class WorkChangeResult:
    """What a work change did: how many items changed, which were asked for, and why not."""

    changed: int
    selected: tuple[str, ...]
    message: str
    job_status: str


@dataclass(frozen=True, slots=True)
class JobChangeResult:
    """What a job verb did, and the job's status after it ("" once removed)."""

    changed: int
    message: str
    job_status: str


@dataclass(frozen=True, slots=True)
class Taken:
    """A work item a worker took and started (``work_name`` "" for a job without agenda)."""

    job_id: int
    work_name: str
    job_name: str
    attempt: int


def describe_ids(ids: Sequence[int]) -> str:
    """1, 2, 3, 5 -> "1-3, 5": how the farm names a set of jobs in a message."""
    runs: list[str] = []
    start = previous = None
    for value in [*sorted(ids), None]:
        if value is not None and previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            runs.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = value
    return ", ".join(runs)


def describe_agenda(names: Sequence[str], limit: int = 12) -> str:
    """An agenda in a few words: "1-10" for frames 1 to 10, else the first names."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        numbers = [int(n) for n in names]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else str(numbers[0])
    # A submitter's name: one that is not printable (an escape sequence, a CR/LF) as its
    # repr, so the message stays one line that acts on no terminal that shows it.
    shown = ", ".join(n if n.isprintable() else repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} items)" if len(names) > limit else "")


class Farm:
    """Drives a ReferenceSupervisor's jobs as workers and operators would."""

    def __init__(self, supervisor: ReferenceSupervisor) -> None:
        self._supervisor = supervisor

    @property
    def supervisor(self) -> ReferenceSupervisor:
        return self._supervisor

    # -- reading ------------------------------------------------------------------------

    def no_such_job(self, job_id: int) -> NoSuchJobError:
        """The error for an unknown job, naming the jobs that do exist."""
        ids = self._supervisor.job_ids()
        known = f"the farm has jobs {describe_ids(ids)}" if ids else "the farm has no jobs"
        return NoSuchJobError(f"no job {job_id}; {known}")

    def job(
        self,
        job_id: int,
        *,
        include_callbacks: bool = True,
        work_names: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """The job dict; NoSuchJobError naming the jobs that exist.

        ``work_names``: None for the whole agenda, else only those items (the store's
        ``job``).
        """
        try:
            return self._supervisor.job(
                job_id, include_callbacks=include_callbacks, work_names=work_names
            )
        except NoSuchJobError:
            raise self.no_such_job(job_id) from None

    def agenda_names(self, job_id: int) -> list[str]:
        """The job's work names in agenda order (no item dicts); NoSuchJobError as ``job``."""
        try:
            return self._supervisor.agenda_names(job_id)
        except NoSuchJobError:
            raise self.no_such_job(job_id) from None

    def has_work_items(self, job_id: int, names: Collection[str]) -> bool:
        """Whether the job has an item of every name (reads only those); NoSuchJobError."""
        try:
            return self._supervisor.has_work_items(job_id, names)
        except NoSuchJobError:
            raise self.no_such_job(job_id) from None

    def jobs(self, *, status: str = "", pgrp: int = 0) -> list[dict[str, Any]]:
        """The farm's jobs by id, filtered by status and process group."""
        if status and status not in {s.value for s in Status}:
            valid = ", ".join(s.value for s in Status)
            raise ValueError(f"status {status!r} is not a job status; expected one of {valid}")
        if pgrp:
            jobs = self._supervisor.jobs_in_pgrp(pgrp)
            return [job for job in jobs if not status or job["status"] == status]
        return self._supervisor.jobs(statuses=(status,) if status else ())

    def history(self, job_id: int) -> list[dict[str, Any]]:
        """The job's history lines, oldest first (kept after the job is removed)."""
        return self._supervisor.history(job_id)

    def statuses(self, job_ids: Sequence[int] | None = None) -> dict[int, str]:
        """Each job's status, "removed" for one that no longer exists; one read of them all.

        By id for every job when ``job_ids`` is None; else in the order first named, each
        job once.
        """
        found = self._supervisor.job_statuses(job_ids)
        if job_ids is None:
            return found
        return {job_id: found.get(job_id, "removed") for job_id in job_ids}

    def ended(self, job_ids: Sequence[int] | None = None) -> bool:
        """Whether every job named (every job when None) has ended or is gone; one read."""
        return self._supervisor.unended_job(job_ids) is None

    def first_unknown(self, job_ids: Sequence[int]) -> int | None:
        """The first job named that the farm never had (no job, no history); None if none."""
        return self._supervisor.unknown_job(job_ids)

    def status(self, job_id: int) -> str:
        """The job's status, or "removed" when it no longer exists."""
        try:
            return str(self._supervisor.job(job_id, work_names=())["status"])
        except NoSuchJobError:
            return "removed"

    def submit(
        self,
        jobs: Sequence[Mapping[str, Any]],
        *,
        check_trigger: TriggerCheck | None = None,
        check_language: LanguageCheck | None = None,
        check_job: JobCheck | None = None,
        labels_held: LabelHolders | None = None,
    ) -> list[dict[str, Any]]:
        """Submit job dicts (all or nothing); the stored jobs with their callbacks.

        ``check_trigger``, ``check_language``, ``check_job``: the executor's checks of each
        callback's trigger and language, and of each job as RegisterJob would take it (the
        executor passes them; see ``submission.TriggerCheck`` and ``submission.JobCheck``).
        ``labels_held``: the trigger engine's labels of a pgrp (``submission.LabelHolders``).
        """
        stored = self._supervisor.submit(
            jobs,
            check_trigger=check_trigger,
            check_language=check_language,
            check_job=check_job,
            labels_held=labels_held,
        )
        return [self._supervisor.job(job["id"], include_callbacks=True) for job in stored]

    # -- a worker's dispatch ------------------------------------------------------------

    @staticmethod
    def _idle_instances(job: Mapping[str, Any], busy: Collection[int]) -> list[int]:
        """Instances that may take an item: pending or running, and not ``busy`` with one."""
        return [
            sub["id"]
            for sub in job["subjobs"]
            if sub["status"] in _DISPATCHABLE and sub["id"] not in busy
        ]

    def take_work(self, host: str = DEFAULT_HOST) -> Taken | None:
        """Start the next item a free worker would get, on ``host``; None when there is none."""
        # Each job's row and instances, its running items' instances and its first
        # pending item: never its whole agenda (a worker asks for every frame it takes).
        supervisor = self._supervisor
        with supervisor.together():
            jobs = supervisor.jobs(statuses=_DISPATCHABLE, work_names=())
            preempted = supervisor.preempted_job_ids()
            for job in sorted(jobs, key=lambda j: (j["priority"], j["id"])):
                job_id = job["id"]
                if job_id in preempted:
                    continue
                idle = self._idle_instances(job, supervisor.busy_instances(job_id))
                if not idle:
                    continue
                item = supervisor.next_pending(job_id)
                if item is not None:
                    name, count = item
                    supervisor.start_work(job_id, name, host, subid=idle[0])
                    return Taken(job_id, name, job["name"], count + 1)
                if job["status"] == Status.PENDING and not supervisor.has_agenda(job_id):
                    supervisor.start_job(job_id, host)
                    return Taken(job_id, "", job["name"], supervisor.job_starts(job_id))
        return None

    # -- changes ------------------------------------------------------------------------

    def change_work(
        self,
        change: str,
        job_id: int,
        names: Sequence[str],
        *,
        host: str = "",
        actor: str = "",
        resultpackage: Mapping[str, Any] | None = None,
        attempt: int = 0,
    ) -> WorkChangeResult:
        """Apply a worker's change or an operator's work verb to exact item names.

        Empty ``names`` with start, complete or fail drives a job without an agenda.
        ``attempt`` (complete and fail only; 0: unchecked) is the one the worker took
        (``Taken.attempt``): an item not running it is left alone, as a stale report.
        Raises ValueError (unknown change, names missing, an attempt with another
        change), NoSuchJobError,
        NoSuchWorkError naming the unknown items and the agenda, PermissionDeniedError.
        One transaction (``together``): what it reads is what it changes, whatever the
        Supervisor service's thread does meanwhile.
        """
        if attempt and change not in _ENDS:
            raise ValueError(
                f"attempt goes with complete or fail (a worker's end of the attempt it took), "
                f"not {change}"
            )
        with self._supervisor.together():
            return self._change_work(change, job_id, names, host, actor, resultpackage, attempt)

    def _change_work(
        self,
        change: str,
        job_id: int,
        names: Sequence[str],
        host: str,
        actor: str,
        resultpackage: Mapping[str, Any] | None,
        attempt: int,
    ) -> WorkChangeResult:
        job = self.job(job_id, include_callbacks=False, work_names=names)
        known = {w["name"] for w in job["agenda"]}  # a set: 30,000 names' lookups
        unknown = [name for name in names if name not in known]
        if unknown:
            listed = ", ".join(map(repr, unknown))
            agenda = self._supervisor.agenda_names(job_id)  # the error names it
            what = f"its agenda is {describe_agenda(agenda)}" if agenda else "it has no agenda"
            raise NoSuchWorkError(f"job {job_id} has no work item {listed}; {what}")
        names = list(dict.fromkeys(names))
        if change in OPERATOR_CHANGES:
            if not names:
                agenda = self._supervisor.agenda_names(job_id)
                raise ValueError(
                    f"{change} needs work names; job {job_id}'s agenda is "
                    f"{describe_agenda(agenda) if agenda else 'empty'}"
                )
            result = self._supervisor.work_action(change, job_id, names, actor or job["user"])
            return self._work_result(job_id, result, names)
        if change not in WORKER_CHANGES:
            valid = ", ".join((*WORKER_CHANGES, *OPERATOR_CHANGES))
            raise ValueError(f"unknown work change {change!r}; expected one of {valid}")
        if not names:
            agenda = self._supervisor.agenda_names(job_id)  # none to read, but for an error
            if agenda:
                raise ValueError(
                    f"name the work items to {change}: job {job_id}'s agenda is "
                    f"{describe_agenda(agenda)}"
                )
            return self._work_result(job_id, self._drive_job(change, job, host, attempt), ())
        host = host or DEFAULT_HOST
        if job["status"] not in _DISPATCHABLE:
            refusal = f"job {job_id} is {job['status']}; work runs only in pending or running jobs"
            return WorkChangeResult(0, tuple(names), refusal, job["status"])
        preempted = job_id in self._supervisor.preempted_job_ids()
        if change == "start" and preempted:
            return WorkChangeResult(0, tuple(names), _preempted_job(job_id), job["status"])
        return self._move_frames(change, job, names, host, resultpackage, attempt, preempted)

    def _move_frames(
        self,
        change: str,
        job: Mapping[str, Any],
        names: Sequence[str],
        host: str,
        resultpackage: Mapping[str, Any] | None,
        attempt: int,
        preempted: bool,
    ) -> WorkChangeResult:
        """A worker's start, complete or fail of the named frames of a dispatchable job.

        ``preempted``: the job is, so none of its pending frames starts (left alone).
        """
        job_id = job["id"]
        items = {w["name"]: w for w in job["agenda"]}
        statuses = {name: w["status"] for name, w in items.items()}
        wanted = (Status.PENDING,) if change == "start" else _DISPATCHABLE
        # A worker's end of an attempt taken from it: the item is another's, or pending.
        stale = {
            name: items[name]
            for name in names
            if attempt
            and statuses[name] in _DISPATCHABLE
            and (statuses[name] != Status.RUNNING or items[name]["count"] != attempt)
        }
        pending = [name for name in names if statuses[name] == Status.PENDING and name not in stale]
        starts_on, not_started = self._instances_for(change, job, pending, preempted)
        moved: list[str] = []
        refused: dict[str, list[str]] = {}
        with self._supervisor.together():  # every frame's change, or none (a full disk)
            for name in names:
                status = statuses[name]
                if name in stale:
                    continue  # named below
                if status not in wanted:
                    refused.setdefault(status, []).append(name)
                    continue
                if status == Status.PENDING:
                    if name not in starts_on:
                        continue  # not_started says why
                    self._supervisor.start_work(job_id, name, host, subid=starts_on[name])
                if change == "complete":
                    self._supervisor.complete_work(job_id, name, resultpackage)
                elif change == "fail":
                    self._supervisor.fail_work(job_id, name)
                moved.append(name)
        accepts = " or ".join(wanted)
        parts = [f"work {job_id}:{','.join(moved)} -> {_TARGET[change]}"] if moved else []
        parts += [
            f"work {job_id}:{','.join(group)} is {status}; {change} takes {accepts} work"
            for status, group in refused.items()
        ]
        parts += [
            f"work {job_id}:{name} is {_holding(item)}; {_stale(attempt)}, the frame is not its "
            "to end"
            for name, item in stale.items()
        ]
        if not_started:
            parts.append(not_started)
        return WorkChangeResult(len(moved), tuple(names), "; ".join(parts), self.status(job_id))

    def _instances_for(
        self, change: str, job: Mapping[str, Any], pending: Sequence[str], preempted: bool
    ) -> tuple[dict[str, int], str]:
        """The instance each pending frame starts on, and why any does not start ("" if all do).

        An instance runs one frame at a time (Qube's dispatch, as ``take_work``'s): a
        start puts each frame on a free instance of the job (pending, or running with no
        frame), and when there are fewer free instances than frames, starts none of them
        (a worker's start of several frames is all or nothing). A complete or fail of a
        pending frame starts and ends it at once, leaving no two frames running on one
        instance, so it may take a busy instance when none is free, but not a preempted
        one (it takes no new work). None starts on an instance that is not pending or
        running (ended, blocked, suspended), nor in a ``preempted`` job: such frames are
        left alone, and named, while the call's other frames change.
        """
        if not pending:
            return {}, ""
        job_id = job["id"]
        live = [sub["id"] for sub in job["subjobs"] if sub["status"] in _DISPATCHABLE]
        if not live:
            return {}, self._no_instance_to_start_on(job, pending)
        if preempted:
            return {}, f"work {job_id}:{','.join(pending)} not started: {_preempted_job(job_id)}"
        running = self._supervisor.running_work_by_instance(job_id)
        free = self._idle_instances(job, running)
        if change != "start":
            # A preempted instance is busy until its frame ends: only a busy one may be.
            held = self._supervisor.preempted_instances(job_id) if not free else set()
            takers = free or [subid for subid in live if subid not in held]
            if not takers:
                listed = ", ".join(f"{job_id}.{subid}" for subid in live)
                return {}, (
                    f"work {job_id}:{','.join(pending)} not started: the instances of job "
                    f"{job_id} that could take it ({listed}) are preempted: they take no new "
                    "work until their running work has ended"
                )
            return dict.fromkeys(pending, takers[0]), ""
        if len(free) < len(pending):
            return {}, self._no_free_instance(job, pending, free, running)
        return dict(zip(pending, free, strict=False)), ""

    @staticmethod
    def _no_free_instance(
        job: Mapping[str, Any],
        names: Sequence[str],
        free: Sequence[int],
        running: Mapping[int, Sequence[str]],
    ) -> str:
        """Why a start of ``names`` started none: too few free instances, and what the others do."""
        job_id = job["id"]
        others = [
            f"{job_id}.{subid} runs {job_id}:{','.join(frames)}"
            for subid, frames in sorted(running.items())
        ]
        others += [
            f"{job_id}.{sub['id']} {sub['status']}"
            for sub in job["subjobs"]
            if sub["status"] not in _DISPATCHABLE
        ]
        if free:
            listed = ", ".join(f"{job_id}.{subid}" for subid in free)
            have = f"{len(free)} free instance{'s' if len(free) > 1 else ''} ({listed})"
            have += f" for {len(names)} frames"
        else:
            have = "no free instance"
        return (
            f"work {job_id}:{','.join(names)} not started: job {job_id} has {have}, as an "
            "instance runs one frame at a time" + (f" ({', '.join(others)})" if others else "")
        )

    @staticmethod
    def _no_instance_to_start_on(job: Mapping[str, Any], names: Sequence[str]) -> str:
        job_id = job["id"]
        instances = ", ".join(f"{job_id}.{sub['id']} {sub['status']}" for sub in job["subjobs"])
        return (
            f"work {job_id}:{','.join(names)} not started: no instance of job {job_id} "
            f"is pending or running (instances {instances})"
        )

    def _drive_job(
        self, change: str, job: Mapping[str, Any], host: str, attempt: int
    ) -> ActionResult:
        """Start / complete / fail of a job without an agenda: the job itself runs or ends."""
        job_id, status = job["id"], job["status"]
        wanted = (Status.PENDING,) if change == "start" else _DISPATCHABLE
        if status not in wanted:
            accepts = " or ".join(wanted)
            return ActionResult(0, f"job {job_id} is {status}; {change} takes {accepts} jobs")
        if attempt:
            starts = self._supervisor.job_starts(job_id)
            if status != Status.RUNNING or starts != attempt:
                holds = f"running attempt {starts}" if status == Status.RUNNING else status
                return ActionResult(
                    0, f"job {job_id} is {holds}; {_stale(attempt)}, the job is not its to end"
                )
        if status == Status.PENDING:
            self._supervisor.start_job(job_id, host or DEFAULT_HOST)
        if change == "complete":
            self._supervisor.complete_job(job_id)
        elif change == "fail":
            self._supervisor.fail_job(job_id)
        return ActionResult(1, f"job {job_id} {status} -> {_TARGET[change]}")

    def _work_result(
        self, job_id: int, result: ActionResult, names: Sequence[str]
    ) -> WorkChangeResult:
        return WorkChangeResult(result.changed, tuple(names), result.message, self.status(job_id))

    def change_job(self, verb: str, job_id: int, actor: str = "") -> JobChangeResult:
        """Apply a job verb as ``actor`` (default: the job's owner).

        Raises ValueError for an unknown verb, NoSuchJobError, PermissionDeniedError.
        """
        job = self.job(job_id, include_callbacks=False)
        result = self._supervisor.job_action(verb, job_id, actor or job["user"])
        status = self.status(job_id)
        return JobChangeResult(
            result.changed, result.message, "" if status == "removed" else status
        )


_TARGET: Final = {"start": Status.RUNNING, "complete": Status.COMPLETE, "fail": Status.FAILED}
#: The worker's changes that end the attempt it took (and may name it).
_ENDS: Final = ("complete", "fail")


def _preempted_job(job_id: int) -> str:
    return (
        f"job {job_id} is preempted: it starts no new work until its running work has ended "
        "and it is pending again"
    )


def _holding(item: Mapping[str, Any]) -> str:
    """What holds a work item a stale report names: "running attempt 2 (on node)", or its status."""
    if item["status"] != Status.RUNNING:
        return str(item["status"])
    return f"running attempt {item['count']} (on {item['host']})"


def _stale(attempt: int) -> str:
    return f"a report of attempt {attempt} is stale: that attempt was stopped"
