"""Check a freshly started executor the way a newcomer would: run one callback, read the outcome.

Usage: python scripts/quickstart_check.py [HOST:PORT]   (exit 0 when it works)

Prints the outcome and the callback's output; when the callback did not succeed, also
why (the failure's message and the end of its stderr), and when the executor cannot be
reached or refuses the call, that, in one line.
"""

from __future__ import annotations

import asyncio
import sys

from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2

STDERR_LINES = 5


async def check(address: str) -> int:
    try:
        async with ExecutorClient(address) as client:
            response = await client.execute_callback(
                language="python",
                code="print('hello from job', qb.jobid())",
                job={"id": 1, "name": "quickstart", "user": "qube", "status": "pending"},
                timeout=60,
            )
    except ExecutorRpcError as err:
        print(f"no answer from the executor at {address}: {err}")
        return 1
    print(executor_pb2.Outcome.Name(response.outcome), response.stdout.strip())
    if response.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED:
        return 0
    if response.failure.message:
        print(f"failure: {response.failure.message}")
    tail = response.stderr.strip().splitlines()[-STDERR_LINES:]
    for line in tail:
        print(f"stderr: {line}")
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(check(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")))
