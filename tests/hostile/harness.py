"""The arena every hostile case runs in: an attack beside an innocent callback, then the checks.

``Arena.attack`` plants files the callback must not touch (a sentinel directory outside
the data dir; a TLS key and a config file inside it), starts the hostile callback and an
innocent one at the same moment, and after both have answered asserts that

- the innocent callback succeeded with the right output (it ran next to the attack);
- no process of the attack survives: none marked as sandboxed, none whose command line
  holds the attack's token (``{TOKEN}`` in the code; survives a scrubbed environment),
  and, when pids cgroups are in use, every slot's cgroup is empty;
- nothing outside the callback's working directory changed: the sentinel directory is
  byte-for-byte the same, the planted files in the data dir too, and no file the data
  dir held before has gone (the executor's own databases and logs may grow);
- the service still answers: a trivial callback afterwards succeeds.

It returns the attack's response for the case to check the outcome it expects.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import psutil

from executor.sandbox.process import SandboxRunner
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack
from tests.helpers.processes import wait_until_no_sandboxed_processes

Outcome = executor_pb2.Outcome
MIB: Final = 1 << 20

# Files the executor itself creates, changes and removes in its data dir (SQLite
# journals come and go); everything else that was there before must still be there.
_SERVICE_OWNED_SUFFIXES: Final = ("-wal", "-shm", "-journal")

INNOCENT: Final = (
    "import time\ntime.sleep(0.3)\nprint('innocent', qb.jobid(), qb.jobstatus(qb.jobid()))\n"
)

# The attacker's Qube user: a widened policy lists it in its users.
ATTACKER: Final = "mallory"

# What a callback sees of the executor's secrets; planted before every attack.
TLS_KEY: Final = (
    "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"
)
CONFIG: Final = 'bind = "127.0.0.1:0"\nauth_token = "hostile-suite-secret-token"\n'


def outcome_name(value: int) -> str:
    return Outcome.Name(value)  # type: ignore[arg-type]


def _file_state(path: Path) -> tuple[Any, ...]:
    st = path.lstat()
    kind = stat.S_IFMT(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        content: str = hashlib.sha256(path.read_bytes()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        content = os.readlink(path)
    else:
        content = ""
    return (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (root included): type, mode, owner and content digest."""
    if not root.exists():
        return {}
    entries = {".": _file_state(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(dirpath, name)
            try:
                entries[str(path.relative_to(root))] = _file_state(path)
            except FileNotFoundError:
                continue  # a journal the executor removed while we walked
    return entries


def processes_with(token: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``token``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        if any(token in arg for arg in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def wait_until_gone(token: str, timeout_s: float = 3.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while (left := processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@dataclass
class Planted:
    """Files the callback must neither read (when hardened) nor change."""

    sentinel: Path
    tls_key: Path
    config: Path
    outside_config: Path
    data_dir: Path
    before_sentinel: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    before_planted: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    before_data: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    @classmethod
    def create(cls, tmp_path: Path, data_dir: Path) -> Planted:
        sentinel = tmp_path / "sentinel"
        (sentinel / "sub").mkdir(parents=True, exist_ok=True)
        (sentinel / "notes.txt").write_text("sentinel: a callback must not change this\n")
        (sentinel / "sub" / "data.bin").write_bytes(bytes(range(256)) * 64)
        (sentinel / "world-readable.txt").write_text("readable by anyone\n")
        (sentinel / "world-readable.txt").chmod(0o644)
        link = sentinel / "link"
        if not link.is_symlink():
            link.symlink_to("notes.txt")
        tls = data_dir / "tls"
        tls.mkdir(mode=0o700, exist_ok=True)
        tls_key = tls / "server.key"
        tls_key.write_text(TLS_KEY)
        tls_key.chmod(0o600)
        config = data_dir / "cbexec.toml"
        config.write_text(CONFIG)
        config.chmod(0o600)
        outside_config = sentinel / "cbexec.toml"
        outside_config.write_text(CONFIG)
        outside_config.chmod(0o600)
        return cls(sentinel, tls_key, config, outside_config, data_dir)

    def take(self) -> None:
        self.before_sentinel = snapshot(self.sentinel)
        self.before_planted = {str(p): _file_state(p) for p in (self.tls_key, self.config)}
        self.before_data = snapshot(self.data_dir)

    def assert_unchanged(self) -> None:
        assert snapshot(self.sentinel) == self.before_sentinel, "the sentinel directory changed"
        for path, state in self.before_planted.items():
            assert Path(path).exists(), f"{path} was removed"
            assert _file_state(Path(path)) == state, f"{path} changed"
        after = snapshot(self.data_dir)
        assert "." in after, f"the data dir {self.data_dir} is gone"
        gone = [
            name
            for name in self.before_data
            if name not in after and not name.endswith(_SERVICE_OWNED_SUFFIXES)
        ]
        assert not gone, f"files of the data dir were removed: {gone}"
        assert after["."][:4] == self.before_data["."][:4], "the data dir's mode or owner changed"


class Arena:
    """One executor stack prepared for attacks; see the module docstring."""

    def __init__(self, stack: Stack, tmp_path: Path, *, policy: str = "") -> None:
        self.stack = stack
        # The sandbox policy the attacks ask for ("" the job policy).
        self.policy = policy
        self.planted = Planted.create(tmp_path, stack.settings.data_dir)
        (victim,) = stack.supervisor.submit([{"name": "victim", "user": ATTACKER}])
        (bystander,) = stack.supervisor.submit([{"name": "bystander", "user": "alice"}])
        self.job_id = int(victim["id"])
        self.innocent_job_id = int(bystander["id"])
        # The latest attack's token (for cases that look for what it left behind).
        self.token = ""

    @property
    def granted_env(self) -> set[str]:
        """The variables the arena's policy sets in a callback's environment."""
        table = self.stack.settings.policies.get(self.policy, {})
        return set(table.get("env", {})) | set(table.get("env_files", {}))

    @property
    def data_dir(self) -> Path:
        return self.stack.settings.data_dir

    async def run(
        self,
        code: str,
        *,
        language: str = "python",
        limits: dict[str, Any] | None = None,
        owner: str = "",
        timeout: float = 60.0,
    ) -> executor_pb2.ExecuteResponse:
        """One callback on the attacker's job, without the surrounding checks."""
        return await self.stack.client.execute_callback(
            language=language,
            code=code,
            job=self.stack.supervisor.job(self.job_id),
            limits=limits,
            owner=owner,
            policy=self.policy,
            timeout=timeout,
        )

    async def attack(
        self,
        code: str,
        *,
        language: str = "python",
        limits: dict[str, Any] | None = None,
    ) -> executor_pb2.ExecuteResponse:
        """Run ``code`` (``{TOKEN}`` replaced) next to an innocent callback; check the aftermath."""
        token = f"cbexec-hostile-{uuid.uuid4().hex[:12]}"
        self.token = token
        self.planted.take()
        attack, innocent = await asyncio.gather(
            self.run(code.replace("{TOKEN}", token), language=language, limits=limits),
            self.stack.client.execute_callback(
                language="python",
                code=INNOCENT,
                job=self.stack.supervisor.job(self.innocent_job_id),
                timeout=60,
            ),
        )
        assert innocent.outcome == Outcome.OUTCOME_SUCCEEDED, (
            "the innocent callback beside the attack failed: "
            f"{outcome_name(innocent.outcome)} {innocent.failure.message} {innocent.stderr[-500:]}"
        )
        assert innocent.stdout.split()[:2] == ["innocent", str(self.innocent_job_id)], (
            innocent.stdout
        )
        await self.assert_nothing_survives(token)
        self.planted.assert_unchanged()
        await self.assert_service_answers()
        return attack

    async def assert_nothing_survives(self, token: str | None = None) -> None:
        # The children prepared for the next runs are allowed, and nothing else: each is
        # one process (or a shim and its PID 1) that has not been given any code yet.
        prepared = await self.prepared_processes()
        survivors = wait_until_no_sandboxed_processes(timeout_s=3.0, allowed=prepared)
        assert not survivors, f"sandboxed processes survived the run: {survivors}"
        if token is not None:
            left = wait_until_gone(token)
            assert not left, f"processes of the attack survived the run: {left}"
        cgroups = self.stack.running.options.cgroups
        if cgroups is not None:
            for cell in range(SandboxRunner.cells(self.stack.settings.max_concurrent)):
                listed = [pid for pid in cgroups.pids(cell) if not prepared(pid)]
                assert not listed, f"cell {cell}'s cgroup still lists {listed}"

    async def prepared_processes(self) -> Callable[[int], bool]:
        """Whether a pid belongs to a child prepared for a later run (given no code yet).

        Such a child is one process, or a shim outside a PID namespace and its PID 1.
        """
        shims = set(await self.stack.running.runner.prepared_pids())

        def prepared(pid: int) -> bool:
            if pid in shims:
                return True
            try:
                process = psutil.Process(pid)
                return process.ppid() in shims and not process.children()
            except psutil.NoSuchProcess:
                return True  # gone: nothing survives

        return prepared

    async def assert_service_answers(self) -> None:
        response = await self.stack.client.execute_callback(
            language="python",
            code="print('alive', qb.jobid())",
            job=self.stack.supervisor.job(self.innocent_job_id),
            timeout=30,
        )
        assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (
            outcome_name(response.outcome),
            response.failure.message,
            response.stderr[-500:],
        )
        assert response.stdout.split() == ["alive", str(self.innocent_job_id)]


def assert_outcome(response: executor_pb2.ExecuteResponse, *expected: int) -> None:
    """The outcome is one of ``expected``; the message says what happened otherwise."""
    assert response.outcome in expected, (
        f"expected {[outcome_name(e) for e in expected]}, got {outcome_name(response.outcome)}: "
        f"{response.failure.message!r}; stdout {response.stdout[-300:]!r}; "
        f"stderr {response.stderr[-500:]!r}"
    )
