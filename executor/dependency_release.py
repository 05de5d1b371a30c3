"""Which job callbacks release their job as a Qube dependency does, whatever the policy's ``verbs``.

A job's ``dependency`` and ``waitfor`` hold it until they are met: the farm submits it
blocked, with a callback that unblocks it (supervisor_client/reference/dependency.py).
That callback runs as the job's owner, under the owner's policy, like any other; so a
policy whose ``verbs`` leave out ``unblock`` (or ``workunblock``) kept such jobs blocked
for ever, and a site that made ``job`` read-only switched off every dependency.

A policy's ``verbs`` limit what callbacks' code may do, not Qube's dependencies. The
callback that releases the job needs no mark of its origin, which a submitter could
forge, to be told apart: its form is enough. Any submitter can have the farm make a
callback of that form through ``dependency`` (an item naming a job that has already
ended releases the job at once), so one written by hand grants nothing more. The form
is a qube callback of one code string, ``unblock-self`` (or ``unblock-work-self``), run
at most once (``maximum`` 1, per frame for a frame link), whose trigger is only other
jobs' ends (``complete``, ``done``, ``failed``, ``killed``), ``&&``-joined: of the jobs
(``<state>-job-<id or label>``), or of the same-named frames of others
(``<state>-work-<id or label>-{work}``).
"""

from __future__ import annotations

from typing import Final

from executor.model import Invocation
from executor.runtimes.qube_codes import split_codes
from executor.triggers.errors import TriggerSyntaxError
from executor.triggers.nodes import (
    PLACEHOLDER,
    And,
    Atom,
    ContextKind,
    EventName,
    EventType,
    Expr,
)
from executor.triggers.parser import parse

# The ends a dependency item waits for (``link-<state>-...``; a bare id is ``complete``).
DEPENDENCY_STATES: Final = frozenset(
    {EventName.COMPLETE, EventName.DONE, EventName.FAILED, EventName.KILLED}
)
# The code string that releases the job, the qb function it calls, and the atoms it waits on.
_RELEASES: Final[dict[str, tuple[str, EventType]]] = {
    "unblock-self": ("unblock", EventType.JOB),
    "unblock-work-self": ("workunblock", EventType.WORK),
}
_OTHER_JOB: Final = frozenset({ContextKind.JOB_ID, ContextKind.LABEL})


def dependency_release_verb(invocation: Invocation) -> str | None:
    """The qb function a dependency's release calls, when this run is one; else None.

    ``unblock`` (``unblock-self``) or ``workunblock`` (``unblock-work-self``): the
    host API allows it whatever the policy's ``verbs``.
    """
    spec = invocation.callback
    if invocation.source != "job" or spec.language.lower() != "qube" or spec.maximum != 1:
        return None
    codes = split_codes(spec.code)
    if len(codes) != 1 or codes[0] not in _RELEASES:
        return None
    verb, waits_on = _RELEASES[codes[0]]
    try:
        expr = parse(spec.triggers, stored=True)
    except TriggerSyntaxError:
        return None
    return verb if all(_is_dependency_atom(term, waits_on) for term in _terms(expr)) else None


def _terms(expr: Expr) -> tuple[Expr, ...]:
    return expr.terms if isinstance(expr, And) else (expr,)


def _is_dependency_atom(term: Expr, waits_on: EventType) -> bool:
    """Whether ``term`` is one item of a dependency: another job's (or its frame's) end."""
    if not isinstance(term, Atom) or term.type is not waits_on:
        return False
    if term.name not in DEPENDENCY_STATES or term.context_kind not in _OTHER_JOB:
        return False
    return term.extra == (PLACEHOLDER if waits_on is EventType.WORK else "")
