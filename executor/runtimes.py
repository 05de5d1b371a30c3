"""How each language is launched inside the sandbox (the launcher's ``runtime`` spec).

Python runs in the launcher's own interpreter (no second exec). Perl is exec'd by the
launcher after the limits are applied, with the bootstrap and the ``qb`` package from
``executor/child/perl``. The ``qube`` language never needs a child: its code strings are
our own trusted interpreter (``executor/qube_language.py``), run in the executor.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Final

from executor.model import Language

PERL_DIR: Final = Path(__file__).resolve().parent / "child" / "perl"


def child_runtime(language: Language) -> dict[str, Any]:
    """The launcher spec fragment that starts ``language``."""
    if language is Language.PYTHON:
        return {"language": "python"}
    if language is Language.PERL:
        perl = shutil.which("perl") or "/usr/bin/perl"
        return {
            "language": "perl",
            "argv": [perl, f"-I{PERL_DIR}", str(PERL_DIR / "bootstrap.pl"), "{bridge_fd}"],
        }
    raise ValueError(f"{language} does not run in a child")
