"""The zygote's warm-up walks a run's path (frames in and out, stdio flushed) and leaves nothing behind."""

from __future__ import annotations

import os

import pytest

# launcher first: it puts the child's directory on sys.path for python_bootstrap's imports.
from executor.child import launcher, python_bootstrap  # noqa: F401

pytestmark = pytest.mark.unit


def test_warming_leaves_no_descriptor_open_and_writes_nothing(
    capfd: pytest.CaptureFixture[str],
) -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    python_bootstrap.warm_zygote()
    assert sorted(os.listdir("/proc/self/fd")) == before
    assert capfd.readouterr() == ("", "")
