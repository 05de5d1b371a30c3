"""The wire contract stays sound: fresh stubs, `buf lint` (STANDARD), `buf breaking` (WIRE_JSON).

`buf breaking` compares proto/ with the previous commit (``HEAD~1``, or the git revision
in ``CBEXEC_TEST_BUF_AGAINST``), so a change that would break a Node, Go or JSON caller of
the contract cannot land without someone saying so. buf comes from the npm registry
(``@bufbuild/buf``, pinned below) into a cache outside the repository; the buf tests skip
with the reason only where npm is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
BUF_VERSION: Final = "1.75.0"
CACHE: Final = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cbexec-dev"

pytestmark = pytest.mark.checks


def test_generated_stubs_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def buf() -> Path:
    """The pinned buf binary, installed from npm on first use."""
    prefix = CACHE / f"buf-{BUF_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "buf"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: buf (from npm's @bufbuild/buf) cannot be fetched")
        prefix.mkdir(parents=True, exist_ok=True)
        installed = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(prefix),
                "--no-audit",
                "--no-fund",
                "--silent",
                f"@bufbuild/buf@{BUF_VERSION}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert installed.returncode == 0, installed.stderr
    return binary


def run_buf(buf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=300
    )


def test_buf_lint_standard(buf: Path) -> None:
    result = run_buf(buf, "lint", "proto")
    assert result.returncode == 0, result.stdout + result.stderr


def _previous_revision() -> str | None:
    wanted = os.environ.get("CBEXEC_TEST_BUF_AGAINST", "HEAD~1")
    found = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or None


def test_buf_breaking_wire_json_against_the_previous_commit(buf: Path) -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: there is no previous commit to compare with")
    revision = _previous_revision()
    if revision is None:
        pytest.skip("the checkout has no previous commit (a shallow clone?)")
    result = run_buf(buf, "breaking", "proto", "--against", f".git#ref={revision},subdir=proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_catches_a_wire_change(buf: Path, tmp_path: Path) -> None:
    """The check itself can fail: renumbering a field is reported."""
    changed = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", changed)
    types = changed / "qbcallback" / "v1" / "types.proto"
    types.write_text(types.read_text().replace("string label = 3;", "string label = 30;"))
    result = subprocess.run(
        [str(buf), "breaking", str(changed), "--against", str(ROOT / "proto")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode != 0
    assert "label" in result.stdout + result.stderr
