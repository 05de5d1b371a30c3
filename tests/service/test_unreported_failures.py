"""A callback whose bridge is gone when it fails: its failure is on its stderr, not lost.

The done frame cannot be sent once the callback closed or shut down its bridge (fd 3),
itself or through a process it forked; the run is then only ``the callback exited with
status 1``, and the exception (Python's traceback, Perl's die message) is on the
callback's stderr, as the plain interpreter prints it. On the warm and the cold path.
"""

from __future__ import annotations

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

Outcome = executor_pb2.Outcome

BRIDGE_GONE = {
    ("python", "closed"): "import os\nos.close(3)\n",
    ("python", "shut down"): (
        "import os, socket\nsocket.socket(fileno=os.dup(3)).shutdown(socket.SHUT_WR)\n"
    ),
    ("python", "shut down by a forked process"): (
        "import os, socket\n"
        "if os.fork() == 0:\n"
        "    socket.socket(fileno=os.dup(3)).shutdown(socket.SHUT_WR)\n"
        "    os._exit(0)\n"
        "os.wait()\n"
    ),
    ("perl", "shut down"): "open(my $b, '+<&=', 3); shutdown($b, 1);\n",
    ("perl", "shut down by a forked process"): (
        "if (fork() == 0) { open(my $b, '+<&=', 3); shutdown($b, 1); POSIX::_exit(0) }\nwait;\n"
    ),
}

FAIL = {
    "python": "raise ValueError('the real failure')\n",
    "perl": 'die "the real failure\\n";\n',
}


@pytest.mark.parametrize(("language", "how"), list(BRIDGE_GONE))
async def test_a_failure_after_the_bridge_is_gone_is_on_stderr(
    stack: Stack, language: str, how: str
) -> None:
    (job,) = stack.supervisor.submit([{"name": "j", "user": "alice", "status": "blocked"}])
    code = BRIDGE_GONE[language, how] + FAIL[language]

    response = await stack.client.execute_callback(
        language=language, code=code, job=job, limits={"wall_seconds": 30}
    )

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    assert response.failure.message == "the callback exited with status 1"
    if language == "python":
        assert response.stderr.startswith("Traceback (most recent call last):\n"), response
        assert 'File "<callback>", line' in response.stderr
        assert response.stderr.endswith("ValueError: the real failure\n"), response
    else:
        assert response.stderr == "the real failure\n", response
