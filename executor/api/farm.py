"""FarmService: the embedded reference supervisor's farm over gRPC (submit, read, drive, wait).

Registered on the executor's port only with the embedded supervisor (edge.py). Requests
become calls of ``supervisor_client.reference.farm.Farm`` with plain values; the farm's
errors become the executor's domain errors, and so statuses through the one table
(errors.py). Work ranges are expanded by ``host_api.WorkSelection``, the selection
behind ``qb.workunblock('12:1-10')``: one meaning of a range for callbacks and people.
A ChangeWork reads no more of the agenda than its specs need (``_selected_work``):
reading a 100,000-item job for a worker's one frame took 1-2 s.

The farm's calls run on the store's one thread (``StoreThread``, shared with the
Supervisor service), not on the executor's loop, where each waited for the store's lock
while a callback's verb over a big job held it; ``SubmitJobs`` alone stays on the loop:
it claims the jobs' registrations before it awaits anything (``registered``).

The changes the farm makes reach the trigger engine through the embedded supervisor's
forwarder like any other transition; ``WaitJobs`` waits until that forwarder has drained
and the engine has no firing left to run (those restored after a stop or a crash
included), so when it answers, the callbacks those changes fired have run. A stop ends
every WaitJobs at its start, UNAVAILABLE (``end_waits``), as health ends its Watch
streams: left open, each held the stop for the server's whole 5 s grace (probe 147), and
the client asks again after the restart, as it did when the server cancelled the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, Final

from google.protobuf import struct_pb2

from executor.api import convert
from executor.api.errors import Context, grpc_errors
from executor.api.farm_registration import RoomCheck, registration_problem
from executor.api.struct_values import struct_dict
from executor.bounds import MAX_WAIT_S
from executor.errors import (
    HostCallError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from executor.host_api import WorkSelection, plain_work_names
from executor.triggers.label_claims import Claims, LabelClaims
from executor.triggers.parsed import check_trigger
from executor.triggers.registration import check_language
from executor.triggers.store_rows import StoredCallback
from executor.triggers.store_space import Room
from supervisor_client.jobdict import job_from_dict
from supervisor_client.qbcallback.v1 import farm_pb2, farm_pb2_grpc, supervisor_pb2, types_pb2
from supervisor_client.reference import errors as reference_errors
from supervisor_client.reference.farm import Farm, WorkChangeResult, describe_agenda
from supervisor_client.reference.qube_time import with_times_stored
from supervisor_client.reference.service import verb_name
from supervisor_client.reference.store_thread import StoreThread
from supervisor_client.reference.submission import check_submission_size

DEFAULT_WAIT_S: Final = 60.0
# Entries of one ChangeWork's ``work``: each costs the loop a moment whether or not it
# selects anything new, and a range or a comma list names any number of items in one.
MAX_WORK_ENTRIES: Final = 100_000
# Entries of one WaitJobs' ``job_ids`` (repeats count; each job is waited for once): far
# more jobs than a person or a script waits for by name, and a pass over them all is one
# read of a few milliseconds. An empty list waits for every job.
MAX_WAIT_JOB_IDS: Final = 10_000
_POLL_S: Final = 0.05
# A WaitJobs a stop ends: the client asks again (``cbexec farm wait`` does, within its
# ``--wait-timeout``), as after any restart.
STOPPING: Final = "the executor is stopping; ask again once it has restarted"

CallbacksOf = Callable[[int], list[StoredCallback]]
Settle = Callable[[], Awaitable[None]]
Registered = Callable[[list[int]], Awaitable[None]]


@contextlib.contextmanager
def _farm_errors() -> Iterator[None]:
    """The reference supervisor's errors as the executor's own (then statuses, errors.py)."""
    try:
        yield
    except (reference_errors.NoSuchJobError, reference_errors.NoSuchWorkError) as err:
        raise NotFoundError(str(err)) from err
    except reference_errors.PermissionDeniedError as err:
        raise PermissionDeniedError(str(err)) from err
    except (reference_errors.SubmitError, ValueError) as err:
        raise InvalidRequestError(str(err)) from err


def _wire_job(job: Mapping[str, Any]) -> types_pb2.Job:
    """The wire Job of a farm job: an unset time is 0, as types.proto says.

    The farm's job dicts show Qube's 946702800 for it, as a callback's ``qb.jobinfo``
    reads it (qube_time.py); a client written from the proto reads 0 as unset.
    """
    return job_from_dict(with_times_stored(job))


def _agenda_length(job: struct_pb2.Struct) -> int:
    """How many items a submitted job's agenda lists, read without converting the job."""
    if "agenda" not in job.fields:  # a message map's [] would add the key
        return 0
    agenda = job.fields["agenda"]
    return len(agenda.list_value.values) if agenda.HasField("list_value") else 0


def _change_name(value: int) -> str:
    """WORK_CHANGE_START -> "start"; InvalidRequestError naming the valid changes."""
    valid = [name.removeprefix("WORK_CHANGE_").lower() for name in farm_pb2.WorkChange.keys()[1:]]
    if value == 0:
        raise InvalidRequestError(f"change is required; expected one of {', '.join(valid)}")
    if value not in farm_pb2.WorkChange.values():
        raise InvalidRequestError(
            f"change {value} is not a WorkChange; expected one of {', '.join(valid)}"
        )
    name = farm_pb2.WorkChange.Name(farm_pb2.WorkChange.ValueType(value))
    return name.removeprefix("WORK_CHANGE_").lower()


class FarmServicer(farm_pb2_grpc.FarmServiceServicer):
    """Implements qbcallback.v1.FarmService over a Farm and the trigger engine's callbacks.

    Args:
        farm: the embedded reference supervisor's farm.
        callbacks_of: the trigger engine's registered callbacks of a job (with latches).
        settle: waits until every transition so far, and what it fired, has been handled,
            and no firing is left to run (``EmbeddedSupervisor.settle``).
        settled: whether that is so now, without waiting (``settled_now``): a wait
            whose timeout has all but passed still finds the jobs that ended settled.
        registered: waits until just-submitted jobs are registered with the trigger engine.
        labels: the trigger engine's labels per pgrp, and its claims on them.
        store_thread: the thread the farm's calls run on (the Supervisor service's);
            None: one of its own.
        room: triggers.db's room now (``TriggerStore.room``); None: not bounded.
    """

    def __init__(
        self,
        farm: Farm,
        callbacks_of: CallbacksOf,
        settle: Settle,
        registered: Registered,
        labels: LabelClaims,
        store_thread: StoreThread | None = None,
        *,
        room: Callable[[], Room | None] = lambda: None,
        settled: Callable[[], bool] = lambda: False,
    ) -> None:
        self._farm = farm
        self._store = StoreThread() if store_thread is None else store_thread
        self._callbacks_of = callbacks_of
        self._settle = settle
        self._settled = settled
        self._registered = registered
        self._labels = labels
        self._room = room
        self._submissions: set[asyncio.Future[farm_pb2.SubmitJobsResponse]] = set()
        # The calls' tasks of the WaitJobs open now, and whether a stop has begun (end_waits).
        self._waits: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()

    def end_waits(self) -> None:
        """End every WaitJobs, now and from now on, UNAVAILABLE: a stop has begun.

        Open, a wait would hold the server's stop for its whole grace (it waits for the
        firings a stop leaves queued); a client asks again once the executor serves again.
        Each is cancelled as ``asyncio.timeout`` cancels (and ``WaitJobs`` uncancels): no
        task or waiter more per open wait, thousands of which may be open.
        """
        self._stopping.set()
        for task in self._waits:
            task.cancel()

    @grpc_errors
    async def SubmitJobs(
        self, request: farm_pb2.SubmitJobsRequest, context: Context
    ) -> farm_pb2.SubmitJobsResponse:
        """Submit job dicts with the reference supervisor's validation, all or nothing.

        Each callback's trigger is checked with the trigger engine's own parser, and its
        language as RegisterJob checks it, handed to the supervisor as its
        ``check_trigger`` and ``check_language``, and each job as stored is checked as
        the forwarder's RegisterJob of it would be (``farm_registration``, its
        ``check_job``): a job RegisterJob would refuse refuses the whole submission here
        (INVALID_ARGUMENT naming the job, the field and the problem) instead of reaching
        the forwarder, which could only log the refusal once the jobs are stored. The
        supervisor cannot import the grammar (supervisor_client never imports executor),
        and asking the engine over gRPC from this synchronous, in-loop submission would
        block the loop that serves it. A submission whose jobs triggers.db has no room
        for now (``triggers_max_bytes``) is refused RESOURCE_EXHAUSTED with RegisterJob's
        words for it (``RoomCheck``; a check, not a reservation).

        A label given a job that another scheduler's job holds in its pgrp with the
        trigger engine (a RegisterJob made directly) refuses the submission too, naming
        the label, the pgrp and that job; a label the farm gives passes over it
        (``label_claims``). The labels checked are claimed in the same step, until the
        jobs' registrations are done, so a RegisterJob meanwhile cannot take one.

        The answer comes once the trigger engine has the jobs, so a client's next
        ``GetJob`` lists their callbacks and an event it publishes finds them.

        More than ``MAX_SUBMIT_JOBS`` jobs, or ``MAX_SUBMIT_WORK_ITEMS`` items in their
        agendas, is refused from the request's counts alone (submission.py).
        """
        if not request.jobs:
            raise InvalidRequestError("jobs: there is nothing to submit")
        with _farm_errors():
            check_submission_size(len(request.jobs), 0)  # before reading millions of them
            check_submission_size(len(request.jobs), sum(map(_agenda_length, request.jobs)))
        # Done whole even if this call is cancelled: its jobs are registered and their
        # labels released. Held in ``_submissions``, as the loop keeps only a weak reference.
        submitting = asyncio.ensure_future(self._submit(request))
        self._submissions.add(submitting)
        submitting.add_done_callback(self._submissions.discard)
        return await asyncio.shield(submitting)

    async def _submit(self, request: farm_pb2.SubmitJobsRequest) -> farm_pb2.SubmitJobsResponse:
        """Store on the store's thread, register, then answer (built off the loop too).

        Storing a submission at its bounds takes the store a second or two (a 100,000-item
        agenda parsed, stored, read back and checked as RegisterJob would take it), and
        its answer as long again: on the loop that held health and every call. On the
        store's thread it is one transaction with its ids in order; the farm's calls and
        the callbacks' qb calls wait behind it there, while health and every call that
        does not touch the farm are answered.
        """
        stored, claimed = await self._store.run(self._submitted, request)
        try:
            await self._registered([job["id"] for job in stored])
        finally:
            # Taken in a thread: a submission storing meanwhile holds the labels' lock.
            await asyncio.to_thread(self._labels.release, claimed)
        return await asyncio.to_thread(
            lambda: farm_pb2.SubmitJobsResponse(jobs=[_wire_job(job) for job in stored])
        )

    def _submitted(
        self, request: farm_pb2.SubmitJobsRequest
    ) -> tuple[list[dict[str, Any]], Claims]:
        """The submission stored (on the store's thread), and the labels claimed for it."""
        jobs = [struct_dict(f"jobs[{index}]", job) for index, job in enumerate(request.jobs)]
        room = RoomCheck(self._room)

        def check_job(job: Mapping[str, Any]) -> str | None:
            problem = registration_problem(job)
            if problem is None:
                room(job)  # StoreFullError: RESOURCE_EXHAUSTED, and nothing is stored
            return problem

        with self._labels.locked():
            with _farm_errors():
                stored = self._farm.submit(
                    jobs,
                    check_trigger=check_trigger,
                    check_language=check_language,
                    check_job=check_job,
                    labels_held=self._labels.holders,
                )
            claimed = self._labels.claim((job["pgrp"], job["label"], job["id"]) for job in stored)
        return stored, claimed

    @grpc_errors
    async def ListJobs(
        self, request: farm_pb2.ListJobsRequest, context: Context
    ) -> farm_pb2.ListJobsResponse:
        """The jobs by id, filtered by status and pgrp."""
        pgrp = convert.check_id("pgrp", request.pgrp)
        with _farm_errors():
            jobs = await self._store.run(self._farm.jobs, status=request.status, pgrp=pgrp)
        return farm_pb2.ListJobsResponse(jobs=[_wire_job(job) for job in jobs])

    @grpc_errors
    async def GetJob(
        self, request: farm_pb2.GetJobRequest, context: Context
    ) -> farm_pb2.GetJobResponse:
        """The job, its registered callbacks with their latches, and its history."""
        job_id = convert.check_id("job_id", request.job_id)

        def read() -> tuple[dict[str, Any], list[dict[str, Any]]]:
            return self._farm.job(job_id), self._farm.history(job_id)

        with _farm_errors():
            job, history = await self._store.run(read)
        return farm_pb2.GetJobResponse(
            job=_wire_job(job),
            callbacks=[convert.registered_message(cb) for cb in self._callbacks_of(job_id)],
            history=[
                farm_pb2.HistoryEntry(
                    time=line["time"], text=line["text"], invocation_id=line["invocation_id"]
                )
                for line in history
            ],
        )

    @grpc_errors
    async def ChangeWork(
        self, request: farm_pb2.ChangeWorkRequest, context: Context
    ) -> farm_pb2.ChangeWorkResponse:
        """A worker's change or an operator's work verb, on work names and ranges."""
        change = _change_name(request.change)
        job_id = convert.check_id("job_id", request.job_id)
        convert.check_name("host", request.host)
        convert.check_name("actor", request.actor)
        if len(request.work) > MAX_WORK_ENTRIES:
            raise InvalidRequestError(
                f"work: at most {MAX_WORK_ENTRIES} entries, got {len(request.work)}; a range"
                " ('1-5000') or a comma list ('a,b,c') names many items in one"
            )
        package = (
            struct_dict("result_package", request.result_package)
            if request.HasField("result_package")
            else None
        )
        specs = list(request.work)

        def change_work() -> WorkChangeResult:
            names = self._selected_work(job_id, specs)
            return self._farm.change_work(
                change,
                job_id,
                names,
                host=request.host,
                actor=request.actor,
                resultpackage=package,
                attempt=request.attempt,
            )

        with _farm_errors():
            result = await self._store.run(change_work)
        return farm_pb2.ChangeWorkResponse(
            changed=result.changed,
            selected=list(result.selected),
            message=result.message,
            job_status=result.job_status,
        )

    def _selected_work(self, job_id: int, specs: Sequence[str]) -> list[str]:
        """The items ``specs`` select in job ``job_id``, reading no more than they need.

        Specs of one plain name each (a worker's frame, an operator's few) are looked up alone;
        when the job has every one, they are the selection a full read would make. A
        range, or a name the job lacks, is expanded over the agenda's names (one column,
        not its items), so the answer or the NotFound is exactly the whole agenda's.
        """
        plain: list[str] = []
        for spec in specs:
            names = plain_work_names(spec)
            if names != [spec]:
                # A range or a list; or one item's whole name ('5,6'): the agenda decides.
                break
            plain += names
        else:
            plain = list(dict.fromkeys(plain))
            if self._farm.has_work_items(job_id, plain):
                return plain
        agenda = self._farm.agenda_names(job_id)
        # One selection over the agenda for every spec: a list of 30,000 names is one
        # pass, where expanding each name over the whole agenda held the loop minutes.
        selection = WorkSelection(agenda)
        for spec in specs:
            try:
                selection.add(spec)
            except HostCallError as err:
                what = f"its agenda is {describe_agenda(agenda)}" if agenda else "no agenda"
                raise NotFoundError(f"job {job_id}: {err.message}; {what}") from err
        return selection.names

    @grpc_errors
    async def ChangeJob(
        self, request: farm_pb2.ChangeJobRequest, context: Context
    ) -> farm_pb2.ChangeJobResponse:
        """A job verb as the operator (the job's owner unless ``actor`` says otherwise)."""
        job_id = convert.check_id("job_id", request.job_id)
        convert.check_name("actor", request.actor)
        with _farm_errors():
            verb = verb_name(supervisor_pb2.JobVerb, request.verb)
            result = await self._store.run(self._farm.change_job, verb, job_id, request.actor)
        return farm_pb2.ChangeJobResponse(
            changed=result.changed, message=result.message, job_status=result.job_status
        )

    @grpc_errors
    async def TakeWork(
        self, request: farm_pb2.TakeWorkRequest, context: Context
    ) -> farm_pb2.TakeWorkResponse:
        """Start the next item a free worker would be given; ``taken`` false when none."""
        convert.check_name("host", request.host)
        with _farm_errors():
            taken = await self._store.run(self._farm.take_work, request.host or "localhost")
        if taken is None:
            return farm_pb2.TakeWorkResponse(taken=False)
        return farm_pb2.TakeWorkResponse(
            taken=True,
            job_id=taken.job_id,
            work_name=taken.work_name,
            job_name=taken.job_name,
            attempt=taken.attempt,
        )

    @grpc_errors
    async def WaitJobs(
        self, request: farm_pb2.WaitJobsRequest, context: Context
    ) -> farm_pb2.WaitJobsResponse:
        """Until the jobs have ended and what their events fired has run, or the timeout.

        Each pass reads the jobs named in one statement (``Farm.ended``), each job once
        however often it is named: read one id at a time, a list of one id 600,000 times
        held the event loop, health included, for 41 s past a 0.5 s timeout.
        UNAVAILABLE (``STOPPING``) once a stop has begun (``end_waits``).
        """
        timeout = request.timeout_seconds or DEFAULT_WAIT_S
        if not math.isfinite(timeout) or not 0 < timeout <= MAX_WAIT_S:
            raise InvalidRequestError(
                f"timeout_seconds = {request.timeout_seconds} must be above 0 and at most "
                f"{MAX_WAIT_S:g}"
            )
        if len(request.job_ids) > MAX_WAIT_JOB_IDS:
            raise InvalidRequestError(
                f"job_ids: at most {MAX_WAIT_JOB_IDS} entries, got {len(request.job_ids)};"
                " an empty list waits for every job"
            )
        asked = [convert.check_id("job_ids", job_id) for job_id in dict.fromkeys(request.job_ids)]
        if self._stopping.is_set():
            raise UnavailableError(STOPPING)
        call = asyncio.current_task()
        assert call is not None  # noqa: S101 - each gRPC call runs in a task of its own
        self._waits.add(call)
        try:
            return await self._waited(asked, timeout)
        except asyncio.CancelledError:
            # Ours (end_waits) unless the call was cancelled besides (its client, the server).
            if self._stopping.is_set() and call.uncancel() == 0:
                raise UnavailableError(STOPPING) from None
            raise
        finally:
            self._waits.discard(call)

    async def _waited(self, asked: list[int], timeout: float) -> farm_pb2.WaitJobsResponse:
        """The answer once the jobs ``asked`` (none: all) have ended and settled, or at timeout."""
        if asked and (missing := await self._store.run(self._missing, asked)) is not None:
            raise missing
        ids = asked or None  # None: every job on the farm, read as the wait goes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        done = False
        while True:
            if await self._store.run(self._farm.ended, ids):
                if self._settled():  # nothing to wait for: a timeout of ~0 answers done too
                    done = True
                    break
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        await self._settle()
                except TimeoutError:
                    break
                # A callback may have brought a job back (a retry): check again.
                if await self._store.run(self._farm.ended, ids):
                    done = True
                    break
            left = deadline - loop.time()
            if left <= 0:
                break
            await asyncio.sleep(min(_POLL_S, left))
        statuses = await self._store.run(self._farm.statuses, ids)
        return farm_pb2.WaitJobsResponse(
            done=done,
            jobs=[
                farm_pb2.JobStatus(job_id=job_id, status=status)
                for job_id, status in statuses.items()
            ],
        )

    def _missing(self, asked: list[int]) -> NotFoundError | None:
        """The NotFound for the first job asked for that never was (on the store's thread)."""
        unknown = self._farm.first_unknown(asked)
        return None if unknown is None else NotFoundError(str(self._farm.no_such_job(unknown)))
