"""Only the callback's own process reports and ends its run, never a process it forks.

A forked process shares the bridge. Its done frame is ignored (the kernel's
SCM_CREDENTIALS say which process sent it), and its shutdown of the bridge, which
carries no sender, does not end the run while another process of the run is left:
the main process's exit decides. On the warm launcher a forked process's "ok" and
shutdown used to make a callback that then raised SUCCEEDED (the cold one said FAILED).
"""

from __future__ import annotations

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

Outcome = executor_pb2.Outcome

FORGED_DONE = {
    "python": """
import json, os, socket, time
if os.fork() == 0:
    body = json.dumps({"type": "done", "status": "ok", "exit_code": 0}).encode()
    os.write(3, len(body).to_bytes(4, "big") + body)
    socket.socket(fileno=os.dup(3)).shutdown(socket.SHUT_WR)
    time.sleep(5)
    os._exit(0)
time.sleep(0.5)
raise RuntimeError("the callback itself failed")
""",
    "perl": """
if (fork() == 0) {
    qb::_write_frame({type => 'done', status => 'ok', exit_code => 0});
    open(my $b, '+<&=', 3); shutdown($b, 1);
    sleep 5; CORE::exit(0);
}
select(undef, undef, undef, 0.5);
die "the callback itself failed\\n";
""",
}

# The callback's code ends well (its done frame says "ok"); a process it forked shuts the
# bridge down while the callback's own exit handlers still run, and they change its exit.
SHUTDOWN_DURING_EXIT = {
    "python": """
import atexit, os, socket, time
def late_exit():
    time.sleep(1)
    os._exit(3)
atexit.register(late_exit)
if os.fork() == 0:
    time.sleep(0.3)
    socket.socket(fileno=os.dup(3)).shutdown(socket.SHUT_WR)
    time.sleep(5)
    os._exit(0)
""",
    "perl": """
END { if ($$ == $main) { select(undef, undef, undef, 1); POSIX::_exit(3) } }
our $main = $$;
if (fork() == 0) {
    select(undef, undef, undef, 0.3);
    open(my $b, '+<&=', 3); shutdown($b, 1);
    sleep 5; POSIX::_exit(0);
}
""",
}


async def run(stack: Stack, language: str, code: str) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "j", "user": "alice", "status": "blocked"}])
    return await stack.client.execute_callback(
        language=language, code=code, job=job, limits={"wall_seconds": 30}
    )


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_forked_process_done_frame_does_not_report_the_run(
    stack: Stack, language: str
) -> None:
    response = await run(stack, language, FORGED_DONE[language])

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    assert response.exit_code == 1
    assert "after reporting 'ok'" not in response.failure.message


@pytest.mark.parametrize("language", ["python", "perl"])
async def test_a_forked_process_shutdown_does_not_end_the_run_early(
    stack: Stack, language: str
) -> None:
    response = await run(stack, language, SHUTDOWN_DURING_EXIT[language])

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    assert response.exit_code == 3
    assert response.failure.message == (
        "the callback exited with status 3 (after reporting 'ok', which is not how it ended)"
    )


# A forked process dies having written part of a frame (256 bytes announced, 6 sent).
PART_OF_A_FRAME = """
import os
if os.fork() == 0:
    os.write(3, b'\\0\\0\\1\\0{"id":')
    os._exit(0)
os.wait()
"""


async def test_a_forked_process_part_of_a_frame_leaves_the_callbacks_calls_answered(
    stack: Stack,
) -> None:
    code = PART_OF_A_FRAME + "print(qb.jobstatus(qb.jobid()))\n"
    response = await run(stack, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response
    assert response.stdout == "blocked\n"
    assert len(response.actions) == 1


async def test_a_forked_process_part_of_a_frame_does_not_break_the_callbacks_end(
    stack: Stack,
) -> None:
    response = await run(stack, "python", PART_OF_A_FRAME)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response
