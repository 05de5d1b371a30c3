"""Which of the executor's databases a file is, and what each holds.

Each database's kind is in its header (``KINDS``), checked at start-up
(``check_kind``): another of the executor's databases at its path is refused, never
written into. What each holds (``holding``) goes into the refusals that say what
moving a file aside would lose.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from executor.errors import ConfigError

# What each database holds, for the refusal of a damaged one: moved aside, that is lost.
_HOLDS: Final = {
    "outbox.db": "results not yet delivered to the supervisor",
    "triggers.db": "the registered triggers and firings decided but not yet run",
    "runs.db": "the run history",
    "supervisor.db": "the embedded supervisor's jobs and the events it has not yet forwarded",
}


def holding(path: Path) -> str:
    """`` (it holds ...)`` for one of the executor's databases, else empty."""
    holds = _HOLDS.get(path.name)
    return f" (it holds {holds})" if holds else ""


# Each database's kind, in its header's application id (``PRAGMA application_id``, "cb"
# and two letters), and the tables only that kind has: a database of another kind at its
# path (triggers.db copied over outbox.db) is refused, not given the tables it lacks and
# written into. Earlier versions wrote no id: their kind is read off their tables.
KINDS: Final = {
    "outbox.db": (0x63626F62, frozenset({"outbox"})),
    "triggers.db": (0x63627467, frozenset({"atoms", "firings"})),
    "runs.db": (0x63627275, frozenset({"runs"})),
    "supervisor.db": (0x63627370, frozenset({"work", "subjobs"})),
}


def application_id(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA application_id").fetchone()[0])


def check_kind(db: sqlite3.Connection, path: Path) -> None:
    """Raise ConfigError when the database at ``path`` is another of the executor's.

    Its header's application id says which it is; without one (an earlier version's, or
    a new file), its tables do. One page read, or the schema's: cheap at start-up.
    """
    expected = KINDS.get(path.name)
    if expected is None:
        return
    found = application_id(db)
    if found == expected[0]:
        return
    if found:
        other = next((name for name, (mark, _) in KINDS.items() if mark == found), None)
    else:
        tables = {str(row[0]) for row in db.execute("SELECT name FROM sqlite_master")}
        if tables & expected[1]:
            return  # ours, from before the mark
        other = next((name for name, (_, own) in KINDS.items() if tables & own), None)
        if other is None:
            return  # new, or none of the executor's: taken as before
    if other is None:  # a mark none of ours has
        what = f"a database of another application (application id {found:#x})"
    else:
        what = f"the executor's {other} (it holds {_HOLDS[other]})"
    raise ConfigError(
        f"{path}: this is {what}, not its {path.name}. It was left untouched: put the "
        "right file back (from a backup), or move this one aside to start with an empty one"
    )
