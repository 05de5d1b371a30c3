"""What a supervisor imports: the executor and farm clients, and the embedded reference supervisor.

The generated messages stay in ``supervisor_client.qbcallback.v1``; they are not
re-exported here. Nothing in this package imports ``executor``.
"""

from supervisor_client.client import ExecutorClient
from supervisor_client.errors import (
    ClientClosedError,
    ExecutorRpcError,
    InvalidRequestError,
    RetryableError,
)
from supervisor_client.farm_client import FarmClient
from supervisor_client.reference import (
    ReferenceSupervisor,
    SupervisorServicer,
    add_reference_supervisor,
)

__all__ = [
    "ClientClosedError",
    "ExecutorClient",
    "ExecutorRpcError",
    "FarmClient",
    "InvalidRequestError",
    "ReferenceSupervisor",
    "RetryableError",
    "SupervisorServicer",
    "add_reference_supervisor",
]
