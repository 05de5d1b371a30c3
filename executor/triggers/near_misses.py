"""Near misses in the index: the label atoms an event almost matched, and why they did not.

An atom whose label names no job in its pgrp waits for nothing. Two lookups find the
ones an event would have matched but for that (name, type and extra match): atoms of
the event's own pgrp whose label no job there holds (a typo, or a job not registered
yet), and atoms of other pgrps naming the event's job's label that does not resolve in
their own pgrp (the job landed in another pgrp). Both walk the partial indexes on the
label atoms (store_schema.py), with the keys' names and extras as IN lists, and stop at a limit.
Whether a job holds an atom's label is a lookup in the index of the jobs' labels
(``UNRESOLVED``), so an event costs the same however many jobs are registered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from executor.sql import Db, marks_for
from executor.triggers.evaluate import AtomKey

# That no job of the atom ``a``'s pgrp holds its label: one lookup in the partial index
# ``jobs_label`` per atom. Neither SQLite nor PostgreSQL infers the index's ``label != ''``
# from ``= a.label`` (SQLite then read every registered job per atom); ``OFFSET 0`` keeps
# PostgreSQL from planning an anti join over the pgrp's labels instead, which it sizes at
# a pgrp's average (~1 job) and then read once per atom.
UNRESOLVED: Final = (
    "NOT EXISTS (SELECT 1 FROM jobs held WHERE held.pgrp = a.pgrp AND held.label = a.label"
    " AND held.label != '' LIMIT 1 OFFSET 0)"
)


@dataclass(frozen=True, slots=True)
class AtomRef:
    """An indexed label atom: the callback row, the latch slot, and the label it names."""

    rowid: int
    slot: int
    pgrp: int
    label: str


def unresolved_in_pgrp(db: Db, keys: Iterable[AtomKey], pgrp: int, limit: int) -> list[AtomRef]:
    """Label atoms of ``pgrp`` under the keys whose label no registered job of the pgrp holds.

    The keys' name, type and extra are matched.
    """
    return _label_atoms(db, keys, "a.pgrp = ?", (pgrp,), limit)


def unresolved_elsewhere(
    db: Db, keys: Iterable[AtomKey], label: str, pgrp: int, limit: int
) -> list[AtomRef]:
    """Atoms of other pgrps naming ``label`` that no registered job of their own pgrp holds.

    Under the keys' name, type and extra; ``pgrp`` itself is left out.
    """
    return _label_atoms(db, keys, "a.label = ? AND a.pgrp != ?", (label, pgrp), limit)


def in_pgrp_subquery(
    keys: Iterable[AtomKey], pgrp_column: str, limit: int
) -> tuple[str, tuple[Any, ...]] | None:
    """``unresolved_in_pgrp`` as a subquery of another read (PostgreSQL): a JSON array.

    The pgrp is ``pgrp_column`` of the outer query; ``refs_from_json`` reads the array.
    None when the keys are of more than one type (the lookup then runs on its own).
    """
    triples = {(key.name, key.type, key.extra) for key in keys}
    types = {type_ for _, type_, _ in triples}
    if len(types) != 1:
        return None
    (type_,) = types
    names = sorted({name for name, _, _ in triples})
    extras = sorted({extra for _, _, extra in triples})
    return (
        "(SELECT coalesce(json_agg(json_build_array(a.callback_rowid, a.slot, a.pgrp, a.label,"  # noqa: S608
        " a.name, a.extra)), '[]') FROM (SELECT * FROM atoms a"
        f" WHERE a.pgrp = {pgrp_column} AND a.type = ? AND a.name IN ({marks_for(names)})"
        f" AND a.extra IN ({marks_for(extras)}) AND a.label != ''"
        f" AND {UNRESOLVED} LIMIT ?) AS a)",
        (type_, *names, *extras, limit),
    )


def refs_from_json(found: Sequence[Sequence[Any]], keys: Iterable[AtomKey]) -> list[AtomRef]:
    """The refs of ``in_pgrp_subquery``'s array whose own key is one of ``keys``."""
    triples = {(key.name, key.type, key.extra) for key in keys}
    (type_,) = {type_ for _, type_, _ in triples}
    return [
        AtomRef(int(r[0]), int(r[1]), int(r[2]), str(r[3]))
        for r in found
        if (r[4], type_, r[5]) in triples
    ]


def _label_atoms(
    db: Db,
    keys: Iterable[AtomKey],
    where: str,
    params: tuple[Any, ...],
    limit: int,
) -> list[AtomRef]:
    """Label atoms matching ``where`` whose label no registered job of the atom's pgrp holds.

    Under the (name, type, extra) of ``keys``; at most ``limit``.
    """
    triples = {(key.name, key.type, key.extra) for key in keys}
    found: list[AtomRef] = []
    for type_ in sorted({type_ for _, type_, _ in triples}):
        names = sorted({name for name, of_type, _ in triples if of_type == type_})
        extras = sorted({extra for _, of_type, extra in triples if of_type == type_})
        rows = db.execute(
            "SELECT a.callback_rowid, a.slot, a.pgrp, a.label, a.name, a.extra FROM atoms a"  # noqa: S608
            f" WHERE {where} AND a.type = ? AND a.name IN ({marks_for(names)})"
            f" AND a.extra IN ({marks_for(extras)}) AND a.label != ''"
            f" AND {UNRESOLVED} LIMIT ?",
            (*params, type_, *names, *extras, limit - len(found)),
        ).fetchall()
        found.extend(
            AtomRef(int(r[0]), int(r[1]), int(r[2]), str(r[3]))
            for r in rows
            if (r[4], type_, r[5]) in triples
        )
        if len(found) >= limit:
            break
    return found
