"""The hardened tier and the network switch, seen from inside a callback."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from executor.config import Settings
from executor.errors import ConfigError
from executor.model import Language
from executor.model import Outcome as ModelOutcome
from executor.runtimes.child import child_runtime
from executor.sandbox import tier
from executor.sandbox.exit_status import EXIT_LAUNCH_FAILED, SandboxResult
from executor.sandbox.process import SandboxRunner
from executor.sandbox.spawners import MAX_ZYGOTE_FAILURES, ZygoteSpawner
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.frames import refuse_calls, start_frame

pytestmark = pytest.mark.service

Outcome = executor_pb2.Outcome

LOOK_AROUND = r"""
import json, os
view = {"uid": os.getuid(), "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "tmp": os.listdir("/tmp"), "cwd": os.getcwd()}
try:
    view["data_dir"] = os.listdir(DATA_DIR)
except OSError as err:
    view["data_dir"] = type(err).__name__
try:
    open("/etc/shadow").read()
    view["shadow"] = "read"
except OSError as err:
    view["shadow"] = type(err).__name__
import sqlite3, decimal  # stdlib imports still work behind the masks
print(json.dumps(view))
"""

# The same view from Perl: the Perl zygote confines its children with its own code.
PERL_LOOK_AROUND = r"""
my %view = (uid => $< + 0, cwd => readlink('/proc/self/cwd'));
opendir(my $proc, '/proc') or die "no /proc: $!";
$view{pids} = [sort { $a <=> $b } map { $_ + 0 } grep { /\A[0-9]+\z/ } readdir $proc];
opendir(my $tmp, '/tmp') or die "no /tmp: $!";
$view{tmp} = [grep { !/\A\.\.?\z/ } readdir $tmp];
$view{data_dir} = opendir(my $data, DATA_DIR) ? [readdir $data]
    : $!{ENOENT} ? 'FileNotFoundError' : "$!";
$view{shadow} = open(my $shadow, '<', '/etc/shadow') ? 'read'
    : $!{EACCES} ? 'PermissionError' : "$!";
print qb::JSON::encode(\%view);
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the hardened tier needs root")
@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_hardened_callback_sees_only_itself(stack: Stack, language: str) -> None:
    assert stack.running.options.isolation is not None
    look_around = LOOK_AROUND if language == "python" else PERL_LOOK_AROUND
    code = look_around.replace("DATA_DIR", repr(str(stack.settings.data_dir)))
    first = await stack.client.execute_callback(
        language=language, code=code, job={"id": 1, "user": "a"}
    )
    assert first.outcome == Outcome.OUTCOME_SUCCEEDED, first.failure.message + first.stderr
    view = json.loads(first.stdout)

    assert view["uid"] >= stack.settings.sandbox_uid_base
    assert view["pids"] == [1]
    # /tmp holds its own working directory, plus the way to any kept path under /tmp
    # (in CI the checkout, venv and child code live there).
    kept_under_tmp = {
        Path(path).relative_to("/tmp").parts[0]
        for path in stack.running.options.isolation.keep
        if path.startswith("/tmp/")
    }
    assert set(view["tmp"]) == {os.path.basename(view["cwd"])} | kept_under_tmp
    assert view["data_dir"] == "FileNotFoundError"
    assert view["shadow"] == "PermissionError"


# Leaves a file in its working directory (under its /tmp), then reports: each mount
# point's device (top of the stack last: a tmpfs is one device per instance), its working
# directory, what its /tmp holds, and whether the file an EARLIER run left is there.
LEAVE_AND_LOOK = {
    "python": (
        "import json, os\n"
        "open('left-behind', 'w').write('x')\n"
        "mounts = [line.split() for line in open('/proc/self/mountinfo')]\n"
        "print(json.dumps({\n"
        "    'devices': {fields[4]: fields[2] for fields in mounts},\n"
        "    'cwd': os.getcwd(),\n"
        "    'tmp': os.listdir('/tmp'),\n"
        "    'earlier': os.path.exists(EARLIER),\n"
        "}))\n"
    ),
    "perl": (
        "open(my $left, '>', 'left-behind') or die \"left-behind: $!\";\n"
        "print $left 'x';\n"
        "close $left;\n"
        "open(my $info, '<', '/proc/self/mountinfo') or die \"mountinfo: $!\";\n"
        "my %devices = map { (split ' ')[4, 2] } <$info>;\n"
        "opendir(my $tmp, '/tmp') or die \"no /tmp: $!\";\n"
        "print qb::JSON::encode({\n"
        "    devices => \\%devices,\n"
        "    cwd => readlink('/proc/self/cwd'),\n"
        "    tmp => [grep { !/\\A\\.\\.?\\z/ } readdir $tmp],\n"
        "    earlier => (-e EARLIER ? 1 : 0),\n"
        "});\n"
    ),
}


@pytest.mark.skipif(os.geteuid() != 0, reason="the hardened tier needs root")
@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_zygote_covers_the_masks_once_and_each_run_gets_its_own_tmp(
    stack_warm: Stack, language: str
) -> None:
    assert stack_warm.running.options.isolation is not None
    runs: list[dict[str, Any]] = []
    for _ in range(2):
        # Python's repr of a path is a Perl string literal too (no quotes or backslashes).
        earlier = os.path.join(runs[0]["cwd"], "left-behind") if runs else ""
        response = await stack_warm.client.execute_callback(
            language=language,
            code=LEAVE_AND_LOOK[language].replace("EARLIER", repr(earlier)),
            job={"id": 1, "user": "a"},
        )
        assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (
            response.failure.message + response.stderr
        )
        runs.append(json.loads(response.stdout))
    first, second = runs
    shared = [m for m in stack_warm.running.options.isolation.masks if m != "/tmp"]

    assert shared, "the plan has no mask besides /tmp"
    # The same tmpfs in both runs: covered once, in the zygote's namespace.
    assert [first["devices"][m] for m in shared] == [second["devices"][m] for m in shared]
    # /tmp, which holds the working directories, is every run's own: what the first run
    # left there is not in the second's.
    assert os.path.basename(first["cwd"]) in first["tmp"]
    assert second["cwd"] != first["cwd"]
    assert os.path.basename(first["cwd"]) not in second["tmp"]
    assert not second["earlier"]


@contextlib.asynccontextmanager
async def hardened_runner(
    tmp_path: Path, masks: Callable[[tuple[str, ...]], tuple[str, ...]]
) -> AsyncIterator[tuple[SandboxRunner, ZygoteSpawner, Settings]]:
    """A warm runner of the hardened tier whose plan's masks are ``masks(the usual ones)``."""
    settings = stack_settings(tmp_path / "data", max_concurrent=1)
    options = tier.sandbox_options(settings)
    assert options.isolation is not None
    plan = dataclasses.replace(options.isolation, masks=masks(options.isolation.masks))
    spawner = ZygoteSpawner(sys.executable)
    runner = SandboxRunner(dataclasses.replace(options, isolation=plan), spawner)
    try:
        yield runner, spawner, settings
    finally:
        await runner.close()
        await spawner.close()
        if options.cgroups is not None:
            options.cgroups.close()


async def run_once(
    runner: SandboxRunner, settings: Settings, language: str, code: str
) -> SandboxResult:
    return await runner.run(
        runtime=child_runtime(Language(language)),
        limits=settings.default_limits,
        slot=0,
        start=start_frame(code),
        on_call=refuse_calls,
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the hardened tier needs root")
@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_zygote_that_cannot_cover_the_masks_forks_nothing_more(
    tmp_path: Path, language: str
) -> None:
    # A mask that is not there fails the zygote's own mount, leaving its mounts half
    # made: it must refuse and exit, not fork children from them. Each child then
    # starts cold (and fails its own mount), and after MAX_ZYGOTE_FAILURES zygotes the
    # language stays cold.
    missing = "/cbexec-test-missing-mask"
    assert not os.path.exists(missing)
    code = {"python": "print('ran')", "perl": "print 'ran';"}[language]
    async with hardened_runner(tmp_path, lambda masks: (*masks, missing)) as (
        runner,
        spawner,
        settings,
    ):
        runs = [
            await run_once(runner, settings, language, code) for _ in range(MAX_ZYGOTE_FAILURES)
        ]
        warm = spawner.warm(language)

    assert not warm
    for run in runs:  # started cold, each failed at the same mount: a launch failure
        assert run.done is None and run.exit_code == EXIT_LAUNCH_FAILED, run.stderr
        assert missing in run.stderr
        assert run.failure is not None
        assert run.failure.message.startswith("the sandbox could not start the callback: ")
        assert missing in run.failure.message


CONNECT = {
    "python": (
        "import socket\n"
        "try:\n"
        "    socket.create_connection(('127.0.0.1', PORT), timeout=2)\n"
        "    print('connected')\n"
        "except OSError as err:\n"
        "    print('refused', type(err).__name__)\n"
    ),
    "perl": (
        "use Socket;\n"
        'socket(my $s, PF_INET, SOCK_STREAM, 0) or die "socket: $!";\n'
        "print connect($s, pack_sockaddr_in(PORT, inet_aton('127.0.0.1')))"
        ' ? "connected\\n" : "refused $!\\n";\n'
    ),
}


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_network_none_means_no_route_even_to_the_executor(
    tmp_path: Path, language: str
) -> None:
    settings = stack_settings(tmp_path / "data", network="none")
    try:
        context = running_stack(settings)
        stack = await context.__aenter__()
    except Exception as err:  # noqa: BLE001 - hosts without namespaces refuse this setting
        pytest.skip(f"no network namespace here: {err}")
    try:
        code = CONNECT[language].replace("PORT", str(stack.running.port))
        response = await stack.client.execute_callback(
            language=language, code=code, job={"id": 1, "user": "a"}
        )
    finally:
        await context.__aexit__(None, None, None)

    assert response.stdout.startswith("refused"), response.stdout + response.stderr


async def test_the_embedded_supervisor_is_not_on_the_public_port(stack_warm: Stack) -> None:
    """It trusts the actor it is told, so reaching it must take more than a TCP connect."""
    import grpc

    from supervisor_client.qbcallback.v1 import supervisor_pb2, supervisor_pb2_grpc

    (job,) = stack_warm.supervisor.submit([{"name": "guarded", "user": "bob", "status": "blocked"}])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await supervisor_pb2_grpc.SupervisorServiceStub(stack_warm.channel).JobAction(
            supervisor_pb2.JobActionRequest(
                verb=supervisor_pb2.JOB_VERB_UNBLOCK, job_id=job["id"], actor="root"
            ),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert stack_warm.supervisor.job(job["id"])["status"] == "blocked"


@pytest.mark.skipif(os.geteuid() != 0, reason="the hardened tier needs root")
@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_working_directory_outside_the_masks_is_refused_not_made_on_the_host(
    tmp_path: Path, language: str
) -> None:
    # The runner puts working directories under /tmp, which the plan always masks; a plan
    # without that mask must not make the directory on the host's own /tmp.
    before = set(Path("/tmp").glob("cbexec-run-*"))
    unmasked = hardened_runner(tmp_path, lambda masks: tuple(m for m in masks if m != "/tmp"))
    code = {"python": "print('ran')", "perl": "print 'ran';"}[language]
    async with unmasked as (runner, _, settings):
        child = await run_once(runner, settings, language, code)

    assert child.done is None and child.exit_code == EXIT_LAUNCH_FAILED
    assert "is not under a masked directory" in child.stderr
    # Said on the bridge by the zygote's child, before the start frame was read.
    assert child.outcome == ModelOutcome.FAILED
    assert child.failure is not None
    assert child.failure.message.startswith("the sandbox could not start the callback: ")
    assert "is not under a masked directory" in child.failure.message
    # Only new ones count: another suite's runs come and go in /tmp meanwhile.
    assert not set(Path("/tmp").glob("cbexec-run-*")) - before


@pytest.mark.skipif(os.geteuid() != 0, reason="the hardened tier needs root")
async def test_the_tier_report_names_every_mechanism_as_active(stack_warm: Stack) -> None:
    report = tier.describe_tier(stack_warm.running.options)

    for mechanism in (
        "IPC namespace per child",
        "cgroup namespace per child",
        "syscall filter",
        "own /dev/pts per child (at most 16 ptys)",
        "an empty one per cell",
        "masked /run",
        "/sys/class/net",
        "/sys/fs/cgroup",
        "bridge made in an empty network namespace",
    ):
        assert mechanism in report, (mechanism, report)
    assert "NO " not in report, report


async def test_without_namespaces_the_executor_starts_and_says_what_is_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As root, no PID namespace means no dedicated uid: only dedicated_uid = "off" says
    # running callbacks as root is meant (the suite runs as root; elsewhere it is moot).
    settings = stack_settings(tmp_path / "data", pid_namespace="off", dedicated_uid="off")
    with caplog.at_level("WARNING"):
        async with running_stack(settings) as stack:
            report = tier.describe_tier(stack.running.options)
            response = await stack.client.execute_callback(
                language="python", code="print('ran')", job={"id": 1, "user": "a"}
            )

    # The setting, not the host, took the namespaces away (it said "no namespaces here").
    assert (
        'network = "auto" gives callbacks the host network here: pid_namespace is off'
    ) in caplog.text
    assert "no namespaces here" not in caplog.text
    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    assert response.stdout == "ran\n"
    for missing in (
        "NO IPC namespace (pid_namespace is off)",
        "NO cgroup namespace (pid_namespace is off)",
        "NO network namespace per cell (callbacks use the host network)",
        "NO bridge in an empty network namespace (pid_namespace is off)",
        "NO masks of /run, host interfaces and the cgroup tree (no private mounts)",
        "NO own /dev/pts per child (no private mounts)",
    ):
        assert missing in report, (missing, report)
    # The filter needs no namespace: it holds wherever the kernel takes it.
    if stack.running.options.seccomp_filter:
        assert "syscall filter" in report


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root executor's callbacks run as root")
async def test_as_root_without_a_pid_namespace_auto_refuses_to_run_callbacks_as_root(
    tmp_path: Path,
) -> None:
    settings = stack_settings(tmp_path / "data", pid_namespace="off")
    with pytest.raises(ConfigError) as caught:
        tier.sandbox_options(settings)
    said = str(caught.value)
    assert said.startswith("dedicated_uid: callbacks would run as root with full capabilities")
    assert 'pid_namespace = "auto"' in said and 'dedicated_uid = "off"' in said


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root executor's callbacks run as root")
async def test_as_root_dedicated_uid_off_starts_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = stack_settings(tmp_path / "data", dedicated_uid="off")
    with caplog.at_level("WARNING"):
        async with running_stack(settings):
            pass
    assert "callbacks run as root with full capabilities (dedicated_uid is off)" in caplog.text


@pytest.mark.skipif(os.geteuid() != 0, reason="the hardened tier needs root")
def test_where_the_host_refuses_a_devpts_per_child_the_tier_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe_host = tier.probe_host
    monkeypatch.setattr(tier, "probe_host", lambda *args: probe_host(*args) | {"devpts": False})
    options = tier.sandbox_options(stack_settings(tmp_path / "data", max_concurrent=1))
    try:
        assert options.isolation is not None
        assert options.isolation.devpts == ""  # the children mount none: the host's ptys
        report = tier.describe_tier(options)
        assert "NO own /dev/pts per child (the host refused" in report, report
        assert "at most 16 ptys" not in report
    finally:
        if options.cgroups is not None:
            options.cgroups.close()
