"""A Perl callback's report holds up whatever the callback did to the bootstrap's ground.

Warm and cold alike: its ``__DATA__``/``__END__`` section is its ``DATA``, as in plain
``perl``; a signal handler left running, an emptied ``@INC``, a reset variable or subs and
globs named as the bootstrap's do not change how the run is reported; a die object whose
stringification dies is reported by its class; a die after the callback closed its
bridge still says what it died of, on its stderr as plain perl does; and a write with no
reader ends the callback as SIGPIPE ends plain perl.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import Stack

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed"),
]

Outcome = executor_pb2.Outcome


async def run(stack: Stack, code: str) -> executor_pb2.ExecuteResponse:
    (job,) = stack.supervisor.submit([{"name": "hostile", "user": "alice"}])
    return await stack.client.execute_callback(language="perl", code=code, job=job)


def plain_perl(code: str, directory: Path) -> str:
    """What ``perl <callback>`` prints for ``code`` on its stdout (it must succeed)."""
    (directory / "<callback>").write_text(code)
    ran = subprocess.run(
        ["perl", "<callback>"], cwd=directory, capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0 and ran.stderr == "", ran
    return ran.stdout


def plain_perl_stderr(code: str, directory: Path) -> str:
    """What ``perl <callback>`` prints for ``code`` on its stderr (it must succeed)."""
    (directory / "<callback>").write_text(code)
    ran = subprocess.run(
        ["perl", "<callback>"], cwd=directory, capture_output=True, text=True, check=True
    )
    return ran.stderr


# -- DATA ----------------------------------------------------------------------------------

DATA_SECTIONS = {
    "data-in-main": 'print "[", <DATA>, "]\\n";\n__DATA__\nline1\nline2\n',
    "end-in-main": 'print "[", <main::DATA>, "]\\n";\n__END__\nline1\nline2',
    # __DATA__ is the current package's, __END__ always main's; text after the marker
    # on its own line is not data.
    "data-in-a-package": (
        'package Foo;\nprint "[", <Foo::DATA>, "]", defined fileno(main::DATA) ? 1 : 0, "\\n";\n'
        "__DATA__ ignored\nfoo data\n"
    ),
    "end-in-a-package": 'package Foo;\nprint "[", <main::DATA>, "]\\n";\n__END__\nend data\n',
    # A marker inside a here-document is text; the real one comes after.
    "marker-in-a-heredoc": 'print <<X;\n__DATA__\nX\nprint "[", <DATA>, "]\\n";\n__DATA__\nd1\n',
    # Plain perl's DATA is the script's handle: rewound, it reads the code.
    "rewound": "seek DATA, 0, 0;\nprint scalar <DATA>;\n__END__\n",
    "tell": 'print tell(DATA), " ", scalar <DATA>;\n__DATA__\nx\n',
}


@pytest.mark.parametrize("code", DATA_SECTIONS.values(), ids=DATA_SECTIONS.keys())
async def test_data_reads_what_follows_the_marker_as_in_plain_perl(
    stack: Stack, code: str, tmp_path: Path
) -> None:
    # DATA read /dev/null: perl is handed the code by a hook, not a file.
    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    assert response.stdout == plain_perl(code, tmp_path)
    assert response.stderr == ""


async def test_data_leaves_no_descriptor_open(stack: Stack) -> None:
    # /dev/null stayed open as DATA (fd 4) beyond stdio and the bridge.
    code = (
        "opendir(my $fds, '/proc/self/fd') or die;\n"
        'print join(" ", sort grep { /\\A\\d+\\z/ } readdir $fds), "\\n";\n'
        "__DATA__\nx\n"
    )

    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    # 0-3, and the directory handle reading them (4).
    assert response.stdout == "0 1 2 3 4\n"


# -- the report ----------------------------------------------------------------------------


async def test_a_signal_handler_dying_after_the_code_leaves_the_codes_failure_intact(
    stack: Stack,
) -> None:
    # The timer's handler died in the report: "exited with status 1" with no message, or
    # exit 255 with the handler's message. (A tick before the die, were the child
    # descheduled between the two calls, would be the code's own failure: "tick".)
    code = (
        "use Time::HiRes 'ualarm';\n"
        '$SIG{ALRM} = sub { die "tick\\n" };\n'
        'ualarm(200, 200), die "boom\\n";\n'
    )
    for _ in range(4):
        response = await run(stack, code)

        assert response.outcome == Outcome.OUTCOME_FAILED
        assert response.exit_code == 1, response.failure.message
        assert response.failure.message in ("boom", "tick")
        assert response.failure.exception_type == "die"


async def test_an_emptied_inc_does_not_stop_the_report(stack: Stack) -> None:
    # The report loaded Scalar::Util through the callback's @INC: exit 255, type lost.
    response = await run(stack, "@INC = ();\ndie bless({msg => 'obj'}, 'Foo');\n")

    assert response.outcome == Outcome.OUTCOME_FAILED
    assert response.exit_code == 1
    assert response.failure.exception_type == "Foo"
    assert response.failure.message.startswith("Foo=HASH(0x")
    assert response.stderr == ""


async def test_a_callback_cannot_make_a_run_that_compiled_rejected(stack: Stack) -> None:
    # The compiled mark was $qb::_started, which the callback could reset.
    # Nor can it hand the bootstrap a mark of its own.
    for reset in ("$qb::_started = 0;", "qb::Bootstrap::_forget_source_hook(\\(my $mark = 0));"):
        code = f'print "I ran\\n";\n{reset}\ndie "pretend syntax error\\n";\n'

        response = await run(stack, code)

        assert response.outcome == Outcome.OUTCOME_FAILED, reset
        assert response.failure.message == "pretend syntax error"
        assert response.stdout == "I ran\n"


async def test_a_die_after_the_bridge_was_closed_is_on_stderr(stack: Stack) -> None:
    # The done frame cannot go; the message went nowhere.
    response = await run(stack, 'print "ran\\n";\nPOSIX::close(3);\ndie "dead\\n";\n')

    assert response.outcome == Outcome.OUTCOME_FAILED
    assert response.exit_code == 1
    assert response.failure.message == "the callback exited with status 1"
    assert (response.stdout, response.stderr) == ("ran\n", "dead\n")


# -- the bootstrap's names -----------------------------------------------------------------

# Names the bootstrap's helpers had in main, where the callback's code is compiled.
BOOTSTRAP_HELPERS = (
    "flush_stdio", "report", "callback_exit", "run", "run_status", "callback_pid",
    "_is_error", "_exception_type", "_callback_started", "_traceback", "_record_die",
    "_same_error", "_chomped", "_compile_errors", "_set_handlers_aside", "_run_callback",
)  # fmt: skip


@pytest.mark.parametrize("ending", ["", 'die "real failure\\n";\n'], ids=["clean", "die"])
async def test_subs_named_as_the_bootstraps_helpers_change_nothing(
    stack: Stack, ending: str
) -> None:
    # flush_stdio lost the output (warm), _is_error failed a clean run, _exception_type
    # named the failure's type, callback_exit warned of a prototype mismatch.
    subs = "".join(f"sub {name} {{ 7 }}\n" for name in BOOTSTRAP_HELPERS)
    code = f'{subs}print "ran\\n";\n{ending}'

    response = await run(stack, code)

    assert (response.stdout, response.stderr) == ("ran\n", "")
    if ending:
        assert response.outcome == Outcome.OUTCOME_FAILED
        assert (response.failure.message, response.failure.exception_type) == (
            "real failure",
            "die",
        )
    else:
        assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message


async def test_main_holds_none_of_the_bootstraps_helpers(stack: Stack) -> None:
    code = 'print join(",", sort grep { defined &{"main::$_"} } keys %main::), "\\n";\n'

    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    assert response.stdout == "\n"


async def test_replacing_the_bootstraps_names_cannot_forge_the_report(stack: Stack) -> None:
    # A replaced _callback_started made a run that compiled REJECTED; undefined, it
    # crashed the report (exit 22). The package's remaining names are taken by reference.
    for forgery in (
        "*main::_callback_started = sub { 0 };",
        "undef &main::_callback_started;",
        "*qb::Bootstrap::_forget_source_hook = sub { \\(my $s = 0) };",
        "*qb::Bootstrap::run = sub { 0 }; *qb::Bootstrap::flush_stdio = sub { 1 };",
    ):
        code = (
            f'print "I ran";\n{forgery}\n'
            'die "syntax error at <callback> line 1, near \\"x\\"\\n";\n'
        )

        response = await run(stack, code)

        assert response.outcome == Outcome.OUTCOME_FAILED, forgery
        assert response.exit_code == 1, forgery
        assert response.failure.message == 'syntax error at <callback> line 1, near "x"'
        assert response.failure.exception_type == "die"
        assert (response.stdout, response.stderr) == ("I ran", ""), forgery


async def test_a_die_object_whose_stringification_dies_is_reported_by_its_class(
    stack: Stack,
) -> None:
    # "$err" died in the report: exit 22, no message, no type.
    code = (
        'package Foo; use overload \'""\' => sub { die "in stringify\\n" };\n'
        "package main;\ndie bless({}, 'Foo');\n"
    )

    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_FAILED
    assert response.exit_code == 1
    assert response.failure.exception_type == "Foo"
    assert re.fullmatch(
        r"Foo=HASH\(0x[0-9a-f]+\) <its stringification died>", response.failure.message
    ), response.failure.message
    assert response.stderr == ""


async def test_a_write_with_no_reader_ends_the_callback_as_sigpipe_ends_plain_perl(
    stack: Stack,
) -> None:
    # The signal was ignored: the write failed with EPIPE and the code went on.
    code = (
        '$| = 1;\nprint "before\\n";\n'
        "pipe(my $r, my $w) or die;\nclose $r;\n"
        'syswrite($w, "x");\nprint "after\\n";\n'
    )

    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_FAILED
    assert response.exit_code == 141
    assert response.failure.message == "the callback exited with status 141"
    assert response.stdout == "before\n"


async def test_the_callback_may_still_ignore_sigpipe(stack: Stack) -> None:
    code = (
        "$SIG{PIPE} = 'IGNORE';\npipe(my $r, my $w) or die;\nclose $r;\n"
        'print defined(syswrite($w, "x")) ? "wrote" : "EPIPE: $!";\n'
    )

    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure.message
    assert response.stdout == "EPIPE: Broken pipe"


@pytest.mark.parametrize(
    ("breaking", "message"),
    [
        # The bridge's EPIPE is the bootstrap's, not the callback's pipe: no SIGPIPE exit.
        (
            "open(my $bridge, '+<&=', 3) or die;\nshutdown($bridge, 1);\n",
            "qb::jobstatus could not be sent: the bridge to the executor is broken (Broken pipe)",
        ),
        (
            "POSIX::close(3);\n",
            "qb::jobstatus could not be sent: the bridge to the executor is broken "
            "(Bad file descriptor)",
        ),
        (
            "open(my $bridge, '+<&=', 3) or die;\nshutdown($bridge, 0);\n",
            "qb::jobstatus was sent but no answer came: the bridge to the executor is broken "
            "(eof); it may have been applied",
        ),
    ],
    ids=["shut-down-for-writing", "closed", "shut-down-for-reading"],
)
async def test_a_qb_call_on_a_broken_bridge_dies_with_a_qb_error_saying_whether_it_went(
    stack: Stack, breaking: str, message: str
) -> None:
    # Worded as Python's qb words it (README), not blaming the executor for it.
    code = breaking + (
        'eval { qb::jobstatus(qb::jobid()); 1 } or print ref($@), " $@->{kind}: $@->{message}\\n";\n'
        'print "went on\\n";\n'
    )

    response = await run(stack, code)

    assert response.stdout == f"qb::Error QbError: {message}\nwent on\n", response


# -- warnings as the code's file scope ends ------------------------------------------------

FILE_SCOPE_ENDS = {
    "last-line": 'open(my $f, ">", "/dev/full") or die;\nprint $f "x";\n',
    "then-comments-pod-and-data": (
        'open(my $f, ">", "/dev/full") or die;\nprint $f "x";\n\n# done\n'
        "=pod\n\nprint 1;\n\n=cut\n__END__\nprint 2;\n"
    ),
}


@pytest.mark.parametrize("code", FILE_SCOPE_ENDS.values(), ids=FILE_SCOPE_ENDS.keys())
async def test_a_warning_as_the_file_scope_ends_names_the_callback_as_plain_perl_does(
    stack: Stack, tmp_path: Path, code: str
) -> None:
    # A handle perl cannot flush as it frees the code's lexicals: the warning named the
    # executor's bootstrap.pl and its line.
    plain = plain_perl_stderr(code, tmp_path)
    assert "unable to close filehandle $f properly" in plain

    response = await run(stack, code)

    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response.failure
    assert response.stderr == plain
