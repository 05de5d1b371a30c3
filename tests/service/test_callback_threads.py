"""Threads in a callback: waited for as Python's own exit waits, and their qb calls take turns.

A non-daemon thread outlives the callback's code on both launch paths (the zygote's
children never reach the interpreter's exit, so its bootstrap waits for them itself).
Python threads may call qb at once: each gets the answer to its own call. A Perl
thread other than the callback's own has its qb calls refused (``qb::Error``), as a
forked process's are, rather than garbling the bridge. With the default limits a
callback of either language starts a few dozen threads on both launch paths.
"""

from __future__ import annotations

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [pytest.mark.service, pytest.mark.timeout(90)]

Outcome = executor_pb2.Outcome


async def run(
    stack: Stack, language: str, code: str, wall_seconds: float = 20
) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "threads", "user": "alice", "status": "blocked"}])
    return await stack.client.execute_callback(
        language=language, code=code, job=job, limits={"wall_seconds": wall_seconds}
    )


async def test_a_non_daemon_thread_is_waited_for_with_its_qb_calls(stack: Stack) -> None:
    code = (
        "import atexit, threading, time\n"
        "atexit.register(lambda: print('atexit', flush=True))\n"
        "def work():\n"
        "    time.sleep(0.5)\n"
        "    print('thread', qb.jobstatus(qb.jobid()), flush=True)\n"
        "    qb.unblock(qb.jobid())\n"
        "threading.Thread(target=work).start()\n"
        "print('main returned', flush=True)\n"
    )
    response = await run(stack, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    # As plain Python: the thread before the exit handlers.
    assert response.stdout == "main returned\nthread blocked\natexit\n"
    assert [action.verb for action in response.actions] == ["jobstatus", "unblock"]
    assert response.usage.wall_seconds >= 0.5


# Starts THREADS threads that each allocate and wait, then prints how many started.
MANY_THREADS = {
    "python": (
        "import threading\n"
        "release = threading.Event()\n"
        "def work():\n"
        "    kept = [bytearray(4096) for _ in range(64)]\n"
        "    release.wait()\n"
        "threads = []\n"
        "try:\n"
        "    for _ in range(THREADS):\n"
        "        thread = threading.Thread(target=work)\n"
        "        thread.start()\n"
        "        threads.append(thread)\n"
        "finally:\n"
        "    release.set()\n"
        "    for thread in threads:\n"
        "        thread.join()\n"
        "print(len(threads))\n"
    ),
    "perl": (
        "use threads; use threads::shared;\n"
        "my $release :shared = 0;\n"
        "my @threads;\n"
        "for (1 .. THREADS) {\n"
        "    my $thread = threads->create(sub {\n"
        "        my @kept = map { 'x' x 4096 } 1 .. 64;\n"
        "        lock $release; cond_wait $release until $release; 1;\n"
        "    }) or last;\n"
        "    push @threads, $thread;\n"
        "}\n"
        "{ lock $release; $release = 1; cond_broadcast $release; }\n"
        "$_->join for @threads;\n"
        'print scalar(@threads), "\\n";\n'
    ),
}


@pytest.mark.parametrize(("language", "threads"), [("python", 40), ("perl", 30)])
async def test_a_callback_with_the_default_limits_starts_dozens_of_threads(
    stack: Stack, language: str, threads: int
) -> None:
    # Each thread that allocates would get a glibc arena of 64 MiB address space: a
    # zygote's child started 13 (Perl 11) under the default 512 MiB, as MALLOC_ARENA_MAX=2
    # was set only after the fork (glibc reads it when the process starts).
    response = await run(stack, language, MANY_THREADS[language].replace("THREADS", str(threads)))

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == f"{threads}\n", response.stderr[-300:]


async def test_daemon_threads_calling_qb_at_the_end_end_silently(stack: Stack) -> None:
    # As Python's exit stops them: nothing of theirs after the run's end (no traceback of
    # a qb call the end of the bridge broke).
    code = (
        "import threading, time\n"
        "def ask():\n"
        "    while True:\n"
        "        qb.jobstatus(qb.jobid())\n"
        "for _ in range(4):\n"
        "    threading.Thread(target=ask, daemon=True).start()\n"
        "time.sleep(0.2)\n"
        "print('main ends')\n"
    )
    response = await run(stack, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert (response.stdout, response.stderr) == ("main ends\n", "")
    assert response.actions


async def test_daemon_threads_still_printing_at_the_end_leave_the_run_succeeded(
    stack: Stack,
) -> None:
    # The cold child's interpreter finalized under them, and one holding stdout's lock
    # made it abort: "Fatal Python error: _enter_buffered_busy", the run KILLED (SIGSEGV).
    # Now both paths end as the warm one: what they wrote before the end is kept.
    code = (
        "import sys, threading, time\n"
        "def chatter(k):\n"
        "    i = 0\n"
        "    while True:\n"
        "        print(f'T{k} {i}')\n"
        "        i += 1\n"
        "        if i % 50 == 0:\n"
        "            sys.stderr.write(f'E{k} {i}\\n')\n"
        "for k in range(3):\n"
        "    threading.Thread(target=chatter, args=(k,), daemon=True).start()\n"
        "time.sleep(0.2)\n"
        "print('main ends', flush=True)\n"
    )
    for _ in range(3):  # the abort took 10 runs of 10, but it is a race
        (job,) = stack.supervisor.submit([{"name": "chatter", "user": "alice"}])
        response = await stack.client.execute_callback(
            language="python", code=code, job=job, limits={"wall_seconds": 20}
        )

        assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (
            response.failure,
            response.stderr[-300:],
        )
        assert response.exit_code == 0
        assert "Fatal Python error" not in response.stderr
        # Their output up to the end (past 1 MiB, the default output_bytes, dropped).
        assert response.stdout.startswith("T") and response.stderr.startswith("E")


async def test_a_thread_pool_left_running_finishes_its_work(stack_warm: Stack) -> None:
    # concurrent.futures' workers are shut down as at Python's own exit.
    code = (
        "from concurrent.futures import ThreadPoolExecutor\n"
        "pool = ThreadPoolExecutor(2)\n"
        "for _ in range(4):\n"
        "    pool.submit(qb.jobstatus, qb.jobid())\n"
    )
    response = await run(stack_warm, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert len(response.actions) == 4


async def test_a_thread_that_outlives_the_wall_limit_is_a_wall_timeout(
    stack_warm: Stack,
) -> None:
    code = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n"
    response = await run(stack_warm, "python", code, wall_seconds=1)

    assert response.outcome == Outcome.OUTCOME_WALL_TIMEOUT, (response.failure, response.stderr)


async def test_python_threads_calling_qb_at_once_each_get_their_own_answer(
    stack_warm: Stack,
) -> None:
    code = (
        "import threading\n"
        "wrong = []\n"
        "def worker(i):\n"
        "    for _ in range(150):\n"
        "        try:\n"
        "            qb.jobstatus(1000 + i)\n"
        "        except qb.NoSuchJob as err:\n"
        "            if str(err) != f'no job {1000 + i}':\n"
        "                wrong.append(str(err))\n"
        "        except Exception as err:\n"
        "            wrong.append(repr(err))\n"
        "threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]\n"
        "for t in threads:\n"
        "    t.start()\n"
        "for t in threads:\n"
        "    t.join()\n"
        "print('wrong', len(wrong), wrong[:3])\n"
    )
    response = await run(stack_warm, "python", code, wall_seconds=40)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == "wrong 0 []\n"
    assert len(response.actions) == 450


async def test_a_qb_call_from_a_signal_handler_during_a_qb_call_is_refused(
    stack_warm: Stack,
) -> None:
    # The handler runs in the thread whose call it interrupted: waiting for that call
    # would be waiting for itself.
    code = (
        "import signal, os\n"
        "seen = []\n"
        "def handler(signum, frame):\n"
        "    try:\n"
        "        qb.jobstatus(qb.jobid())\n"
        "    except qb.QbError as err:\n"
        "        seen.append(str(err))\n"
        "signal.signal(signal.SIGUSR1, handler)\n"
        "import qb as module\n"
        "real = module._next_frame\n"
        "def next_frame():\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "    return real()\n"
        "module._next_frame = next_frame\n"
        "print(qb.jobstatus(qb.jobid()))\n"
        "print(seen)\n"
    )
    response = await run(stack_warm, "python", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    status, seen = response.stdout.splitlines()
    assert status == "blocked"
    assert "while the same thread's qb call is under way" in seen


async def test_a_perl_threads_qb_calls_are_refused(stack: Stack) -> None:
    code = (
        "use threads;\n"
        "my @threads = map { threads->create(sub {\n"
        "    my $r = eval { qb::jobstatus($qb::jobid) };\n"
        "    return defined $r ? \"answered $r\" : ref($@) . ' ' . $@->kind . ': ' . $@->message;\n"
        "}) } 1 .. 2;\n"
        'print $_->join, "\\n" for @threads;\n'
        'print "main ", qb::jobstatus($qb::jobid), "\\n";\n'
    )
    response = await run(stack, "perl", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    refused = (
        "qb::Error QbError: qb calls work only in the callback's own thread, "
        "not in a thread it started"
    )
    assert response.stdout == f"{refused}\n{refused}\nmain blocked\n"
    assert len(response.actions) == 1


async def test_a_perl_thread_left_running_ends_as_plain_perl_ends_it(stack: Stack) -> None:
    # The thread is running before the main code ends: perl (plain perl too) may crash
    # if it exits while a thread it just created is still being set up.
    code = (
        "use threads; use threads::shared; my $up :shared = 0;\n"
        'threads->create(sub { { lock $up; $up = 1; cond_signal $up; } sleep 30; print "late\\n" });\n'
        "{ lock $up; cond_wait $up until $up; }\n"
        'print "main\\n";\n'
    )
    response = await run(stack, "perl", code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == "main\n"
    assert response.usage.wall_seconds < 10  # not waited for
