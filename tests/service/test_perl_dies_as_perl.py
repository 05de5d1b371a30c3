r"""A Perl callback's dies, die hooks and `$^S` read as plain perl's (probe 117).

Found by a prober, warm and cold alike: a `$SIG{__DIE__}` hook could make no qb call
when the die was a qb call's (refused as "a signal handler's", the run's failure that
refusal); `$^S` was 1 at the code's top level, so a hook guarded with `return if $^S`
never acted; `die "msg\n"` got a location in its traceback that perl never prints; a
subjob verb on an instance the job lacks did not say the job was there, as subjobstatus
does; and a recursion past the memory limit (perl's `Out of memory!`, then its SIGSEGV)
was KILLED, not MEMORY_LIMIT.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [
    pytest.mark.service,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
]

Outcome = executor_pb2.Outcome


async def run(
    stack: Stack, code: str, language: str = "perl", **limits: Any
) -> tuple[executor_pb2.ExecuteResponse, int]:
    (job,) = stack.supervisor.submit(
        [{"name": "dies", "user": "alice", "status": "pending", "agenda": [{"name": "1"}]}]
    )
    response = await stack.client.execute_callback(
        language=language, code=code, job=job, limits={"wall_seconds": 30, **limits}
    )
    return response, int(job["id"])


async def test_a_die_hook_may_make_a_qb_call_after_a_qb_calls_die(stack: Stack) -> None:
    code = (
        '$SIG{__DIE__} = sub { qb::block($qb::jobid); print "hook blocked\\n" };\n'
        'qb::workunblock("$qb::jobid:99");\n'
    )

    response, job_id = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    # The run's failure is the call's own, not a refusal of the hook's call.
    assert response.failure.exception_type == "NoSuchWork", response.failure
    assert response.stdout == "hook blocked\n"
    assert stack.supervisor.job(job_id)["status"] == "blocked"


async def test_dollar_caret_s_reads_as_plain_perls(stack: Stack) -> None:
    code = (
        'print "top $^S\\n";\n'
        'eval { print "eval $^S\\n" };\n'
        'sub f { print "sub $^S\\n" } f();\n'
        "eval { f() };\n"
        "eval 'print qq(string eval $^S\\n)';\n"
        '$SIG{ALRM} = sub { print "handler $^S\\n" }; kill ALRM => $$;\n'
        # perlvar's guard: the hook acts on the uncaught die only.
        '$SIG{__DIE__} = sub { return if $^S; print "uncaught: $_[0]" };\n'
        'eval { die "caught\\n" };\n'
        'die "the end\\n";\n'
    )

    response, _ = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    assert response.failure.message == "the end"
    assert response.stdout == (
        "top 0\neval 1\nsub 0\nsub 1\nstring eval 1\nhandler 1\nuncaught: the end\n"
    )


@pytest.mark.parametrize(
    ("code", "message", "traceback"),
    [
        ('\n\ndie "plain\\n";', "plain", "plain"),
        (
            'sub f { die "in f\\n" }\nf();',
            "in f",
            "in f\n\tmain::f called at <callback> line 2",
        ),
        ('die "no newline";', "no newline at <callback> line 1.", None),
        ("die { code => 3 };", None, None),
    ],
    ids=["newline", "newline-in-sub", "no-newline", "hashref"],
)
async def test_a_dies_traceback_holds_no_location_perl_would_not_print(
    stack: Stack, code: str, message: str | None, traceback: str | None
) -> None:
    response, _ = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_FAILED, response
    failure = response.failure
    if message is None:  # a reference: as perl prints it, with no location
        assert failure.message.startswith("HASH(0x"), failure
        message = failure.message
    assert failure.message == message
    assert failure.traceback == (message if traceback is None else traceback)


@pytest.mark.parametrize(
    ("language", "code"),
    [
        (
            "perl",
            "for my $verb (qw(subjobstatus subjobblock subjobunblock subjobkill)) {\n"
            '    eval { no strict "refs"; &{"qb::$verb"}("$qb::jobid.5") };\n'
            '    print "$@->{kind}: $@->{message}\\n";\n'
            "}\n",
        ),
        (
            "python",
            "import qb\n"
            "for verb in ('subjobstatus', 'subjobblock', 'subjobunblock', 'subjobkill'):\n"
            "    try:\n"
            "        getattr(qb, verb)(f'{qb.jobid()}.5')\n"
            "    except qb.NoSuchJob as err:\n"
            "        print(f'NoSuchJob: {err}')\n",
        ),
    ],
)
async def test_every_subjob_verb_says_the_job_is_there(
    stack: Stack, language: str, code: str
) -> None:
    response, job_id = await run(stack, code, language)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response
    said = f"NoSuchJob: job {job_id} has no instance 5 (the job exists, with 1 instance)\n"
    assert response.stdout == said * 4


async def test_recursion_past_the_memory_limit_is_memory_limit(stack: Stack) -> None:
    code = (
        "no warnings 'recursion';\n"
        "sub r { my $n = shift; return $n == 0 ? 0 : 1 + r($n - 1) }\n"
        "print r(1_000_000), qq(\\n);\n"
    )

    response, _ = await run(stack, code, memory_bytes=128 << 20)

    assert response.outcome == Outcome.OUTCOME_MEMORY_LIMIT, response
    assert "Out of memory!" in response.stderr
