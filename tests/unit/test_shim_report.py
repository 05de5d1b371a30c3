"""The cold shim's report: its lines as they come, the figures it gives, the callback killed first."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from executor.sandbox.shim_report import ShimReport

pytestmark = pytest.mark.unit

STARTED = b'{"type":"started","id":0,"pid":%d}\n'
EXITED = b'{"type":"exited","pid":%d,"status":0,"cpu":0.012500,"maxrss_kib":6400}\n'


@pytest.fixture
def pipe() -> Iterator[tuple[ShimReport, int]]:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    report = ShimReport(read_end, shim_pid=os.getpid())
    try:
        yield report, write_end
    finally:
        report.close()
        os.close(write_end)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "30"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_lines_are_taken_as_they_come_a_partial_one_kept(pipe: tuple[ShimReport, int]) -> None:
    report, write_end = pipe
    os.write(write_end, STARTED % 41 + (EXITED % 41)[:20])
    report.read()
    assert (report.callback_pid, report.exited) == (41, None)

    os.write(write_end, (EXITED % 41)[20:])
    report.read()
    assert report.exited is not None and report.exited["maxrss_kib"] == 6400


def test_the_figures_are_the_reports_then_a_sample_then_none(
    pipe: tuple[ShimReport, int],
) -> None:
    report, write_end = pipe
    assert report.figures() == (0.0, 0)  # a shim killed by someone else before it reported

    report.sampled = (0.5, 8 << 20)
    assert report.figures() == (0.5, 8 << 20)

    os.write(write_end, STARTED % 41 + EXITED % 41)
    assert report.figures() == (0.0125, 6400 * 1024)


def test_the_callback_is_killed_only_while_it_is_the_shims_child(
    pipe: tuple[ShimReport, int], sleeper: subprocess.Popen[bytes]
) -> None:
    report, write_end = pipe
    os.write(write_end, STARTED % sleeper.pid)

    report.shim_pid = os.getpid() + 1  # another process's child: a pid given again
    assert not report.kill_callback()
    assert sleeper.poll() is None

    report.shim_pid = os.getpid()
    assert report.kill_callback()
    assert sleeper.wait(timeout=5) == -9
    assert report.sampled is not None and report.sampled[1] > 0


def test_a_callback_already_reported_is_not_killed(
    pipe: tuple[ShimReport, int], sleeper: subprocess.Popen[bytes]
) -> None:
    report, write_end = pipe
    os.write(write_end, STARTED % sleeper.pid + EXITED % sleeper.pid)

    assert not report.kill_callback()
    assert sleeper.poll() is None
