"""Check a freshly started executor the way a newcomer would: run one callback, read the outcome.

Usage: python scripts/quickstart_check.py [HOST:PORT]   (exit 0 when it works)
"""

from __future__ import annotations

import asyncio
import sys

from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2


async def check(address: str) -> int:
    async with ExecutorClient(address) as client:
        response = await client.execute_callback(
            language="python",
            code="print('hello from job', qb.jobid())",
            job={"id": 1, "name": "quickstart", "user": "qube", "status": "pending"},
        )
    print(executor_pb2.Outcome.Name(response.outcome), response.stdout.strip())
    return 0 if response.outcome == executor_pb2.Outcome.OUTCOME_SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(check(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")))
