"""Every cbexec command's error path: the documented exit code and one clear line, no traceback.

Exit codes (executor/cli/connection.py): 1 what was asked did not succeed, 2 bad
arguments or configuration, 3 the executor refused the call or could not be reached.
Argument errors found by argparse print its usage line first, then the error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.cli import cbexec, cli_env
from tests.helpers.supervisors import SupervisorEndpoint

pytestmark = pytest.mark.service

UNREACHABLE = "127.0.0.1:1"
# A file that looks like a certificate (it is never used: the flags around it are wrong).
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

# (argv, exit code, text the error holds); "{job}" is a job file that does not exist.
CASES: list[tuple[tuple[str, ...], int, str]] = [
    ((), 2, "the following arguments are required: command"),
    (("serve", "--bind", "nonsense"), 2, "bind: expected host:port, got 'nonsense'"),
    (("run", "--job", "{job}", "--code", "pass", "--lang", "python"), 2, "cannot read"),
    (("runs", "--outcome", "FINE"), 2, "unknown outcome 'FINE'; expected one of SUCCEEDED"),
    (("runs", "show", "0000-nope"), 3, "NOT_FOUND: no run '0000-nope'"),
    (("triggers",), 2, "required: triggers_command"),
    (("triggers", "check", "complete-jb-self"), 1, "unknown event type 'jb'"),
    (("triggers", "explain", "(complete-job-self"), 1, "expected"),
    (("triggers", "dry-run", "--event", "complete-job"), 2, "--event expects NAME-TYPE-JOBID"),
    (("triggers", "reload", "--address", UNREACHABLE), 3, "UNAVAILABLE"),
    (("triggers", "register", "{job}"), 2, "job.json: cannot read"),
    # A file that is not UTF-8 was a UnicodeDecodeError traceback (exit 1).
    (("triggers", "register", "{latin}"), 2, "latin.json: not UTF-8 text"),
    (("farm", "submit", "{latin}"), 2, "latin.json is not UTF-8 text"),
    (("triggers", "why", "abc"), 2, "expected JOB or JOB:CALLBACK"),
    (("triggers", "why", "99"), 3, "NOT_FOUND"),
    (("metrics", "--address", UNREACHABLE), 3, "UNAVAILABLE"),
    (("outbox",), 2, "required: outbox_command"),
    (("outbox", "dead", "--address", UNREACHABLE), 3, "UNAVAILABLE"),
    (("outbox", "retry"), 2, "name the invocation ids to retry, or give --all"),
    (("farm",), 2, "required: COMMAND"),
    (("farm", "submit", "{missing}.py"), 2, "does not exist"),
    (("farm", "submit", "notes.txt"), 2, "is not a submission: expected a .py script"),
    (("farm", "jobs", "--status", "done"), 2, "invalid choice: 'done'"),
    (("farm", "show", "99"), 3, "NOT_FOUND: no job 99; the farm has no jobs"),
    (("farm", "start", "x"), 2, "'x' is not a job or its frames: expected ID or ID:FRAMES"),
    (("farm", "complete", "1:1"), 3, "NOT_FOUND: no job 1; the farm has no jobs"),
    (("farm", "fail", "4:2"), 3, "no job 4"),
    (("farm", "retry", "4"), 3, "no job 4"),
    (("farm", "kill", "4:1-3"), 3, "no job 4"),
    (("farm", "block", "4"), 3, "no job 4"),
    (("farm", "unblock", "4"), 3, "no job 4"),
    (("farm", "requeue", "4"), 3, "no job 4"),
    (("farm", "remove", "4:2"), 2, "remove takes job ids, not frames: give 4"),
    (("farm", "workers", "0"), 2, "N: 0 workers; expected 1 to 64"),
    (("farm", "wait", "7"), 3, "NOT_FOUND: no job 7"),
    (("serve", "--check-config", "--log-level", "LOUD"), 2, "log_level: expected DEBUG, INFO"),
    (("runs", "--job", "-1"), 2, "argument --job: expected 1 to 9223372036854775807, got -1"),
    # 0 is no job id: it had listed every job's runs.
    (("runs", "--job", "0"), 2, "argument --job: expected 1 to 9223372036854775807, got 0"),
    (("runs", "--limit", "-3"), 2, "argument --limit: expected 1 to 1000, got -3"),
    (("runs", "--limit", "1001"), 2, "argument --limit: expected 1 to 1000, got 1001"),
    # gRPC answered these with an immediate DEADLINE_EXCEEDED (exit 3).
    (("metrics", "--timeout", "inf"), 2, "argument --timeout: expected seconds, more than 0"),
    (("metrics", "--timeout", "nan"), 2, "argument --timeout: expected seconds"),
    (("runs", "--timeout", "1e300"), 2, "argument --timeout: expected seconds"),
    (("runs", "--timeout", "0"), 2, "argument --timeout: expected seconds"),
    # gRPC took port 99999 as 34463.
    (("metrics", "--address", "127.0.0.1:99999"), 2, "port 99999 is out of range (1 to 65535)"),
    (("metrics", "--address", "127.0.0.1:1,127.0.0.1:99999"), 2, "port 99999 is out of range"),
    # A list not separated by commas was told to bracket an IPv6 address.
    (
        ("runs", "--address", "127.0.0.1:1 127.0.0.2:1"),
        2,
        "address '127.0.0.1:1 127.0.0.2:1': separate a list's addresses with commas, not spaces",
    ),
    (("metrics", "--address", "127.0.0.1:1;127.0.0.2:1"), 2, "with commas, not ';'"),
    # gRPC's C core refused these with a traceback naming nothing.
    (("metrics", "--token", "tøk"), 2, "--token (or $CBEXEC_AUTH_TOKEN): character 2 is not"),
    (("runs", "--token", "a\nb"), 2, "character 2 is not printable ASCII"),
    # gRPC aborted the process (exit 134) on half a client certificate...
    (("metrics", "--tls-ca", "{pem}", "--tls-key", "{pem}"), 2, "--tls-key without --tls-cert"),
    (("metrics", "--tls-cert", "{pem}"), 2, "--tls-cert without --tls-key: a client"),
    # ...and took an empty CA as none: plaintext, the token in clear.
    (("runs", "--tls-ca", "{empty}"), 2, "--tls-ca is empty: TLS needs one"),
    (("farm", "jobs", "--tls-ca", "{empty}"), 2, "--tls-ca is empty"),
    (("metrics", "--tls-ca", "{job}"), 2, "--tls-ca: cannot read"),
    (("farm", "show", "-1"), 2, "argument ID: expected 0 to"),
    (("farm", "jobs", "--pgrp", "-1"), 2, "argument --pgrp: expected 0 to"),
    (("farm", "wait", "99999999999999999999"), 2, "got 99999999999999999999"),
    (("outbox", "dead", "--limit", "0"), 2, "argument --limit: expected 1 to"),
    (("triggers", "why", "1", "--journal", "-1"), 2, "argument --journal: expected 0 to"),
    # Ids beyond the wire types were a ValueError traceback from the request (exit 1).
    (("triggers", "why", "9" * 23), 2, "JOB: expected 1 to 9223372036854775807, got 9999"),
    (("triggers", "why", "5:4294967296"), 2, "CALLBACK: expected 0 to 4294967295, got 4294"),
    (("triggers", "dry-run", "--event", f"complete-job-{'9' * 23}"), 2, "JOBID: expected 1 to"),
    (("triggers", "dry-run", "--event", "complete-subjob-5-2147483648"), 2, "ITEM: expected"),
    (("farm", "complete", f"{'9' * 23}:1"), 2, "ID: expected 0 to 9223372036854775807"),
    (("farm", "unblock", "9" * 23), 2, "ID: expected 0 to 9223372036854775807"),
    (("farm", "remove", "9" * 23), 2, "ID: expected 0 to 9223372036854775807"),
    (("store",), 2, "required: store_command"),
    (("store", "migrate", "--store", "mysql://x/y"), 2, "store: expected a postgresql://"),
    (("store", "migrate", "--store", "postgresql://x@127.0.0.1:1/db"), 3, "unreachable"),
    (
        ("store", "migrate", "--store", "postgresql://u:hunter2@[bad/db"),
        2,
        "store: not a valid PostgreSQL URL: end of string reached",
    ),
    # A port no database can have is a bad setting: it was "unreachable" (exit 3), which a
    # unit that retries on 3 retried for ever.
    (
        ("store", "migrate", "--store", "postgresql://u@127.0.0.1:99999/db"),
        2,
        "store: port 99999 is out of range (1 to 65535)",
    ),
    (("store", "migrate", "--store", "postgresql://u@h:54x/db"), 2, "store: port '54x' is not"),
    # Both were taken, and only --check-config ran: a script believed the TLS check passed.
    (
        ("serve", "--check-config", "--check-tls"),
        2,
        "argument --check-tls: not allowed with argument --check-config",
    ),
    # Path('') is '.': "config file .: Is a directory", a path never given.
    (("serve", "--check-config", "--config", ""), 2, "argument --config: empty: give a TOML"),
    (("store", "migrate", "--config", ""), 2, "argument --config: empty"),
    # Sent on, these came back INVALID_ARGUMENT (exit 3); 0 silently meant the default.
    *(
        (
            ("run", "--code", "pass", "--lang", "python", "--job", "{job}", "--wall-seconds", w),
            2,
            f"argument --wall-seconds: expected seconds, more than 0 and at most 1e+09, got '{w}'",
        )
        for w in ("-5", "nan", "inf", "1e20", "0", "soon")
    ),
    # Blamed on --job (the request's subjob_id) once the job file was read.
    (
        ("run", "--code", "pass", "--lang", "python", "--job", "{job}", "--subjob", "2147483648"),
        2,
        "argument --subjob: expected -2147483648 to 2147483647, got 2147483648",
    ),
    (("outbox", "retry", "--all", "0123abcd"), 2, "give invocation ids or --all, not both"),
    # Sent on, the RPC's refusal named its field (`set all`), not the command's --all.
    (
        ("outbox", "retry", *(f"{n:08x}" for n in range(1001))),
        2,
        "cbexec: at most 1000 invocation ids a call, got 1001; --all retries every dead letter",
    ),
]


@pytest.mark.parametrize(("argv", "code", "text"), CASES, ids=[" ".join(c[0]) for c in CASES])
async def test_error_path(
    stack_warm: Stack, tmp_path: Path, argv: tuple[str, ...], code: int, text: str
) -> None:
    (tmp_path / "empty.pem").write_bytes(b"")
    (tmp_path / "some.pem").write_bytes(PEM)
    (tmp_path / "latin.json").write_bytes(b'\xff\xfe{"name": "caf\xe9"}')
    places = {
        "{latin}": tmp_path / "latin.json",
        "{job}": tmp_path / "job.json",
        "{missing}": tmp_path / "m",
        "{empty}": tmp_path / "empty.pem",
        "{pem}": tmp_path / "some.pem",
    }
    for place, path in places.items():
        argv = tuple(a.replace(place, str(path)) for a in argv)
    said = await cbexec(*argv, address=stack_warm.address)
    assert said.code == code, said
    # A check that fails (exit 1) prints its finding as its answer; errors go to stderr.
    assert text in (said.out + said.err if code == 1 else said.err), said
    assert "Traceback" not in said.err + said.out
    assert "hunter2" not in said.err + said.out, "a password is never printed"
    lines = said.err.strip().splitlines()
    if code == 1:
        return
    if lines[0].startswith("usage:"):  # argparse: its usage, then the one error line
        assert lines[-1].startswith("cbexec") and ": error: " in lines[-1]
    elif code in (2, 3):
        assert len(lines) == 1 and lines[0].startswith("cbexec: "), lines


def test_every_command_has_an_error_path() -> None:
    from tests.unit.test_cli_help import ALL

    covered = {argv[: len(path)] for argv, _, _ in CASES for path in ALL}
    missing = [" ".join(path) for path in ALL if path not in covered]
    assert missing == []


async def test_an_executor_without_a_farm_says_so(tmp_path: Path) -> None:
    endpoint = SupervisorEndpoint(tmp_path / "remote.db")
    await endpoint.start()
    try:
        settings = stack_settings(tmp_path / "data", supervisor=endpoint.address)
        async with running_stack(settings) as stack:
            said = await cbexec("farm", "jobs", address=stack.address)
    finally:
        await endpoint.stop()
        endpoint.store.close()
    assert said.code == 3
    assert said.err.strip() == (
        f"cbexec: {stack.address} has no farm: it runs with a remote supervisor (the farm is "
        "the embedded reference supervisor's; start cbexec serve without --supervisor)"
    )


async def test_retrying_a_dead_letter_that_is_not_one_says_so(tmp_path: Path) -> None:
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        said = await cbexec("outbox", "retry", "no-such-invocation", address=stack.address)
    assert said.code == 1, said.err
    assert "queued 0 for delivery again" in said.out
    assert "1 of the ids named is not a dead letter" in said.err


async def test_serve_with_its_store_unreachable_says_so_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    said = await cbexec(
        "serve",
        "--data-dir",
        str(tmp_path / "data"),
        "--bind",
        "127.0.0.1:0",
        "--store",
        "postgresql://u:hunter2@127.0.0.1:1/db",
    )
    assert said.code == 3, said.err
    assert said.err.startswith("cbexec: store: PostgreSQL store unreachable"), said.err
    assert "Traceback" not in said.err and "hunter2" not in said.err


# A byte that is not UTF-8 (Python's surrogateescape gives it as '\udcff'), in each
# command's text arguments: `runs show` raised a ValueError traceback (exit 1).
NOT_UTF8 = "\udcff\udcfe"
NOT_UTF8_CASES: list[tuple[str, ...]] = [
    ("runs", "show", NOT_UTF8),
    ("runs", "--page-token", NOT_UTF8),
    ("runs", "--address", NOT_UTF8),
    ("run", "--code", NOT_UTF8, "--lang", "python", "--job", "/dev/null"),
    ("run", "--code", "pass", "--lang", "python", "--job", "/dev/null", "--owner", NOT_UTF8),
    ("run", "--code", "pass", "--lang", "python", "--job", "/dev/null", "--work", NOT_UTF8),
    ("triggers", "why", NOT_UTF8),
    ("triggers", "why", "1", "--work", NOT_UTF8),
    ("triggers", "check", NOT_UTF8),
    ("triggers", "explain", NOT_UTF8),
    ("triggers", "dry-run", "--event", NOT_UTF8),
    ("triggers", "reload", "--token", NOT_UTF8),
    ("outbox", "retry", NOT_UTF8),
    ("metrics", "--address", NOT_UTF8),
    ("farm", "submit", "job.json", "--user", NOT_UTF8),
    ("farm", "submit", "job.py", "an-argument", NOT_UTF8),
    ("farm", "start", NOT_UTF8),
    ("farm", "complete", "1:1", "--host", NOT_UTF8),
    ("serve", "--check-config", "--bind", NOT_UTF8),
    ("serve", "--check-config", "--store", NOT_UTF8),
    ("store", "migrate", "--store", NOT_UTF8),
]


@pytest.mark.parametrize("argv", NOT_UTF8_CASES, ids=[" ".join(c[:2]) for c in NOT_UTF8_CASES])
async def test_an_argument_that_is_not_utf8_is_one_line(argv: tuple[str, ...]) -> None:
    said = await cbexec(*argv, address=UNREACHABLE)
    assert (said.code, said.out) == (2, ""), said
    (line,) = said.err.splitlines()
    assert line.startswith("cbexec: ") and "'\\xff\\xfe' is not UTF-8 text" in line, said


# Each named as its usage names it. Options with a converter or choices ran those first:
# the usage block and Python's '\udcff' (probe 119).
NOT_UTF8_NAMED: list[tuple[tuple[str, ...], str]] = [
    (("runs", "show", NOT_UTF8), "ID"),
    (("runs", "--job", NOT_UTF8), "--job"),
    (("runs", "--outcome", NOT_UTF8), "--outcome"),
    (("runs", "--since", NOT_UTF8), "--since"),
    (("runs", "--limit", NOT_UTF8), "--limit"),
    (("runs", "show", "abcd", "--timeout", NOT_UTF8), "--timeout"),
    (("farm", "show", NOT_UTF8), "ID"),
    (("outbox", "dead", "--limit", NOT_UTF8), "--limit"),
    (("run", "--code", "pass", "--lang", NOT_UTF8, "--job", "/dev/null"), "--lang"),
    (("run", "--code", "pass", "--job", "/dev/null", "--wall-seconds", NOT_UTF8), "--wall-seconds"),
    (("run", "--code", "pass", "--job", "/dev/null", "--subjob", NOT_UTF8), "--subjob"),
    (("metrics", "--timeout", NOT_UTF8), "--timeout"),
    (("serve", "--check-config", "--max-concurrent", NOT_UTF8), "--max-concurrent"),
    (("serve", "--check-config", "--log-format", NOT_UTF8), "--log-format"),
    (("farm", "submit", "job.py", "an-argument", NOT_UTF8), "ARGS"),
    ((NOT_UTF8,), "COMMAND"),
    (("farm", NOT_UTF8), "COMMAND"),
]


@pytest.mark.parametrize(
    ("argv", "name"), NOT_UTF8_NAMED, ids=[" ".join(c[0][:2]) for c in NOT_UTF8_NAMED]
)
async def test_an_argument_that_is_not_utf8_is_named(argv: tuple[str, ...], name: str) -> None:
    said = await cbexec(*argv, address=UNREACHABLE)
    assert (said.code, said.out) == (2, ""), said
    assert said.err == f"cbexec: {name}: '\\xff\\xfe' is not UTF-8 text\n", said


# The environment's values alike, named by their variable (no flag was given).
NOT_UTF8_ENV: list[tuple[tuple[str, ...], str]] = [
    (("metrics",), "CBEXEC_ADDRESS"),
    (("metrics", "--address", UNREACHABLE), "CBEXEC_AUTH_TOKEN"),
    (("store", "migrate"), "CBEXEC_MAX_CONCURRENT"),
    (("store", "migrate"), "CBEXEC_DEFAULT_LIMITS__WALL_SECONDS"),
    (("store", "migrate"), "CBEXEC_BIND"),
]


@pytest.mark.parametrize(("argv", "variable"), NOT_UTF8_ENV, ids=[v for _, v in NOT_UTF8_ENV])
async def test_an_environment_value_that_is_not_utf8_is_one_line_naming_it(
    argv: tuple[str, ...], variable: str
) -> None:
    said = await cbexec(*argv, env=cli_env(**{variable: NOT_UTF8}))
    assert (said.code, said.out) == (2, ""), said
    (line,) = said.err.splitlines()
    assert line.endswith(f"${variable}: '\\xff\\xfe' is not UTF-8 text"), said


async def test_a_path_in_the_environment_may_be_any_bytes(tmp_path: Path) -> None:
    said = await cbexec("store", "migrate", env=cli_env(CBEXEC_LOG_DIR=f"{tmp_path}/{NOT_UTF8}"))
    assert said.code == 0, said
    assert "nothing to migrate" in said.out


async def test_an_empty_config_variable_means_no_file() -> None:
    # An EnvironmentFile's template line `CBEXEC_CONFIG=`: "config file .: Is a directory".
    said = await cbexec("store", "migrate", env=cli_env(CBEXEC_CONFIG=""))
    assert (said.code, said.err) == (0, ""), said
    assert "store is SQLite (in the data dir): nothing to migrate" in said.out


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("127.0.0.1", "address '127.0.0.1' needs a port: host:port"),
        ("127.0.0.1:99999", "address '127.0.0.1:99999': port 99999 is out of range"),
    ],
)
async def test_a_bad_address_variable_is_named_not_the_flag(value: str, text: str) -> None:
    said = await cbexec("metrics", env=cli_env(value))
    assert said.code == 2, said
    assert said.err.startswith(f"cbexec: $CBEXEC_ADDRESS: {text}"), said
    # The flag, when given, is named as before.
    said = await cbexec("metrics", "--address", value)
    assert said.err.startswith(f"cbexec: --address: {text}"), said
