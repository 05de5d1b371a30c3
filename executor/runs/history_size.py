"""The run history's byte bound (``history_max_bytes``): what its runs take, and the oldest dropped.

A run keeps its whole output (up to 2 x ``output_bytes``), so a few callbacks that
flood their output filled runs.db faster than any count or age would notice (~40 such
runs made a 1.2 GB file). The bound is on what the runs take in the store, measured in
the way each store keeps cheaply:

- SQLite: runs.db's pages in use, ``(page_count - freelist_count) x page_size`` (the
  runs, their indexes and the slack of their pages). Both counts are in the file's
  header, so the measure costs microseconds, is exact, and needs no column, no running
  sum and no migration: a history an older version wrote is bounded at its first start.
  The file does not shrink when runs go: their pages join SQLite's freelist and the
  next runs are written into them (room is made before a commit's runs are written, so
  they take the freed pages instead of growing the file). The file therefore stops
  growing near the bound, plus the newest run when that alone is larger. Giving the
  space back (``auto_vacuum``/``incremental_vacuum``) is not done: it moves pages at
  every prune only for the next runs to grow the file again, and turning it on for an
  existing file takes a ``VACUUM``, a copy of the file on the disk that is filling up.
- PostgreSQL (a fleet, written by every replica): each run's size is kept in its row
  (``size_bytes``: its text as UTF-8, the output's JSON among it, plus
  ``RUN_OVERHEAD_BYTES``), written with the run and summed when the prune counts the
  rows, in the same scan of an index on the sizes (measured here: 3.9 ms for 100k runs,
  what the count alone took; a scan of the table's rows instead took 35 ms). Large
  values are compressed there, so the table takes at most about that.

Either way the oldest runs go first, as few as bring the history under the bound, and
never the newest: a run larger than the bound is kept, alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from executor.sql import Db, PgDb, in_lists

# A run's numbers (times, usage, ids), its row's header and its index entries, counted
# with its text in PostgreSQL's size_bytes (a run with little output took ~1.1 KB of
# runs.db pages here, ~700 bytes of it text).
RUN_OVERHEAD_BYTES: Final = 256

# The runs' text columns (PostgreSQL's spelling of their sum, for the migration that
# sizes the runs recorded before size_bytes; it must agree with ``run_size_bytes``).
TEXT_COLUMNS: Final = (
    "invocation_id",
    "triggers",
    "language",
    "outcome",
    "event",
    "work_name",
    "result",
    "source",
    "policy",
)
PG_SIZE_SQL: Final = (
    " + ".join(f"coalesce(octet_length({column}), 0)" for column in TEXT_COLUMNS)
    + f" + {RUN_OVERHEAD_BYTES}"
)

# Runs read per query when PostgreSQL's oldest are walked for their sizes.
_SIZED_CHUNK: Final = 100

_DELETE_OLDEST: Final = (
    "DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs ORDER BY started_at, rowid LIMIT ?)"
)


def run_size_bytes(row: Sequence[object]) -> int:
    """A run's size as PostgreSQL's ``size_bytes`` keeps it: its text as UTF-8, and the overhead."""
    # The result's JSON is ASCII (json.dumps escapes the rest), so len() is its size.
    return RUN_OVERHEAD_BYTES + sum(
        len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
        for value in row
        if isinstance(value, str)
    )


def sqlite_bytes_in_use(db: Db) -> int:
    """runs.db's pages in use, in bytes (as this connection sees it, inside its transaction too)."""
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    (free,) = db.execute("PRAGMA freelist_count").fetchone()
    return int((pages - free) * page_size)


def drop_oldest_sqlite(db: Db, *, runs: int, max_bytes: int, incoming: int = 0) -> int:
    """Drop the oldest runs until runs.db's pages in use, plus ``incoming``, fit ``max_bytes``.

    ``runs`` is how many the history holds; one is always left. How many to drop is
    not known beforehand (a run's size is no column here): one first, then as many as the
    runs dropped so far suggest (their average, rounded down, so a larger run next ends
    it sooner), until the pages fit. Returns how many went.
    """
    excess = sqlite_bytes_in_use(db) + incoming - max_bytes
    dropped = freed = 0
    step = 1
    while excess > 0 and runs - dropped > 1:
        went = int(db.execute(_DELETE_OLDEST, (min(step, runs - dropped - 1),)).rowcount)
        if went <= 0:
            break
        dropped += went
        left = sqlite_bytes_in_use(db) + incoming - max_bytes
        freed += excess - left
        excess = left
        # Runs that share their pages with the ones kept free nothing until those go too.
        step = max(1, excess * dropped // freed) if freed > 0 else 2 * step
    return dropped


def drop_oldest_sized(db: PgDb, *, runs: int, stored_bytes: int, max_bytes: int) -> tuple[int, int]:
    """(PostgreSQL) Drop the oldest runs until their ``size_bytes`` sum fits ``max_bytes``.

    ``runs`` and ``stored_bytes`` are the history's as just counted; one run is always
    left. Returns (runs dropped, bytes they took). A replica pruning at the same moment
    may delete some of the same runs first: they are gone all the same.
    """
    dropped = freed = 0
    while stored_bytes - freed > max_bytes and runs - dropped > 1:
        oldest = db.execute(
            "SELECT rowid, size_bytes FROM runs ORDER BY started_at, rowid LIMIT ?",
            (min(_SIZED_CHUNK, runs - dropped - 1),),
        ).fetchall()
        chosen: list[int] = []
        for row_id, size in oldest:
            if stored_bytes - freed <= max_bytes:
                break
            chosen.append(row_id)
            freed += int(size)
        if not chosen:
            break
        for part, marks in in_lists(chosen):
            db.execute(f"DELETE FROM runs WHERE rowid IN ({marks})", part)  # noqa: S608 - ? marks
        dropped += len(chosen)
    return dropped, freed
