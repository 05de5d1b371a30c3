"""The executor as a client of the SupervisorService: ``SupervisorPort`` over gRPC.

Every ``qb`` call that reads or changes a job goes here, on behalf of the callback's
owner (``actor``). A refused call becomes the ``HostCallError`` whose kind the callback
sees as an exception (``qb.NoSuchJob``, ...): the supervisor may name the kind in the
trailing metadata key ``qb-error-kind``; otherwise the status code decides. Nothing is
guessed from the message text.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import grpc

from executor.api.lenient_answers import supervisor_stub
from executor.api.struct_values import job_problem
from executor.api.supervisor_reach import SupervisorReach
from executor.child.protocol import QbErrorKind
from executor.errors import HostCallError
from executor.supervisor_link import ActionOutcome, not_one_job
from supervisor_client.credentials import RECONNECT_OPTIONS
from supervisor_client.jobdict import job_to_dict
from supervisor_client.qbcallback.v1 import supervisor_pb2, types_pb2

ERROR_KIND_KEY: Final = "qb-error-kind"
# The largest answer the executor takes from a supervisor (a JobInfo of a job of over a
# million work items): not gRPC's default 4 MiB, which a job of ~110,000 passed. Each
# answer is held whole, as a message and then as job dicts, while a qb call reads it.
MAX_SUPERVISOR_ANSWER_BYTES: Final = 64 << 20
# An answer of at least this many bytes, or jobs, is converted to job dicts on a worker
# thread: each is about 1 ms of Python (an agenda of 1,000 work items is 16 KiB, a Struct
# of 1,000 keys 19 KiB, 200 small jobs 6 KiB), which every other call would wait for on
# the event loop. Counting work items alone left a job's ``extra`` of a million keys
# (21 MB) to the loop: 2.8 s per qb.jobinfo (probe 104).
BIG_ANSWER_BYTES: Final = 16 << 10
BIG_ANSWER_JOBS: Final = 200
# The channel options of the executor's channel to a supervisor.
SUPERVISOR_CHANNEL_OPTIONS: Final = (
    *RECONNECT_OPTIONS,
    ("grpc.max_receive_message_length", MAX_SUPERVISOR_ANSWER_BYTES),
)
# The kinds a supervisor may name; anything else falls back to the status code.
NAMED_KINDS: Final[dict[str, QbErrorKind]] = {
    kind: kind for kind in ("NoSuchJob", "NoSuchWork", "PermissionDenied", "InvalidArgument")
}
_KIND_BY_CODE: Final[dict[grpc.StatusCode, QbErrorKind]] = {
    grpc.StatusCode.NOT_FOUND: "NoSuchJob",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.FAILED_PRECONDITION: "QbError",
}

# What these codes say of the supervisor, true whether gRPC made them (the supervisor
# down, the call cut) or the supervisor answered them itself (the embedded one answers
# UNAVAILABLE while supervisor.db cannot be written). DEADLINE_EXCEEDED is told apart by
# the time the call took (``host_error``); every other code is an answer.
_SAID_OF: Final = {
    grpc.StatusCode.UNAVAILABLE: "the supervisor is unavailable",
    grpc.StatusCode.CANCELLED: "the call to the supervisor was cancelled",
}

# The codes of a call that may have been cut off from its answer after the supervisor
# had it (gRPC cannot say whether the request got there): an action may have been
# applied, and retrying it is another action (another action_seq), applied again.
_FATE_UNKNOWN: Final = frozenset(
    {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
)
MAY_HAVE_BEEN_APPLIED: Final = "it may have been applied"

_Response = TypeVar("_Response")


def host_error(
    err: grpc.aio.AioRpcError, *, ran_out_of_s: float | None = None, acts: bool = False
) -> HostCallError:
    """The error a callback sees for a refused SupervisorService call.

    ``ran_out_of_s``: the call's deadline, when the call took all of it: its
    DEADLINE_EXCEEDED is then the executor's own, not one the supervisor answered sooner.
    ``acts``: the call was an action, which a code of ``_FATE_UNKNOWN`` leaves possibly
    applied; the message says so.
    """
    code = err.code()
    details = err.details() or code.name
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        # Not the supervisor away: the same call would fail again, so not a kind to retry.
        return HostCallError(
            "QbError",
            f"the supervisor's answer is larger than the executor takes "
            f"({MAX_SUPERVISOR_ANSWER_BYTES} bytes): {details}",
        )
    named = NAMED_KINDS.get(str(dict(err.trailing_metadata() or ()).get(ERROR_KIND_KEY, "")))
    kind = named or _KIND_BY_CODE.get(code, "SupervisorUnavailable")
    if kind == "SupervisorUnavailable":
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and ran_out_of_s is not None:
            said = f"the supervisor did not answer within {ran_out_of_s:g} s"
        elif code in _SAID_OF:
            said = _SAID_OF[code]
        else:
            said = "the supervisor answered with an error"
        details = f"{said}: {code.name}: {details}"
        if acts and code in _FATE_UNKNOWN:
            details = f"{details}; {MAY_HAVE_BEEN_APPLIED}"
    return HostCallError(kind, details)


def malformed_answer(method: str, *, acts: bool) -> HostCallError:
    """The error for an answer that does not parse as ``method``'s response message.

    The stub returns None for such an answer (``lenient_answers``) instead of raising: a
    supervisor built from another version of the proto, or a proxy that mangles its
    body. It answered OK, so an action was taken in all likelihood.
    """
    applied = "; it may have been applied" if acts else ""  # as host_error says it
    return HostCallError(
        "SupervisorUnavailable",
        f"the supervisor's answer was malformed: its {method} answer does not parse{applied}",
    )


def job_dicts(
    jobs: Iterable[types_pb2.Job],
    *,
    include_callbacks: bool,
    asked: str,
    abandoned: threading.Event | None = None,
) -> list[dict[str, Any]]:
    """The job dicts of a JobInfo answer's ``jobs`` (for ``asked``: "job 12", "pgrp 3").

    Once ``abandoned`` is set (its caller is gone), it stops at the next job and returns
    what it has, which nobody reads.

    A Struct (a job's ``extra``, a work item's ``resultpackage``) may carry NaN or
    ±Infinity, which no job dict (JSON) holds: the supervisor's answer is then malformed,
    its HostCallError naming the value, not an executor bug that would fail every qb
    call on the job.
    """
    dicts = []
    for index, job in enumerate(jobs):
        if abandoned is not None and abandoned.is_set():
            break
        try:
            dicts.append(job_to_dict(job, include_callbacks=include_callbacks))
        except ValueError as err:
            where = f"jobs[{index}]"
            problem = job_problem(job, where) or f"{where}: {err}"
            raise HostCallError(
                "SupervisorUnavailable",
                f"the supervisor's answer was malformed: JobInfo for {asked}: {problem}",
            ) from err
    return dicts


def is_big_answer(response: supervisor_pb2.JobInfoResponse) -> bool:
    """Whether converting ``response`` would hold the event loop (``BIG_ANSWER_BYTES``).

    Its size is ``ByteSize``, the bytes it took on the wire, summed in C: 0.15 µs for
    a trivial answer, 35-90 ms for 21 MB of Struct (whose conversion takes 2.8 s, and
    whose parse gRPC did on the loop already: 0.2 s).
    """
    return len(response.jobs) >= BIG_ANSWER_JOBS or response.ByteSize() >= BIG_ANSWER_BYTES


class GrpcSupervisor:
    """``executor.supervisor_link.SupervisorPort`` over a SupervisorService channel."""

    def __init__(
        self, channel: grpc.aio.Channel, timeout_s: float, reach: SupervisorReach | None = None
    ) -> None:
        """``reach`` is told what each call found of the supervisor's reach."""
        self._stub = supervisor_stub(channel)
        self._timeout_s = timeout_s
        self._reach = reach
        # Big answers are converted one at a time: each holds its answer (up to 64 MiB)
        # and its job dicts (GBs for 300,000 jobs) while it runs, and Python's lock
        # lets only one convert at a time anyway.
        self._converting = asyncio.Semaphore(1)

    async def _call(
        self,
        rpc: Callable[..., Awaitable[_Response | None]],
        request: Any,
        method: str,
        *,
        acts: bool = False,
    ) -> _Response:
        """``rpc``'s answer, or the HostCallError for it; ``method`` names it, ``acts``: an action, not a read."""
        started = time.monotonic()
        try:
            response = await rpc(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            took_it_all = time.monotonic() - started >= self._timeout_s
            if self._reach is not None:
                self._reach.noted(err, acted=acts, took_it_all=took_it_all)
            ran_out_of_s = self._timeout_s if took_it_all else None
            raise host_error(err, ran_out_of_s=ran_out_of_s, acts=acts) from err
        if self._reach is not None:
            self._reach.answered(acted=acts)
        if response is None:
            raise malformed_answer(method, acts=acts)
        return response

    async def job_info(
        self,
        *,
        job_id: int | None,
        pgrp: int | None,
        include_callbacks: bool,
        actor: str,
        work_names: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        request = supervisor_pb2.JobInfoRequest(include_callbacks=include_callbacks, actor=actor)
        if pgrp is not None:
            request.pgrp = pgrp
        else:
            request.id = job_id or 0
        if work_names is None:
            request.agenda = supervisor_pb2.AGENDA_SCOPE_ALL
        elif not work_names:
            request.agenda = supervisor_pb2.AGENDA_SCOPE_NONE
        else:
            request.agenda = supervisor_pb2.AGENDA_SCOPE_NAMED
            request.work_names.extend(work_names)
        response = await self._call(self._stub.JobInfo, request, "JobInfo")
        if pgrp is None:  # refused before a job is converted, however many it holds
            first_ids = [job.id for job in response.jobs[:5]]
            wrong = not_one_job(request.id, len(response.jobs), first_ids)
            if wrong is not None:
                raise wrong
        asked = f"job {request.id}" if pgrp is None else f"pgrp {pgrp}"
        if not is_big_answer(response):
            # The common answer: a thread's round trip costs more.
            return job_dicts(response.jobs, include_callbacks=include_callbacks, asked=asked)
        return await self._converted_off_loop(
            response.jobs, include_callbacks=include_callbacks, asked=asked
        )

    async def _converted_off_loop(
        self, jobs: Sequence[types_pb2.Job], *, include_callbacks: bool, asked: str
    ) -> list[dict[str, Any]]:
        """``job_dicts`` on a worker thread (20,000 items take ~40 ms of Python, every other run's wait).

        One at a time (``_converting``), held until the thread is done; a caller
        cancelled (its run ended) has its conversion stop at the next job rather than
        run on for seconds, holding GBs, for nobody.
        """
        await self._converting.acquire()
        abandoned = threading.Event()
        conversion = asyncio.get_running_loop().run_in_executor(
            None,
            lambda: job_dicts(
                jobs, include_callbacks=include_callbacks, asked=asked, abandoned=abandoned
            ),
        )
        conversion.add_done_callback(self._conversion_done)
        try:
            return await asyncio.shield(conversion)
        except asyncio.CancelledError:
            abandoned.set()
            raise

    def _conversion_done(self, conversion: asyncio.Future[list[dict[str, Any]]]) -> None:
        if not conversion.cancelled():
            conversion.exception()  # retrieved: a cancelled caller no longer awaits it
        self._converting.release()

    async def job_action(
        self, verb: str, job_id: int, *, actor: str, invocation_id: str, action_seq: int
    ) -> ActionOutcome:
        request = supervisor_pb2.JobActionRequest(
            verb=supervisor_pb2.JobVerb.Value(f"JOB_VERB_{verb.upper()}"),
            job_id=job_id,
            actor=actor,
            invocation_id=invocation_id,
            action_seq=action_seq,
        )
        response = await self._call(self._stub.JobAction, request, "JobAction", acts=True)
        return ActionOutcome(response.changed, response.message)

    async def work_action(
        self,
        verb: str,
        job_id: int,
        work_names: list[str],
        *,
        actor: str,
        invocation_id: str,
        action_seq: int,
    ) -> ActionOutcome:
        request = supervisor_pb2.WorkActionRequest(
            verb=supervisor_pb2.WorkVerb.Value(f"WORK_VERB_{verb.upper()}"),
            job_id=job_id,
            work_names=work_names,
            actor=actor,
            invocation_id=invocation_id,
            action_seq=action_seq,
        )
        response = await self._call(self._stub.WorkAction, request, "WorkAction", acts=True)
        return ActionOutcome(response.changed, response.message)

    async def subjob_action(
        self,
        verb: str,
        job_id: int,
        subjob_ids: list[int],
        *,
        actor: str,
        invocation_id: str,
        action_seq: int,
    ) -> ActionOutcome:
        request = supervisor_pb2.SubjobActionRequest(
            verb=supervisor_pb2.JobVerb.Value(f"JOB_VERB_{verb.upper()}"),
            job_id=job_id,
            subjob_ids=subjob_ids,
            actor=actor,
            invocation_id=invocation_id,
            action_seq=action_seq,
        )
        response = await self._call(self._stub.SubjobAction, request, "SubjobAction", acts=True)
        return ActionOutcome(response.changed, response.message)
