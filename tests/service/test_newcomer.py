"""The rough edges a new user hit, each pinned by a test against a real executor.

The quick start's two commands (test_readme.py), the README standing alone
(test_readme.py), `--help` of every command (test_cli_help.py) and a port out of range
or taken (tests/faults/test_bad_input.py) are pinned elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from pathlib import Path

import pytest

from executor import server
from executor.errors import ConfigError
from executor.model import Language
from executor.runtimes.check import check_source
from executor.triggers.parsed import check_trigger
from executor.triggers.universal import UniversalConfigError, load_universal
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.cli import ROOT, cbexec, cli_env

pytestmark = pytest.mark.service

EXAMPLE = ROOT / "scripts" / "examples" / "universal-callbacks"


def job_file(tmp_path: Path, job: dict[str, object]) -> Path:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


async def test_quickstart_check_says_why_a_callback_did_not_succeed(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data", languages=frozenset({Language.QUBE}))
    async with running_stack(settings) as stack:
        proc = await cbexec_script("scripts/quickstart_check.py", stack.address)
    code, out = proc
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("OUTCOME_REJECTED")
    assert lines[1] == (
        "failure: python callbacks are disabled by the executor's 'languages' setting "
        "(Qube's supervisor_language_flags)"
    )
    code, out = await cbexec_script("scripts/quickstart_check.py", "127.0.0.1:1")
    assert code == 1 and out.startswith("no answer from the executor at 127.0.0.1:1: UNAVAILABLE")


async def test_quickstart_check_tells_a_refusal_from_no_answer(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path / "data", auth_token="s3cret-token-for-tests")
    async with running_stack(settings) as stack:
        code, out = await cbexec_script("scripts/quickstart_check.py", stack.address)
    assert code == 1
    assert out.startswith(f"the executor at {stack.address} refused the call: UNAUTHENTICATED")


async def test_quickstart_check_takes_its_address_as_the_cbexec_commands_do() -> None:
    code, out = await cbexec_script(
        "scripts/quickstart_check.py", env={"CBEXEC_ADDRESS": "127.0.0.1:1"}
    )
    assert code == 1 and out.startswith("no answer from the executor at 127.0.0.1:1: UNAVAILABLE")
    code, out = await cbexec_script("scripts/quickstart_check.py", "--help")
    assert code == 0 and "$CBEXEC_ADDRESS" in out


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["127.0.0.1"], {}, "address '127.0.0.1' needs a port: host:port"),
        (
            [],
            {"CBEXEC_ADDRESS": "127.0.0.1"},
            "$CBEXEC_ADDRESS: address '127.0.0.1' needs a port: host:port",
        ),
        (["http://127.0.0.1:1"], {}, "address 'http://127.0.0.1:1': "),
        ([], {"CBEXEC_ADDRESS": "http://127.0.0.1:1"}, "$CBEXEC_ADDRESS: address 'http://"),
        (["\udcff:1"], {}, "address: '\\xff:1' is not UTF-8 text"),
        ([], {"CBEXEC_ADDRESS": "\udcff:1"}, "$CBEXEC_ADDRESS: '\\xff:1' is not UTF-8 text"),
        (["127.0.0.1:1", "--token", "t\u00f8k"], {}, "--token (or $CBEXEC_AUTH_TOKEN): "),
        (["127.0.0.1:1"], {"CBEXEC_AUTH_TOKEN": "t\x01"}, "--token (or $CBEXEC_AUTH_TOKEN): "),
    ],
)
async def test_quickstart_check_refuses_a_bad_address_as_the_cbexec_commands_do(
    args: list[str], env: dict[str, str], said: str
) -> None:
    """One line on stderr and exit 2, as ``cbexec runs --address 127.0.0.1``; was a traceback.

    A value from a variable is named by it, as cbexec names it (it was not, probe 151).
    """
    code, out, err = await script_output("scripts/quickstart_check.py", *args, env=env)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith(f"quickstart_check.py: {said}"), err


async def cbexec_script(
    script: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str]:
    code, out, _ = await script_output(script, *args, env=env)
    return code, out


async def script_output(
    script: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """A script's exit status, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**cli_env(), **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_run_recognises_qcb_and_refuses_a_misspelt_event(
    stack_warm: Stack, tmp_path: Path
) -> None:
    job = stack_warm.supervisor.submit([{"name": "held", "status": "blocked"}])[0]
    code = tmp_path / "release.qcb"
    code.write_text("unblock-self\n")
    said = await cbexec(
        "run", str(code), "--job", str(job_file(tmp_path, job)), address=stack_warm.address
    )
    assert said.code == 0, said.out + said.err
    assert "outcome: SUCCEEDED" in said.out and f"unblock {job['id']}: ok" in said.out
    assert stack_warm.supervisor.job(job["id"])["status"] == "pending"

    said = await cbexec(
        "run",
        str(code),
        "--job",
        str(job_file(tmp_path, job)),
        "--event",
        "compelte-job-self",
        address=stack_warm.address,
    )
    assert said.code == 2
    assert said.err.strip() == (
        "cbexec: --event 'compelte-job-self': unknown event name 'compelte'; expected one of "
        "complete, done, submit, killed, blocked, failed, running, waiting, assigned, "
        "removed, modified, timeout, dummy"
    )
    said = await cbexec(
        "run", str(code), "--job", "x.json", "--event", "complete-jb-self", address="127.0.0.1:1"
    )
    assert said.code == 2 and "unknown event type 'jb'" in said.err


async def test_an_unknown_job_on_a_live_server_gets_a_hint(
    stack_warm: Stack, tmp_path: Path
) -> None:
    said = await cbexec(
        "run",
        "--lang",
        "python",
        "--code",
        "print(qb.jobinfo('-id', qb.jobid()))",
        "--job",
        str(job_file(tmp_path, {"id": 4242, "name": "mine"})),
        address=stack_warm.address,
    )
    assert said.code == 0  # Qube's client reads an unknown id as no job: []
    assert "jobinfo -id, 4242: ok no job 4242" in said.out
    hint = [line for line in said.err.splitlines() if line.startswith("hint:")]
    assert len(hint) == 1
    assert "does not know job 4242" in hint[0]
    assert "--embedded" in hint[0] and "cbexec farm submit" in hint[0]


async def test_no_hint_when_the_callback_asks_about_another_unknown_job(
    stack_warm: Stack, tmp_path: Path
) -> None:
    (job,) = stack_warm.supervisor.submit([{"name": "known", "user": "alice"}])
    said = await cbexec(
        "run",
        "--lang",
        "python",
        "--code",
        "print(qb.jobinfo('-id', 99999))\n"
        "try:\n    qb.jobstatus(99999)\nexcept qb.NoSuchJob:\n    print('checked')",
        "--job",
        str(job_file(tmp_path, {"id": job["id"], "name": "known", "user": "alice"})),
        address=stack_warm.address,
    )
    assert said.code == 0, said.err
    assert not [line for line in said.err.splitlines() if line.startswith("hint:")]


async def test_embedded_run_keeps_the_mail_it_prints(tmp_path: Path) -> None:
    data_home = tmp_path / "xdg"
    said = await cbexec(
        "run",
        "--embedded",
        "--lang",
        "qube",
        "--code",
        "mail-status",
        "--job",
        str(job_file(tmp_path, {"name": "shot", "user": "ann", "mailaddress": "ann@x.org"})),
        env=cli_env("", XDG_DATA_HOME=str(data_home)),
    )
    assert said.code == 0, said.out + said.err
    (line,) = [line for line in said.out.splitlines() if "mailed the job status" in line]
    mail = Path(line.rsplit(": ", 1)[1])
    assert mail.is_relative_to(data_home / "cbexec-run-mail")
    assert mail.is_file() and "To: ann@x.org" in mail.read_text()


async def test_runs_show_takes_a_unique_prefix(stack_warm: Stack) -> None:
    one = await stack_warm.client.execute_callback(
        language="python", code="print('first')", job={"id": 5}
    )
    two = await stack_warm.client.execute_callback(
        language="python", code="print('second')", job={"id": 5}
    )
    first, second = one.invocation_id, two.invocation_id
    common = 0
    while first[common] == second[common]:
        common += 1
    unique = first[: max(8, common + 1)]
    said = await cbexec("runs", "show", unique, address=stack_warm.address)
    assert said.code == 0, said.err
    assert f"invocation: {first}" in said.out and "first" in said.out

    history = stack_warm.running.recorder.history
    assert history.ids_starting_with("") == sorted([first, second])
    if common >= 4:  # both ids start alike: the prefix is ambiguous
        said = await cbexec("runs", "show", first[:common], address=stack_warm.address)
        assert said.code == 3 and "is the start of several runs" in said.err
    said = await cbexec("runs", "show", first[:3], address=stack_warm.address)
    assert said.code == 3 and "INVALID_ARGUMENT" in said.err, said.err
    assert "too short: give at least 4 characters of the id" in said.err
    assert history.ids_starting_with("%") == [] and history.ids_starting_with("*") == []


async def test_runs_json_has_numbers_and_short_outcomes(stack_warm: Stack) -> None:
    await stack_warm.client.execute_callback(language="python", code="pass", job={"id": 77})
    said = await cbexec("runs", "--json", "--job", "77", address=stack_warm.address)
    (run,) = [json.loads(line) for line in said.out.splitlines()]
    assert run["job_id"] == 77 and run["outcome"] == "SUCCEEDED"


async def test_trigger_commands_take_the_token_and_fail_in_one_line(tmp_path: Path) -> None:
    async with running_stack(stack_settings(tmp_path / "data", auth_token="t0ken")) as stack:
        for argv in (["triggers", "reload"], ["triggers", "dry-run", "--event", "complete-job-1"]):
            refused = await cbexec(*argv, address=stack.address)
            assert refused.code == 3
            assert (
                refused.err.startswith("cbexec: UNAUTHENTICATED") and "Traceback" not in refused.err
            )
            assert len(refused.err.strip().splitlines()) == 1
            flagged = await cbexec(*argv, "--token", "t0ken", address=stack.address)
            assert flagged.code in (0, 1) and not flagged.err, flagged.err
            from_env = await cbexec(*argv, env=cli_env(stack.address, CBEXEC_AUTH_TOKEN="t0ken"))
            assert from_env.code == flagged.code and not from_env.err, from_env.err


def test_a_universal_python_file_that_does_not_compile_is_reported_at_load(
    tmp_path: Path,
) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "callback")
    (tmp_path / "callback" / "submitted.py").write_text("job = qb.jobinfo(\nprint(job)\n")
    with pytest.raises(UniversalConfigError) as err:
        load_universal([tmp_path / "callback"], check_trigger, check_code=check_source)
    (line,) = err.value.errors
    assert line.startswith(f"{tmp_path}/callback/submitted.py:1: SyntaxError: ")
    assert line.endswith(f"(named at {tmp_path}/callback/callbacks.conf:12)")


def broken_callbacks(data_dir: Path) -> Path:
    target = data_dir / "callback"
    shutil.copytree(EXAMPLE, target)
    (target / "mail-status.qcb").write_text("mail-stats\n")
    return target


async def test_a_broken_callbacks_conf_is_one_line_at_start_up_or_refused_when_strict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    broken_callbacks(data_dir)
    with caplog.at_level(logging.ERROR):
        running = await server.start(stack_settings(data_dir))
        await running.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("UNIVERSAL CALLBACKS ARE OFF: callbacks.conf has 1 problem")
    assert "unknown qube code string 'mail-stats'" in errors[0]

    with pytest.raises(ConfigError, match=r"universal callbacks: 1 problem in callbacks.conf"):
        await server.start(stack_settings(data_dir, strict=True))


async def test_a_restart_with_a_broken_callbacks_conf_keeps_the_set_loaded_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by a tester: a restart meeting one broken file turned universal callbacks
    # off, and every firing of a job registered before was REJECTED as removed.
    data_dir = tmp_path / "data"
    target = data_dir / "callback"
    target.mkdir(parents=True)
    (target / "noted.py").write_text("print('noted')\n")
    (target / "callbacks.conf").write_text("noted.py = complete-job-self\n")
    async with running_stack(stack_settings(data_dir)) as stack:
        registered = await stack.client.register_job({"id": 4242, "name": "before", "user": "bob"})
        assert [cb.universal for cb in registered.callbacks] == [True]
    (target / "callbacks.conf").write_text(
        "noted.py = complete-job-self\nmissing.py = done-job-self\n"
    )

    with caplog.at_level(logging.ERROR):
        async with running_stack(stack_settings(data_dir)) as stack:
            answer = await stack.client.publish_event(
                name="complete", type="job", job_id=4242, event_id="after-restart", wait=True
            )
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("UNIVERSAL CALLBACKS NOT RELOADED: callbacks.conf has 1 problem")
    assert "stays active (1 callbacks)" in errors[0]
    (fired,) = answer.fired
    assert fired.result.outcome == executor_pb2.OUTCOME_SUCCEEDED, fired.result.failure
    assert fired.result.stdout == "noted\n"


async def test_check_config_is_readable_and_checks_what_start_up_would(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    said = await cbexec(
        "serve", "--check-config", "--data-dir", str(data_dir), "--bind", "127.0.0.1:0"
    )
    assert said.code == 0, said.err
    lines = said.out.splitlines()
    assert lines[0] == "effective settings (defaults < config file < CBEXEC_* < flags):"
    assert '  bind = "127.0.0.1:0"' in lines and f'  data_dir = "{data_dir}"' in lines
    assert "  default_limits.wall_seconds = 30" in lines and '  auth_token = ""' in lines
    assert "Settings(" not in said.out
    assert f"universal callbacks: none (no callbacks.conf in {data_dir}/callback)" in lines
    assert lines[-1] == "ok: start-up would succeed with these settings"

    broken_callbacks(data_dir)
    (data_dir / "callback" / "submitted.py").write_text("print(\n")
    (data_dir / "runs.db").write_text("not a database\n" * 10)
    said = await cbexec(
        "serve", "--check-config", "--data-dir", str(data_dir), "--bind", "127.0.0.1:0", "--strict"
    )
    assert said.code == 2
    problems = said.err.splitlines()
    assert problems == [
        # The line start-up itself would stop with.
        f"cbexec: {data_dir}/runs.db: file is not a database: the file is damaged or is not "
        "one of the executor's databases. It was left untouched: restore it from a backup, "
        "or move it aside to start with an empty one (it holds the run history)",
        f"cbexec: universal callbacks: {data_dir}/callback/mail-status.qcb:1: unknown qube "
        + problems[1].split("unknown qube ", 1)[1],
        f"cbexec: universal callbacks: {data_dir}/callback/submitted.py:1: SyntaxError: "
        + problems[2].split("SyntaxError: ", 1)[1],
    ]
    assert "(named at" in problems[1] and "(named at" in problems[2]

    # Without strict, start-up runs without universal callbacks: warned, not refused.
    (data_dir / "runs.db").unlink()
    said = await cbexec(
        "serve", "--check-config", "--data-dir", str(data_dir), "--bind", "127.0.0.1:0"
    )
    assert said.code == 0 and said.err == "", said.err
    assert "universal callbacks: NOT LOADED: callbacks.conf has 2 problems" in said.out
    assert f"  WARNING: {data_dir}/callback/submitted.py:1: SyntaxError: " in said.out
    assert said.out.splitlines()[-1] == "ok: start-up would succeed with these settings"

    for bind, reason in (("127.0.0.1:99999", "out of range"), ("nonsense", "host:port")):
        said = await cbexec("serve", "--check-config", "--data-dir", str(data_dir), "--bind", bind)
        assert said.code == 2 and reason in said.err and len(said.err.splitlines()) == 1


async def test_the_log_line_of_a_failed_run_says_why(
    stack_warm: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="executor.dispatcher"):
        await stack_warm.client.execute_callback(
            language="python", code="raise ValueError('bad frame range')", job={"id": 3}
        )
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("callback ran")]
    assert "outcome=FAILED" in line
    assert line.endswith(' failure="ValueError: bad frame range"')
