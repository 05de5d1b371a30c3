"""A bind's path or target swapped after start-up: the run is refused, never mounted elsewhere.

Whoever can write the directory that holds a bind's path (or a target on the host) can
rename it away and leave a symbolic link, or another directory, in its place between
two runs. Start-up checked the path as it was; a run must mount that same directory or
nothing. Here the test itself is the writer (a host user with write access to the
parent): start-up refuses the same arrangement with a policy's read-write bind as the
writer (tests/unit/test_policies.py), so no callback can be one.

The directories lie under ``/srv``: ``/tmp`` (where pytest's are) is masked, and a
target there is made in the callback's private copy, out of any writer's reach.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack, running_stack, stack_settings
from tests.helpers.processes import sandboxed_processes
from tests.helpers.waiting import eventually
from tests.hostile.harness import assert_outcome

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(os.geteuid() != 0, reason="binds need the hardened tier (root)"),
]

Outcome = executor_pb2.Outcome
VIEW: Final = "/tmp/reports-view"
LIST_THE_VIEW: Final = f"import os\nprint(sorted(os.listdir({VIEW!r})))\n"
SECRET: Final = "s3cr3t-of-reports"


@pytest.fixture
def outside_masks() -> Iterator[Path]:
    """A directory on the host outside every mask, removed after."""
    parent = Path(tempfile.mkdtemp(prefix="cbexec-test-binds-", dir="/srv"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def reports_policy(path: Path, target: str) -> dict[str, Any]:
    return {
        "binds": [{"path": str(path), "target": target, "mode": "ro"}],
        "env": {"REPORTS_SECRET": SECRET},
        "users": ["reporter"],
    }


@pytest.fixture
async def path_stack(tmp_path: Path, outside_masks: Path) -> AsyncIterator[tuple[Stack, Path]]:
    sub = outside_masks / "shared" / "sub"
    sub.mkdir(parents=True)
    (sub / "original.txt").write_text("the directory start-up checked\n")
    policies = {"reports": reports_policy(sub, VIEW)}
    async with running_stack(stack_settings(tmp_path / "data", policies=policies)) as stack:
        yield stack, sub


async def as_reporter(stack: Stack, code: str, language: str = "python") -> Any:
    (job,) = stack.supervisor.submit([{"name": "report", "user": "reporter"}])
    return await stack.client.execute_callback(
        language=language, code=code, job=stack.supervisor.job(job["id"]), timeout=60
    )


def assert_refused(response: Any, what: str, path: Path | str) -> None:
    assert_outcome(response, Outcome.OUTCOME_FAILED)
    assert f"the bind {what} {path} of policy reports changed since start-up" in (
        response.failure.message
    ), response.failure.message
    assert not response.stdout, "the callback ran"


async def test_a_bind_path_swapped_for_a_symlink_or_another_directory_is_refused(
    path_stack: tuple[Stack, Path],
) -> None:
    stack, sub = path_stack
    first = await as_reporter(stack, LIST_THE_VIEW)
    assert_outcome(first, Outcome.OUTCOME_SUCCEEDED)
    assert first.stdout == "['original.txt']\n"

    # The host's masked /run behind the bind's path: the run does not start.
    sub.rename(sub.with_name("sub.old"))
    sub.symlink_to("/run")
    assert_refused(await as_reporter(stack, LIST_THE_VIEW), "path", sub)

    # A symbolic link further up the path is no better.
    sub.unlink()
    sub.with_name("sub.old").rename(sub)
    shared = sub.parent
    shared.rename(shared.with_name("shared.old"))
    shared.symlink_to(shared.with_name("shared.old"))
    assert_refused(await as_reporter(stack, LIST_THE_VIEW), "path", sub)
    shared.unlink()
    shared.with_name("shared.old").rename(shared)

    # Another real directory at the same place: not the one start-up checked either.
    sub.rename(sub.with_name("sub.old"))
    sub.mkdir()
    (sub / "planted.txt").write_text("the writer's\n")
    assert_refused(await as_reporter(stack, LIST_THE_VIEW), "path", sub)

    # Put back, the policy's runs work again.
    shutil.rmtree(sub)
    sub.with_name("sub.old").rename(sub)
    again = await as_reporter(stack, LIST_THE_VIEW)
    assert_outcome(again, Outcome.OUTCOME_SUCCEEDED)
    assert again.stdout == "['original.txt']\n"


def first_inc_directory() -> str:
    """The first existing directory of Perl's @INC: where Perl looks for a module first."""
    found = subprocess.run(
        ["perl", "-e", 'print join("\\n", @INC)'], capture_output=True, text=True, check=True
    )
    return next(p for p in found.stdout.splitlines() if os.path.isdir(p))


INJECTED_STRICT: Final = (
    'END { print STDERR "INJECTED uid $<, REPORTS_SECRET=$ENV{REPORTS_SECRET}\\n" }\n'
    "package strict; sub import {} sub unimport {} 1;\n"
)


async def test_a_bind_target_swapped_for_a_symlink_cannot_plant_a_module(
    tmp_path: Path, outside_masks: Path
) -> None:
    # The bind's contents are the writer's anyway (here a strict.pm); what start-up
    # checked is that the target hides nothing the interpreters load.
    sub = outside_masks / "sub"
    sub.mkdir()
    (sub / "strict.pm").write_text(INJECTED_STRICT)
    view = outside_masks / "view"
    view.mkdir()
    policies = {"reports": reports_policy(sub, str(view))}
    async with running_stack(stack_settings(tmp_path / "data", policies=policies)) as stack:
        first = await as_reporter(stack, 'print "ran\\n";', "perl")
        assert_outcome(first, Outcome.OUTCOME_SUCCEEDED)
        assert "INJECTED" not in first.stderr

        view.rename(view.with_name("view.old"))
        view.symlink_to(first_inc_directory())
        swapped = await as_reporter(stack, 'print "ran\\n";', "perl")
        assert "INJECTED" not in swapped.stderr, swapped.stderr
        assert_refused(swapped, "target", view)

        # Another directory in its place is refused too: the mount point start-up
        # checked is the one a run mounts on.
        view.unlink()
        view.mkdir()
        assert_refused(await as_reporter(stack, 'print "ran\\n";', "perl"), "target", view)


async def test_a_bind_target_that_vanished_is_refused_not_made_on_the_host(
    tmp_path: Path, outside_masks: Path
) -> None:
    sub = outside_masks / "sub"
    sub.mkdir()
    view = outside_masks / "view"
    view.mkdir()
    policies = {"reports": reports_policy(sub, str(view))}
    async with running_stack(stack_settings(tmp_path / "data", policies=policies)) as stack:
        view.rmdir()
        code = f"import os\nprint(sorted(os.listdir({str(view)!r})))\n"
        assert_refused(await as_reporter(stack, code), "target", view)
        assert not view.exists(), "the launcher made the target on the host"


def unmount(directory: Path, *, check: bool = True) -> None:
    subprocess.run(["umount", str(directory)], check=check)


@contextmanager
def tmpfs_on(directory: Path) -> Iterator[None]:
    """A small tmpfs mounted on ``directory`` (a share, an automount), unmounted after."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(directory)], check=True)
    try:
        yield
    finally:
        unmount(directory, check=False)


@pytest.mark.parametrize("target", [VIEW, None], ids=["target-elsewhere", "target-is-path"])
async def test_a_bind_path_mounted_again_is_taken_and_one_unmounted_is_refused(
    tmp_path: Path, outside_masks: Path, target: str | None
) -> None:
    share = outside_masks / "share"
    share.mkdir()
    shown = target or str(share)
    listing = f"import os\nprint(sorted(os.listdir({shown!r})))\n"
    with tmpfs_on(share):
        (share / "first.txt").write_text("the first mount\n")
        policies = {"reports": reports_policy(share, shown)}
        # One slot: each run takes the child the one before it left prepared, mounted.
        settings = stack_settings(tmp_path / "data", policies=policies, max_concurrent=1)
        async with running_stack(settings) as stack:
            first = await as_reporter(stack, listing)
            assert_outcome(first, Outcome.OUTCOME_SUCCEEDED)
            assert first.stdout == "['first.txt']\n"

            # Unmounted (the share went away): its empty mount point is not the share.
            unmount(share)
            gone = await as_reporter(stack, listing)
            assert_refused(gone, "path", share)
            assert "the file system mounted there is not mounted now" in gone.failure.message

            # Mounted again, as an automount that expired and came back: another device.
            with tmpfs_on(share):
                (share / "again.txt").write_text("the second mount\n")
                again = await as_reporter(stack, listing)
                assert_outcome(again, Outcome.OUTCOME_SUCCEEDED)
                assert again.stdout == "['again.txt']\n"


async def test_a_share_mounted_inside_a_bind_after_a_child_was_prepared_reaches_the_run(
    tmp_path: Path, outside_masks: Path
) -> None:
    # The child started ahead copied the bind with what was mounted inside it then; its
    # run would have listed the share's empty mount point.
    shared = outside_masks / "shared"
    (shared / "project").mkdir(parents=True)
    listing = f"import os\nprint(sorted(os.listdir({VIEW + '/project'!r})))\n"
    policies = {"reports": reports_policy(shared, VIEW)}
    settings = stack_settings(tmp_path / "data", policies=policies, max_concurrent=1)
    async with running_stack(settings) as stack:
        before = await as_reporter(stack, listing)
        assert_outcome(before, Outcome.OUTCOME_SUCCEEDED)
        assert before.stdout == "[]\n"
        assert await eventually(lambda: bind_mounted_in_a_child(Path(VIEW)), 10.0)  # prepared
        with tmpfs_on(shared / "project"):
            (shared / "project" / "plan.txt").write_text("the project's\n")
            during = await as_reporter(stack, listing)
            assert_outcome(during, Outcome.OUTCOME_SUCCEEDED)
            assert during.stdout == "['plan.txt']\n"


def bind_mounted_in_a_child(target: Path) -> bool:
    """Whether a sandboxed child of ours has a mount at ``target`` (its bind, made)."""
    for proc in sandboxed_processes():
        with contextlib.suppress(OSError):
            mounts = Path(f"/proc/{proc.pid}/mountinfo").read_text().splitlines()
            if any(line.split()[4] == str(target) for line in mounts):
                return True
    return False


@pytest.mark.parametrize("launcher", ["zygote", "cold"])
async def test_a_child_prepared_before_its_bind_was_swapped_is_not_run(
    tmp_path: Path, outside_masks: Path, launcher: str
) -> None:
    # The child started ahead had checked and mounted the site's directory; the swap
    # took its mount away (the kernel detaches mounts on a dentry renamed over), and the
    # path led through the writer's symbolic link: another user's code ran with the
    # policy's secrets (probe 53).
    tools = outside_masks / "tools"
    tools.mkdir()
    (tools / "tool.txt").write_text("the site's\n")
    planted = outside_masks / "planted"
    planted.mkdir()
    (planted / "tool.txt").write_text("the writer's\n")
    read = f"print(open({str(tools / 'tool.txt')!r}).read(), end='')"
    policies = {"reports": reports_policy(tools, str(tools))}  # the target is the path
    settings = stack_settings(
        tmp_path / "data", policies=policies, max_concurrent=1, launcher=launcher
    )
    async with running_stack(settings) as stack:
        first = await as_reporter(stack, read)
        assert_outcome(first, Outcome.OUTCOME_SUCCEEDED)
        assert first.stdout == "the site's\n"
        await stack.running.runner.prepared_pids()
        assert await eventually(lambda: bind_mounted_in_a_child(tools), 10.0)  # checked, mounted

        tools.rename(tools.with_name("tools.old"))
        tools.symlink_to(planted)
        swapped = await as_reporter(stack, read)
        assert "the writer's" not in swapped.stdout
        assert_refused(swapped, "path", tools)
