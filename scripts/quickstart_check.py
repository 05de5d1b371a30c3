"""Check a freshly started executor the way a newcomer would: run one callback, read the outcome.

Usage: python scripts/quickstart_check.py [HOST:PORT] [--token TOKEN]   (exit 0 when it works)

The address defaults to ``$CBEXEC_ADDRESS``, else 127.0.0.1:50051, and the token to
``$CBEXEC_AUTH_TOKEN``, as for every ``cbexec`` client command.

Prints the outcome and the callback's output; when the callback did not succeed, also
why (the failure's message and the end of its stderr), and when the executor cannot be
reached or refuses the call, that, in one line. An address or token no client can use
(``127.0.0.1`` has no port) is refused in one line on stderr, exit 2, with ``cbexec``'s
own code: a value a variable gave is named by it (``$CBEXEC_ADDRESS: address ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import NoReturn

import grpc

from executor.cli.connection import (
    DEFAULT_ADDRESS,
    EXIT_USAGE,
    checked_token,
    from_environment,
    source_of,
)
from executor.cli.undecodable_arguments import refusal
from executor.errors import ConfigError
from executor.visible_text import escaped
from supervisor_client import ExecutorClient, ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2
from supervisor_client.targets import resolve_target

STDERR_LINES = 5


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
        default=from_environment("CBEXEC_ADDRESS") or DEFAULT_ADDRESS,
        help="executor host:port (default: $CBEXEC_ADDRESS, else 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--token",
        default=from_environment("CBEXEC_AUTH_TOKEN"),
        help="the executor's auth_token (default: $CBEXEC_AUTH_TOKEN)",
    )
    args = parser.parse_args(argv)
    # One line and exit 2, as argparse and the cbexec commands refuse a usage error.
    if not_text := refusal(parser, args):
        refuse(parser, not_text)
    try:
        token = checked_token(args.token)
    except ConfigError as err:
        refuse(parser, str(err))
    try:
        resolve_target(args.address)
    except ValueError as err:  # no port, a scheme gRPC lacks, a port out of range, ...
        given_by = source_of(args.address, "")  # a positional's error names it already
        refuse(parser, f"{given_by}: {err}" if given_by else str(err))
    return asyncio.run(check(args.address, token))


def refuse(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """``quickstart_check.py: MESSAGE``, escaped as cbexec escapes it, and exit 2."""
    parser.exit(EXIT_USAGE, f"{parser.prog}: {escaped(message)}\n")


if __name__ == "__main__":
    sys.exit(main())
