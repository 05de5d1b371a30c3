"""The ``qb`` module a submission script sees: a small slice of Qube's client API, over the farm.

``cbexec farm submit script.py`` runs the user's script in the CLI process, the way
Qube's own client library runs on the user's machine, with ``import qb`` giving this
module: ``qb.Job()`` and ``qb.Work()`` (plain dicts), ``qb.genframes('1-10')``,
``qb.genchunks(5, '1-100')``, ``qb.submit(jobs)`` returning the jobs with their ids,
``qb.jobinfo(...)`` / ``qb.jobstatus(n)`` and the job verbs (``qb.unblock(n)``, ...).
Every call is one FarmService RPC; a refused call raises the client's error, noted with
the ``qb`` function that made it (``qb.submit``), which the command reports in one line
with the script's line, as any error the script does not catch.

The script runs in a worker thread; ``Call`` carries each RPC to the command's event
loop and waits for its answer.
"""

from __future__ import annotations

import functools
import getpass
import re
import types
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from supervisor_client.errors import ExecutorRpcError
from supervisor_client.farm_client import JOB_VERBS, FarmClient
from supervisor_client.jobdict import job_to_dict
from supervisor_client.reference.qube_time import QB_TIME_EPOCH_OFFSET, with_times_shown

# Runs one coroutine on the command's event loop and returns its result (from a thread).
Call = Callable[[Coroutine[Any, Any, Any]], Any]

#: The note a refused ``qb`` call adds to the client's error: which call it was.
QB_CALL_NOTE = "qb.{name}"

_FRAMES = re.compile(r"^(-?\d+)(?:-(-?\d+)(?:x(\d+))?)?$")


class Job(dict[str, Any]):
    """A Qube job dict (``qb.Job()``): set ``name``, ``label``, ``agenda``, ``callbacks``..."""


def _qube_job(job: Any, *, include_callbacks: bool = False) -> Job:
    """A FarmService job as Qube's client gives it: an unset time (0 on the wire) 946702800.

    ``job`` is the client's answer, typed loosely: protobuf messages stay in executor/api/.
    """
    return Job(with_times_shown(job_to_dict(job, include_callbacks=include_callbacks)))


class Work(dict[str, Any]):
    """An agenda item (``qb.Work()``): ``name``, and ``status`` "blocked" to hold it."""


def genframes(spec: str | int) -> list[Work]:
    """Agenda items for a frame spec: ``'1-10'``, ``'1-10x2'`` (every 2nd), ``'1,3,7-9'``.

    Raises ValueError naming the part that is not a frame spec.
    """
    frames: list[int] = []
    for part in str(spec).replace(" ", "").split(","):
        match = _FRAMES.match(part)
        if not match:
            raise ValueError(f"genframes: {part!r} is not a frame spec (5, 1-10 or 1-10x2)")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3) or 1)
        if step < 1:
            raise ValueError(f"genframes: step {step} in {part!r} must be at least 1")
        frames += range(first, last + 1, step) if first <= last else range(first, last - 1, -step)
    return [Work(name=str(frame)) for frame in dict.fromkeys(frames)]


def genchunks(size: int, spec: str | int) -> list[Work]:
    """Agenda items of ``size`` frames each, named ``'first-last'``.

    ``genchunks(5, '1-10')`` is ``[{'name': '1-5'}, {'name': '6-10'}]``.
    """
    if size < 1:
        raise ValueError(f"genchunks: size {size} must be at least 1")
    frames = [int(work["name"]) for work in genframes(spec)]
    chunks = [frames[i : i + size] for i in range(0, len(frames), size)]
    return [
        Work(name=str(chunk[0]) if len(chunk) == 1 else f"{chunk[0]}-{chunk[-1]}")
        for chunk in chunks
    ]


def _job_ids(args: tuple[Any, ...]) -> list[int]:
    ids: list[int] = []
    for arg in args:
        if isinstance(arg, Iterable) and not isinstance(arg, str | bytes | Mapping):
            ids += _job_ids(tuple(arg))
        else:
            job_id = arg.get("id") if isinstance(arg, Mapping) else arg
            if isinstance(job_id, bool) or not str(job_id).strip().isdigit():
                raise ValueError(f"expected a job id (or a job dict), got {arg!r}")
            ids.append(int(str(job_id)))
    return ids


class SubmissionApi:
    """The ``qb`` functions of one script run, bound to a farm client.

    Args:
        farm: the client the calls go through.
        call: runs a coroutine on the client's event loop and returns its result.
        user: the Qube user a job without ``user`` is submitted as.
    """

    def __init__(self, farm: FarmClient, call: Call, user: str = "") -> None:
        self._farm = farm
        self._call = call
        self._user = user or getpass.getuser()
        self.submitted: list[dict[str, Any]] = []

    def submit(self, jobs: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[Job]:
        """Submit one job or a list (one process group); the jobs with their ids, in order."""
        batch = [jobs] if isinstance(jobs, Mapping) else list(jobs)
        prepared = [{"user": self._user, **job} for job in batch]
        response = self._call(self._farm.submit_jobs(prepared))
        stored = [_qube_job(job, include_callbacks=True) for job in response.jobs]
        self.submitted += stored
        return stored

    def jobinfo(self, *args: Any, **kwargs: Any) -> list[Job]:
        """Jobs by id or pgrp, as Qube's ``qb.jobinfo`` takes them.

        ``jobinfo('-id', n)``, ``jobinfo(id=n)``, ``jobinfo(n)``, ``('-pgrp', n)``,
        ``pgrp=n``; no selector means every job. ``callbacks=True`` (or ``'-callbacks'``)
        keeps each job's callbacks.
        """
        flags = [a for a in args if isinstance(a, str) and a.startswith("-")]
        values = [a for a in args if not (isinstance(a, str) and a.startswith("-"))]
        include = bool(kwargs.pop("callbacks", False)) or "-callbacks" in flags
        selector = next((f[1:] for f in flags if f in ("-id", "-pgrp")), "id")
        if "pgrp" in kwargs:
            selector, values = "pgrp", [kwargs.pop("pgrp")]
        elif "id" in kwargs:
            selector, values = "id", [kwargs.pop("id")]
        if kwargs:
            raise TypeError(f"jobinfo: unknown arguments {sorted(kwargs)}")
        if not values:
            listing = self._call(self._farm.list_jobs())
            return [_qube_job(job) for job in listing.jobs]
        if selector == "pgrp":
            listing = self._call(self._farm.list_jobs(pgrp=_job_ids(tuple(values))[0]))
            jobs = list(listing.jobs)
            if include:
                jobs = [self._call(self._farm.get_job(job.id)).job for job in jobs]
            return [_qube_job(job, include_callbacks=include) for job in jobs]
        return [
            _qube_job(self._call(self._farm.get_job(i)).job, include_callbacks=include)
            for i in _job_ids(tuple(values))
        ]

    def jobstatus(self, job_id: int) -> str:
        """The job's status string."""
        return str(self._call(self._farm.get_job(_job_ids((job_id,))[0])).job.status)

    def _verb(self, verb: str) -> Callable[..., int]:
        def apply(*jobs: Any) -> int:
            changed = 0
            for job_id in _job_ids(jobs):
                changed += self._call(self._farm.change_job(job_id=job_id, verb=verb)).changed
            return changed

        apply.__name__ = verb
        apply.__doc__ = f"qb.{verb}(id or ids): the job verb; returns how many jobs changed."
        return apply

    def module(self) -> types.ModuleType:
        """A fresh ``qb`` module whose functions use this run's client."""
        calls: dict[str, Callable[..., Any]] = {
            "submit": self.submit,
            "jobinfo": self.jobinfo,
            "jobstatus": self.jobstatus,
            **{verb: self._verb(verb) for verb in JOB_VERBS},
        }
        qb = types.ModuleType("qb", "Qube's submission API, served by cbexec's farm.")
        qb.__dict__.update(
            QB_TIME_EPOCH_OFFSET=QB_TIME_EPOCH_OFFSET,
            Job=Job,
            Work=Work,
            genframes=genframes,
            genchunks=genchunks,
            **{name: _noting_refusals(name, call) for name, call in calls.items()},
        )
        return qb


def _noting_refusals(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with its RPC errors noted as ``qb.<name>``'s.

    A script's ``qb.submit`` refused tells "job 1 of the submission", of that call's list:
    the note names the call, the script's line which one (farm_submit.py). The error is
    the client's own, so a script that catches it sees what it always did.
    """

    @functools.wraps(function)
    def noting(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ExecutorRpcError as err:
            err.add_note(QB_CALL_NOTE.format(name=name))
            raise

    return noting
