"""Hostile callbacks against the executor's secrets and files, and the network.

Its environment, config, databases, TLS key, the data dir itself, stray files outside
the working directory, and the network.

The executor runs inside the test process here, so "the executor's environment" is this
process's. Cases for hardening the host does not give yet are strict xfails naming
what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from executor.sandbox.launch import SANDBOX_MARKER
from tests.conftest import running_stack, stack_settings
from tests.hostile.harness import Arena, Outcome, assert_outcome

pytestmark = [pytest.mark.hostile, pytest.mark.timeout(60)]

LOOK_FOR_THE_EXECUTOR = r"""
import json, os
me = os.getpid()
seen = {"pids": [], "cmdlines": [], "environ_readable": [], "mem_readable": []}
for name in os.listdir('/proc'):
    if not name.isdigit():
        continue
    pid = int(name)
    seen["pids"].append(pid)
    if pid == me:
        continue
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            seen["cmdlines"].append(f.read().replace(b'\0', b' ').decode(errors='replace'))
    except OSError:
        pass
for pid in set(seen["pids"] + [EXECUTOR_PID, ZYGOTE_PID]) - {me}:
    try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
            seen["environ_readable"].append([pid, f.read(200).decode(errors='replace')])
    except OSError:
        pass
    try:
        with open(f'/proc/{pid}/mem', 'rb') as f:
            seen["mem_readable"].append(pid)
    except OSError:
        pass
seen["own_env"] = sorted(os.environ)
print(json.dumps(seen))
"""

ALLOWED_ENV = {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "MALLOC_ARENA_MAX", SANDBOX_MARKER}


async def test_callback_cannot_find_or_read_the_executor_process(arena_warm: Arena) -> None:
    spawner = arena_warm.stack.running.spawner
    pid_of = getattr(spawner, "pid_of", None)
    zygote_pid = (pid_of("python") if pid_of else None) or 0
    code = LOOK_FOR_THE_EXECUTOR.replace("EXECUTOR_PID", str(os.getpid())).replace(
        "ZYGOTE_PID", str(zygote_pid)
    )
    response = await arena_warm.attack(code)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    seen = json.loads(response.stdout)
    # Its own command line is the zygote's or the launcher's (a fork, or its argv); skip it.
    for cmdline in seen["cmdlines"][1:]:
        assert "pytest" not in cmdline and "executor serve" not in cmdline, cmdline
        assert "zygote.py" not in cmdline, cmdline
    assert not seen["environ_readable"], seen["environ_readable"]
    assert not seen["mem_readable"], seen["mem_readable"]
    # Only what the sandbox sets, and what the arena's policy grants by name.
    allowed = ALLOWED_ENV | arena_warm.granted_env
    assert set(seen["own_env"]) <= allowed, set(seen["own_env"]) - allowed


def _read_attempts(paths: list[str]) -> str:
    return (
        "import json, sqlite3\n"
        "result = {}\n"
        f"for path in {paths!r}:\n"
        "    try:\n"
        "        with open(path, 'rb') as f:\n"
        "            f.read(64)\n"
        "        result[path] = 'read'\n"
        "    except OSError as err:\n"
        "        result[path] = type(err).__name__\n"
        "print(json.dumps(result))\n"
    )


async def test_callback_cannot_read_config_databases_or_tls_key(arena_warm: Arena) -> None:
    if arena_warm.stack.running.options.isolation is None:
        pytest.xfail("callbacks run as the executor's uid: needs the dedicated-uid tier")
    planted = arena_warm.planted
    # The executor's files: its databases (supervisor, triggers, history, outbox), the
    # TLS key and config kept in the data dir, and a config file elsewhere on the host.
    databases = sorted(str(p) for p in arena_warm.data_dir.glob("*.db"))
    assert databases, "the executor has no database yet"
    paths = [
        *databases,
        str(planted.tls_key),
        str(planted.config),
        str(planted.outside_config),
        str(planted.sentinel / "world-readable.txt"),
    ]
    response = await arena_warm.attack(_read_attempts(paths))

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    verdicts = json.loads(response.stdout)
    readable = [path for path, verdict in verdicts.items() if verdict == "read"]
    assert not readable, f"the callback read {readable}"


async def test_deleting_the_data_dir_changes_nothing(arena_warm: Arena) -> None:
    if arena_warm.stack.running.options.isolation is None:
        pytest.xfail("callbacks run as the executor's uid: needs the dedicated-uid tier")
    data_dir = str(arena_warm.data_dir)
    code = (
        "import os, shutil\n"
        "errors = []\n"
        f"shutil.rmtree({data_dir!r}, onerror=lambda fn, path, exc: errors.append(type(exc[1]).__name__))\n"
        f"print('gone' if not os.path.exists({data_dir!r}) else 'still there', sorted(set(errors)))\n"
    )
    response = await arena_warm.attack(code)  # the harness checks the data dir is intact

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED, Outcome.OUTCOME_FAILED)
    assert (arena_warm.data_dir / "supervisor.db").exists()


def _world_writable_dirs() -> list[str]:
    """Directories anyone may create files in, outside the test's own tree."""
    found = []
    for root in (
        "/tmp",
        "/var/tmp",
        "/dev/shm",
        "/dev/mqueue",
        "/run",
        "/var",
        "/home",
        "/srv",
        "/opt",
    ):
        if not os.path.isdir(root) or os.path.islink(root):
            continue
        for dirpath, dirnames, _ in os.walk(root):
            depth = dirpath.count("/") - root.count("/")
            if depth >= 2 or dirpath.startswith("/tmp/"):
                dirnames.clear()
            mode = os.lstat(dirpath).st_mode
            if stat.S_ISDIR(mode) and mode & stat.S_IWOTH:
                found.append(dirpath)
    return sorted(set(found))


MASKED = ("/tmp", "/dev/shm")


def _write_everywhere(targets: list[str]) -> str:
    return (
        "import json, os\n"
        "result = {}\n"
        f"for directory in {targets!r}:\n"
        "    try:\n"
        "        fd = os.open(os.path.join(directory, '{TOKEN}'), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)\n"
        "        os.write(fd, b'left for the next callback')\n"
        "        os.close(fd)\n"
        "        result[directory] = 'written'\n"
        "    except OSError as err:\n"
        "        result[directory] = type(err).__name__\n"
        "print(json.dumps(result))\n"
    )


async def _files_left_by_writing_to(arena: Arena, targets: list[str]) -> list[str]:
    """Run the write-everywhere attack; returns (and removes) what it left on the host."""
    try:
        response = await arena.attack(_write_everywhere(targets))
    finally:
        left = [os.path.join(d, arena.token) for d in targets if arena.token]
        left = [path for path in left if os.path.lexists(path)]
        for path in left:
            os.unlink(path)
    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    return left


async def test_no_file_lands_in_tmp_shm_data_dir_or_elsewhere_on_the_host(
    arena_warm: Arena,
) -> None:
    if arena_warm.stack.running.options.isolation is None:
        pytest.xfail("callbacks share the executor's uid and mounts: needs the dedicated-uid tier")
    targets = [*MASKED, str(arena_warm.planted.sentinel), str(arena_warm.data_dir)]

    left = await _files_left_by_writing_to(arena_warm, targets)

    assert not left, f"the callback left files outside its working directory: {left}"


async def test_no_file_lands_in_other_world_writable_dirs(arena_warm: Arena) -> None:
    targets = [d for d in _world_writable_dirs() if not d.startswith(MASKED)]
    if not targets:
        pytest.skip("no other world-writable directories on this host")

    left = await _files_left_by_writing_to(arena_warm, targets)

    assert not left, f"the callback left files outside its working directory: {left}"


async def test_callback_cannot_reach_the_executor_port_to_act_as_root(arena_warm: Arena) -> None:
    stack = arena_warm.stack
    (guarded,) = stack.supervisor.submit([{"name": "guarded", "user": "bob", "status": "blocked"}])
    # qbcallback.v1.JobActionRequest{verb: JOB_VERB_UNBLOCK, job_id, actor: "root"}, by hand.
    request = bytes([0x08, 1, 0x10, guarded["id"], 0x1A, 4]) + b"root"
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {stack.running.port}), timeout=2).close()\n"
        "except OSError as err:\n"
        "    print('unreachable', type(err).__name__)\n"
        "    raise SystemExit(0)\n"
        "import grpc\n"
        f"channel = grpc.insecure_channel('127.0.0.1:{stack.running.port}')\n"
        "action = channel.unary_unary('/qbcallback.v1.Supervisor/JobAction')\n"
        "try:\n"
        f"    action({request!r}, timeout=5)\n"
        "    print('acted as root')\n"
        "except grpc.RpcError as err:\n"
        "    print('refused', err.code())\n"
    )
    response = await arena_warm.attack(code, limits={"memory_bytes": 2 << 30, "wall_seconds": 15})

    assert stack.supervisor.job(guarded["id"])["status"] == "blocked", response.stdout
    assert response.stdout.startswith("unreachable"), response.stdout + response.stderr


async def test_callback_files_do_not_outlive_the_run(arena_warm: Arena) -> None:
    # Files in its own working directory and in its /tmp are gone for the next callback.
    code = (
        "import os\n"
        "open('mine', 'w').write('x')\n"
        "try:\n"
        "    open('/tmp/{TOKEN}', 'w').write('x')\n"
        "except OSError:\n"
        "    pass\n"
        "print(os.getcwd())\n"
    )
    first = await arena_warm.attack(code)
    check = await arena_warm.run(
        f"import os\nprint(os.path.exists('/tmp/{arena_warm.token}'), os.path.exists({first.stdout.strip()!r}))"
    )

    assert_outcome(first, Outcome.OUTCOME_SUCCEEDED)
    assert check.stdout.split() == ["False", "False"]
    assert not Path(first.stdout.strip()).exists()
    assert not Path("/tmp", arena_warm.token).exists()
    shutil.rmtree(Path("/tmp", arena_warm.token), ignore_errors=True)


async def test_a_world_readable_data_dir_outside_tmp_is_still_hidden() -> None:
    # The data dirs of the other cases live under /tmp, which is masked as a whole; this
    # one is elsewhere and opened up (0755, databases 0644), so only its own mask hides it.
    parent = Path(tempfile.mkdtemp(prefix="cbexec-hostile-", dir="/var/tmp"))
    parent.chmod(0o755)
    try:
        async with running_stack(stack_settings(parent / "data")) as stack:
            if stack.running.options.isolation is None:
                pytest.xfail("callbacks run as the executor's uid: needs the dedicated-uid tier")
            data_dir = stack.settings.data_dir
            data_dir.chmod(0o755)
            for path in data_dir.glob("*.db"):
                path.chmod(0o644)
            (job,) = stack.supervisor.submit([{"name": "peek", "user": "mallory"}])
            code = (
                "import os\n"
                "try:\n"
                f"    print('listed', sorted(os.listdir({str(data_dir)!r})))\n"
                "except OSError as err:\n"
                "    print('hidden', type(err).__name__)\n"
                "try:\n"
                f"    open({str(data_dir / 'supervisor.db')!r}, 'rb').read(16)\n"
                "    print('read')\n"
                "except OSError as err:\n"
                "    print('unreadable', type(err).__name__)\n"
            )
            response = await stack.client.execute_callback(language="python", code=code, job=job)
    finally:
        shutil.rmtree(parent, ignore_errors=True)

    assert_outcome(response, Outcome.OUTCOME_SUCCEEDED)
    listing, reading = response.stdout.splitlines()
    assert listing in ("listed []", "hidden FileNotFoundError"), listing
    assert reading.startswith("unreadable"), reading
