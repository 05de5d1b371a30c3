"""``cbexec serve``: build Settings from defaults, file, environment and flags; check or run them."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from executor import config, config_sources, logs, stop_signal
from executor.cli.connection import EXIT_OK, EXIT_RPC, EXIT_USAGE
from executor.errors import ConfigError, UnavailableError

logger = logging.getLogger(__name__)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the executor service")
    serve.add_argument("--config", type=config_path, help="TOML settings file (also CBEXEC_CONFIG)")
    serve.add_argument("--bind", help="host:port to listen on (default 127.0.0.1:50051)")
    serve.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve /metrics, /healthz and the dashboard on this address (setting http_bind)",
    )
    serve.add_argument("--data-dir", help="where databases and logs live (empty: the default)")
    serve.add_argument(
        "--supervisor", help="address of a remote Supervisor service (default: embedded)"
    )
    serve.add_argument(
        "--store",
        help="postgresql://user@host/db: keep triggers, outbox and history there, shared by a "
        "fleet of executors (default: SQLite in the data dir; also CBEXEC_STORE)",
    )
    serve.add_argument("--max-concurrent", type=int, help="callbacks running at once")
    serve.add_argument("--max-queue", type=int, help="requests waiting for a slot")
    serve.add_argument("--languages", help="enabled languages: names or Qube's numeric flags")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    serve.add_argument("--log-format", choices=("text", "json"))
    serve.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="refuse to start when callbacks.conf has a problem (setting: strict)",
    )
    # Refused together: --check-config checks for an executor about to start (its port,
    # data dir, uids), --check-tls beside a running one. Given both, --check-tls was
    # dropped and a script took it for passed (probe 119).
    checks = serve.add_mutually_exclusive_group()
    checks.add_argument(
        "--check-config",
        action="store_true",
        help="validate everything start-up would (settings, TLS files, port, sandbox, "
        "universal callbacks), print the effective settings, exit",
    )
    checks.add_argument(
        "--check-tls",
        action="store_true",
        help="validate only the TLS files (tls_cert, tls_key, tls_client_ca, and the "
        "supervisor_tls_* of a remote supervisor's link) and the tokens, not the data dir, "
        "port or sandbox: runs beside the executor, before a restart takes new files",
    )
    serve.set_defaults(handler=_serve)


def config_path(text: str) -> Path:
    """An argparse ``type`` for ``--config``: a path, not empty (``Path('')`` is ``.``)."""
    if not text:
        raise argparse.ArgumentTypeError(
            "empty: give a TOML file's path, or leave --config out for none"
        )
    return Path(text)


def layered_settings(
    config_arg: Path | None, environ: dict[str, str], flags: dict[str, object]
) -> config.Settings:
    """Defaults < TOML file (``--config`` or ``CBEXEC_CONFIG``) < environment < flags set.

    An empty ``CBEXEC_CONFIG`` is unset, as an empty ``CBEXEC_ADDRESS`` is (an
    EnvironmentFile's template line ``CBEXEC_CONFIG=``).
    """
    from_env = environ.get("CBEXEC_CONFIG")
    config_file = config_arg or (Path(from_env) if from_env else None)
    from executor.policy_host import problems_beside

    return config_sources.layered(
        config_file,
        environ,
        {k: v for k, v in flags.items() if v is not None},
        beside=functools.partial(problems_beside, environ=environ),
    )


def load_settings(args: argparse.Namespace, environ: dict[str, str]) -> config.Settings:
    """The settings ``serve`` runs with: defaults < TOML file < environment < flags."""
    flags = {
        "bind": args.bind,
        "http_bind": args.http,
        "data_dir": args.data_dir,
        "supervisor": args.supervisor,
        "store": args.store,
        "max_concurrent": args.max_concurrent,
        "max_queue": args.max_queue,
        "languages": args.languages,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "strict": args.strict,
    }
    return layered_settings(args.config, environ, flags)


def _serve(args: argparse.Namespace) -> int:
    from executor import server

    settings = load_settings(args, dict(os.environ))
    grpc_debug = os.environ.get("GRPC_VERBOSITY", "").lower() == "debug"
    logs.configure(settings.log_level, settings.log_format, grpc_debug=grpc_debug)
    if args.check_config or args.check_tls:
        from executor.cli.check_config import check, check_tls

        stop_signal.release()  # no service to stop: a Ctrl-C ends the check at once
        if args.check_config:
            return _said(check(settings, sys.stdout), "start-up would succeed with these settings")
        return _said(check_tls(settings, sys.stdout), "the TLS files load; restart to use them")
    try:
        with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
            runner.run(server.serve_forever(settings))
    except UnavailableError as err:  # a fleet's PostgreSQL not reached at start-up
        print(f"cbexec: store: {err}", file=sys.stderr)
        return EXIT_RPC
    return EXIT_OK


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The ``event_loop`` setting's loop: uvloop's (a dependency) or asyncio's (None).

    uvloop runs the service's own loop work (the gRPC server's callbacks, the runners'
    readers, timers) in C: measured in ``scripts/bench.py``, see the README's Performance.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # where its wheel is missing
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "event_loop: uvloop does not import here (pip install uvloop, or set "
                'event_loop = "asyncio")'
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _said(problems: list[str], ok: str) -> int:
    """A check's problems on stderr (exit 2), or ``ok`` (exit 0)."""
    for problem in problems:
        print(f"cbexec: {problem}", file=sys.stderr)
    if problems:
        return EXIT_USAGE
    print(f"ok: {ok}")
    return EXIT_OK
