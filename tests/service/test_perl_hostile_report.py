"""A Perl callback's report holds up whatever the callback did to the bootstrap's ground.

Warm and cold alike: its ``__DATA__``/``__END__`` section is its ``DATA``, as in plain
``perl``; a signal handler left running, an emptied ``@INC`` or a reset variable do not
change how the run is reported; and a die after the callback closed its bridge still
says what it died of, on its stderr as plain perl does.
"""

from __future__ import annotations

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
    for reset in ("$qb::_started = 0;", "main::_forget_source_hook(\\(my $mark = 0));"):
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
