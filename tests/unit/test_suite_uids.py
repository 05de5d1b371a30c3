"""A second suite started beside this one takes another sandbox uid base."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_TEST_UID_BASES, TEST_UID_BASE

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_a_suite_beside_this_one_takes_a_base_this_one_does_not_hold() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEXEC_")}
    other = subprocess.run(
        [sys.executable, "-c", "import tests.conftest as c; print(c.TEST_UID_BASE)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    base = int(other.stdout)
    assert base in DEFAULT_TEST_UID_BASES
    assert base != TEST_UID_BASE
