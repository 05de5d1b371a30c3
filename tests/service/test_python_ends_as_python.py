"""A Python callback's end reads as plain python's would, whatever it left in ``sys``.

Found by a prober, on the warm (zygote) and the cold path: streams the callback replaced
(a write-only tee, ``None``) crashed the bootstrap and lost the callback's own end;
``sys.stdout.reconfigure`` failed on the warm path (its stream thought it seekable);
``exit()`` and ``quit()`` were not defined; ``sys.exit("reason")`` dropped the reason
from the failure; and an exception whose ``__str__`` exits made the run SUCCEEDED.
"""

from __future__ import annotations

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

Outcome = executor_pb2.Outcome


async def run(stack: Stack, code: str) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "ends", "user": "alice", "status": "blocked"}])
    return await stack.client.execute_callback(
        language="python", code=code, job=job, limits={"wall_seconds": 30}
    )


TEE = (
    "import sys\n"
    "class Tee:\n"  # write() only, as many logging tees are
    "    def __init__(self, stream): self.stream = stream\n"
    "    def write(self, text): return self.stream.write(text)\n"
)


@pytest.mark.parametrize(
    ("code", "stdout", "stderr"),
    [
        (TEE + "sys.stdout = Tee(sys.stdout)\nprint('through the tee')\n", "through the tee\n", ""),
        (TEE + "sys.stderr = Tee(sys.stderr)\nprint('warned', file=sys.stderr)\n", "", "warned\n"),
        ("import sys\nsys.stdout = None\nprint('quiet')\n", "", ""),
        ("import sys\nprint('before')\nsys.stdout = sys.stderr = None\n", "before\n", ""),
        (
            "import sys\n"
            "class Broken:\n"
            "    def write(self, text): return sys.__stdout__.write(text)\n"
            "    def flush(self): raise RuntimeError('no flush')\n"
            "sys.stdout = Broken()\n"
            "print('kept')\n",
            "kept\n",
            "",
        ),
    ],
    ids=["stdout-tee", "stderr-tee", "stdout-none", "both-none", "flush-raises"],
)
async def test_a_callback_that_replaced_its_streams_succeeds_with_its_output(
    stack: Stack, code: str, stdout: str, stderr: str
) -> None:
    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert (response.stdout, response.stderr) == (stdout, stderr)


@pytest.mark.parametrize(
    "replace",
    ["sys.stderr = Tee(sys.stderr)", "sys.stdout = Tee(sys.stdout)", "sys.stderr = None"],
)
async def test_a_callback_that_replaced_its_streams_fails_with_its_own_exception(
    stack: Stack, replace: str
) -> None:
    code = TEE + f"{replace}\nprint('frame check')\nraise ValueError('frame 7 is black')\n"
    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    assert response.exit_code == 1
    assert response.failure.exception_type == "ValueError"
    assert response.failure.message == "ValueError: frame 7 is black"
    assert 'File "<callback>", line 7, in <module>' in response.failure.traceback
    assert response.stdout == "frame check\n"


async def test_stdout_and_stderr_are_a_pipes_as_plain_pythons(stack: Stack) -> None:
    # On the warm path the streams were the zygote's, made over its /dev/null: seekable,
    # so reconfigure() sought on the run's pipe (OSError: [Errno 29] Illegal seek).
    code = (
        "import sys\n"
        "for s in (sys.stdout, sys.stderr):\n"
        "    print(s.name, s.seekable(), s.line_buffering, s.encoding, s.errors,\n"
        "          s is sys.__stdout__ or s is sys.__stderr__)\n"
        "sys.stdout.reconfigure(encoding='utf-8', errors='replace')\n"
        "sys.stderr.reconfigure(errors='strict')\n"
        "print('reconfigured \\u00e9', sys.stdout.errors)\n"
        "print('on stderr', file=sys.stderr)\n"
    )
    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, (response.failure, response.stderr)
    assert response.stdout == (
        "<stdout> False False utf-8 backslashreplace True\n"
        "<stderr> False True utf-8 backslashreplace True\n"
        "reconfigured \u00e9 replace\n"
    )
    assert response.stderr == "on stderr\n"


@pytest.mark.parametrize(
    ("code", "outcome", "exit_code", "message"),
    [
        ("exit()", Outcome.OUTCOME_SUCCEEDED, 0, ""),
        ("quit(0)", Outcome.OUTCOME_SUCCEEDED, 0, ""),
        ("exit(3)", Outcome.OUTCOME_FAILED, 3, "the callback exited with status 3"),
        (
            "quit('no frames')",
            Outcome.OUTCOME_FAILED,
            1,
            "the callback exited with status 1: no frames",
        ),
        (
            "import sys\nsys.exit('frame 12 of job %d has no output file' % qb.jobid())",
            Outcome.OUTCOME_FAILED,
            1,
            "the callback exited with status 1: frame 12 of job 1 has no output file",
        ),
        (
            "import sys\nsys.exit(['two', 2])",
            Outcome.OUTCOME_FAILED,
            1,
            "the callback exited with status 1: ['two', 2]",
        ),
    ],
    ids=["exit", "quit", "exit-3", "quit-reason", "sys.exit-reason", "sys.exit-list"],
)
async def test_exit_and_quit_and_an_exits_reason_are_as_in_python(
    stack: Stack, code: str, outcome: int, exit_code: int, message: str
) -> None:
    response = await run(stack, "print(repr(exit), repr(quit))\n" + code)

    assert response.outcome == outcome, (response.failure, response.stderr)
    assert response.exit_code == exit_code
    assert response.failure.message == message
    assert response.stdout == (
        "Use exit() or Ctrl-D (i.e. EOF) to exit Use quit() or Ctrl-D (i.e. EOF) to exit\n"
    )
    reason = message.partition(": ")[2]
    assert response.stderr == (reason + "\n" if reason else "")


async def test_an_exits_long_reason_is_cut_in_the_failure(stack: Stack) -> None:
    response = await run(stack, "import sys\nsys.exit('x' * 100_000)")

    assert response.outcome == Outcome.OUTCOME_FAILED, response.failure
    assert response.exit_code == 1
    assert response.failure.message.startswith("the callback exited with status 1: xxxx")
    assert len(response.failure.message.encode()) <= 4096
    assert response.stderr == "x" * 100_000 + "\n"


@pytest.mark.parametrize(
    ("code", "exception_type"),
    [
        (
            "import sys\n"
            "class CheckFailed(Exception):\n"
            "    def __str__(self): sys.exit(0)\n"
            "raise CheckFailed('frame 3 bad')\n",
            "CheckFailed",
        ),
        (
            "class Interrupting(Exception):\n"
            "    def __str__(self): raise KeyboardInterrupt\n"
            "raise Interrupting()\n",
            "Interrupting",
        ),
        (
            "import sys\n"
            "class Meta(type):\n"
            "    @property\n"
            "    def __name__(cls): sys.exit(0)\n"
            "class Nameless(Exception, metaclass=Meta): pass\n"
            "raise Nameless('frame 4 bad')\n",
            "Nameless",
        ),
    ],
    ids=["str-exits", "str-interrupts", "name-exits"],
)
async def test_a_raised_exception_fails_the_run_whatever_its_str_does(
    stack: Stack, code: str, exception_type: str
) -> None:
    # Plain python prints "<exception str() failed>" and exits 1.
    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_FAILED, (response.failure, response.stderr)
    assert response.exit_code == 1
    assert response.failure.exception_type == exception_type
    assert "not reported" not in response.failure.message
