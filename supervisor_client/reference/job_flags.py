"""Qube's job ``flags``: read as a number or names; the one the farm acts on is ``mail``.

Qube's job flag ``mail`` (1024, ``qbsub --mail``: "send e-mail when job is done",
qube-callbacks.md §2) is kept by Qube as a mail callback of the job. The reference
supervisor does the same: a job submitted with it gets the callback
``{'triggers': 'done-job-self', 'language': 'mail'}`` after its own and its dependency's,
so the done mail goes the one way every mail does (executor/runtimes/mail.py). A job
that already has that callback (a resubmitted jobinfo dict lists it) gets no second.

``flags`` is Qube's number (bits; ``mail`` is 1024), a decimal string of it, or flag
names separated by ``,`` or spaces as ``flagsstring`` and ``qbsub --flags`` write them
(``"mail,auto_wrangling"``). Names other than ``mail`` and other bits are kept with the
job, not acted on; a value of another kind is refused, naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from supervisor_client.reference.errors import SubmitError

MAIL_FLAG: Final = 1024
MAIL_FLAG_NAME: Final = "mail"
#: The callback the flag stands for, as a submitter would write it.
MAIL_CALLBACK: Final[Mapping[str, str]] = MappingProxyType(
    {"triggers": "done-job-self", "language": "mail"}
)
_SEPARATORS: Final = re.compile(r"[,\s]+")


def wants_done_mail(where: str, job: Mapping[str, Any]) -> bool:
    """Whether ``job``'s ``flags`` hold ``mail``; SubmitError naming a malformed value."""
    value = job.get("flags")
    if value is None or value == "":
        return False
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    malformed = isinstance(value, bool) or not isinstance(value, int | str)
    if malformed or (isinstance(value, int) and value < 0):
        raise SubmitError(
            f"{where}: flags must be Qube's flag number (mail is {MAIL_FLAG}) or flag names "
            f"separated by ',' or spaces (as 'mail'), got {value!r}"
        )
    if isinstance(value, int):
        return bool(value & MAIL_FLAG)
    return MAIL_FLAG_NAME in {name.lower() for name in _SEPARATORS.split(value.strip())}


def has_done_mail(callbacks: Any) -> bool:
    """Whether a job's callbacks (as submitted) already mail when it is done."""
    if not isinstance(callbacks, list | tuple):
        return False
    return any(
        isinstance(cb, Mapping)
        and str(cb.get("language") or "").strip().lower() == MAIL_CALLBACK["language"]
        and str(cb.get("triggers") or "").strip() == MAIL_CALLBACK["triggers"]
        for cb in callbacks
    )
