"""Sandbox policies against a real executor: each field enforced, and nothing leaks to other policies.

One stack with a widened ``admin`` policy (binds, group, umask, host network, env,
verbs, limits, languages; users ``admin``) beside the built-in ``job``: every grant is
checked from inside a callback that has it, and again from one that does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import grpc
import pytest

from executor.runs.callback_log import log_path
from executor.sandbox.spawners import ZygoteSpawner
from supervisor_client import ExecutorRpcError
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import TEST_UID_BASE, Stack, running_stack, stack_settings
from tests.helpers.cli import cbexec, cli_env
from tests.helpers.waiting import eventually

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(os.geteuid() != 0, reason="binds and groups need the hardened tier (root)"),
]

Outcome = executor_pb2.Outcome
# A gid no one else uses on this host: the group an admin gives the bound directory.
GROUP: Final = TEST_UID_BASE + 900
RW_TARGET: Final = "/tmp/admin-log"

LOOK: Final = r"""
import json, os
view = {"uid": os.getuid(), "groups": os.getgroups()}
for name, path in (("rw", RW), ("ro", RO)):
    view[name] = os.path.isdir(path) and sorted(os.listdir(path))
try:
    with open(RW + "/written.txt", "w") as out:
        out.write("from the callback\n")
    view["rw_write"] = "ok"
except OSError as err:
    view["rw_write"] = err.errno
try:
    open(RO + "/new.txt", "w")
    view["ro_write"] = "ok"
except OSError as err:
    view["ro_write"] = err.errno
view["env"] = {k: os.environ.get(k) for k in ("SITE", "API_TOKEN", "POLICY_TEST_PASS")}
print(json.dumps(view))
"""

CONNECT: Final = r"""
import json, socket
view = {}
try:
    socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
    view["connect"] = "ok"
except OSError as err:
    view["connect"] = type(err).__name__
view["ipc"] = __import__("os").readlink("/proc/self/ns/ipc")
view["seccomp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp:")][0]
print(json.dumps(view))
"""


def admin_policy(tmp_path: Path) -> tuple[dict[str, Any], Path, Path]:
    """The widened policy's table, and its read-write and read-only host directories."""
    rw = tmp_path / "granted-rw"
    ro = tmp_path / "granted-ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "readme.txt").write_text("read me\n")
    # How an admin grants the sandbox uids write access: group ownership, setgid.
    os.chown(rw, 0, GROUP)
    rw.chmod(0o2770)
    token = tmp_path / "api-token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    table = {
        "network": "host",
        "binds": [
            {"path": str(rw), "target": RW_TARGET, "mode": "rw"},
            {"path": str(ro), "mode": "ro"},
        ],
        "group": GROUP,
        "umask": "007",
        "env": {"SITE": "studio"},
        "env_files": {"API_TOKEN": str(token)},
        "env_pass": ["POLICY_TEST_PASS"],
        "languages": ["python", "qube"],
        "verbs": ["unblock"],
        "default_limits": {"wall_seconds": 1},
        "max_limits": {"wall_seconds": 5},
        "users": ["admin"],
    }
    return table, rw, ro


@pytest.fixture
async def policed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Stack, Path, Path]]:
    monkeypatch.setenv("POLICY_TEST_PASS", "passed-through")
    table, rw, ro = admin_policy(tmp_path)
    # A policy that only opens the network: its children start from zygotes of their own.
    # Its own user: a user is in one policy's users only.
    webhook = {"network": "host", "users": ["hooks"]}
    settings = stack_settings(tmp_path / "data", policies={"admin": table, "webhook": webhook})
    async with running_stack(settings) as stack:
        yield stack, rw, ro


async def run(
    stack: Stack, code: str, *, owner: str, policy: str = "", **kwargs: Any
) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "policed", "user": owner}])
    return await stack.client.execute_callback(
        language=kwargs.pop("language", "python"),
        code=code,
        job=stack.supervisor.job(job["id"]),
        owner=owner,
        policy=policy,
        timeout=60,
        **kwargs,
    )


def succeeded(response: executor_pb2.ExecuteResponse) -> dict[str, Any]:
    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (
        response.failure.message,
        response.stderr[-800:],
    )
    view: dict[str, Any] = json.loads(response.stdout)
    return view


async def test_binds_group_umask_and_env_only_under_the_policy(
    policed: tuple[Stack, Path, Path],
) -> None:
    stack, rw, ro = policed
    code = LOOK.replace("RW", repr(RW_TARGET)).replace("RO", repr(str(ro)))
    view = succeeded(await run(stack, code, owner="admin", policy="admin"))
    assert view["uid"] >= stack.settings.sandbox_uid_base, "a rw bind keeps the dedicated uid"
    assert view["groups"] == [GROUP]
    assert view["rw_write"] == "ok" and view["ro_write"] == 30  # EROFS
    assert view["ro"] == ["readme.txt"]
    assert view["env"] == {
        "SITE": "studio",
        "API_TOKEN": "s3cret-token",
        "POLICY_TEST_PASS": "passed-through",
    }
    written = rw / "written.txt"
    assert written.read_text() == "from the callback\n"
    st = written.stat()
    assert st.st_uid == view["uid"] and st.st_gid == GROUP
    assert st.st_mode & 0o777 == 0o660, "umask 007"
    assert not (ro / "new.txt").exists()

    # The same code as anyone's job callback: no binds, no group, no variables.
    view = succeeded(await run(stack, code, owner="bob"))
    assert (view["rw"], view["ro"], view["groups"]) == (False, False, [])
    assert view["rw_write"] == 2 and view["ro_write"] == 2  # ENOENT: nothing there
    assert view["env"] == {"SITE": None, "API_TOKEN": None, "POLICY_TEST_PASS": None}
    assert sorted(os.listdir(rw)) == ["written.txt"]


# Reads every readable mapping of the callback's own memory, counting the places that
# hold "LEAK_TOKEN=TOPSECRET". Checked in pieces: the scan's own strings are in memory
# too, and the whole would find itself.
SCAN_PYTHON = """
import ctypes
pat = b"LEAK" + b"_TOKEN="
found = 0
for line in open("/proc/self/maps").read().splitlines():
    p = line.split()
    if "r" not in p[1] or (len(p) > 5 and p[5].startswith("[v")):
        continue
    lo, hi = (int(x, 16) for x in p[0].split("-"))
    data = ctypes.string_at(lo, hi - lo)
    at = data.find(pat)
    while at >= 0:
        rest = at + len(pat)
        found += data[rest : rest + 3] == b"TOP" and data[rest + 3 : rest + 9] == b"SECRET"
        at = data.find(pat, at + 1)
print(found)
"""
SCAN_PERL = r"""
my $pat = "LEAK" . "_TOKEN=";
my $found = 0;
open(my $maps, '<', '/proc/self/maps') or die;
while (my $line = <$maps>) {
    my @p = split ' ', $line;
    next if $p[1] !~ /r/ || (defined $p[5] && $p[5] =~ /^\[v/);
    my ($lo, $hi) = map { hex } split /-/, $p[0];
    my $bytes = unpack("P" . ($hi - $lo), pack("Q", $lo));
    my $at = -1;
    while (($at = index($bytes, $pat, $at + 1)) >= 0) {
        my $rest = $at + length $pat;
        $found++ if substr($bytes, $rest, 3) eq "TOP" && substr($bytes, $rest + 3, 6) eq "SECRET";
    }
}
print "$found\n";
"""


@pytest.mark.parametrize(
    ("language", "read_it", "scan"),
    [
        ("python", "import os; print(len(os.environ['LEAK_TOKEN']))", SCAN_PYTHON),
        ("perl", 'print length($ENV{LEAK_TOKEN}), "\\n";', SCAN_PERL),
    ],
)
async def test_a_policys_secret_never_reaches_another_policys_callbacks(
    tmp_path: Path, language: str, read_it: str, scan: str
) -> None:
    # The policy changes nothing but the environment: its children and everyone's
    # come from the same zygote, whose memory each child is a copy of.
    token = tmp_path / "token"
    token.write_text("TOPSECRET-4f9a1c\n")
    token.chmod(0o600)
    policies = {"pipeline": {"env_files": {"LEAK_TOKEN": str(token)}, "users": ["pipeline"]}}
    async with running_stack(stack_settings(tmp_path / "data", policies=policies)) as stack:
        assert (await run(stack, scan, owner="alice", language=language)).stdout == "0\n"
        for _ in range(3):
            read = await run(stack, read_it, owner="pipeline", language=language)
            assert read.stdout == "16\n", (read.failure.message, read.stderr)
            scanned = await run(stack, scan, owner="alice", language=language)
            assert scanned.outcome == Outcome.OUTCOME_SUCCEEDED, scanned.stderr
            assert scanned.stdout == "0\n", "the pipeline's token is in alice's callback"


async def test_host_network_keeps_the_ipc_namespace_and_the_syscall_filter(
    policed: tuple[Stack, Path, Path],
) -> None:
    stack, _, _ = policed
    code = CONNECT.replace("PORT", str(stack.running.port))
    granted = succeeded(await run(stack, code, owner="admin", policy="admin"))
    warm = succeeded(await run(stack, code, owner="hooks", policy="webhook"))
    confined = succeeded(await run(stack, code, owner="bob"))
    assert granted["connect"] == warm["connect"] == "ok"
    assert confined["connect"] != "ok"
    host_ipc = os.readlink("/proc/self/ns/ipc")
    assert host_ipc not in (granted["ipc"], warm["ipc"], confined["ipc"])
    assert granted["seccomp"] == warm["seccomp"] == confined["seccomp"] == "2"
    spawner = stack.running.spawner
    assert isinstance(spawner, ZygoteSpawner)
    assert spawner.pid_of("python", other_network=True), "the webhook policy's own zygote"


async def test_verbs_not_granted_are_refused_with_a_clear_qb_error(
    policed: tuple[Stack, Path, Path],
) -> None:
    stack, _, _ = policed
    code = (
        "try:\n"
        "    qb.kill(qb.jobid())\n"
        "except qb.PermissionDenied as err:\n"
        "    print('refused:', err)\n"
        "print(qb.jobinfo()[0]['status'])\n"
    )
    response = await run(stack, code, owner="admin", policy="admin")
    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.stderr
    refused, status = response.stdout.splitlines()
    assert "qb.kill is not allowed by the sandbox policy 'admin'" in refused
    assert "policies.admin.verbs" in refused
    assert status != "killed"
    (action,) = [a for a in response.actions if a.verb == "kill"]
    assert not action.ok
    # Under the job policy every verb is the supervisor's to allow.
    allowed = await run(stack, "qb.kill(qb.jobid())", owner="bob")
    assert allowed.outcome == Outcome.OUTCOME_SUCCEEDED, allowed.stderr


async def test_limits_are_the_policys_defaults_and_caps(
    policed: tuple[Stack, Path, Path],
) -> None:
    stack, _, _ = policed
    slow = "import time\ntime.sleep(2.5)\nprint('done')"
    timed_out = await run(stack, slow, owner="admin", policy="admin")
    assert timed_out.outcome == Outcome.OUTCOME_WALL_TIMEOUT, "the policy's 1 s default"
    asked = await run(stack, slow, owner="admin", policy="admin", limits={"wall_seconds": 4})
    assert asked.outcome == Outcome.OUTCOME_SUCCEEDED
    with pytest.raises(ExecutorRpcError) as refused:
        await run(stack, slow, owner="admin", policy="admin", limits={"wall_seconds": 10})
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # Before, it named "the server's cap", which is 3600 s here.
    assert refused.value.details == (
        "limits.wall_seconds = 10.0 exceeds policy 'admin''s cap (policies.admin.max_limits) of 5"
    )
    assert (await run(stack, slow, owner="bob")).outcome == Outcome.OUTCOME_SUCCEEDED


@pytest.mark.skipif(shutil.which("perl") is None, reason="needs perl")
async def test_languages_not_granted_are_rejected(policed: tuple[Stack, Path, Path]) -> None:
    stack, _, _ = policed
    response = await run(stack, "print 'hi';", owner="admin", policy="admin", language="perl")
    assert response.outcome == Outcome.OUTCOME_REJECTED
    assert "policies.admin.languages" in response.failure.message


async def test_a_caller_cannot_ask_for_a_policy_its_user_is_not_given(
    policed: tuple[Stack, Path, Path],
) -> None:
    stack, _, _ = policed
    for owner, policy in (("bob", "admin"), ("bob", "universal"), ("admin", "nonesuch")):
        with pytest.raises(ExecutorRpcError) as denied:
            await run(stack, "print(1)", owner=owner, policy=policy)
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED, (owner, policy)
    assert "policies.admin.users" in denied.value.details or "nonesuch" in denied.value.details
    with pytest.raises(ExecutorRpcError) as denied:
        await run(stack, "print(1)", owner="bob", policy="admin")
    assert "not in policies.admin.users" in denied.value.details
    # Asking for "job" is always allowed; no name gives the owner's mapped policy.
    assert (await run(stack, "print(1)", owner="bob", policy="job")).outcome == 1
    records = stack.running.recorder.history.list_runs(limit=5)
    assert {r.policy for r in records} == {"job"}


async def test_job_callbacks_get_their_owners_policy_never_a_wider_one(
    policed: tuple[Stack, Path, Path],
) -> None:
    stack, _, _ = policed
    code = f"import os\nprint(os.path.isdir({RW_TARGET!r}))"
    callback = {"triggers": "submit-job-self", "language": "python", "code": code}
    bob, admin = stack.supervisor.submit(
        [
            {"name": "users", "user": "bob", "callbacks": [callback]},
            {"name": "admins", "user": "admin", "callbacks": [callback]},
        ]
    )
    await stack.settle()
    history = stack.running.recorder.history
    seen = {}
    for job in (bob, admin):
        (record,) = history.list_runs(job_id=job["id"])
        full = history.get(record.invocation_id)
        assert full is not None and full.result is not None
        seen[job["user"]] = (record.policy, full.result.stdout.strip())
        header = log_path(stack.settings.data_dir / "logs", job["id"]).read_text().splitlines()[0]
        assert f"policy={record.policy}" in header
    assert seen == {"bob": ("job", "False"), "admin": ("admin", "True")}


READ_EACH: Final = r"""
import json
seen = {}
for path in PATHS:
    try:
        seen[path] = open(path).read().strip()
    except OSError as err:
        seen[path] = err.strerror
print(json.dumps(seen))
"""


async def test_a_bind_outside_the_masks_shows_nothing_new_its_mode_decides(
    tmp_path: Path,
) -> None:
    # Outside the masked directories every callback sees the host's directories: a bind
    # at its own path adds no privacy. A directory the sandbox uids cannot reach on the
    # host (a 0700 root parent), bound at a target under the masked /tmp, is the policy's.
    parent = Path(tempfile.mkdtemp(prefix="cbexec-test-binds-", dir="/srv"))
    try:
        parent.chmod(0o755)
        shared, kept = parent / "shared", parent / "private" / "reports"
        for directory, text in ((shared, "shared"), (kept, "kept")):
            directory.mkdir(parents=True)
            directory.chmod(0o755)
            (directory / "a.txt").write_text(f"{text}\n")
            (directory / "a.txt").chmod(0o644)
        (parent / "private").chmod(0o700)
        binds = [{"path": str(shared)}, {"path": str(kept), "target": "/tmp/reports"}]
        policies = {"admin": {"binds": binds, "users": ["admin"]}}
        paths = [str(shared / "a.txt"), "/tmp/reports/a.txt", str(kept / "a.txt")]
        code = READ_EACH.replace("PATHS", repr(paths))
        async with running_stack(stack_settings(tmp_path / "data", policies=policies)) as stack:
            admin = succeeded(await run(stack, code, owner="admin"))
            bob = succeeded(await run(stack, code, owner="bob"))
    finally:
        shutil.rmtree(parent)
    assert admin == {
        paths[0]: "shared",
        paths[1]: "kept",
        paths[2]: "Permission denied",  # the host's path, through the 0700 parent
    }
    assert bob == {
        paths[0]: "shared",  # the job policy's too: no bind needed
        paths[1]: "No such file or directory",
        paths[2]: "Permission denied",
    }


SHADOW_KILL: Final = "qb.kill(qb.jobid())\nprint('asked to kill', qb.jobid())\n"


async def test_a_shadow_universal_callback_runs_but_applies_nothing(
    tmp_path: Path,
) -> None:
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "killer.py").write_text(SHADOW_KILL)
    (callbacks / "mail-status.qcb").write_text("mail-status\n")
    conf = callbacks / "callbacks.conf"
    conf.write_text(
        "killer.py [shadow] = submit-job-self\nmail-status.qcb [shadow] = submit-job-self\n"
    )
    settings = stack_settings(tmp_path / "data", universal_callback_path=str(callbacks))
    async with running_stack(settings) as stack:
        (job,) = stack.supervisor.submit(
            [{"name": "tried", "user": "bob", "mailaddress": "bob@example.com"}]
        )
        await stack.settle()
        assert stack.supervisor.job(job["id"])["status"] != "killed"
        mail = stack.settings.data_dir / "mail" / "new"
        assert not mail.exists() or not list(mail.iterdir()), "a shadow run sends no mail"

        listed = await stack.client.list_runs(shadow_only=True)
        runs = {Path(run.source).name: run for run in listed.runs}
        assert set(runs) == {"killer.py", "mail-status.qcb"}
        killer = runs["killer.py"]
        assert killer.shadow and killer.policy == "universal"
        assert killer.result.outcome == Outcome.OUTCOME_SUCCEEDED
        assert killer.result.stdout == f"asked to kill {job['id']}\n"
        (kill,) = killer.result.actions
        assert (kill.verb, kill.target) == ("kill", str(job["id"]))
        assert kill.message.startswith("shadow: would kill")
        (mailed,) = runs["mail-status.qcb"].result.actions[-1:]
        assert (mailed.verb, mailed.target) == ("mail", "bob@example.com")
        assert (await stack.client.list_runs(shadow_only=False)).runs[0].shadow

        said = await cbexec("runs", "--shadow", address=stack.address)
        assert said.code == 0, said.err
        assert "(shadow)" in said.out and "would have:" in said.out
        assert f"kill {job['id']}: shadow: would kill" in said.out
        header = log_path(stack.settings.data_dir / "logs", job["id"]).read_text()
        assert " shadow\n" in header

        # Turning shadow off is a reload; the next job is really killed.
        conf.write_text("killer.py = submit-job-self\n")
        reloaded = await cbexec("triggers", "reload", address=stack.address)
        assert reloaded.code == 0, reloaded.err
        (second,) = stack.supervisor.submit([{"name": "real", "user": "bob"}])
        await stack.settle()
        assert stack.supervisor.job(second["id"])["status"] == "killed"
        (record,) = stack.running.recorder.history.list_runs(job_id=second["id"])
        assert not record.shadow


async def test_a_removed_shadow_line_stops_the_callback_instead_of_making_it_live(
    tmp_path: Path,
) -> None:
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "killer.py").write_text(SHADOW_KILL)
    conf = callbacks / "callbacks.conf"
    conf.write_text("killer.py [shadow] = complete-work-self-*\n")
    settings = stack_settings(tmp_path / "data", universal_callback_path=str(callbacks))
    async with running_stack(settings) as stack:
        (job,) = stack.supervisor.submit([{"name": "kept", "user": "bob", "agenda": ["1", "2"]}])
        await stack.settle()
        conf.write_text("# nothing universal any more\n")
        reloaded = await cbexec("triggers", "reload", address=stack.address)
        assert reloaded.code == 0, reloaded.err

        stack.supervisor.start_work(job["id"], "1")
        stack.supervisor.complete_work(job["id"], "1")
        await stack.settle()

        assert stack.supervisor.job(job["id"])["status"] != "killed"
        (record,) = stack.running.recorder.history.list_runs(job_id=job["id"])
        assert record.outcome == "REJECTED" and not record.shadow
        full = stack.running.recorder.history.get(record.invocation_id)
        assert full is not None and full.result is not None and full.result.failure is not None
        assert "no longer in callbacks.conf" in full.result.failure.message
        assert not full.result.actions


# Read by the run: the policy's secret, then the kill a shadow records and a live run applies.
QUEUED_LOOK: Final = "import os\nprint('SECRET', os.environ.get('SECRET'))\nqb.kill(qb.jobid())\n"


@pytest.mark.parametrize(
    ("reloaded", "policy", "outcome", "shadow", "said"),
    [
        ("", "universal", "REJECTED", False, "is no longer in callbacks.conf"),
        ("look.py [shadow] = submit-job-self\n", "universal", "SUCCEEDED", True, "SECRET u-"),
        ("look.py [policy=other] = submit-job-self\n", "other", "SUCCEEDED", False, "SECRET o-"),
    ],
    ids=["removed", "shadow", "other-policy"],
)
async def test_a_firing_waiting_for_a_slot_runs_as_the_line_loaded_when_it_starts(
    tmp_path: Path, reloaded: str, policy: str, outcome: str, shadow: bool, said: str
) -> None:
    # Found by a probe: a firing handed to the dispatcher before a reload ran, once a slot
    # freed, as the line was before it: removed, it ran; turned shadow, its kill was
    # applied; moved to another policy, it ran with the old one's secret.
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "look.py").write_text(QUEUED_LOOK)
    conf = callbacks / "callbacks.conf"
    conf.write_text("look.py = submit-job-self\n")
    settings = stack_settings(
        tmp_path / "data",
        max_concurrent=1,
        universal_callback_path=str(callbacks),
        policies={"universal": {"env": {"SECRET": "u-1"}}, "other": {"env": {"SECRET": "o-2"}}},
    )
    async with running_stack(settings) as stack:
        dispatcher = stack.running.dispatcher
        # Not a submitted job's: its submission would fire the line too.
        blocker = asyncio.create_task(
            stack.client.execute_callback(
                language="python",
                code="import time\ntime.sleep(60)\n",
                job={"id": 1_000_000, "name": "blocker", "user": "bob"},
                timeout=60,
            )
        )
        try:
            assert await eventually(lambda: dispatcher.running == 1)
            (job,) = stack.supervisor.submit([{"name": "queued", "user": "bob"}])
            assert await eventually(lambda: dispatcher.waiting == 1)
            conf.write_text(reloaded)
            done = await cbexec("triggers", "reload", address=stack.address)
            assert done.code == 0, done.err
        finally:
            blocker.cancel()  # its run is killed, and the slot goes to the queued firing
            with contextlib.suppress(asyncio.CancelledError):
                await blocker
        await stack.settle()

        history = stack.running.recorder.history
        (record,) = history.list_runs(job_id=job["id"])
        full = history.get(record.invocation_id)
        assert full is not None and full.result is not None
        text = full.result.failure.message if full.result.failure else full.result.stdout
        assert (record.policy, str(record.outcome), record.shadow) == (policy, outcome, shadow)
        assert said in text
        killed = stack.supervisor.job(job["id"])["status"] == "killed"
        assert killed == (outcome == "SUCCEEDED" and not shadow)


async def test_a_shadow_line_of_a_file_another_line_names_applies_nothing(
    tmp_path: Path,
) -> None:
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "killer.py").write_text(SHADOW_KILL)
    (callbacks / "callbacks.conf").write_text(
        "killer.py = done-job-self\nkiller.py [shadow] = submit-job-self\n"
    )
    settings = stack_settings(tmp_path / "data", universal_callback_path=str(callbacks))
    async with running_stack(settings) as stack:
        (job,) = stack.supervisor.submit([{"name": "tried", "user": "bob"}])
        await stack.settle()

        assert stack.supervisor.job(job["id"])["status"] != "killed"
        (record,) = stack.running.recorder.history.list_runs(job_id=job["id"])
        assert (record.triggers, record.shadow) == ("submit-job-self", True)


async def test_a_line_or_a_directory_names_a_universal_callbacks_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLICY_TEST_PASS", "x")
    table, _, _ = admin_policy(tmp_path)
    by_line = tmp_path / "by-line"
    by_dir = tmp_path / "by-dir"
    code = f"import os\nprint(os.path.isdir({RW_TARGET!r}))\n"
    for directory, line in (
        (by_line, "line.py [policy=admin] = submit-job-self\nplain.py = submit-job-self\n"),
        (by_dir, "dir.py = submit-job-self\n"),
    ):
        directory.mkdir()
        (directory / "callbacks.conf").write_text(line)
        for name in ("line.py", "plain.py", "dir.py"):
            (directory / name).write_text(code)
    settings = stack_settings(
        tmp_path / "data",
        policies={"admin": table},
        universal_callback_path=f"{by_line}, {by_dir} [policy=admin]",
    )
    async with running_stack(settings) as stack:
        listed = await stack.client.get_universal_callbacks()
        policies = {
            Path(cb.source).name: cb.policy for d in listed.directories for cb in d.callbacks
        }
        assert policies == {"line.py": "admin", "plain.py": "universal", "dir.py": "admin"}
        (job,) = stack.supervisor.submit([{"name": "any", "user": "bob"}])
        await stack.settle()
        history = stack.running.recorder.history
        seen = {}
        for record in history.list_runs(job_id=job["id"]):
            full = history.get(record.invocation_id)
            assert full is not None and full.result is not None
            seen[Path(record.source).name] = (record.policy, full.result.stdout.strip())
        assert seen == {
            "line.py": ("admin", "True"),
            "plain.py": ("universal", "False"),
            "dir.py": ("admin", "True"),
        }


async def test_a_kept_line_whose_policy_was_removed_never_runs_under_another(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Found by a probe: the line kept from before the restart ran under the built-in
    # 'universal' policy, with its credentials, when its own 'contrib' was gone.
    callbacks = tmp_path / "callback"
    callbacks.mkdir()
    (callbacks / "leak.py").write_text("import os\nprint('SECRET', os.environ.get('SECRET'))\n")
    (callbacks / "callbacks.conf").write_text("leak.py [policy=contrib] = killed-job-self\n")
    universal = {"env": {"SECRET": "s3cret"}}
    settings = stack_settings(
        tmp_path / "data",
        universal_callback_path=str(callbacks),
        policies={"universal": universal, "contrib": {"verbs": ["unblock"]}},
    )

    async def killed(stack: Stack, job_id: int) -> list[tuple[str, str, str]]:
        """(policy, outcome, stdout or failure) of each run the job's kill fired."""
        stack.supervisor.job_action("kill", job_id, "bob")
        await stack.settle()
        history = stack.running.recorder.history
        found: list[tuple[str, str, str]] = []
        for record in history.list_runs(job_id=job_id):
            full = history.get(record.invocation_id)
            assert full is not None and full.result is not None
            said = full.result.failure.message if full.result.failure else full.result.stdout
            found.append((record.policy, str(record.outcome), said))
        return found

    async with running_stack(settings) as stack:  # loads the line, and keeps the set
        shown, earlier = stack.supervisor.submit(
            [{"name": "shown", "user": "bob"}, {"name": "earlier", "user": "bob"}]
        )
        await stack.settle()
        assert await killed(stack, shown["id"]) == [("contrib", "SUCCEEDED", "SECRET None\n")]

    caplog.clear()
    async with running_stack(settings.replace(policies={"universal": universal})) as stack:
        assert stack.running.engine.universal == []
        (later,) = stack.supervisor.submit([{"name": "later", "user": "bob"}])
        await stack.settle()
        assert await killed(stack, later["id"]) == []
        # Registered before the restart, with the line attached: refused, not run.
        ((policy, outcome, said),) = await killed(stack, earlier["id"])
    line = f"{callbacks}/leak.py = killed-job-self"
    reason = "its policy 'contrib' is not configured (policies: job, universal)"
    assert (policy, outcome) == ("contrib", "REJECTED")
    assert said == (
        f"universal callback {line}: not run: left out of the set kept from before: {reason}"
    )
    assert f"universal callbacks: {line} left out of the set kept from before: {reason}" in (
        caplog.text
    )


def toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


async def test_the_startup_report_lists_each_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLICY_TEST_PASS", "x")
    table, rw, _ = admin_policy(tmp_path)
    config = tmp_path / "cbexec.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\nsandbox_uid_base = {TEST_UID_BASE}\n'
        f"[policies.admin]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
    )
    # A free port: the quick start's service may hold the default one beside the suite.
    said = await cbexec("serve", "--config", str(config), "--check-config", "--bind", "127.0.0.1:0")
    assert said.code == 0, said.err
    lines = said.out.splitlines()
    assert any(line.strip().startswith("policy job: no network;") for line in lines), said.out
    assert any(line.strip().startswith("policy universal: no network;") for line in lines)
    (admin,) = [line for line in lines if "policy admin:" in line]
    assert "host network" in admin and f"{rw} at {RW_TARGET} rw" in admin
    assert "env API_TOKEN,POLICY_TEST_PASS,SITE" in admin and "s3cret" not in said.out
    assert "qb verbs unblock" in admin and "users admin" in admin
    # Its callbacks reach this executor's port, which answers anyone without a token.
    (warning,) = [line for line in lines if "WARNING" in line]
    assert "policy admin gives its callbacks the host network and auth_token is not set" in (
        warning
    )
    said = await cbexec(
        "serve",
        *("--config", str(config), "--check-config", "--bind", "127.0.0.1:0"),
        env=cli_env(CBEXEC_AUTH_TOKEN="t"),
    )
    assert said.code == 0 and "WARNING" not in said.out, said.out


async def test_a_policy_binding_the_data_dir_fails_start_up(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = tmp_path / "cbexec.toml"
    config.write_text(
        f'data_dir = "{data}"\n[policies.leaky]\nbinds = [{{ path = "{tmp_path}" }}]\n'
    )
    said = await cbexec("serve", "--config", str(config), "--check-config")
    assert said.code != 0
    assert f"policies.leaky.binds[0].path: {tmp_path} would expose the data dir" in said.err


async def test_a_blank_user_name_fails_start_up(tmp_path: Path) -> None:
    # Found by a probe: it gave the host network to every request naming no user.
    config = tmp_path / "cbexec.toml"
    config.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[policies.anon]\nnetwork = "host"\nusers = [""]\n'
    )
    said = await cbexec("serve", "--config", str(config), "--check-config", "--bind", "127.0.0.1:0")
    assert said.code == 2, said.err
    assert f"{config}: policies.anon.users[0]: an empty name: no Qube user has it" in said.err


async def test_a_history_from_before_policies_is_migrated(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    with sqlite3.connect(data / "runs.db") as db:
        db.execute(
            "CREATE TABLE runs (invocation_id TEXT PRIMARY KEY, job_id INTEGER NOT NULL,"
            " callback_id INTEGER NOT NULL, triggers TEXT NOT NULL, language TEXT NOT NULL,"
            " outcome TEXT NOT NULL, started_at REAL NOT NULL, wall_seconds REAL NOT NULL,"
            " cpu_seconds REAL NOT NULL, peak_rss_bytes INTEGER NOT NULL,"
            " queue_seconds REAL NOT NULL, event TEXT, work_name TEXT NOT NULL,"
            " result TEXT NOT NULL)"
        )
        db.execute(
            "INSERT INTO runs VALUES ('old-run', 1, 0, '', 'python', 'SUCCEEDED', ?,"
            " 0, 0, 0, 0, NULL, '', '{}')",
            (time.time() - 60,),
        )
    async with running_stack(stack_settings(data)) as stack:
        (old,) = stack.running.recorder.history.list_runs(limit=1)  # newest first
        assert (old.invocation_id, old.policy, old.shadow) == ("old-run", "", False)
        response = await run(stack, "print(1)", owner="bob")
        assert response.outcome == Outcome.OUTCOME_SUCCEEDED
        said = await cbexec("runs", address=stack.address)
        assert "POLICY" in said.out.splitlines()[0] and " job " in said.out
