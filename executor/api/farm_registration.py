"""Whether the trigger engine can take a job the farm is about to store: SubmitJobs' last check.

The embedded supervisor's forwarder registers each stored job with RegisterJob over the
executor's own port. A job that request cannot carry (a NUL RegisterJob refuses, or a
request over the executor's 16 MiB receive limit: each work item grows on the wire as a
WorkItem, so a submission under the limit can make a registration over it) would be
stored and never registered, its callbacks never run. SubmitJobs asks this of each job
as the supervisor would store it, before the commit, so such a job refuses the whole
submission instead (INVALID_ARGUMENT naming the job and the field).

A job the trigger store has no room for (``triggers_max_bytes``) would be stored and wait
in the forwarder until removals made room, its callbacks not firing meanwhile: SubmitJobs
asks ``RoomCheck`` too, and refuses such a submission RESOURCE_EXHAUSTED, with
RegisterJob's words for it. The check reads triggers.db's pages in use now and adds what
the submission's jobs take at least (the text of their values: the engine writes it, and
more: the jobs' known states, index rows); it is no reservation. A registration between
the check and the forwarder's (another submission's, a RegisterJob, a job of a few KB
that the pages' slack would have taken) can still find no room: that job then waits in
the forwarder, said at WARNING and in the health line, while every other job's events go on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from executor.api import convert
from executor.errors import InvalidRequestError, StoreFullError
from executor.triggers import store_space
from supervisor_client.reference.forwarder import oversize_problem, registration_request


def registration_problem(job: Mapping[str, Any]) -> str | None:
    """Why RegisterJob would refuse the forwarder's registration of ``job``, or None.

    The very request the forwarder sends, checked as RegisterJob checks it, its fields
    named alone ("name holds a NUL character ..."), then its size. RegisterJob's third
    check, a number JSON cannot hold in ``extra`` or a result package (``job_dict``),
    cannot fail here: the store keeps ``extra`` as strict JSON and a new job's work items
    have no result package; it would cost a 100,000-item submission a quarter second
    more of the loop.
    """
    request = registration_request(job)
    try:
        convert.check_job(request.job, "")
        convert.check_agenda(request.job, "")
    except InvalidRequestError as err:
        return str(err)
    return oversize_problem(request)


class RoomCheck:
    """One submission's check of triggers.db's room: each job as stored, in order.

    ``room``: triggers.db now (``TriggerStore.room``), None when nothing bounds it (a
    fleet's store). Read once, at the first job, inside the farm's transaction.
    """

    def __init__(self, room: Callable[[], store_space.Room | None]) -> None:
        self._room = room
        self._read: store_space.Room | None = None
        self._jobs = 0
        self._adding = 0

    def __call__(self, job: Mapping[str, Any]) -> None:
        """Raises StoreFullError when the submission's jobs so far cannot fit (module doc)."""
        self._jobs += 1
        if self._jobs == 1:
            self._read = self._room()
        if self._read is None:
            return
        self._adding += text_bytes(job)
        after = self._read.in_use + self._adding
        if after > self._read.max_bytes:
            what = f"job {self._jobs} of the submission"
            raise StoreFullError(store_space.refusal(what, self._read, after, at_least=True))


def text_bytes(value: object) -> int:
    """The UTF-8 bytes of the strings among a JSON value's values: any JSON of it holds them."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, Mapping):
        return sum(text_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(text_bytes(item) for item in value)
    return 0
