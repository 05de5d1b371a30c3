"""FarmClient: the asyncio client of the embedded farm (FarmService), one method per RPC.

The farm is the executor's embedded reference supervisor driven from outside: submit
Qube job dicts, read jobs with their callbacks' latches and history, move work the way
a worker or an operator would, take work as a simulated worker, wait for jobs to end.
Each method takes plain values or its request message (not both) and returns the
generated response; a failed call raises an ``ExecutorRpcError`` subclass, as
``ExecutorClient`` does. An executor with a remote ``supervisor`` has no farm: its calls
are UNIMPLEMENTED.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import grpc

from supervisor_client.arguments import (
    as_json,
    check_json,
    check_mapping,
    check_message,
    check_request_alone,
    check_sequence,
    check_str,
    message_from,
    request_from,
)
from supervisor_client.client import ChannelClient
from supervisor_client.jobdict import dict_to_struct
from supervisor_client.qbcallback.v1 import farm_pb2, farm_pb2_grpc, supervisor_pb2

__all__ = ["JOB_VERBS", "WORK_CHANGES", "FarmClient", "job_struct"]


#: The work changes by name, in the contract's order: a worker's, then an operator's.
WORK_CHANGES: Final = tuple(
    name.removeprefix("WORK_CHANGE_").lower() for name in farm_pb2.WorkChange.keys()[1:]
)
#: The job verbs by name, in the contract's order.
JOB_VERBS: Final = tuple(
    name.removeprefix("JOB_VERB_").lower() for name in supervisor_pb2.JobVerb.keys()[1:]
)


def job_struct(job: Mapping[str, Any], where: str = "jobs[0]") -> Any:
    """A job dict as the Struct SubmitJobs carries; TypeError or ValueError naming the value.

    The dict goes through JSON first, so dict subclasses (``qb.Job``), tuples and ints
    arrive as plain JSON values, and what cannot travel is named before anything is sent,
    as the executor would name it (``jobs[1].priority: NaN is not a JSON number; ...``).
    """
    return dict_to_struct(as_json(where, check_mapping(where, job)))


def _name(name: str, value: Any) -> str:
    """A work change's or job verb's name; TypeError naming the argument when not a str."""
    return check_str(name, value).strip()


def work_change_value(change: str) -> farm_pb2.WorkChange.ValueType:
    """WorkChange for "start", "complete", ...; ValueError naming the valid ones."""
    key = f"WORK_CHANGE_{_name('change', change).upper()}"
    if change.strip().lower() not in WORK_CHANGES:
        raise ValueError(
            f"unknown work change {change!r}; expected one of {', '.join(WORK_CHANGES)}"
        )
    return farm_pb2.WorkChange.Value(key)


def job_verb_value(verb: str) -> supervisor_pb2.JobVerb.ValueType:
    """JobVerb for "block", "kill", ...; ValueError naming the valid ones."""
    if _name("verb", verb).lower() not in JOB_VERBS:
        raise ValueError(f"unknown job verb {verb!r}; expected one of {', '.join(JOB_VERBS)}")
    return supervisor_pb2.JobVerb.Value(f"JOB_VERB_{verb.strip().upper()}")


class FarmClient(ChannelClient):
    """Drives an executor's embedded farm over one gRPC channel.

    Args:
        channel_or_address: an open ``grpc.aio.Channel`` (kept by the caller, e.g. the
            one an ``ExecutorClient`` uses), or "host:port" for a channel this client
            opens and closes (one executor: a list or a DNS name is a ValueError); the
            options below apply to such a channel only.
        root_certificates, private_key, certificate_chain, token: as for ExecutorClient.

    After ``close()`` every method raises ClientClosedError.
    """

    def __init__(
        self,
        channel_or_address: grpc.aio.Channel | str,
        *,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(
            channel_or_address,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            token=token,
            fleet=False,  # a farm is one executor's embedded supervisor
        )
        self._farm = farm_pb2_grpc.FarmServiceStub(self._channel)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel the calls go through (an ExecutorClient may share it)."""
        return self._channel

    async def submit_jobs(
        self,
        jobs: Sequence[Mapping[str, Any]] | farm_pb2.SubmitJobsRequest,
        *,
        timeout: float | None = None,
    ) -> farm_pb2.SubmitJobsResponse:
        """Submit Qube job dicts (all or nothing); the answer holds them with their ids.

        Raises TypeError or ValueError before sending for a job that is not JSON (naming
        it as ``jobs[1].priority``, counted from 0), InvalidRequestError for a submission
        the supervisor refuses (the message names the job and field).
        """
        if isinstance(jobs, farm_pb2.SubmitJobsRequest):
            request = jobs
        else:
            given = check_sequence("jobs", jobs, "job dicts")
            request = farm_pb2.SubmitJobsRequest(
                jobs=[job_struct(job, f"jobs[{index}]") for index, job in enumerate(given)]
            )
        return await self._call(self._farm.SubmitJobs, request, timeout)

    async def list_jobs(
        self,
        request: farm_pb2.ListJobsRequest | None = None,
        *,
        status: str = "",
        pgrp: int = 0,
        timeout: float | None = None,
    ) -> farm_pb2.ListJobsResponse:
        """The farm's jobs by id; ``status`` and ``pgrp`` filter (empty / 0: any)."""
        check_request_alone(request, {"status": status, "pgrp": pgrp})
        if request is None:
            request = request_from(farm_pb2.ListJobsRequest, status=status, pgrp=pgrp)
        request = check_message("request", request, farm_pb2.ListJobsRequest)
        return await self._call(self._farm.ListJobs, request, timeout)

    async def get_job(
        self, job_id: int, *, timeout: float | None = None
    ) -> farm_pb2.GetJobResponse:
        """One job with its agenda, its registered callbacks (latches) and its history."""
        request = request_from(farm_pb2.GetJobRequest, job_id=job_id)
        return await self._call(self._farm.GetJob, request, timeout)

    async def change_work(
        self,
        request: farm_pb2.ChangeWorkRequest | None = None,
        *,
        job_id: int = 0,
        work: Sequence[str] = (),
        change: str = "",
        host: str = "",
        actor: str = "",
        result_package: Mapping[str, Any] | None = None,
        attempt: int = 0,
        timeout: float | None = None,
    ) -> farm_pb2.ChangeWorkResponse:
        """Change work items as a worker or an operator would.

        ``change`` is start, complete, fail (a worker's) or kill, retry, requeue, block,
        unblock (an operator's); ``work`` holds names or ranges ("5", "1-10", "3,7-9").
        ``attempt``: a worker's complete or fail ends only the attempt it took (the
        ``attempt`` of its TakeWork answer); 0 checks none.
        ValueError for an unknown change, before sending.
        """
        fields = {
            "job_id": job_id,
            "work": work,
            "change": change,
            "host": host,
            "actor": actor,
            "result_package": result_package,
        }
        check_request_alone(request, fields)
        if request is None:
            request = request_from(
                farm_pb2.ChangeWorkRequest,
                job_id=job_id,
                work=work,
                change=work_change_value(change),
                host=host,
                actor=actor,
                attempt=attempt,
            )
            if result_package is not None and check_mapping("result_package", result_package):
                try:
                    package = dict_to_struct(dict(result_package))
                except (TypeError, ValueError, AttributeError):
                    check_json("result_package", result_package, finite=False)
                    raise
                request.result_package.CopyFrom(package)
        request = check_message("request", request, farm_pb2.ChangeWorkRequest)
        return await self._call(self._farm.ChangeWork, request, timeout)

    async def change_job(
        self,
        request: farm_pb2.ChangeJobRequest | None = None,
        *,
        job_id: int = 0,
        verb: str = "",
        actor: str = "",
        timeout: float | None = None,
    ) -> farm_pb2.ChangeJobResponse:
        """Apply a job verb (block, unblock, kill, remove, retry, ...) as the operator.

        ValueError for an unknown verb, before sending.
        """
        check_request_alone(request, {"job_id": job_id, "verb": verb, "actor": actor})
        if request is None:
            request = request_from(
                farm_pb2.ChangeJobRequest, job_id=job_id, verb=job_verb_value(verb), actor=actor
            )
        request = check_message("request", request, farm_pb2.ChangeJobRequest)
        return await self._call(self._farm.ChangeJob, request, timeout)

    async def take_work(
        self, host: str = "", *, timeout: float | None = None
    ) -> farm_pb2.TakeWorkResponse:
        """As a worker on ``host``: take and start the next item; ``taken`` false when none."""
        request = request_from(farm_pb2.TakeWorkRequest, host=host)
        return await self._call(self._farm.TakeWork, request, timeout)

    async def wait_jobs(
        self,
        job_ids: Sequence[int] = (),
        *,
        wait_seconds: float = 0.0,
        timeout: float | None = None,
    ) -> farm_pb2.WaitJobsResponse:
        """Wait until the jobs have ended and the callbacks their events fired have run.

        Every job when none is named (at most 10,000 ids; each job is answered once);
        ``done`` false when ``wait_seconds`` (default 60) passed.
        """
        request = message_from(
            farm_pb2.WaitJobsRequest,
            {"job_ids": job_ids, "timeout_seconds": wait_seconds},
            names={"timeout_seconds": "wait_seconds"},
        )
        return await self._call(self._farm.WaitJobs, request, timeout)
