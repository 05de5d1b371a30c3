"""A process a callback forks ends as itself: the run ends with the callback's own process.

Only the process that started running the callback reports (the done frame) and makes
the end mark; one it forks exits with its own status, and its qb calls are refused
rather than sent on the bridge the two processes share. On the warm (zygote) and the
cold path, for Python and Perl.
"""

from __future__ import annotations

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = pytest.mark.service

Outcome = executor_pb2.Outcome


async def run(stack: Stack, language: str, code: str) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "forks", "user": "alice", "status": "blocked"}])
    return await stack.client.execute_callback(language=language, code=code, job=job)


# -- Python --------------------------------------------------------------------------------


async def test_a_forked_process_exiting_leaves_the_callbacks_failure(stack: Stack) -> None:
    code = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    sys.exit(0)\n"
        "time.sleep(0.3)\n"
        "raise RuntimeError('the real failure')\n"
    )
    response = await run(stack, "python", code)

    assert response.outcome == Outcome.OUTCOME_FAILED, (response.failure, response.stderr)
    assert response.failure.message == "RuntimeError: the real failure"


async def test_a_forked_process_running_off_the_end_does_not_cut_the_callback_short(
    stack: Stack,
) -> None:
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    pass\n"
        "else:\n"
        "    time.sleep(0.3)\n"
        "    print('PARENT')\n"
    )
    response = await run(stack, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == "PARENT\n"
    assert response.stderr == ""


async def test_a_forked_process_ends_with_its_own_status(stack: Stack) -> None:
    # sys.exit(3), an uncaught exception (its traceback on stderr, status 1), running
    # off the end (0): each the forked process's own status, none the callback's.
    code = (
        "import os, sys\n"
        "def fork(then):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        then()\n"
        "        return None\n"
        "    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
        "def fail():\n"
        "    raise ValueError('from the forked process')\n"
        "codes = [fork(lambda: sys.exit(3)), fork(fail), fork(lambda: None)]\n"
        "if None not in codes:\n"
        "    print('statuses', *codes)\n"
    )
    response = await run(stack, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.exit_code == 0
    assert response.stdout == "statuses 3 1 0\n"
    assert response.stderr.startswith("Traceback (most recent call last):\n")
    assert 'File "<callback>", line 9, in fail\n' in response.stderr
    assert response.stderr.endswith("ValueError: from the forked process\n")


async def test_qb_calls_in_a_forked_process_are_refused_and_the_callbacks_work(
    stack: Stack,
) -> None:
    code = (
        "import os, sys\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        qb.jobstatus(qb.jobid())\n"
        "    except qb.QbError as err:\n"
        "        print('forked:', type(err).__name__, err, qb.jobid() > 0)\n"
        "        sys.exit(0)\n"
        "    sys.exit(5)\n"
        "os.waitpid(pid, 0)\n"
        "print('main:', qb.jobstatus(qb.jobid()), qb.unblock(qb.jobid()))\n"
    )
    response = await run(stack, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == (
        "forked: QbError qb calls work only in the callback's own process, not in a process"
        " it forked True\n"
        "main: blocked 1\n"
    )
    assert [(a.verb, a.ok) for a in response.actions] == [("jobstatus", True), ("unblock", True)]


# -- Perl ----------------------------------------------------------------------------------


async def test_a_forked_perl_process_running_off_the_end_leaves_the_callbacks_die(
    stack: Stack,
) -> None:
    code = (
        "my $pid = fork;\n"
        'die "fork: $!" if !defined $pid;\n'
        "if ($pid) {\n"
        "    select(undef, undef, undef, 0.3);\n"
        '    print "PARENT\\n";\n'
        '    die "the real failure\\n";\n'
        "}\n"
    )
    response = await run(stack, "perl", code)

    assert response.outcome == Outcome.OUTCOME_FAILED, (response.failure, response.stderr)
    assert response.failure.message == "the real failure"
    assert response.stdout == "PARENT\n"


async def test_a_forked_perl_process_ends_with_its_own_status(stack: Stack) -> None:
    code = (
        "sub forked {\n"
        "    my ($then) = @_;\n"
        "    my $pid = fork;\n"
        "    if (!$pid) { $then->(); return undef }\n"
        "    waitpid($pid, 0);\n"
        "    return $? >> 8;\n"
        "}\n"
        'my @codes = (forked(sub { exit 3 }), forked(sub { die "from the forked process\\n" }),\n'
        "    forked(sub { }));\n"
        'print "statuses @codes\\n" if !grep { !defined } @codes;\n'
    )
    response = await run(stack, "perl", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == "statuses 3 1 0\n"
    assert response.stderr == "from the forked process\n"


async def test_qb_calls_in_a_forked_perl_process_are_refused(stack: Stack) -> None:
    code = (
        "my $pid = fork;\n"
        "if (!$pid) {\n"
        "    my $ok = eval { qb::jobstatus(qb::jobid()); 1 };\n"
        '    print "forked: ", ($ok ? "called" : "$@->{kind}: $@->{message}"), " ",\n'
        '        (qb::jobid() > 0 ? "knows its job" : "lost its job"), "\\n";\n'
        "    exit 0;\n"
        "}\n"
        "waitpid($pid, 0);\n"
        'print "main: ", qb::jobstatus(qb::jobid()), " ", qb::unblock(qb::jobid()), "\\n";\n'
    )
    response = await run(stack, "perl", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == (
        "forked: QbError: qb calls work only in the callback's own process, not in a process"
        " it forked knows its job\n"
        "main: blocked 1\n"
    )


# A forked process that writes a call frame on the bridge itself is answered on the socket
# both share: the callback's own qb call may read that answer first, and says so.
ANOTHER_CALLS_ANSWER = (
    "got the answer to another call (id 1000; its own is 1): a call frame written to the"
    " bridge other than through qb (by a process the callback forked, say) took this"
    " call's answer"
)


async def test_a_qb_call_that_reads_a_forked_processs_answer_says_so(stack: Stack) -> None:
    code = (
        "import json, os\n"
        "call = {'type': 'call', 'id': 1000, 'fn': 'jobstatus', 'args': [qb.jobid()]}\n"
        "body = json.dumps({**call, 'kwargs': {}}).encode()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.write(3, len(body).to_bytes(4, 'big') + body)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "try:\n"
        "    qb.jobstatus(qb.jobid())\n"
        "except qb.QbError as err:\n"
        "    print(err)\n"
    )
    response = await run(stack, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == f"qb.jobstatus {ANOTHER_CALLS_ANSWER}\n"


async def test_a_perl_qb_call_that_reads_a_forked_processs_answer_says_so(stack: Stack) -> None:
    code = (
        "use JSON::PP;\n"
        "my $body = JSON::PP->new->encode(\n"
        "    {type => 'call', id => 1000, fn => 'jobstatus', args => [qb::jobid()], kwargs => {}});\n"
        "my $pid = fork;\n"
        "if (!$pid) {\n"
        "    open(my $bridge, '>&=', 3) or die; syswrite($bridge, pack('N', length $body) . $body);\n"
        "    POSIX::_exit(0);\n"
        "}\n"
        "waitpid($pid, 0);\n"
        'eval { qb::jobstatus(qb::jobid()) }; print "$@->{message}\\n";\n'
    )
    response = await run(stack, "perl", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == f"qb::jobstatus {ANOTHER_CALLS_ANSWER}\n"


# An exit (the callback's, or its handler's for the deadline or the CPU limit) is left
# to the exit status, no end mark: a warm child then reaches Perl's global destruction,
# where a handle of the zygote's whose fd was closed under it (or one of two handles on
# the bridge's fd) used to be closed again, "Warning: unable to close filehandle
# properly: Bad file descriptor during global destruction." on the callback's stderr.


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ('print "out\\n"; exit 0;', Outcome.OUTCOME_SUCCEEDED),
        ('print "out\\n"; exit 3;', Outcome.OUTCOME_FAILED),
    ],
    ids=["exit-0", "exit-3"],
)
async def test_a_perl_callback_ending_leaves_its_stderr_empty(
    stack: Stack, code: str, outcome: int
) -> None:
    response = await run(stack, "perl", code)

    assert response.outcome == outcome, (response.failure, response.stderr)
    assert response.stdout == "out\n"
    assert response.stderr == ""


@pytest.mark.parametrize(
    ("code", "limits", "outcome"),
    [
        ('$| = 1; print "out\\n"; sleep 30;', {"wall_seconds": 1}, Outcome.OUTCOME_WALL_TIMEOUT),
        ('$| = 1; print "out\\n"; 1 while 1;', {"cpu_seconds": 1}, Outcome.OUTCOME_CPU_LIMIT),
    ],
    ids=["wall", "cpu"],
)
async def test_a_perl_callback_ended_by_a_limit_leaves_its_stderr_empty(
    stack: Stack, code: str, limits: dict[str, float], outcome: int
) -> None:
    (job,) = stack.supervisor.submit([{"name": "limits", "user": "alice"}])
    response = await stack.client.execute_callback(
        language="perl", code=code, job=job, limits={"wall_seconds": 20, **limits}
    )

    assert response.outcome == outcome, (response.failure, response.stderr)
    assert response.stdout == "out\n"
    assert response.stderr == ""
