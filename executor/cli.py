"""The ``cbexec`` command: parse argv, build Settings, configure logging, run, map to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from executor import __version__, cli_runs, cli_triggers, config, logs
from executor.errors import ConfigError

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the executor service")
    serve.add_argument("--config", type=Path, help="TOML settings file (also CBEXEC_CONFIG)")
    serve.add_argument("--bind", help="host:port to listen on (default 127.0.0.1:50051)")
    serve.add_argument("--data-dir", type=Path, help="where databases and logs live")
    serve.add_argument(
        "--supervisor", help="address of a remote Supervisor service (default: embedded)"
    )
    serve.add_argument("--max-concurrent", type=int, help="callbacks running at once")
    serve.add_argument("--max-queue", type=int, help="requests waiting for a slot")
    serve.add_argument("--languages", help="enabled languages: names or Qube's numeric flags")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    serve.add_argument("--log-format", choices=("text", "json"))
    serve.add_argument(
        "--check-config", action="store_true", help="validate the settings, print them, exit"
    )
    serve.set_defaults(handler=_serve)


def load_settings(args: argparse.Namespace, environ: dict[str, str]) -> config.Settings:
    """Defaults < TOML file < environment < flags."""
    settings = config.Settings()
    config_file = args.config or (
        Path(environ["CBEXEC_CONFIG"]) if "CBEXEC_CONFIG" in environ else None
    )
    if config_file is not None:
        settings = config.from_toml(settings, config_file)
    settings = config.from_env(settings, environ)
    flags = {
        "bind": args.bind,
        "data_dir": args.data_dir,
        "supervisor": args.supervisor,
        "max_concurrent": args.max_concurrent,
        "max_queue": args.max_queue,
        "languages": args.languages,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    settings = config.apply(settings, {k: v for k, v in flags.items() if v is not None}, "flag")
    return config.validate(settings)


def _serve(args: argparse.Namespace) -> int:
    from executor import server

    settings = load_settings(args, dict(os.environ))
    logs.configure(settings.log_level, settings.log_format)
    if args.check_config:
        print(settings)
        from executor import security

        security.server_credentials(settings)  # TLS files exist and read as PEM
        print("endpoint:", security.describe(settings))
        from executor.sandbox import tier

        options = tier.sandbox_options(settings)
        print("sandbox:", tier.describe_tier(options))
        if options.cgroups is not None:
            options.cgroups.close()
        return EXIT_OK
    asyncio.run(server.serve_forever(settings))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbexec", description="Sandboxed executor for render-farm job callbacks."
    )
    parser.add_argument("--version", action="version", version=f"cbexec {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    cli_triggers.add_parser(commands)
    cli_runs.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cbexec`` console script."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as err:
        print(f"cbexec: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
