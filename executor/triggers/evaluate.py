"""Pure trigger semantics, the ones the engine runs: matching, latching, firing, clock times.

Which atoms an event matches, how latches fire a callback, and when a clock atom is due.

The engine keeps the state (latches, counts, the atom index, timers) in SQLite and asks
this module everything that is not a lookup, so what the unit tests check here is what
the service does.

Matching is by key. An atom is indexed under one ``AtomKey`` (``atom_key``); an event
looks up every key that can match it (``event_keys``); the atom matches the event exactly
when its key is among them. A key is (event name, type, scope, extra):

* scope: ``job:<id>`` for the contexts ``self``, ``parent`` and a job id, resolved from
  the owning job when it registers; ``label:<pgrp>:<label>`` for a label, resolved at
  event time from the event's job, so the label may belong to a job registered later.
  A ``parent`` context of a job without a parent names no job and matches nothing.
* extra: the work name, subjob id or host, or ``*``, for item types (an item event looks
  up its item and ``*``: a ``*`` atom latches once, on any item, and does not remember
  which); "" for job atoms.
* ``done`` is expanded here only: a ``done`` atom is indexed under ``done``, and a
  complete, failed or killed event also looks up ``done``.
* ``{work}``: a per-work atom (nodes) is indexed under the extra ``{work}``, which every
  work event also looks up; ``work_targets`` then says whose latches it sets.
* Host atoms match on the context's job id like the others and on the host name in the
  extra (which jobs see host events is not documented by Qube).
* Clock atoms (time, repeat, globaltime, globalrepeat) and ``global`` have no key: no
  published event matches them.

Latching (Qube stores a satisfied flag per atom in a callback's ``ready`` field): each
atom has a latch slot, its index in ``atoms(expr)``. An event sets the slots of the atoms
it matches and the expression is evaluated over the slots (``latch``). Latches are
edge-triggered: only transitions seen after registration count. A firing resets every
latch; a callback that has fired ``maximum`` times is ``spent``.

What an event does to a callback it matched is one ``step``: a spent callback changes
nothing; otherwise the matched slots latch (``newly``; those already latched are
``already``) and the callback fires when its expression becomes true. ``residual`` is
what the expression still waits for.

Per work item (a trigger with ``{work}``): the callback keeps one latch vector and one
count per work item of its own job (its agenda as registered; when the registration
carried none, the items events have named). A matched per-work atom sets the latch of
the event's item only (an item outside a known agenda is a near miss); a matched
atom without the placeholder sets its latch in every item's vector. Each item steps,
fires (in its own context: ``qb.workid()`` is the item), counts against ``maximum`` and
resets on its own, exactly as one callback per item would.

Level mode (opt-in per callback): at registration (its own, and the first one of a
job it names: registration.take_registration), an atom latches when its event has
already happened, judged by the last known state of each object it names
(``happened``): the state the last state-changing event left it in (``state_after``), or
the status the object's registration carried. ``done`` means complete, failed or
killed; ``submit`` has happened for every job the engine knows. Events that change no
state (assigned, modified, timeout, host events) and clock atoms never latch this way.
After that first evaluation the callback is edge-triggered like any other.

Clocks: ``<T>`` is absolute Qube time, ``Unix time - QB_TIME_EPOCH_OFFSET``. A repeat
fires at ``T`` and then every ``interval`` seconds on that grid. A ``T`` already past when
the atom is first scheduled fires at once; missed repeats are coalesced into a single
firing, after which the grid resumes (``next_fire``). ``global`` alone has no time and
never fires. A due clock atom fires its callback with ``clock_event``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from executor.model import Event
from executor.triggers.nodes import (
    ITEM_TYPES,
    PLACEHOLDER,
    QB_TIME_EPOCH_OFFSET,
    TIME_TYPES,
    WILDCARD,
    And,
    Atom,
    ContextKind,
    EventName,
    EventType,
    Expr,
    Or,
    atoms,
    conjoin,
    disjoin,
)

# The events a ``done`` atom stands for.
DONE_MEANS: Final = frozenset({EventName.COMPLETE, EventName.FAILED, EventName.KILLED})
# The events that leave their object in a state of the same name (the others change
# no state; ``removed`` ends the object).
STATE_EVENTS: Final = frozenset(
    {
        EventName.COMPLETE,
        EventName.FAILED,
        EventName.KILLED,
        EventName.BLOCKED,
        EventName.RUNNING,
        EventName.WAITING,
    }
)
# The atom names a known state can show as happened (``happened``).
HAPPENED_NAMES: Final = frozenset(
    name.value for name in (*STATE_EVENTS, EventName.DONE, EventName.SUBMIT)
)
_ONE_SHOT: Final = frozenset({EventType.TIME, EventType.GLOBALTIME})
_REPEATING: Final = frozenset({EventType.REPEAT, EventType.GLOBALREPEAT})


@dataclass(frozen=True, slots=True)
class AtomKey:
    """What an atom is indexed under, and what an event looks up (all plain strings)."""

    name: str
    type: str
    scope: str
    extra: str


@dataclass(frozen=True, slots=True)
class JobPlace:
    """What resolving a context needs to know of a job: its id, parent, pgrp and label."""

    job_id: int
    pid: int = 0
    pgrp: int = 0
    label: str = ""

    @classmethod
    def of(cls, job: Mapping[str, Any]) -> JobPlace:
        """The place of a job dict; a job outside any process group is its own."""
        job_id = int(job["id"])
        return cls(
            job_id=job_id,
            pid=int(job.get("pid") or 0),
            pgrp=int(job.get("pgrp") or job_id),
            label=str(job.get("label") or ""),
        )


def _job_scope(job_id: int) -> str:
    return f"job:{job_id}"


def _label_scope(pgrp: int, label: str) -> str:
    return f"label:{pgrp}:{label}"


def scope_label(scope: str) -> tuple[int, str] | None:
    """(pgrp, label) of a label scope; None for a job scope."""
    kind, _, rest = scope.partition(":")
    if kind != "label":
        return None
    pgrp, _, label = rest.partition(":")
    return int(pgrp), label


def scopes_of(place: JobPlace) -> list[str]:
    """The scopes of the atoms that name this job: its id (also as a parent), its label."""
    scopes = [_job_scope(place.job_id)]
    if place.label:
        scopes.append(_label_scope(place.pgrp, place.label))
    return scopes


def _atom_scope(atom: Atom, owner: JobPlace) -> str | None:
    kind = atom.context_kind
    if kind is ContextKind.SELF:
        return _job_scope(owner.job_id)
    if kind is ContextKind.PARENT:
        return _job_scope(owner.pid) if owner.pid else None
    if kind is ContextKind.JOB_ID:
        return _job_scope(int(atom.context))
    if kind is ContextKind.LABEL:
        return _label_scope(owner.pgrp, atom.context)
    return None


def atom_key(atom: Atom, owner: JobPlace) -> AtomKey | None:
    """The key ``atom`` of a callback of ``owner`` is indexed under; None: no event matches it."""
    if atom.is_timed or atom.type is EventType.GLOBAL:
        return None
    scope = _atom_scope(atom, owner)
    if scope is None:
        return None
    extra = atom.extra if atom.type in ITEM_TYPES else ""
    return AtomKey(atom.name.value, atom.type.value, scope, extra)


def event_keys(event: Event, place: JobPlace | None) -> list[AtomKey]:
    """Every key an atom matching ``event`` can be indexed under.

    Args:
        event: The occurrence.
        place: The event's job as registered (for its label); None when not registered.
    """
    names = [event.name, *([EventName.DONE.value] if event.name in DONE_MEANS else [])]
    scopes = [_job_scope(event.job_id)]
    if place is not None and place.label:
        scopes.append(_label_scope(place.pgrp, place.label))
    extras: Sequence[str] = [""]
    if event.type == EventType.WORK:
        extras = list(dict.fromkeys([event.item, WILDCARD, PLACEHOLDER]))
    elif event.type in ITEM_TYPES:
        extras = list(dict.fromkeys([event.item, WILDCARD]))
    return [
        AtomKey(name, event.type, scope, extra)
        for name in names
        for scope in scopes
        for extra in extras
    ]


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


def latch(
    expr: Expr, latched: Sequence[bool], slots: Iterable[int]
) -> tuple[bool, tuple[bool, ...]]:
    """Set the latches of ``slots`` (the atoms an event matched) and evaluate.

    Returns:
        Whether the callback fires, and its latches afterwards: all reset when it fires,
        so it can fire again on new events.
    """
    after = list(latched)
    for slot in slots:
        after[slot] = True
    if evaluate(expr, after):
        return True, (False,) * len(after)
    return False, tuple(after)


def spent(count: int, maximum: int) -> bool:
    """Whether a callback fired ``count`` times may fire no more (``maximum`` 0: unlimited)."""
    return maximum > 0 and count >= maximum


@dataclass(frozen=True, slots=True)
class Step:
    """What one event did to one latch vector of a callback (see ``step``)."""

    fires: bool
    latches: tuple[bool, ...]
    newly: tuple[int, ...]
    already: tuple[int, ...]
    spent: bool = False


def step(
    expr: Expr, latched: Sequence[bool], slots: Iterable[int], *, count: int, maximum: int
) -> Step:
    """The matched ``slots`` applied to a latch vector that has fired ``count`` times.

    A spent vector (``maximum`` reached) is left as it is. Otherwise ``latch``: the
    matched slots latch and the vector fires when the expression becomes true.
    """
    matched = sorted(set(slots))
    already = tuple(slot for slot in matched if latched[slot])
    if spent(count, maximum):
        return Step(False, tuple(latched), (), already, spent=True)
    fires, after = latch(expr, latched, matched)
    newly = tuple(slot for slot in matched if not latched[slot])
    return Step(fires, after, newly, already)


def residual(expr: Expr, latched: Sequence[bool]) -> tuple[Expr | None, tuple[int, ...]]:
    """What ``expr`` still waits for given its latches, and the slots of those atoms.

    Latched atoms are true and drop out: ``(a && b) || c`` with ``a`` latched leaves
    ``b || c``. None (and no slots) when the expression is already true.
    """
    if len(latched) != len(atoms(expr)):
        raise ValueError(f"{len(latched)} latches for a trigger with {len(atoms(expr))} atoms")
    rest, _, open_slots = _residual(expr, latched, 0)
    return rest, tuple(open_slots)


def live_residual(
    expr: Expr, latches: Sequence[bool], never: set[int]
) -> tuple[Expr, tuple[int, ...]] | None:
    """``residual`` with the atoms in slots ``never`` false for good: None when it cannot hold.

    A clock atom whose timer is gone (a time that fired, a stopped clock) will not latch
    again: what a trigger waits for leaves out the ways through it (``why``, the
    journal, a dry run). Call it with the trigger not already true.
    """
    slots = iter(range(len(latches)))

    def walk(node: Expr) -> tuple[Expr | None, list[int]] | None:
        """(residual, or None when true; open slots), or None when it cannot hold."""
        if isinstance(node, Atom):
            slot = next(slots)
            if latches[slot]:
                return None, []
            return None if slot in never else (node, [slot])
        parts = [walk(term) for term in node.terms]  # every slot consumed, left to right
        possible = [part for part in parts if part is not None]
        if isinstance(node, Or):
            if any(rest is None for rest, _ in possible):
                return None, []
            if not possible:
                return None
            return disjoin([rest for rest, _ in possible if rest is not None]), _joined(possible)
        if len(possible) < len(parts):
            return None
        rests = [rest for rest, _ in possible if rest is not None]
        return (conjoin(rests) if rests else None), _joined(possible)

    walked = walk(expr)
    if walked is None:
        return None
    rest, open_slots = walked
    # Not true: with no latch added, an atom false for good cannot make it hold.
    return (rest if rest is not None else expr), tuple(open_slots)


def _joined(parts: Sequence[tuple[Expr | None, list[int]]]) -> list[int]:
    return [slot for _, open_slots in parts for slot in open_slots]


def _residual(expr: Expr, latched: Sequence[bool], slot: int) -> tuple[Expr | None, int, list[int]]:
    """(residual or None when true, the slot after ``expr``, the open slots)."""
    if isinstance(expr, Atom):
        if latched[slot]:
            return None, slot + 1, []
        return expr, slot + 1, [slot]
    rests: list[Expr] = []
    open_slots: list[int] = []
    satisfied = False
    for term in expr.terms:
        rest, slot, term_open = _residual(term, latched, slot)
        if rest is None:
            satisfied = True
        else:
            rests.append(rest)
            open_slots.extend(term_open)
    if isinstance(expr, Or):
        return (None, slot, []) if satisfied else (disjoin(rests), slot, open_slots)
    return (conjoin(rests), slot, open_slots) if rests else (None, slot, [])


def work_targets(
    expr: Expr,
    slots: Iterable[int],
    work_name: str,
    items: Sequence[str],
    *,
    agenda_known: bool,
) -> tuple[dict[str, tuple[int, ...]], tuple[int, ...]]:
    """Whose latch vectors the matched ``slots`` of a per-work callback set.

    Args:
        expr: The callback's trigger (it holds ``{work}``).
        slots: The slots the event matched.
        work_name: The event's work item ("" for other events).
        items: The callback's work items: its job's agenda, then the items that hold
            state without being in it (an agenda not known at registration).
        agenda_known: Whether the job registered with an agenda; if not, any work
            item an event names is one of the callback's.

    Returns:
        The slots to set per item, in ``items`` order (the event's own item last if
        it is new), and the per-work slots that matched for an item outside a known
        agenda (a near miss: nothing latches for them).
    """
    found = atoms(expr)
    matched = sorted(set(slots))
    placed = tuple(slot for slot in matched if found[slot].per_work)
    shared = tuple(slot for slot in matched if not found[slot].per_work)
    outside: tuple[int, ...] = ()
    targets: dict[str, tuple[int, ...]] = {}
    if shared:
        targets = dict.fromkeys(items, shared)
    if placed:
        if agenda_known and work_name not in items:
            outside = placed
        else:
            # The event's item is one of the callback's: what latches for every item
            # latches for it too, though it may hold no state yet (no agenda).
            targets[work_name] = tuple(sorted({*shared, *targets.get(work_name, ()), *placed}))
    return targets, outside


def state_after(event: Event) -> str | None:
    """The state an event leaves its object in (its name), None if it changes none."""
    return event.name if event.name in STATE_EVENTS else None


def happened(atom: Atom, states: Iterable[str]) -> bool:
    """Level mode: whether ``atom``'s event has already happened.

    Given the last known states of the objects it names (for a ``*`` atom, every item of
    its job; none when unknown).
    """
    if atom.is_timed or atom.type in (EventType.GLOBAL, EventType.HOST):
        return False
    known = list(states)
    if atom.name is EventName.SUBMIT:
        return atom.type is EventType.JOB and bool(known)
    names = DONE_MEANS if atom.name is EventName.DONE else frozenset({atom.name}) & STATE_EVENTS
    return any(state in names for state in known)


def qube_to_unix(qube_time: int) -> int:
    """Unix time of a Qube time."""
    return qube_time + QB_TIME_EPOCH_OFFSET


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


def clock_event(atom: Atom, job_id: int) -> Event:
    """The event a due clock atom of a callback of job ``job_id`` fires it with.

    It is stored with the firing and the callback runs with it: ``qb.event()`` shows the
    atom's name and type and its time (``T`` or ``T-interval``) as the extra.
    """
    if atom.type not in TIME_TYPES:
        raise ValueError(f"{atom.type} atoms are not fired by a clock")
    return Event(atom.name.value, atom.type.value, job_id, extra=atom.extra)
