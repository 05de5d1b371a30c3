"""A signal the callback has no handler for ends it as plain perl's or python's default action would.

Found by a prober (probe 117), on both launch paths: the callback is PID 1 of its PID
namespace, which the kernel spares the default action of a signal it has no handler
for, so `alarm 1` without `$SIG{ALRM}` (the classic Perl watchdog), `signal.alarm(1)`,
or a callback's `kill USR1 => $$` did nothing, and the run went on to succeed. The
bootstrap's handlers now end it as that action would: no END blocks or `finally`, the
run KILLED with the status a shell shows for that death (128 + the signal's number).
"""

from __future__ import annotations

import shutil

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

Outcome = executor_pb2.Outcome

needs_perl = pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed")


async def run(stack: Stack, language: str, code: str) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "signals", "user": "alice"}])
    return await stack.client.execute_callback(
        language=language, code=code, job=job, limits={"wall_seconds": 30}
    )


@pytest.mark.parametrize(
    ("language", "code", "name", "number"),
    [
        pytest.param(
            "perl",
            'END { print "END ran\\n" }\nprint "before\\n";\nalarm 1;\nsleep 10;\n'
            'print "still alive\\n";\n',
            "SIGALRM",
            14,
            marks=needs_perl,
            id="perl-alarm",
        ),
        pytest.param(
            "perl",
            'print "before\\n";\nkill USR1 => $$;\nprint "still alive\\n";\n',
            "SIGUSR1",
            10,
            marks=needs_perl,
            id="perl-usr1",
        ),
        pytest.param(
            "perl",
            'print "before\\n";\nkill HUP => $$;\nprint "still alive\\n";\n',
            "SIGHUP",
            1,
            marks=needs_perl,
            id="perl-hup",
        ),
        pytest.param(
            "python",
            "import atexit, signal, time\n"
            "atexit.register(lambda: print('atexit ran'))\n"
            "print('before')\n"
            "signal.alarm(1)\n"
            "try:\n"
            "    time.sleep(10)\n"
            "finally:\n"
            "    print('finally ran')\n",
            "SIGALRM",
            14,
            id="python-alarm",
        ),
        pytest.param(
            "python",
            "import os, signal\nprint('before')\nos.kill(os.getpid(), signal.SIGUSR1)\n"
            "print('still alive')\n",
            "SIGUSR1",
            10,
            id="python-usr1",
        ),
    ],
)
async def test_a_signal_without_a_handler_kills_the_callback(
    stack: Stack, language: str, code: str, name: str, number: int
) -> None:
    response = await run(stack, language, code)

    assert response.outcome == Outcome.OUTCOME_KILLED, response
    assert (response.signal, response.exit_code) == (0, 128 + number), response
    assert response.failure.message == (
        f"the callback was killed by signal {number} ({name}), which it had no handler for "
        f"(exit status {128 + number}, as a shell shows that death)"
    )
    # The output so far is kept; no END block, finally block or exit handler runs.
    assert response.stdout == "before\n"
    assert response.usage.wall_seconds < 5, response.usage


@pytest.mark.parametrize(
    ("language", "code"),
    [
        pytest.param(
            "perl",
            '$SIG{ALRM} = sub { die "timeout\\n" };\nalarm 1;\nsleep 10;\n',
            marks=needs_perl,
            id="perl",
        ),
        pytest.param(
            "python",
            "import signal, time\n"
            "def timeout(signum, frame): raise TimeoutError('timeout')\n"
            "signal.signal(signal.SIGALRM, timeout)\n"
            "signal.alarm(1)\n"
            "time.sleep(10)\n",
            id="python",
        ),
    ],
)
async def test_the_callbacks_own_handler_still_wins(stack: Stack, language: str, code: str) -> None:
    response = await run(stack, language, code)

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    assert response.failure.message.endswith("timeout"), response.failure
