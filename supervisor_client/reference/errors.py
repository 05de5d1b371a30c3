"""Errors of the reference supervisor; the servicer maps each to one gRPC status.

ReferenceSupervisorError
├── SubmitError            a submission was rejected as a whole (INVALID_ARGUMENT)
├── NoSuchJobError         no job (or instance) with that id (NOT_FOUND)
├── NoSuchWorkError        the job has no work item of that name (NOT_FOUND)
├── PermissionDeniedError  the actor may not apply the verb to the job (PERMISSION_DENIED)
└── ActionConflictError    an (invocation_id, action_seq) applied for another action
                           (FAILED_PRECONDITION)

Unknown verbs and malformed arguments raise the built-in ValueError (INVALID_ARGUMENT).
A verb that does not apply to the current state is not an error: it changes nothing.
"""

from __future__ import annotations


class ReferenceSupervisorError(Exception):
    """Base of every error the reference supervisor raises on purpose."""


class SubmitError(ReferenceSupervisorError):
    """A submission was rejected; nothing of it was stored."""


class NoSuchJobError(ReferenceSupervisorError):
    """No job (or no instance of a job) with the given id."""


class NoSuchWorkError(ReferenceSupervisorError):
    """The job has no work item with the given name."""


class PermissionDeniedError(ReferenceSupervisorError):
    """The actor's Qube permissions do not allow the verb on that job."""


class ActionConflictError(ReferenceSupervisorError):
    """The request's ``(invocation_id, action_seq)`` was applied for another action.

    Not a repeat: answering it with the other action's answer would lose it unseen.
    """
