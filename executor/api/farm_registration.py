"""Whether the trigger engine can take a job the farm is about to store: SubmitJobs' last check.

The embedded supervisor's forwarder registers each stored job with RegisterJob over the
executor's own port. A job that request cannot carry (a NUL RegisterJob refuses, or a
request over the executor's 16 MiB receive limit: each work item grows on the wire as a
WorkItem, so a submission under the limit can make a registration over it) would be
stored and never registered, its callbacks never run. SubmitJobs asks this of each job
as the supervisor would store it, before the commit, so such a job refuses the whole
submission instead (INVALID_ARGUMENT naming the job and the field).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from executor.api import convert
from executor.errors import InvalidRequestError
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
