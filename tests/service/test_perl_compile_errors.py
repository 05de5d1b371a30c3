"""A Perl callback that does not compile fails with what plain ``perl`` says of it, warm and cold.

The reference is perl itself: the same code in a file named ``<callback>``, run with
``perl <callback>``. Its errors (line numbers, ``near "..."`` hints, the closing
``Execution of <callback> aborted due to compilation errors.``) are the failure's
traceback, and what perl warns while compiling is the run's stderr. The code was a
string eval's once, which put an error at the end a line or two past it and called an
error at a ``;`` "at EOF".
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

# code -> the line plain perl reports for it first, so a reader sees what is compared.
DOES_NOT_COMPILE = {
    "print (": "syntax error at <callback> line 1, at EOF",
    "my $x = 1;\nmy $y = 2;\nprint (": "syntax error at <callback> line 3, at EOF",
    "my $x = 1;\nmy $y = 2;\nprint (\n": "syntax error at <callback> line 3, at EOF",
    "my $x = ;": 'syntax error at <callback> line 1, near "= ;"',
    # a missing semicolon
    "my $x = 1\nmy $y = 2;\nprint $y;\n": 'syntax error at <callback> line 2, near "my "',
    # a brace left open at the end
    "if (1) {\n    print 1;\n": "Missing right curly or square bracket at <callback> line 2, ",
    # a bad token mid-file, with perl's compile-time warning about it
    "print 1;\nmy $x = 1 2;\nprint 3;\n": "Number found where operator expected at <callback> line 2",
    "print 1;\nmy $x = );\nprint 3;\n": 'syntax error at <callback> line 2, near "= )"',
    "use strict;\nmy $x = 1;\n$y = 2;\n": 'Global symbol "$y" requires explicit package name',
    "use strict;\nmy $x = 1;\nfoo;\n": 'Bareword "foo" not allowed while "strict subs" in use',
    # errors counted, then one that ends compiling at once (no "Execution of" line)
    'my $x = ;\nprint "abc': 'syntax error at <callback> line 1, near "= ;"',
    'print 1;\nBEGIN { die "early" }\n': "early at <callback> line 2.",
    "".join(f"my $x{n} = ;\n" for n in range(12)): "syntax error at <callback> line 1",
}


def plain_perl(code: str, directory: Path) -> str:
    """What ``perl <callback>`` prints for ``code`` on its stderr."""
    (directory / "<callback>").write_text(code)
    ran = subprocess.run(
        ["perl", "<callback>"], cwd=directory, capture_output=True, text=True, check=False
    )
    assert ran.returncode == 255 and ran.stdout == "", ran
    return ran.stderr


async def test_compile_errors_read_as_plain_perls(stack: Stack, tmp_path: Path) -> None:
    for code, first_line in DOES_NOT_COMPILE.items():
        expected = plain_perl(code, tmp_path)
        assert expected.startswith(first_line), (code, expected)
        (job,) = stack.supervisor.submit([{"name": "broken", "user": "alice"}])

        response = await stack.client.execute_callback(language="perl", code=code, job=job)

        assert response.outcome == Outcome.OUTCOME_REJECTED, (code, response.failure.message)
        failure = response.failure
        # perl's warnings while compiling come first on its stderr, then its errors.
        assert response.stderr + failure.traceback + "\n" == expected, code
        assert failure.message == f"the callback does not compile: {failure.traceback}", code
        assert failure.traceback.endswith(
            "Execution of <callback> aborted due to compilation errors."
        ) == expected.endswith("Execution of <callback> aborted due to compilation errors.\n")
        assert response.stdout == "", code


async def test_a_failing_use_ends_compiling_as_plain_perls_does(stack: Stack) -> None:
    # @INC differs inside the sandbox, so the text is checked by its parts.
    (job,) = stack.supervisor.submit([{"name": "broken", "user": "alice"}])
    code = 'print "ran\\n";\nuse No::Such::Module;\n'

    response = await stack.client.execute_callback(language="perl", code=code, job=job)

    assert response.outcome == Outcome.OUTCOME_REJECTED, response.failure.message
    lines = response.failure.traceback.splitlines()
    assert lines[0].startswith("Can't locate No/Such/Module.pm in @INC")
    assert lines[0].endswith(" at <callback> line 2.")
    assert lines[1:] == ["BEGIN failed--compilation aborted at <callback> line 2."]
    assert response.stdout == ""


async def test_code_that_compiles_sees_no_trace_of_how_it_was_compiled(stack: Stack) -> None:
    # As `perl FILE`: no strict, package main, __FILE__ and die naming <callback>, and
    # the hook that handed perl the code gone from @INC and %INC.
    code = (
        "$undeclared = 1;\n"
        'print __PACKAGE__, " ", __FILE__, " ", __LINE__, "\\n";\n'
        'print scalar(grep { ref } @INC), " ", (exists $INC{"<callback>"} ? 1 : 0), "\\n";\n'
        'die "at the end"'
    )
    (job,) = stack.supervisor.submit([{"name": "runs", "user": "alice"}])

    response = await stack.client.execute_callback(language="perl", code=code, job=job)

    assert response.outcome == Outcome.OUTCOME_FAILED, response.failure.message
    assert response.stdout == "main <callback> 2\n0 0\n"
    assert response.failure.message == "at the end at <callback> line 4."
