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


def test_a_worker_takes_a_base_given_by_hand_plus_its_number_of_thousands() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEXEC_")}
    env["CBEXEC_TEST_UID_BASE"] = "70000"
    code = "import tests.conftest as c; print(c.TEST_UID_BASE)"
    assert _python_in_the_tree(code, env, worker="gw2").strip() == "72000"
    assert _python_in_the_tree(code, env).strip() == "70000"


def _python_in_the_tree(code: str, env: dict[str, str], worker: str = "") -> str:
    """What ``python -c code`` prints, run in the repository with ``env``.

    Not as a pytest-xdist worker, whatever this one is (a worker offsets a base given by
    hand by its number), but as ``worker`` when one is named.
    """
    env = {name: value for name, value in env.items() if not name.startswith("PYTEST_XDIST_")}
    if worker:
        env["PYTEST_XDIST_WORKER"] = worker
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_a_suite_beside_this_one_takes_a_base_this_one_does_not_hold() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CBEXEC_")}
    base = int(_python_in_the_tree("import tests.conftest as c; print(c.TEST_UID_BASE)", env))
    assert base in DEFAULT_TEST_UID_BASES
    assert base != TEST_UID_BASE


def test_a_suite_leaves_out_the_cbexec_settings_of_its_shell(tmp_path: Path) -> None:
    # Probe 164: a shell configuring a service beside the suite (its uids, its data dir)
    # gave them to every executor a test started, refused as held by the service.
    env = {
        **os.environ,
        "CBEXEC_SANDBOX_UID_BASE": "64000",
        "CBEXEC_DATA_DIR": str(tmp_path),
        "CBEXEC_TEST_UID_BASE": str(TEST_UID_BASE),
        "CBEXEC_TEST_CHROMIUM": "/usr/bin/chromium",
    }
    code = (
        "import os, tests.conftest\n"
        "print(sorted((n, v) for n, v in os.environ.items() if n.startswith('CBEXEC_')))"
    )
    assert _python_in_the_tree(code, env).strip() == str(
        [
            ("CBEXEC_SANDBOX_UID_BASE", str(TEST_UID_BASE)),
            ("CBEXEC_TEST_CHROMIUM", "/usr/bin/chromium"),
        ]
    )
