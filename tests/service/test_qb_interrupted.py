"""A qb call ended by a signal handler's exception (a timeout) leaves qb in step.

The handler's exception can land anywhere in a call's exchange: before its frame is
sent, mid-frame, while its answer is on the way. The next calls must each get their
own answer, as the README promises, not the abandoned call's, in Python and in Perl.
"""

from __future__ import annotations

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

Outcome = executor_pb2.Outcome


async def run(stack: Stack, language: str, code: str) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "victim", "user": "alice", "status": "blocked"}])
    return await stack.client.execute_callback(
        language=language, code=code, job=job, limits={"wall_seconds": 60}
    )


async def test_a_python_call_interrupted_mid_frame_leaves_the_next_calls_their_answers(
    stack: Stack,
) -> None:
    # Every read of the bridge takes 3 bytes at most, so frames arrive in pieces; the
    # second read is interrupted, with part of the first call's answer read.
    code = (
        "import os, signal\n"
        "import qb as module\n"
        "class Timeout(Exception): pass\n"
        "def handler(signum, frame): raise Timeout()\n"
        "signal.signal(signal.SIGUSR1, handler)\n"
        "reads = []\n"
        "real = os.read\n"
        "def read(fd, size):\n"
        "    reads.append(size)\n"
        "    if len(reads) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    return real(fd, min(size, 3))\n"
        "module.read = read\n"
        "module.protocol.read = read  # where the reading was before\n"
        "try:\n"
        "    qb.jobstatus(1000)\n"
        "except Timeout:\n"
        "    print('interrupted')\n"
        "for job in (5000, 5001):\n"
        "    try: qb.jobstatus(job)\n"
        "    except qb.QbError as err: print(type(err).__name__, err)\n"
        "print('unblock', qb.unblock(qb.jobid()))\n"
        "print('status', qb.jobstatus(qb.jobid()))\n"
    )
    response = await run(stack, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == (
        "interrupted\nNoSuchJob no job 5000\nNoSuchJob no job 5001\nunblock 1\nstatus pending\n"
    )
    # The interrupted call was sent, so it was made (and listed) all the same.
    assert len(response.actions) == 5


async def test_a_python_call_interrupted_mid_write_is_finished_before_the_next(
    stack: Stack,
) -> None:
    # Every write to the bridge sends 3 bytes at most; the second write of the first
    # call, and one of the last call, are interrupted. The rest of each frame goes before
    # the next frame (for the last call: before the done frame), so both are made.
    code = (
        "import os, signal\n"
        "import qb as module\n"
        "class Timeout(Exception): pass\n"
        "def handler(signum, frame): raise Timeout()\n"
        "signal.signal(signal.SIGUSR1, handler)\n"
        "writes = []\n"
        "interrupt = {2}\n"
        "real = os.write\n"
        "def write(fd, data):\n"
        "    writes.append(1)\n"
        "    if len(writes) in interrupt:\n"
        "        os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    return real(fd, bytes(data[:3]))\n"
        "module.write = write\n"
        "module.protocol.write = write  # where the writing was before\n"
        "try:\n"
        "    qb.jobstatus(1000)\n"
        "except Timeout:\n"
        "    print('interrupted')\n"
        "try: qb.jobstatus(5000)\n"
        "except qb.QbError as err: print(type(err).__name__, err)\n"
        "print('unblock', qb.unblock(qb.jobid()))\n"
        "interrupt.add(len(writes) + 5)\n"
        "try:\n"
        "    qb.block(qb.jobid())\n"
        "except Timeout:\n"
        "    print('interrupted')\n"
    )
    response = await run(stack, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == "interrupted\nNoSuchJob no job 5000\nunblock 1\ninterrupted\n"
    assert [(action.verb, action.target) for action in response.actions] == [
        ("jobstatus", "1000"),
        ("jobstatus", "5000"),
        ("unblock", "1"),
        ("block", "1"),
    ]


# A handler's own OSError (the TimeoutError a SIGALRM timeout raises, an InterruptedError)
# raised mid-write and then mid-read: every read and write of the bridge takes 3 bytes at
# most, and the second of each is interrupted.
HANDLERS_OS_ERROR = """
import os, signal
import qb as module
def handler(signum, frame): raise {exception}("alarm")
signal.signal(signal.SIGUSR1, handler)
cut = {{"write": 2, "read": 0}}
seen = {{"write": 0, "read": 0}}
real_write, real_read = os.write, os.read
def write(fd, data):
    seen["write"] += 1
    if seen["write"] == cut["write"]:
        os.kill(os.getpid(), signal.SIGUSR1)
    return real_write(fd, bytes(data[:3]))
def read(fd, size):
    seen["read"] += 1
    if seen["read"] == cut["read"]:
        os.kill(os.getpid(), signal.SIGUSR1)
    return real_read(fd, min(size, 3))
module.write, module.read = write, read
def attempt(job):
    try:
        print(repr(qb.jobstatus(job)))
    except {exception} as err:
        print("interrupted:", type(err).__name__, err)
    except qb.QbError as err:
        print(type(err).__name__, err)
attempt(1000)
attempt(5000)
cut["read"] = seen["read"] + 2
attempt(1001)
attempt(5001)
attempt(qb.jobid())
"""


@pytest.mark.parametrize("exception", ["TimeoutError", "InterruptedError", "ConnectionResetError"])
async def test_a_handlers_os_error_ends_the_interrupted_call_as_itself(
    stack: Stack, exception: str
) -> None:
    # Found by a prober: qb took a handler's OSError for the bridge's own and raised
    # qb.QbError "the bridge to the executor is broken" instead, so `except TimeoutError`
    # missed the timeout; the bridge was fine.
    response = await run(stack, "python", HANDLERS_OS_ERROR.format(exception=exception))

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == (
        f"interrupted: {exception} alarm\n"
        "NoSuchJob no job 5000\n"
        f"interrupted: {exception} alarm\n"
        "NoSuchJob no job 5001\n"
        "'blocked'\n"
    )
    assert [(action.verb, action.target) for action in response.actions] == [
        ("jobstatus", "1000"),
        ("jobstatus", "5000"),
        ("jobstatus", "1001"),
        ("jobstatus", "5001"),
        ("jobstatus", "1"),
    ]


# The probe's timeout idiom: a timer whose handler raises, around a call, then a plain
# call that must get its own answer. The old qb went out of step after 1 or 2 of them.
PYTHON_TIMEOUTS = """
import random, signal
class Timeout(Exception): pass
def handler(signum, frame): raise Timeout()
signal.signal(signal.SIGALRM, handler)
interrupted = 0
for attempt in range(300):
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, random.uniform(0.00005, 0.003))
            qb.jobstatus(1000)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except Timeout:
        interrupted += 1
    except qb.NoSuchJob:
        pass
    try:
        got = repr(qb.jobstatus(5000 + attempt))
    except Exception as err:
        got = f"{type(err).__name__}: {err}"
    if got != f"NoSuchJob: no job {5000 + attempt}":
        print(f"after {interrupted} interrupted calls: {got}")
        break
else:
    print("in step", interrupted > 0)
"""

PERL_TIMEOUTS = r"""
use Time::HiRes qw(ualarm);
my $interrupted = 0;
for my $attempt (0 .. 299) {
    eval {
        local $SIG{ALRM} = sub { die "timeout\n" };
        ualarm(50 + int(rand(3000)));
        eval { qb::jobstatus(1000) };
        die $@ if $@ eq "timeout\n";
        ualarm(0);
    };
    ualarm(0);
    $interrupted++ if $@ eq "timeout\n";
    my $got = eval { qb::jobstatus(5000 + $attempt) } // "$@";
    if ($got ne "NoSuchJob: no job " . (5000 + $attempt)) {
        print "after $interrupted interrupted calls: $got\n";
        exit 0;
    }
}
print "in step ", ($interrupted > 0 ? "True" : "False"), "\n";
"""


@pytest.mark.parametrize("timeout", ["python", "python TimeoutError", "perl"])
async def test_calls_interrupted_by_a_timeout_leave_qb_in_step(
    stack_warm: Stack, timeout: str
) -> None:
    # The handler's own class, or Python's TimeoutError (an OSError) as a timeout raises.
    language, _, exception = timeout.partition(" ")
    code = PERL_TIMEOUTS if language == "perl" else PYTHON_TIMEOUTS
    if exception:
        code = code.replace("class Timeout(Exception): pass", f"Timeout = {exception}")
    response = await run(stack_warm, language, code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == "in step True\n"


async def test_a_perl_signal_handlers_call_during_a_call_is_refused(stack: Stack) -> None:
    # The handler's call would put its frame between the interrupted call's frame and
    # its answer. Its error stringifies as documented, even as the first error of the run.
    code = r"""
use Time::HiRes qw(ualarm);
my (@refused, $answered);
$SIG{ALRM} = sub {
    my $got = eval { qb::jobstatus($qb::jobid) };
    if (defined $got) { $answered++ } else { push @refused, "$@" }
};
my $wrong = 0;
for my $n (0 .. 399) {
    ualarm(200) if $n % 2 == 0;
    my $got = eval { qb::jobstatus(5000 + $n) } // "$@";
    $wrong++ if $got ne "NoSuchJob: no job " . (5000 + $n);
}
ualarm(0);
my %seen = map { $_ => 1 } @refused;
print "wrong $wrong\n";
print "$_\n" for sort keys %seen;
"""
    response = await run(stack, "perl", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    lines = response.stdout.splitlines()
    assert lines[0] == "wrong 0"
    assert lines[1:] == [
        "QbError: a qb call cannot be made while a qb call is under way (a signal handler's)"
    ]


# Workers calling qb, and a 2 ms timer whose handler calls qb too: the handlers nest
# until RecursionError, raised in the callback's code or while its threads are waited
# for, and the timer keeps firing while the run's end is reported.
def nesting_handlers(threads: int, interval_s: float) -> str:
    """The callback: ``threads`` workers calling qb, and a timer every ``interval_s``."""
    return f"""
import signal, threading
stop = False
def check(n):
    try: qb.jobstatus(n)
    except qb.QbError: pass
def worker(i):
    while not stop: check(1000 + i)
threads = [threading.Thread(target=worker, args=(i,)) for i in range({threads})]
for t in threads: t.start()
signal.signal(signal.SIGALRM, lambda signum, frame: check(2000))
signal.setitimer(signal.ITIMER_REAL, {interval_s}, {interval_s})
for k in range(800): check(3000 + k)
signal.setitimer(signal.ITIMER_REAL, 0); stop = True
for t in threads: t.join()
print("no RecursionError")
"""


NESTING_HANDLERS = nesting_handlers(3, 0.002)


async def test_nesting_signal_handlers_are_reported_as_the_callbacks_error(
    stack_warm: Stack,
) -> None:
    # The warm launcher reported some of these as "the sandbox could not start the
    # callback" (exit 121): the handler's raise escaped the bootstrap's report.
    for _ in range(5):
        response = await run(stack_warm, "python", NESTING_HANDLERS)
        assert response.outcome == Outcome.OUTCOME_FAILED, response
        assert response.failure.exception_type == "RecursionError", response.failure


async def test_a_handler_raising_every_millisecond_during_calls_leaves_qb_in_step(
    stack_warm: Stack,
) -> None:
    # The raise lands at every point of the exchange, also just as a read returns.
    code = (
        "import signal\n"
        "class Tick(Exception): pass\n"
        "in_call = False\n"
        # One raise per arming, and the arming ends inside the try that catches it: a
        # raise can then never land outside it (in an except clause or a finally).
        "def handler(signum, frame):\n"
        "    global in_call\n"
        "    if in_call:\n"
        "        in_call = False\n"
        "        raise Tick()\n"
        "signal.signal(signal.SIGALRM, handler)\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n"
        "other = []\n"
        "for k in range(1500):\n"
        "    try:\n"
        "        in_call = True\n"
        "        try:\n"
        "            qb.jobstatus(1000 + k)\n"
        "        except qb.NoSuchJob as err:\n"
        "            if str(err) != f'no job {1000 + k}': other.append(str(err))\n"
        "        except Tick: raise\n"
        "        except Exception as err: other.append(repr(err))\n"
        "        in_call = False\n"
        "    except Tick: pass\n"
        "signal.setitimer(signal.ITIMER_REAL, 0)\n"
        "try: qb.jobstatus(7777)\n"
        "except qb.NoSuchJob as err: print(err)\n"
        "print(len(other), other[:2])\n"
    )
    response = await run(stack_warm, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == "no job 7777\n0 []\n"


# A Perl timeout's die landing while an answer is decoded, and (uncaught) while one is
# waited for: USR1 sent from inside qb.pm's decode and read, so it lands there each time.
PERL_DIE_IN_THE_EXCHANGE = r"""
$SIG{USR1} = sub { die "TIMEOUT\n" };
my ($in_decode, $in_read) = (0, 0);
my ($decode, $read) = (\&qb::JSON::decode, \&qb::_read_frame);
{
    no warnings 'redefine';
    *qb::JSON::decode = sub { kill 'USR1', $$ if $in_decode-- == 1; $decode->(@_) };
    *qb::_read_frame = sub { kill 'USR1', $$ if $in_read-- == 1; $read->(@_) };
}
$in_decode = 1;
print "caught: ", (eval { qb::jobstatus(1000) } // "$@");
print "next: ", (eval { qb::jobstatus(5000) } // "$@"), "\n";
print "unblock ", qb::unblock(qb::jobid()), "\n";
$| = 1;
$in_read = 1;
qb::jobstatus(qb::jobid());
"""


async def test_a_perl_handlers_die_in_a_call_is_the_handlers_and_reported(stack: Stack) -> None:
    # The die in the decode was turned into "QbError: the executor sent a malformed
    # frame: TIMEOUT"; on the cold launcher the run's report of the die after a call
    # left unanswered was lost when the child exited first (the executor, failing to
    # send that call's reply, read no further).
    response = await run(stack, "perl", PERL_DIE_IN_THE_EXCHANGE)

    assert response.stdout == "caught: TIMEOUT\nnext: NoSuchJob: no job 5000\nunblock 1\n"
    assert response.outcome == Outcome.OUTCOME_FAILED, response
    assert (response.failure.exception_type, response.failure.message) == ("die", "TIMEOUT")
    assert [action.verb for action in response.actions] == [
        "jobstatus",
        "jobstatus",
        "unblock",
        "jobstatus",
    ]
