"""scripts/examples/ through ``cbexec farm`` against a real executor, frame by frame.

Each dependency example is submitted as written (its ``qube`` and its ``python`` form)
with ``cbexec farm submit``; frames are completed with ``cbexec farm complete``; after
each step the test waits for the callbacks it fired and asserts exactly which frames
are unblocked, negative cases included. The universal-callbacks example is installed
into the executor's callback directory and reloaded with ``cbexec triggers reload``.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from executor.model import RunResult
from executor.runs.history import RunRecord
from supervisor_client.client import outcome_name
from tests.conftest import TEST_UID_BASE, Stack, running_stack, stack_settings
from tests.helpers.cli import ROOT, cbexec

pytestmark = pytest.mark.service

EXAMPLES: Final = ROOT / "scripts" / "examples"
FRAMES: Final = ("1", "2", "3", "4", "5")
PENDING, BLOCKED = "pending", "blocked"


@pytest.fixture(params=["qube", "python"])
def form(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def submit(stack: Stack, path: Path) -> dict[str, int]:
    """Submit an example with the CLI; the job ids by name, from what it printed."""
    said = await cbexec("farm", "submit", str(path), address=stack.address)
    assert said.code == 0, said.out + said.err
    found = re.findall(r"submitted job (\d+) '(\w+)'", said.out)
    ids = {name: int(job_id) for job_id, name in found}
    assert ids, said.out
    await stack.settle()
    return ids


async def complete(stack: Stack, *targets: str) -> None:
    said = await cbexec("farm", "complete", *targets, address=stack.address)
    assert said.code == 0, said.out + said.err
    await stack.settle()


def agenda(stack: Stack, job_id: int) -> dict[str, str]:
    return {w["name"]: w["status"] for w in stack.supervisor.job(job_id)["agenda"]}


def only(pending: str, of: tuple[str, ...] = FRAMES) -> dict[str, str]:
    """Frames in ``pending`` (a "1,3" list) pending, the others blocked."""
    wanted = set(pending.split(",")) if pending else set()
    return {frame: PENDING if frame in wanted else BLOCKED for frame in of}


async def test_job_b_waits_for_job_a(stack_warm: Stack, form: str) -> None:
    stack = stack_warm
    jobs = await submit(stack, EXAMPLES / "job-b-waits-for-job-a" / f"{form}.py")
    a, b = jobs["jobA"], jobs["jobB"]
    assert stack.supervisor.job(b)["status"] == BLOCKED

    await complete(stack, f"{a}:1-4")
    assert stack.supervisor.job(b)["status"] == BLOCKED
    await complete(stack, f"{a}:5")

    assert stack.supervisor.job(a)["status"] == "complete"
    assert stack.supervisor.job(b)["status"] == PENDING
    assert agenda(stack, b) == dict.fromkeys(FRAMES, PENDING)


async def test_frame_by_frame(stack_warm: Stack, form: str) -> None:
    stack = stack_warm
    jobs = await submit(stack, EXAMPLES / "frame-by-frame" / f"{form}.py")
    a, b = jobs["jobA"], jobs["jobB"]
    assert agenda(stack, b) == only("")

    await complete(stack, f"{a}:2")
    assert agenda(stack, b) == only("2")
    await complete(stack, f"{a}:1,5")
    assert agenda(stack, b) == only("1,2,5")
    await complete(stack, f"{a}:3-4")
    assert agenda(stack, b) == only("1,2,3,4,5")


async def test_job_c_waits_for_a_and_b(stack_warm: Stack, form: str) -> None:
    stack = stack_warm
    jobs = await submit(stack, EXAMPLES / "job-c-waits-for-a-and-b" / f"{form}.py")
    ribgen, render, c = jobs["ribgen"], jobs["render"], jobs["jobC"]

    await complete(stack, f"{ribgen}:1")  # one half of frame 1
    assert agenda(stack, c) == only("")
    await complete(stack, f"{render}:2")  # the other half, but of frame 2
    assert agenda(stack, c) == only("")
    await complete(stack, f"{render}:1")  # frame 1 has both now
    assert agenda(stack, c) == only("1")
    await complete(stack, f"{ribgen}:2")
    assert agenda(stack, c) == only("1,2")
    await complete(stack, f"{ribgen}:3-5", f"{render}:3-5")
    assert agenda(stack, c) == only("1,2,3,4,5")


async def test_job_d_waits_for_a_and_b_or_c(stack_warm: Stack, form: str) -> None:
    stack = stack_warm
    jobs = await submit(stack, EXAMPLES / "job-d-waits-for-a-and-b-or-c" / f"{form}.py")
    ribgen, render, composite, d = (jobs[n] for n in ("ribgen", "render", "composite", "jobD"))

    await complete(stack, f"{composite}:3")  # the OR branch alone is enough
    assert agenda(stack, d) == only("3")
    await complete(stack, f"{render}:1")  # half of the AND branch: not yet
    assert agenda(stack, d) == only("3")
    await complete(stack, f"{ribgen}:1")
    assert agenda(stack, d) == only("1,3")
    await complete(stack, f"{ribgen}:2")  # frame 2 still lacks render (or composite)
    assert agenda(stack, d) == only("1,3")
    await complete(stack, f"{composite}:2,4-5")
    assert agenda(stack, d) == only("1,2,3,4,5")


def install_universal_callbacks(stack: Stack) -> Path:
    """Copy the example into the executor's callback directory, as the README says."""
    target = stack.settings.universal_callback_dirs[0]
    target.mkdir(parents=True, exist_ok=True)
    for path in (EXAMPLES / "universal-callbacks").iterdir():
        if path.suffix in (".conf", ".py", ".pl", ".qcb"):
            shutil.copy(path, target / path.name)
    return target


@pytest.mark.skipif(shutil.which("perl") is None, reason="checkWork.pl needs perl")
async def test_check_work_fails_for_a_job_the_farm_does_not_have(tmp_path: Path) -> None:
    """A job the farm does not have: checkWork.pl FAILS, saying so (README "Drive it from Python").

    With step 4's callbacks still installed, the client example's job 9001 (registered by
    the scheduler, not in the embedded farm) gets two `5 FAILED` lines, as the README says.

    checkWork.pl once printed a report of nothing and SUCCEEDED: ``qb::jobinfo`` of a job
    the supervisor does not have is an empty list.
    """
    async with running_stack(stack_settings(tmp_path / "data")) as stack:
        install_universal_callbacks(stack)
        said = await cbexec("triggers", "reload", address=stack.address)
        assert (said.code, said.out.strip()) == (0, "reloaded: 4 active"), said.err
        # The example's job: its two callbacks are 1 and 2, the universal ones 3 to 6.
        frame_done = {"triggers": "complete-work-self-*", "language": "python", "code": "1"}
        both = {**frame_done, "triggers": "complete-work-self-1 && complete-work-self-2"}
        job = {"id": 9001, "name": "comp", "user": "alice", "callbacks": [frame_done, both]}
        await stack.client.register_job(job)
        reply = await stack.client.publish_event(
            name="complete", type="work", job_id=9001, work_name="2", wait=True
        )
    fired = {f.callback_id: f.result for f in reply.fired}
    assert {n: outcome_name(result.outcome) for n, result in fired.items()} == {
        1: "SUCCEEDED",
        5: "FAILED",
    }
    assert fired[5].stdout == "", fired[5]
    assert fired[5].failure.message == (
        "frame 2 of job 9001: the supervisor has no job 9001 (qb::jobinfo found none)"
    )


LOG_DIR: Final = Path("/var/log/cbexec-callbacks")
# The group an admin gives the log directory (conftest keeps uids apart per checkout).
LOG_GROUP: Final = TEST_UID_BASE + 902


def example_policy(host_dir: Path) -> dict[str, Any]:
    """The example's cbexec.toml as written, but for this host: its directory and group.

    The directory is ``host_dir`` here, shown at the example's path inside the sandbox,
    so the test writes nothing to the host's /var/log but the empty mount point.
    """
    settings = tomllib.loads((EXAMPLES / "universal-callbacks" / "cbexec.toml").read_text())
    universal = settings["policies"]["universal"]
    ((bind,),) = [universal["binds"]]
    assert bind == {"path": str(LOG_DIR), "mode": "rw"}
    universal["binds"] = [{**bind, "path": str(host_dir), "target": str(LOG_DIR)}]
    assert universal["group"] == "qubecb"
    universal["group"] = LOG_GROUP
    return {"policies": settings["policies"]}


@pytest.fixture
def log_dir(tmp_path: Path) -> Iterator[Path]:
    """The admin's log directory, set up as cbexec.toml says (group, 2770)."""
    host_dir = tmp_path / "qube-callbacks"
    host_dir.mkdir()
    os.chown(host_dir, 0, LOG_GROUP)
    host_dir.chmod(0o2770)
    made = not LOG_DIR.exists()
    if made:
        LOG_DIR.mkdir(mode=0o755)  # the mount point; nothing is written to it
    try:
        yield host_dir
    finally:
        if made:
            LOG_DIR.rmdir()


@pytest.mark.skipif(shutil.which("perl") is None, reason="checkWork.pl needs perl")
@pytest.mark.skipif(os.geteuid() != 0, reason="the example's policy binds (hardened tier: root)")
async def test_universal_callbacks(tmp_path: Path, log_dir: Path) -> None:
    settings = stack_settings(tmp_path / "data", **example_policy(log_dir))
    async with running_stack(settings) as stack:
        await universal_callbacks_with_their_policy(stack, log_dir)


async def universal_callbacks_with_their_policy(stack: Stack, log_dir: Path) -> None:
    install_universal_callbacks(stack)
    said = await cbexec("triggers", "reload", address=stack.address)
    assert (said.code, said.out.strip()) == (0, "reloaded: 4 active"), said.err

    jobs = await submit(stack, EXAMPLES / "universal-callbacks" / "shot.toml")
    shot = jobs["shot010"]
    await complete(stack, f"{shot}:1-2")
    failed = await cbexec("farm", "fail", f"{shot}:3", address=stack.address)
    assert failed.code == 0, failed.err
    await stack.settle()
    assert stack.supervisor.job(shot)["status"] == "failed"

    history = stack.running.recorder.history
    runs: dict[str, list[RunRecord | None]] = {}
    for record in history.list_runs(job_id=shot, limit=100):
        assert record.policy == "universal"
        runs.setdefault(Path(record.source).name, []).append(history.get(record.invocation_id))
    assert sorted((name, len(found)) for name, found in runs.items()) == [
        ("checkWork.pl", 3),
        ("logFailuresToDB.py", 1),
        ("mail-status.qcb", 1),
        ("submitted.py", 1),
    ]

    def result(name: str, index: int = 0) -> RunResult:
        record = runs[name][index]
        assert record is not None and record.result is not None
        return record.result

    submitted = result("submitted.py")
    assert submitted.outcome == "SUCCEEDED", submitted.stderr
    line = f"job {shot} (shot010) submitted by"
    assert line in submitted.stdout
    assert (log_dir / "submitted.log").read_text().startswith(line)
    checks = sorted(result("checkWork.pl", n).stdout for n in range(3))
    assert [line.split(" on ")[0] for line in checks] == [
        f"frame 1 of job {shot} (shot010): complete",
        f"frame 2 of job {shot} (shot010): complete",
        f"frame 3 of job {shot} (shot010): failed",
    ]
    assert result("mail-status.qcb").outcome == "SUCCEEDED"
    mails = list((stack.settings.data_dir / "mail" / "new").iterdir())
    assert len(mails) == 1
    assert "To: lighting@example.com" in mails[0].read_text()

    logged = result("logFailuresToDB.py")
    assert f"job {shot} (shot010) of" in logged.stdout and "failed: frames 3" in logged.stdout
    assert logged.outcome == "SUCCEEDED", logged.stderr
    with sqlite3.connect(log_dir / "failures.db") as db:
        rows = db.execute(
            "SELECT frames FROM failures WHERE job_id = ? AND name = 'shot010'", (shot,)
        ).fetchall()
    assert rows == [("3",)]
    for made in log_dir.iterdir():  # the sandbox uid's, in the directory's group
        assert made.stat().st_gid == LOG_GROUP and made.stat().st_mode & 0o007 == 0
        # Writable by the group: the next run may be another cell's uid (failures.db was 0640).
        assert made.stat().st_mode & 0o060 == 0o060, (made, oct(made.stat().st_mode))

    # The same code as a user's job callback: the directory is not there for it.
    example = EXAMPLES / "universal-callbacks"
    callbacks = [
        {"triggers": "submit-job-self", "language": "python", "code": (example / name).read_text()}
        for name in ("submitted.py", "logFailuresToDB.py")
    ]
    (job,) = stack.supervisor.submit(
        [{"name": "sneaky", "user": "mallory", "callbacks": callbacks}]
    )
    await stack.settle()
    own = [r for r in history.list_runs(job_id=job["id"]) if not r.source]
    assert len(own) == 2
    for summary in own:
        tried = history.get(summary.invocation_id)
        assert tried is not None and tried.result is not None
        assert (tried.policy, tried.result.outcome) == ("job", "FAILED")
        failure = tried.result.failure
        assert failure is not None
        assert str(LOG_DIR) in tried.result.stderr + failure.message, failure
    # Only the universal submitted.py wrote: once for shot010, once for this job.
    written = (log_dir / "submitted.log").read_text().splitlines()
    assert [line.split()[2] for line in written] == ["(shot010)", "(sneaky)"]
