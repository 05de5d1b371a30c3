"""Pure trigger semantics: which atoms an event matches, when a clock atom is due, and
whether the latched atoms make the whole expression true.

The model (Qube stores a satisfied flag per atom in a callback's ``ready`` field):

* Each atom has a latch slot, its index in ``atoms(expr)``. An event occurrence that
  an atom matches sets that slot; ``evaluate`` then reads the expression over the
  slots. Latches are edge-triggered: only transitions seen after registration count.
* Resetting the latches after a firing, ``count``/``maximum`` and durability are the
  engine's business; nothing here keeps state.
* A ``*`` atom latches once, on any item; it does not remember which item.
* ``done`` matches complete, failed and killed events (and ``done`` itself, should
  the engine publish it alongside).
* Host atoms match on the context's job id like the others and on the host name in
  the extra (which jobs see host events is not documented by Qube).
* Clock atoms (time, repeat, globaltime, globalrepeat) never match events. ``<T>``
  is absolute Qube time, ``Unix time - QB_TIME_EPOCH_OFFSET``. A repeat fires at ``T``
  and then every ``interval`` seconds on that grid. A ``T`` already past when the
  atom is first scheduled fires at once; missed repeats are coalesced into a single
  firing, after which the grid resumes. ``global`` alone has no time and never fires.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Final, TypeAlias

from executor.model import Event
from executor.triggers.nodes import (
    QB_TIME_EPOCH_OFFSET,
    WILDCARD,
    And,
    Atom,
    EventName,
    EventType,
    Expr,
    atoms,
)

# Maps an atom's context (self, parent, a label, a job id) to a job id, or None when
# it names no known job. Resolving is the engine's job (it knows owner, pid, pgrp).
ContextResolver: TypeAlias = Callable[[str], int | None]

# Event names a ``done`` atom stands for.
DONE_EVENTS: Final = (EventName.COMPLETE, EventName.FAILED, EventName.KILLED, EventName.DONE)
_ONE_SHOT: Final = frozenset({EventType.TIME, EventType.GLOBALTIME})
_REPEATING: Final = frozenset({EventType.REPEAT, EventType.GLOBALREPEAT})


def qube_to_unix(qube_time: int) -> int:
    """Unix time of a Qube time."""
    return qube_time + QB_TIME_EPOCH_OFFSET


def unix_to_qube(unix_time: float) -> int:
    """Qube time (whole seconds) of a Unix time, as Qube's own clients compute it."""
    return int(unix_time) - QB_TIME_EPOCH_OFFSET


def index_key(atom: Atom) -> tuple[str, str]:
    """The (event name, type) an atom is primarily indexed under."""
    return (atom.name.value, atom.type.value)


def index_keys(atom: Atom) -> list[tuple[str, str]]:
    """Every (event name, type) whose events can match ``atom``.

    A ``done`` atom is indexed under complete, failed, killed and done.
    """
    if atom.name is EventName.DONE:
        return [(name.value, atom.type.value) for name in DONE_EVENTS]
    return [index_key(atom)]


def atom_matches(atom: Atom, event: Event, resolve: ContextResolver) -> bool:
    """Whether ``event`` sets the latch of ``atom``.

    Args:
        atom: A parsed atom.
        event: The occurrence.
        resolve: Maps ``atom.context`` to a job id (None: no such job, no match).
    """
    if atom.is_timed or atom.type is EventType.GLOBAL or event.type != atom.type:
        return False
    if atom.name is EventName.DONE:
        if event.name not in DONE_EVENTS:
            return False
    elif event.name != atom.name:
        return False
    job_id = resolve(atom.context)
    if job_id is None or job_id != event.job_id:
        return False
    if atom.type is EventType.JOB or atom.extra == WILDCARD:
        return True
    if atom.type is EventType.WORK:
        return atom.extra == event.work_name
    if atom.type is EventType.SUBJOB:
        return atom.extra.isdigit() and int(atom.extra) == event.subjob_id
    return atom.extra == event.host


def evaluate(expr: Expr, latched: Sequence[bool]) -> bool:
    """The value of ``expr`` when atom ``i`` (left to right) is ``latched[i]``.

    Raises:
        ValueError: ``latched`` does not have one entry per atom.
    """
    count = len(atoms(expr))
    if len(latched) != count:
        raise ValueError(f"{len(latched)} latches for a trigger with {count} atoms")
    value, _ = _evaluate(expr, latched, 0)
    return value


def _evaluate(expr: Expr, latched: Sequence[bool], slot: int) -> tuple[bool, int]:
    """Value of ``expr`` whose first atom has latch ``slot``, and the slot after it."""
    if isinstance(expr, Atom):
        return bool(latched[slot]), slot + 1
    values: list[bool] = []
    for term in expr.terms:
        value, slot = _evaluate(term, latched, slot)
        values.append(value)
    return (all(values) if isinstance(expr, And) else any(values)), slot


def _schedule(atom: Atom) -> tuple[int, int] | None:
    """(first firing in Unix seconds, interval or 0) of a clock atom, else None."""
    if atom.type in _ONE_SHOT:
        return qube_to_unix(int(atom.extra)), 0
    if atom.type in _REPEATING:
        start, _, interval = atom.extra.partition("-")
        return qube_to_unix(int(start)), int(interval)
    return None


def next_fire(atom: Atom, now_unix: float, *, last_fired_unix: float | None = None) -> float | None:
    """When a clock atom should next fire, in Unix seconds; None if never (again).

    Args:
        atom: Any atom; non-clock atoms (and ``global``) give None.
        now_unix: The current time.
        last_fired_unix: When the atom last fired, None if it never has. Pass it when
            rescheduling after a firing: a one-shot atom then gives None, a repeat the
            next point of its grid.

    The result is never before ``now_unix``: a time already past gives ``now_unix``
    (fire at once), and so do repeats missed while nobody was looking (coalesced).
    """
    schedule = _schedule(atom)
    if schedule is None:
        return None
    start, interval = schedule
    if last_fired_unix is None:
        return max(float(start), now_unix)
    if interval == 0:
        return None
    if last_fired_unix < start:
        return max(float(start), now_unix)
    periods = math.floor((last_fired_unix - start) / interval) + 1
    return max(float(start + periods * interval), now_unix)


def time_due(atom: Atom, now_unix: float, *, last_fired_unix: float | None = None) -> bool:
    """Whether a clock atom should fire at ``now_unix`` (see ``next_fire``)."""
    due = next_fire(atom, now_unix, last_fired_unix=last_fired_unix)
    return due is not None and due <= now_unix
