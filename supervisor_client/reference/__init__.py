"""The embedded reference supervisor: Qube job/work state on SQLite behind the Supervisor service.

``ReferenceSupervisor`` (store.py) keeps jobs, applies Qube's verbs (states.py) with
Qube's permission mask and emits a ``Transition`` per state change, and applies each
numbered action of a run once (applied.py); ``SupervisorServicer`` (service.py) serves it
over gRPC. Errors are in errors.py.
"""

from supervisor_client.reference.errors import (
    ActionConflictError,
    NoSuchJobError,
    NoSuchWorkError,
    PermissionDeniedError,
    ReferenceSupervisorError,
    SubmitError,
)
from supervisor_client.reference.service import SupervisorServicer, add_reference_supervisor
from supervisor_client.reference.states import DEFAULT_SECURITY, Status, Transition
from supervisor_client.reference.store import ActionResult, Listener, ReferenceSupervisor

__all__ = [
    "DEFAULT_SECURITY",
    "ActionConflictError",
    "ActionResult",
    "Listener",
    "NoSuchJobError",
    "NoSuchWorkError",
    "PermissionDeniedError",
    "ReferenceSupervisor",
    "ReferenceSupervisorError",
    "Status",
    "SubmitError",
    "SupervisorServicer",
    "Transition",
    "add_reference_supervisor",
]
