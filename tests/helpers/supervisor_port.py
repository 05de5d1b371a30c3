"""In-process doubles for unit and integration tests: a SupervisorPort over the real ReferenceSupervisor."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from executor.errors import HostCallError
from executor.model import CallbackSpec, Invocation, Limits
from executor.supervisor_link import ActionOutcome
from supervisor_client.reference import (
    NoSuchJobError,
    NoSuchWorkError,
    PermissionDeniedError,
    ReferenceSupervisor,
)

LIMITS = Limits(
    cpu_seconds=5,
    wall_seconds=10,
    memory_bytes=512 << 20,
    output_bytes=1 << 20,
    max_processes=32,
    disk_bytes=64 << 20,
)


@contextmanager
def _as_host_errors() -> Iterator[None]:
    try:
        yield
    except NoSuchWorkError as err:
        raise HostCallError("NoSuchWork", str(err)) from err
    except NoSuchJobError as err:
        raise HostCallError("NoSuchJob", str(err)) from err
    except PermissionDeniedError as err:
        raise HostCallError("PermissionDenied", str(err)) from err
    except ValueError as err:
        raise HostCallError("InvalidArgument", str(err)) from err


class ReferencePort:
    """executor.supervisor_link.SupervisorPort over a ReferenceSupervisor in this process."""

    def __init__(self, supervisor: ReferenceSupervisor) -> None:
        self.supervisor = supervisor

    async def job_info(
        self,
        *,
        job_id: int | None,
        pgrp: int | None,
        include_callbacks: bool,
        actor: str,
        work_names: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        with _as_host_errors():
            if pgrp is not None:
                return self.supervisor.jobs_in_pgrp(
                    pgrp, include_callbacks=include_callbacks, work_names=work_names
                )
            return [
                self.supervisor.job(
                    job_id or 0, include_callbacks=include_callbacks, work_names=work_names
                )
            ]

    async def job_action(
        self, verb: str, job_id: int, *, actor: str, invocation_id: str, action_seq: int
    ) -> ActionOutcome:
        with _as_host_errors():
            result = self.supervisor.job_action(
                verb, job_id, actor, invocation_id=invocation_id, action_seq=action_seq
            )
        return ActionOutcome(result.changed, result.message)

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
        with _as_host_errors():
            result = self.supervisor.work_action(
                verb,
                job_id,
                work_names,
                actor,
                invocation_id=invocation_id,
                action_seq=action_seq,
            )
        return ActionOutcome(result.changed, result.message)

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
        with _as_host_errors():
            result = self.supervisor.subjob_action(
                verb,
                job_id,
                subjob_ids,
                actor,
                invocation_id=invocation_id,
                action_seq=action_seq,
            )
        return ActionOutcome(result.changed, result.message)


def invocation_for(
    job: dict[str, Any],
    code: str,
    *,
    language: str = "qube",
    user: str = "",
    work_name: str = "",
    subjob_id: int = -1,
    triggers: str = "done-job-self",
    limits: Limits = LIMITS,
) -> Invocation:
    return Invocation(
        invocation_id=f"test-{job['id']}-{abs(hash((code, work_name, subjob_id)))}",
        callback=CallbackSpec(language=language, code=code, triggers=triggers, id=1, user=user),
        job=job,
        limits=limits,
        work_name=work_name,
        subjob_id=subjob_id,
    )
