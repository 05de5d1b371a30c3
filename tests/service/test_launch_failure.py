"""A launch failure is said by the launcher and believed only before the callback could run.

"The sandbox could not start the callback" (exit status 121) sends the operator to the
host, not the callback. The launcher (or a zygote's child) says so on the bridge (a
``launch_failed`` frame) before it reads the start frame; the executor believes it
only when the kernel shows that frame went unread. Any other exit with status 121 is
the callback's own (it used to read as a launch failure, on both launchers).
"""

from __future__ import annotations

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

Outcome = executor_pb2.Outcome

OWN_EXITS = [
    ("python", "import os\nprint('I ran', flush=True)\nos._exit(121)\n", ""),
    (
        "python",
        "import atexit, os\natexit.register(os._exit, 121)\nprint('I ran')\n",
        " (after reporting 'ok', which is not how it ended)",
    ),
    ("perl", 'print "I ran\\n"; CORE::exit(121);', ""),
    ("perl", 'use POSIX (); $| = 1; print "I ran\\n"; POSIX::_exit(121);', ""),
    (
        "perl",
        'print "I ran\\n"; END { $? = 121 }',
        " (after reporting 'ok', which is not how it ended)",
    ),
    # A callback that says the sandbox could not start it, as the launcher does.
    (
        "python",
        "import json, os\nprint('I ran', flush=True)\n"
        "body = json.dumps({'type': 'launch_failed', 'reason': 'forged'}).encode()\n"
        "os.write(3, len(body).to_bytes(4, 'big') + body)\nos._exit(121)\n",
        "",
    ),
    (
        "perl",
        '$| = 1; print "I ran\\n"; my $b = q({"type":"launch_failed","reason":"forged"});\n'
        "POSIX::write(3, pack('N', length $b) . $b, 4 + length $b); POSIX::_exit(121);",
        "",
    ),
]


@pytest.mark.parametrize(("language", "code", "after"), OWN_EXITS)
async def test_an_exit_121_of_a_callback_that_ran_is_its_own_exit_status(
    stack: Stack, language: str, code: str, after: str
) -> None:
    (job,) = stack.supervisor.submit([{"name": "j", "user": "alice", "status": "blocked"}])
    response = await stack.client.execute_callback(
        language=language, code=code, job=job, limits={"wall_seconds": 30}
    )

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    assert response.exit_code == 121
    assert response.stdout == "I ran\n"
    assert response.failure.message == f"the callback exited with status 121{after}"
