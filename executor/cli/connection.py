"""What every client command shares: connection options, the client they make, exit codes.

Exit codes of every ``cbexec`` command: 0 success, 1 the thing asked about did not
succeed (a callback that failed, a trigger that does not parse, a reload refused),
2 bad arguments or configuration, 3 the executor refused the call or could not be
reached, 141 the reader of its output went away (``cbexec runs | head``: quietly, as a
command killed by SIGPIPE). Errors are one line on stderr, never a traceback, with every
character that is not printable escaped (``say_error``): an executor's message may quote
a submitter's job, work or host name, or a supervisor's refusal, and a raw escape
sequence in it would act on the operator's terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

from executor.cli.undecodable_arguments import FromEnvironment
from executor.errors import ConfigError
from executor.visible_text import escaped
from supervisor_client import ExecutorClient, ExecutorRpcError, FarmClient
from supervisor_client.client import MAX_TIMEOUT_S, check_timeout
from supervisor_client.credentials import check_tls, clean_token
from supervisor_client.tls_material import TlsMaterialError

EXIT_OK: Final = 0
EXIT_NOT_SUCCEEDED: Final = 1
EXIT_USAGE: Final = 2
EXIT_RPC: Final = 3
EXIT_BROKEN_PIPE: Final = 141  # 128 + SIGPIPE, as a shell reports a filter's reader gone

DEFAULT_ADDRESS: Final = "127.0.0.1:50051"

Command = Callable[[argparse.Namespace, TextIO], Coroutine[Any, Any, int]]


class AddressList(argparse.Action):
    """``--address`` repeated: the values join into one comma-separated list.

    The first ``--address`` replaces the default (the very object argparse put there);
    later ones add to it. A list is a fleet (``supervisor_client.targets``).
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        given = str(values)
        if isinstance(current, str) and current is not self.default:
            given = f"{current},{given}"
        setattr(namespace, self.dest, given)


# The largest id a request carries: the stores keep ids as SQLite's signed 64-bit integers.
MAX_ID: Final = 2**63 - 1
# A count sent as a uint32 (a --limit, a journal length).
MAX_COUNT: Final = 2**32 - 1
# The most a list answers (RunService's cap, executor.api.runs.MAX_LIST_LIMIT): a --limit
# above it is refused rather than quietly cut.
MAX_LIST: Final = 1000
# A callback id is a uint32 on the wire, an instance (subjob) id an int32.
MAX_CALLBACK_ID: Final = 2**32 - 1
SUBJOB_IDS: Final = (-(2**31), 2**31 - 1)


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``low`` to ``high``, else a usage error (exit 2).

    An id or count out of range would otherwise reach the request as a ValueError traceback.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low} to {high}, got {text}")
        return value

    return parse


def number_in(text: str, low: int, high: int, what: str) -> int:
    """``whole_number`` for part of an argument split by hand (``12:3``): ConfigError (exit 2).

    ``what`` names the part in the message (``JOB``, ``CALLBACK``).
    """
    try:
        return whole_number(low, high)(text)
    except argparse.ArgumentTypeError as err:
        raise ConfigError(f"{what}: {err}") from None


def seconds(text: str) -> float:
    """An argparse ``type`` for ``--timeout``: seconds gRPC can hold as a deadline, else exit 2.

    gRPC answers NaN, inf, 0 or 1e300 with an immediate DEADLINE_EXCEEDED.
    """
    try:
        value = float(text)
        check_timeout(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds, more than 0 and at most {MAX_TIMEOUT_S:g}, got {text!r}; "
            "leave it out for no deadline"
        ) from None
    return value


def from_environment(variable: str) -> FromEnvironment | None:
    """A variable's value, which errors name it by; None when unset or empty (as unset)."""
    value = os.environ.get(variable)
    return FromEnvironment(value, variable) if value else None


def connection_options(*, suppress: bool = False) -> argparse.ArgumentParser:
    """Connection flags; ``suppress`` (for a sub-subcommand) leaves unset ones to the parent."""
    parent = argparse.ArgumentParser(
        add_help=False, argument_default=argparse.SUPPRESS if suppress else None
    )
    parent.add_argument(
        "--address",
        action=AddressList,
        default=argparse.SUPPRESS
        if suppress
        else from_environment("CBEXEC_ADDRESS") or DEFAULT_ADDRESS,
        help="executor host:port, or a fleet: IP:PORT,IP:PORT (or the flag repeated), or "
        "dns:///NAME:PORT, balanced round-robin over the healthy ones "
        "(default: $CBEXEC_ADDRESS, else 127.0.0.1:50051)",
    )
    parent.add_argument(
        "--token",
        default=argparse.SUPPRESS if suppress else from_environment("CBEXEC_AUTH_TOKEN"),
        help="the executor's auth_token (default: $CBEXEC_AUTH_TOKEN)",
    )
    parent.add_argument("--tls-ca", type=Path, help="PEM CA of the executor's certificate")
    parent.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS)")
    parent.add_argument("--tls-key", type=Path, help="PEM client key (mutual TLS)")
    parent.add_argument("--timeout", type=seconds, help="seconds per call (default: no deadline)")
    return parent


def _read(path: Path | None, option: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{option}: cannot read {path}: {err.strerror or err}") from err


# The client's TLS arguments and the flags that give them.
_TLS_FLAGS: Final = {
    "root_certificates": ("--tls-ca", "tls_ca"),
    "private_key": ("--tls-key", "tls_key"),
    "certificate_chain": ("--tls-cert", "tls_cert"),
}


def _credentials(args: argparse.Namespace) -> dict[str, Any]:
    """The client's TLS material and token from the flags; ConfigError naming the flag.

    Checked here, not by gRPC, which takes an empty CA as plaintext (the token in clear)
    and aborts the process on a key without its certificate.
    """
    given = {name: _read(getattr(args, dest), flag) for name, (flag, dest) in _TLS_FLAGS.items()}
    try:
        check_tls(**given)
    except TlsMaterialError as err:
        flag, dest = _TLS_FLAGS[err.argument]
        reason = err.reason
        for name, (other, _) in _TLS_FLAGS.items():
            reason = reason.replace(name, other)
        raise ConfigError(f"{flag} {getattr(args, dest)}: {reason}") from err
    except ValueError as err:
        message = str(err)
        for name, (flag, _) in _TLS_FLAGS.items():
            message = message.replace(name, flag)
        raise ConfigError(message) from err
    return {**given, "token": checked_token(args.token)}


def checked_token(token: str | None) -> str | None:
    """The token as the client sends it; a ConfigError naming ``--token`` and its variable."""
    try:
        return clean_token(token)
    except ValueError as err:
        reason = str(err).removeprefix("token: ")
        raise ConfigError(f"--token (or $CBEXEC_AUTH_TOKEN): {reason}") from err


def say_error(message: str) -> None:
    """``cbexec: MESSAGE`` on stderr, on one line, escaped in place (the module doc says why)."""
    print(f"cbexec: {escaped(message)}", file=sys.stderr)


def connect(args: argparse.Namespace, address: str | None = None) -> ExecutorClient:
    """An ExecutorClient for the connection options (TLS when any certificate is given).

    ``--address`` may name a fleet (several addresses, or dns:///NAME:PORT); a malformed
    one is a ConfigError naming it, as is bad TLS material or token.
    """
    credentials = _credentials(args)
    try:
        return ExecutorClient(address or args.address, **credentials)
    except ValueError as err:
        raise ConfigError(f"{source_of(args.address, '--address')}: {err}") from err


def connect_farm(args: argparse.Namespace) -> FarmClient:
    """A FarmClient for the connection options, as ``connect`` makes an ExecutorClient.

    A farm is one executor's embedded supervisor: ``--address`` must name one executor.
    """
    credentials = _credentials(args)
    try:
        return FarmClient(args.address, **credentials)
    except ValueError as err:
        raise ConfigError(
            f"{source_of(args.address, '--address')}: {err}; "
            "the farm is one executor's embedded supervisor"
        ) from err


def source_of(value: str, given_as: str) -> str:
    """Who gave a value, for its error: ``$CBEXEC_ADDRESS`` when no argument (``given_as``) did."""
    if isinstance(value, FromEnvironment):
        return f"${value.variable}"
    return given_as


def rpc_command(work: Command) -> Callable[[argparse.Namespace], int]:
    """Run an async command; an RPC failure is one line on stderr and exit code 3."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return asyncio.run(work(args, sys.stdout))
        except ExecutorRpcError as err:
            say_error(str(err))
            return EXIT_RPC

    return handler
