"""The zygote's warm-up walks a run's path (frames in and out, stdio flushed) and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# In a process of its own: the test process's other threads (a previous test's
# checkpoints, gRPC, asyncio workers) open and close descriptors at any moment.
WARM_UP = """
import os
# launcher first: it puts the child's directory on sys.path for python_bootstrap's imports.
from executor.child import launcher, python_bootstrap
before = sorted(os.listdir("/proc/self/fd"))
python_bootstrap.warm_zygote()
after = sorted(os.listdir("/proc/self/fd"))
assert after == before, (before, after)
"""


def test_warming_leaves_no_descriptor_open_and_writes_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WARM_UP],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
