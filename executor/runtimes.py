"""How each language is launched inside the sandbox (the launcher's ``runtime`` spec).

Python runs in the launcher's own interpreter (no second exec). On the cold path Perl is
exec'd by the launcher after the limits are applied, with the bootstrap and the ``qb``
package from ``executor/child/perl``; on the warm path each language has a zygote that
has loaded its bootstrap once and forks a child per callback. The ``qube`` language
never needs a child: its code strings are our own trusted interpreter
(``executor/qube_language.py``), run in the executor.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Final

from executor.model import Language

CHILD_DIR: Final = Path(__file__).resolve().parent / "child"
PERL_DIR: Final = CHILD_DIR / "perl"
# The languages with a warm zygote (``launcher = "zygote"``); qube needs no child.
ZYGOTE_LANGUAGES: Final = ("python", "perl")


def _perl() -> str:
    return shutil.which("perl") or "/usr/bin/perl"


def child_runtime(language: Language) -> dict[str, Any]:
    """The launcher spec fragment that starts ``language``."""
    if language is Language.PYTHON:
        return {"language": "python"}
    if language is Language.PERL:
        return {
            "language": "perl",
            "argv": [_perl(), f"-I{PERL_DIR}", str(PERL_DIR / "bootstrap.pl"), "{bridge_fd}"],
        }
    raise ValueError(f"{language} does not run in a child")


def check_source(language: str, code: str, path: Path) -> str | None:
    """Why ``code`` cannot run as a ``language`` callback ("LINE: message"), or None.

    Python is compiled here, as the child would (compiling runs nothing); a qube file's
    code strings are looked up. Perl is not checked before it runs: ``perl -c`` runs a
    file's BEGIN blocks and ``use`` lines, which must happen inside the sandbox.
    """
    if language == Language.PYTHON:
        try:
            compile(code, str(path), "exec", dont_inherit=True)
        except SyntaxError as err:  # also IndentationError, TabError
            return f"{err.lineno or 1}: {type(err).__name__}: {err.msg}"
        except ValueError as err:  # NUL bytes in the source
            return f"1: {err}"
    elif language == Language.QUBE:
        from executor.qube_language import validate  # the interpreter, only for this check

        problem = validate(code)
        if problem:
            return f"1: {problem}"
    return None


def zygote_argv(language: str, python: str) -> list[str]:
    """How ``language``'s zygote is started; its control socket's fd is appended."""
    if language == "python":
        return [python, "-I", "-S", "-B", str(CHILD_DIR / "zygote.py")]
    if language == "perl":
        return [_perl(), f"-I{PERL_DIR}", str(PERL_DIR / "zygote.pl")]
    raise ValueError(f"{language} has no zygote")
