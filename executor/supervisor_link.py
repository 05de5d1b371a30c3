"""What the host API may ask of the supervisor: the verbs and the ``SupervisorPort`` protocol.

``executor.api.supervisor.GrpcSupervisor`` implements the port over the SupervisorService
(a site's supervisor, or the embedded reference one on its private socket); a failed
call raises ``HostCallError`` with the exception kind the callback sees.

Every action carries ``invocation_id`` and ``action_seq`` (its position among the run's
effects, from 1, numbered by ``host_api.HostApi``): a supervisor applies each pair once,
so a run repeated with the same invocation id (a fleet re-running a firing whose replica
died) does not apply its actions twice. Reads (``job_info``) are not numbered; each says
how much of a job's agenda it needs, so that a big job's 20,000 work items are not read
for a status.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from executor.errors import HostCallError

JOB_VERBS = (
    "unblock",
    "block",
    "kill",
    "remove",
    "retry",
    "requeue",
    "preempt",
    "interrupt",
    "migrate",
    "suspend",
    "resume",
    "complete",
    "fail",
)
WORK_VERBS = ("unblock", "block", "kill", "retry", "requeue", "complete", "fail")
# The job verbs that apply to an instance (all but remove); the child-side qb
# modules (Python qb.py, Perl qb.pm) carry the same list.
SUBJOB_VERBS = tuple(verb for verb in JOB_VERBS if verb != "remove")


def not_one_job(job_id: int, count: int, first_ids: Sequence[object]) -> HostCallError | None:
    """The supervisor's error when its answer for ``job_id`` is neither no job nor that job.

    ``count``: the jobs it answered; ``first_ids``: the ids of the first of them (up to
    5 are named). Known before any job is converted, so a wrong answer of 300,000 jobs
    costs nothing to refuse.
    """
    if count <= 1 and (count == 0 or first_ids[0] == job_id):
        return None
    ids = ", ".join(str(first) for first in first_ids[:5])
    return HostCallError(
        "SupervisorUnavailable",
        f"the supervisor's answer was malformed: JobInfo for job {job_id} gave"
        f" {count} job(s) (ids {ids})",
    )


@dataclass(frozen=True, slots=True)
class ActionOutcome:
    changed: int
    message: str


class SupervisorPort(Protocol):
    """What callbacks may ask of the supervisor, on behalf of ``actor``."""

    async def job_info(
        self,
        *,
        job_id: int | None,
        pgrp: int | None,
        include_callbacks: bool,
        actor: str,
        work_names: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """One job (``job_id``) or a pgrp's jobs, as Qube job dicts.

        ``work_names`` says what of each agenda the caller needs: None every item, else
        the items so named (an empty sequence: none). It is a hint, which the
        supervisor may answer with more (every item), so a caller looks the items it
        needs up by name, and reads the agenda's length or tallies (``todo``,
        ``todotally``) only from a read of every item.
        """
        ...

    async def job_action(
        self, verb: str, job_id: int, *, actor: str, invocation_id: str, action_seq: int
    ) -> ActionOutcome: ...

    async def work_action(
        self,
        verb: str,
        job_id: int,
        work_names: list[str],
        *,
        actor: str,
        invocation_id: str,
        action_seq: int,
    ) -> ActionOutcome: ...

    async def subjob_action(
        self,
        verb: str,
        job_id: int,
        subjob_ids: list[int],
        *,
        actor: str,
        invocation_id: str,
        action_seq: int,
    ) -> ActionOutcome: ...


class SupervisorReachability(Protocol):
    """What the executor's own calls found of the supervisor's reach (``api.supervisor_reach``)."""

    @property
    def losses(self) -> int:
        """How many calls have found it unreachable so far."""
        ...

    @property
    def unreachable(self) -> str:
        """Why the last call found it unreachable, while no answer came since; else ""."""
        ...

    @property
    def last_unreachable(self) -> str:
        """Why the last call that found it unreachable did, kept after an answer ("" before any)."""
        ...

    async def until_answering(self, *, again: bool = False) -> None:
        """Return once it answers (at once unless it is known unreachable).

        ``again``: a re-run failed for the outage since the last wait; the waits between
        looks go on growing from that one's instead of starting over.
        """
        ...
