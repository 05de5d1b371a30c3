"""Check a freshly started executor the way a newcomer would: run one callback, read the outcome.

Usage: python scripts/quickstart_check.py [HOST:PORT] [--token TOKEN]   (exit 0 when it works)

The address defaults to ``$CBEXEC_ADDRESS``, else 127.0.0.1:50051, and the token to
``$CBEXEC_AUTH_TOKEN``, as for every ``cbexec`` client command.

Prints the outcome and the callback's output; when the callback did not succeed, also
why (the failure's message and the end of its stderr), and when the executor cannot be
reached or refuses the call, that, in one line. An address or token no client can use
(``127.0.0.1`` has no port) is refused in one line on stderr, exit 2, as ``cbexec`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc

from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.credentials import clean_token
from supervisor_client.qbcallback.v1 import executor_pb2
from supervisor_client.targets import resolve_target

STDERR_LINES = 5
EXIT_USAGE = 2  # argparse's, and cbexec's for a setting it refuses


async def check(address: str, token: str | None = None) -> int:
    try:
        async with ExecutorClient(address, token=token) as client:
            response = await client.execute_callback(
                language="python",
                code="print('hello from job', qb.jobid())",
                job={"id": 1, "name": "quickstart", "user": "qube", "status": "pending"},
                timeout=60,
            )
    except ExecutorRpcError as err:
        if err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            print(f"no answer from the executor at {address}: {err}")
        else:  # it answered: a wrong or missing token, a refused request
            print(f"the executor at {address} refused the call: {err}")
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


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments (a usage error exits 2) and run the check."""
    parser = argparse.ArgumentParser(
        description="Run one callback through an executor and print its outcome."
    )
    parser.add_argument(
        "address",
        nargs="?",
        default=os.environ.get("CBEXEC_ADDRESS") or "127.0.0.1:50051",
        help="executor host:port (default: $CBEXEC_ADDRESS, else 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("CBEXEC_AUTH_TOKEN") or None,
        help="the executor's auth_token (default: $CBEXEC_AUTH_TOKEN)",
    )
    args = parser.parse_args(argv)
    # One line and exit 2, as argparse and the cbexec commands refuse a usage error.
    try:
        token = clean_token(args.token)
    except ValueError as err:
        reason = str(err).removeprefix("token: ")
        parser.exit(EXIT_USAGE, f"{parser.prog}: --token (or $CBEXEC_AUTH_TOKEN): {reason}\n")
    try:
        resolve_target(args.address)
    except ValueError as err:  # no port, a scheme gRPC lacks, a port out of range, ...
        parser.exit(EXIT_USAGE, f"{parser.prog}: {err}\n")
    return asyncio.run(check(args.address, token))


if __name__ == "__main__":
    sys.exit(main())
