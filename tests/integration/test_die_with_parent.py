"""``launcher.die_with_parent``: a child whose executor is gone already ends at once.

A parent that died before the child's ``PR_SET_PDEATHSIG`` sends nothing; the child
learns it from the executor's end of the bridge (fd 3), closed, whether or not frames
are still buffered on it. An open bridge lets it go on.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

CHILD_DIR: Final = Path(__file__).resolve().parents[2] / "executor" / "child"
# The bridge moved to fd 3 first, as the launcher's main does.
PROGRAM: Final = (
    f"import os, sys; os.dup2(int(sys.argv[1]), 3); sys.path.insert(0, {str(CHILD_DIR)!r});"
    " import launcher; launcher.die_with_parent(); print('went on')"
)


@pytest.mark.parametrize(("closed", "buffered"), [(True, False), (True, True), (False, True)])
def test_a_child_ends_when_the_executor_end_of_the_bridge_is_closed(
    closed: bool, buffered: bool
) -> None:
    executor_end, child_end = socket.socketpair()
    with executor_end, child_end:
        if buffered:
            executor_end.sendall(b"\0\0\0\2{}")  # a frame the child has not read
        if closed:
            executor_end.close()
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-B", "-c", PROGRAM, str(child_end.fileno())],
            pass_fds=[child_end.fileno()],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )
    if closed:
        assert (done.returncode, done.stdout) == (121, b""), done.stderr
    else:
        assert (done.returncode, done.stdout) == (0, b"went on\n"), done.stderr
