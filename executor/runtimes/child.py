"""The languages that run in a sandboxed child: what the launcher runs, and how each zygote starts.

Python runs in the launcher's own interpreter (no second exec). On the cold path Perl is
exec'd by the launcher after the limits are applied, with the bootstrap and the ``qb``
package from ``executor/child/perl``; on the warm path each language has a zygote that
has loaded its bootstrap once and forks a child per callback. Either way the child's
end of the bridge is fd ``protocol.BRIDGE_FD``, and a zygote's control socket is the fd
its spawner appends to ``zygote_argv``. The ``qube`` language never needs a child: its
code strings are our own trusted interpreter (``executor/runtimes/qube.py``), run in the
executor.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from executor.child.protocol import BRIDGE_FD
from executor.model import Language

CHILD_DIR: Final = Path(__file__).resolve().parents[1] / "child"
PERL_DIR: Final = CHILD_DIR / "perl"
LAUNCHER: Final = CHILD_DIR / "launcher.py"


def _perl() -> str:
    return shutil.which("perl") or "/usr/bin/perl"


class ChildRuntime(Protocol):
    """A callback language that runs in a sandboxed child."""

    @property
    def language(self) -> Language:
        """The language, which also names the child's cell."""
        ...

    def argv(self) -> list[str]:
        """What the launcher execs once the child is confined; [] runs it in the launcher."""
        ...

    def zygote_argv(self, python: str) -> list[str]:
        """How the language's warm zygote is started (the spawner appends its control fd)."""
        ...


@dataclass(frozen=True, slots=True)
class PythonRuntime:
    """Python callbacks: ``python_bootstrap`` in the launcher's (or the zygote's) interpreter."""

    language: Language = Language.PYTHON

    def argv(self) -> list[str]:
        return []

    def zygote_argv(self, python: str) -> list[str]:
        return [python, "-I", "-S", "-B", str(CHILD_DIR / "zygote.py")]


@dataclass(frozen=True, slots=True)
class PerlRuntime:
    """Perl callbacks: the system perl running ``perl/bootstrap.pl`` with the ``qb`` package."""

    language: Language = Language.PERL
    perl: str = field(default_factory=_perl)

    def argv(self) -> list[str]:
        return [self.perl, f"-I{PERL_DIR}", str(PERL_DIR / "bootstrap.pl"), str(BRIDGE_FD)]

    def zygote_argv(self, python: str) -> list[str]:
        return [self.perl, f"-I{PERL_DIR}", str(PERL_DIR / "zygote.pl")]


# Every child language, in cell order (a slot's cells are numbered by this order).
CHILD_RUNTIMES: Final[Mapping[Language, ChildRuntime]] = {
    Language.PYTHON: PythonRuntime(),
    Language.PERL: PerlRuntime(),
}


def child_runtime(language: Language) -> ChildRuntime:
    """How ``language`` runs in a child; ValueError for a language that needs none (qube)."""
    try:
        return CHILD_RUNTIMES[language]
    except KeyError:
        raise ValueError(f"{language} does not run in a child") from None
