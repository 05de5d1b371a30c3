"""The run history's byte bound (``history_max_bytes``): what its runs take, and the oldest dropped.

A run keeps its whole output (up to 2 x ``output_bytes``), so a few callbacks that
flood their output filled runs.db faster than any count or age would notice (~40 such
runs made a 1.2 GB file). The bound is on what the runs take in the store, measured in
the way each store keeps cheaply:

- SQLite: runs.db's pages in use, ``(page_count - freelist_count) x page_size`` (the
  runs, their indexes and the slack of their pages). Both counts are in the file's
  header: the measure costs microseconds, is exact, and covers the runs an older
  version wrote too, whose sizes were never kept, so such a file is bounded at its
  first start. The file does not shrink when runs go: their pages join SQLite's
  freelist and the next runs are written into them (room is made before a commit's
  runs are written, so they take the freed pages instead of growing the file). The
  file therefore stops growing near the bound, plus the newest run when that alone is
  larger. Giving the space back (``auto_vacuum``/``incremental_vacuum``) is not done: it
  moves pages at every prune only for the next runs to grow the file again, and turning
  it on for an existing file takes a ``VACUUM``, a copy of the file on the disk that is
  filling up.
- PostgreSQL (a fleet, written by every replica): the sum of the runs' sizes, taken
  when the prune counts the rows, in the same scan of an index on the sizes (measured
  here: 4.0 ms for 100k runs, 3.5 for the count alone; a scan of the table's rows
  instead took 35 ms). Large values are compressed there, so the table takes at most
  about that.

Which runs go: the oldest, as few as bring the history under the bound, never the
newest (a run larger than the bound is kept, alone). Each run's size is kept with it
(``size_bytes``: its text as UTF-8, the output's JSON among it, plus
``RUN_OVERHEAD_BYTES``) and the oldest runs' sizes are read from an index, so a prune
knows how many to drop without reading their output; SQLite then measures its pages
again, and goes on while they do not fit. A run recorded before sizes were kept (NULL
in SQLite, where adding the column rewrote no run) is dropped alone, then measured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from executor.sql import Db, PgDb, in_lists

# A run's numbers (times, usage, ids), its row's header and its index entries, counted
# with its text in size_bytes (a run with little output took ~1.1 KB of runs.db pages
# here, ~700 bytes of it text).
RUN_OVERHEAD_BYTES: Final = 256

# The runs' text columns, and PostgreSQL's spelling of their size, for the migration that
# sizes the runs recorded before size_bytes (it must agree with ``run_size_bytes``).
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

# The runs' sizes in age order. SQLite reads the oldest runs' sizes from it, not from the
# runs, where the size comes after output that may take megabytes of pages; PostgreSQL's
# prune counts and sums the runs reading only it.
SIZE_INDEX: Final = "CREATE INDEX IF NOT EXISTS runs_by_start_size ON runs (started_at, size_bytes)"
# The oldest runs, in the count's order (started_at, rowid), and their sizes. INDEXED BY:
# SQLite would rather scan runs_by_start, in that order already, and read each size from
# its run (walking the run's overflow pages to reach it).
_OLDEST_SQLITE: Final = (
    "SELECT rowid, size_bytes FROM runs INDEXED BY runs_by_start_size"
    " ORDER BY started_at, rowid LIMIT ?"
)
_OLDEST_PG: Final = "SELECT rowid, size_bytes FROM runs ORDER BY started_at, rowid LIMIT ?"
# How many of the oldest runs' sizes a round reads.
_OLDEST_CHUNK: Final = 100


def run_size_bytes(row: Sequence[object]) -> int:
    """A run's ``size_bytes`` from its values: its text as UTF-8, and the overhead."""
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

    ``runs`` is how many the history holds; one is always left. Returns how many went.
    """
    dropped, _ = _drop_oldest(
        db, runs=runs, excess=lambda _freed: sqlite_bytes_in_use(db) + incoming - max_bytes
    )
    return dropped


def drop_oldest_sized(db: PgDb, *, runs: int, stored_bytes: int, max_bytes: int) -> tuple[int, int]:
    """(PostgreSQL) Drop the oldest runs until their sizes' sum fits ``max_bytes``.

    ``runs`` and ``stored_bytes`` are the history's as just counted; one run is always
    left. Returns (runs dropped, bytes they took). A replica pruning at the same moment
    may delete some of the same runs first: they are gone all the same.
    """
    return _drop_oldest(db, runs=runs, excess=lambda freed: stored_bytes - freed - max_bytes)


def _drop_oldest(db: Db, *, runs: int, excess: Callable[[int], int]) -> tuple[int, int]:
    """Drop the oldest runs while ``excess(freed)`` is positive, never the last of ``runs``.

    ``excess(freed)``: by how many bytes the history is over its bound once the runs
    dropped so far, ``freed`` bytes by their sizes, are gone. Each round drops the oldest
    runs whose sizes cover that, then asks again. Returns (runs dropped, ``freed``).
    """
    oldest = _OLDEST_PG if isinstance(db, PgDb) else _OLDEST_SQLITE
    dropped = freed = 0
    while runs - dropped > 1 and (over := excess(freed)) > 0:
        chosen: list[int] = []
        sized = 0
        limit = min(_OLDEST_CHUNK, runs - dropped - 1)
        for row_id, size in db.execute(oldest, (limit,)).fetchall():
            chosen.append(row_id)
            if size is None:
                break  # recorded before sizes were kept: dropped alone, then measured
            sized += int(size)
            if sized >= over:
                break
        if not chosen:
            break
        for part, marks in in_lists(chosen):
            db.execute(f"DELETE FROM runs WHERE rowid IN ({marks})", part)  # noqa: S608 - ? marks
        dropped += len(chosen)
        freed += sized
    return dropped, freed
