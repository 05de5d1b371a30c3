"""How a job's time fields read: Unix seconds, and Qube's time 0 for a time not yet reached.

Qube's client gives ``timesubmit``, ``timestart`` and ``timecomplete`` as Unix epoch
seconds, and a time that is unset (a job that has not started, or not ended) as
946702800, Qube's time 0 (``qb.QB_TIME_EPOCH_OFFSET``; qube-callbacks.md §5.3). Scripts
written for Qube test that value, so the reference supervisor's jobs read the same. The
store keeps 0 for unset (its SQL tests ``timestart = 0``); a given job dict may say
either, and both mean unset.

The wire ``Job`` says 0 for unset (types.proto), so the farm's answers (FarmService)
carry a job's times as stored (``with_times_stored``), and a client showing them as Qube's
client would (``cbexec farm``'s ``qb.jobinfo``, ``--json``) reads them back
(``with_times_shown``). A callback's ``qb.jobinfo`` reads the supervisor's job dicts,
946702800 and all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

#: Qube's time 0 as Unix time (2000-01-01 05:00:00 UTC): what an unset time reads.
QB_TIME_EPOCH_OFFSET: Final = 946702800
TIME_FIELDS: Final = ("timesubmit", "timestart", "timecomplete")


def shown(stored: int) -> int:
    """The time a job dict shows for a stored one (0: unset)."""
    return stored or QB_TIME_EPOCH_OFFSET


def to_store(given: int) -> int:
    """The time to store for one a job dict gives (either form of unset is 0)."""
    return 0 if given == QB_TIME_EPOCH_OFFSET else given


def with_times_shown(job: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the job dict with an unset time (0) as Qube's client reads it."""
    return {**job, **{name: shown(job[name]) for name in TIME_FIELDS if name in job}}


def with_times_stored(job: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the job dict with an unset time (either form) as 0, as the wire says it."""
    return {**job, **{name: to_store(job[name]) for name in TIME_FIELDS if name in job}}
