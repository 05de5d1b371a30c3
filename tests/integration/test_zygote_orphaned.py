"""A zygote whose executor is gone ends quietly, however the executor went.

Killed with the zygote's answer unread, the executor leaves the zygote a read that
fails with ECONNRESET instead of an end of file: that is the executor gone too, not a
traceback for the service's log (probe 87).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest

from executor.child.protocol import ZYGOTE_PING
from executor.model import Language
from executor.runtimes.child import child_runtime
from executor.sandbox.spawners import ZYGOTE_ENVIRONMENT

pytestmark = pytest.mark.integration

NO_PERL = pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")


@pytest.mark.parametrize("language", ["python", pytest.param("perl", marks=NO_PERL)])
def test_a_zygote_whose_executor_went_with_its_answer_unread_ends_quietly(language: str) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = child_runtime(Language(language)).zygote_argv(sys.executable)
    zygote = subprocess.Popen(
        [*argv, str(theirs.fileno())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=(theirs.fileno(),),
        env=ZYGOTE_ENVIRONMENT,
    )
    theirs.close()
    try:
        ours.sendall(ZYGOTE_PING)
        assert ours.recv(64) == b'{"type":"pong"}'  # up and serving
        ours.sendall(ZYGOTE_PING)
        ours.settimeout(10)
        ours.recv(64, socket.MSG_PEEK)  # its answer is there, and stays unread
        ours.close()  # as the executor's death closes it
        _, stderr = zygote.communicate(timeout=10)
    finally:
        if zygote.poll() is None:
            zygote.kill()
            zygote.wait()
    assert (zygote.returncode, stderr.decode()) == (0, "")
