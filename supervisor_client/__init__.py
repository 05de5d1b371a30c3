"""What a supervisor imports: the executor client, and the embedded reference supervisor.

The generated messages stay in ``supervisor_client.qbcallback.v1``; they are not
re-exported here. Nothing in this package imports ``executor``.
"""

from supervisor_client.client import ExecutorClient
from supervisor_client.errors import ExecutorRpcError, InvalidRequestError, RetryableError
from supervisor_client.reference import (
    ReferenceSupervisor,
    SupervisorServicer,
    add_reference_supervisor,
)

__all__ = [
    "ExecutorClient",
    "ExecutorRpcError",
    "InvalidRequestError",
    "ReferenceSupervisor",
    "RetryableError",
    "SupervisorServicer",
    "add_reference_supervisor",
]
