"""Each directory named once: a second name of one (a link, "..", "//") found by its real path.

A universal-callback directory named twice would have each of its callbacks fire twice.
The settings refuse such a name at start-up (``universal_callback_policies``) and the
loader again at each load (a link may have been changed since); each says it in its
own words, so this holds only the finding.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple


class Alias(NamedTuple):
    """The name a directory was first given, and the real path both names reach."""

    first: Path
    real: str


class DirectoryNames:
    """The directories named so far, by real path."""

    def __init__(self) -> None:
        self._first: dict[str, Path] = {}

    def alias(self, directory: Path) -> Alias | None:
        """The first name of the directory ``directory`` names again, or None (then it is kept)."""
        real = os.path.realpath(directory)
        if real in self._first:
            return Alias(self._first[real], real)
        self._first[real] = directory
        return None
