"""Whether a callback's code can run at all, checked before it is ever asked to (universal callbacks).

Python is compiled here, as the child would compile it (compiling runs nothing); a qube
file's code strings are looked up. Perl is not checked before it runs: ``perl -c`` runs
a file's BEGIN blocks and ``use`` lines, which must happen inside the sandbox.
"""

from __future__ import annotations

from pathlib import Path

from executor.model import Language
from executor.runtimes.qube_codes import validate


def check_source(language: str, code: str, path: Path) -> str | None:
    """Why ``code`` cannot run as a ``language`` callback ("LINE: message"), or None."""
    if language == Language.PYTHON:
        try:
            compile(code, str(path), "exec", dont_inherit=True)
        except SyntaxError as err:  # also IndentationError, TabError
            # Cut short: the message may quote the file, and errors are shown widely.
            return f"{err.lineno or 1}: {type(err).__name__}: {ascii(err.msg)[1:-1][:120]}"
        except ValueError as err:  # NUL bytes in the source
            return f"1: {err}"
        except (RecursionError, MemoryError, OverflowError) as err:
            # Nesting deeper than the compiler goes (a 3000-term "a" + "b" + ..., a long
            # chain of unary operators): the file cannot run, and that is all this says;
            # the file is at most MAX_FILE_BYTES, so the attempt costs milliseconds.
            return f"1: {type(err).__name__}: {ascii(str(err))[1:-1][:120] or 'too deeply nested'}"
    elif language == Language.QUBE:
        problem = validate(code)
        if problem:
            return f"1: {problem}"
    return None
