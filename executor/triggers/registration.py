"""Registering a job: its callbacks as the engine stores them, their checks, level mode's start.

The engine's ``register_job`` (registrar.py) runs these in order: ``callback_specs`` (the job's own
callbacks, then the universal ones; a trigger that does not parse or a mode that is
neither edge nor level refuses the registration), ``surroundings`` and the checks
(checks.py) before anything is written. Then, in the registration's transaction: the
job's callbacks as its last registration left them (locked in a fleet:
``TriggerStore.callbacks_to_register``), which of them it keeps (``continued``: their
rows are rewritten in place, ``store_job``), and the level pass (``level_pass``) for
each new level callback: what has already happened latches, and what that makes true
fires, in that same transaction. A job registered for the first time is that pass from
the other side (``take_registration``): the level callbacks of other jobs that name it
latch what its states show.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from executor.bounds import code_size_problem
from executor.errors import InvalidRequestError
from executor.model import Event, Language
from executor.sql import Db
from executor.triggers import checks, items, journal, states
from executor.triggers.decide import Decider, Fired, firing_order
from executor.triggers.errors import TriggerSyntaxError
from executor.triggers.evaluate import (
    HAPPENED_NAMES,
    JobPlace,
    happened,
    scope_label,
    scopes_of,
)
from executor.triggers.items import WorkState
from executor.triggers.journal import SeenEvent
from executor.triggers.nodes import (
    WILDCARD,
    Atom,
    ContextKind,
    EventName,
    EventType,
    Expr,
    atoms,
    per_work,
    substitute_all,
)
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import EDGE, LEVEL, MODES, StoredCallback
from executor.triggers.universal import (
    MAX_UNIVERSAL_LINES,
    LineName,
    UniversalCallback,
    found_by_name,
    line_name,
    trigger_key,
)

QUBE = Language.QUBE.value
_LANGUAGES = tuple(language.value for language in Language)


@dataclass(frozen=True, slots=True)
class Registration:
    """What registering a job did: its callbacks as stored, the checks, what level mode fired."""

    callbacks: list[StoredCallback]
    checks: list[checks.Check]
    fired: list[Fired]


def callback_specs(
    job: Mapping[str, Any],
    universal: Sequence[UniversalCallback],
    parsed: Callable[[str], Expr],
) -> list[tuple[dict[str, Any], Expr]]:
    """The job's callbacks (then the universal ones) as stored, each with its parsed trigger.

    Raises:
        InvalidRequestError: a trigger that does not parse, a language or a mode that is
            not known.
    """
    specs: list[tuple[dict[str, Any], Expr]] = []
    own = list(job.get("callbacks") or [])
    ids = _callback_ids([int(cb.get("id") or 0) for cb in own])
    for index, cb in enumerate(own):
        try:
            expr = parsed(str(cb.get("triggers") or ""))
        except TriggerSyntaxError as err:
            raise InvalidRequestError(f"job.callbacks[{index}].triggers: {err}") from err
        if (problem := check_language(str(cb.get("language") or QUBE))) is not None:
            raise InvalidRequestError(f"job.callbacks[{index}].language: {problem}")
        if (too_large := code_size_problem(str(cb.get("code") or ""))) is not None:
            raise InvalidRequestError(f"job.callbacks[{index}].code {too_large}")
        mode = str(cb.get("mode") or EDGE)
        if mode not in MODES:
            raise InvalidRequestError(
                f"job.callbacks[{index}].mode: {mode!r}; expected {' or '.join(MODES)}"
            )
        specs.append((_spec(cb, ids[index], job, expr, mode), expr))
    next_id = max(ids, default=0) + 1
    for attached in universal:
        expr = parsed(attached.triggers)
        cb = {
            "triggers": attached.triggers,
            "language": attached.language,
            "code": attached.code,
            "universal": True,
            "source": attached.source,
        }
        specs.append((_spec(cb, next_id, job, expr, attached.mode), expr))
        next_id += 1
    return specs


def continued(
    specs: Sequence[Mapping[str, Any]],
    previous: Sequence[StoredCallback],
    directories: Collection[Path],
) -> list[StoredCallback | None]:
    """Per spec (``callback_specs``), the callback of the job's last registration it is.

    None for a callback new to the job, which starts afresh. A job's own callback is
    the one of the same id (the scheduler names its callbacks) with the same trigger in
    canonical form (``a&&b`` is ``a && b``: a scheduler that writes it otherwise between
    registrations keeps a half-latched ``&&``), code and mode. A universal callback is
    the one of its line: its file and its trigger in canonical form, whatever per-job
    id it has now (those ids follow the job's own callbacks in callbacks.conf order, so
    they move when a reload adds a line before it or the job's callbacks change in
    number) and whatever the line's options or the file's code became. Its file is found
    by path, else (a fleet whose replicas each keep callbacks.conf in a directory of
    their own, a moved data dir) by its ``line_name`` when exactly one of the last
    registration's universal callbacks, of a directory not among ``directories`` (those
    configured), has it, as ``universal.find_line`` finds a firing's line.
    """
    own = {
        (cb.callback_id, trigger_key(cb.triggers), cb.code, cb.mode): cb
        for cb in previous
        if not cb.universal
    }
    lines = {(cb.source, trigger_key(cb.triggers)): cb for cb in previous if cb.universal}
    found: list[StoredCallback | None] = []
    for spec in specs:
        if spec["universal"]:
            found.append(lines.pop((spec["source"], trigger_key(spec["triggers"])), None))
        else:
            same = (spec["id"], trigger_key(spec["triggers"]), spec["code"], spec["mode"])
            found.append(own.get(same))
    # The lines not found by path, by line_name (of a directory not configured here): taken
    # only where that is unambiguous.
    was: dict[LineName, list[StoredCallback]] = {}
    for cb in lines.values():
        if found_by_name(cb.source, directories):
            was.setdefault(line_name(cb.source, cb.triggers), []).append(cb)
    now: dict[LineName, list[int]] = {}
    for index, spec in enumerate(specs):
        if spec["universal"] and found[index] is None:
            name = line_name(spec["source"], spec["triggers"])
            now.setdefault(name, []).append(index)
    for name, indexes in now.items():
        if len(indexes) == 1 and len(was.get(name, ())) == 1:
            found[indexes[0]] = was[name][0]
    # A text stored by an older grammar is told apart by its words: its latches may not fit.
    return [
        cb if cb is None or len(cb.latches) == len(spec["latches"]) else None
        for spec, cb in zip(specs, found, strict=True)
    ]


def keep_journal(
    db: Db,
    job_id: int,
    specs: Sequence[Mapping[str, Any]],
    kept_as: Sequence[StoredCallback | None],
    previous: Sequence[StoredCallback],
) -> None:
    """The journal of each callback kept (``continued``) follows it; the others' goes."""
    journal.follow_callbacks(
        db,
        job_id,
        moved={
            cb.callback_id: spec["id"]
            for spec, cb in zip(specs, kept_as, strict=True)
            if cb is not None and cb.callback_id != spec["id"]
        },
        gone={cb.callback_id for cb in previous}
        - {cb.callback_id for cb in kept_as if cb is not None},
        everything=not previous,
    )


# A callback id is a uint32 on the wire, and the universal callbacks take the ids after
# the job's largest: an own id above this would push one past it.
MAX_OWN_CALLBACK_ID: Final = (1 << 32) - 1 - MAX_UNIVERSAL_LINES


def own_callback_id_problem(callback_id: int) -> str | None:
    """None when a job's own callback may have ``callback_id``, else why not."""
    if callback_id <= MAX_OWN_CALLBACK_ID:
        return None
    return (
        f"{callback_id} is above {MAX_OWN_CALLBACK_ID}, the largest id a job's own callback "
        f"may have: the universal callbacks (at most {MAX_UNIVERSAL_LINES}) are numbered "
        "after the job's own, within 2^32 - 1"
    )


def _callback_ids(given: Sequence[int]) -> list[int]:
    """Each callback's id: its own, else the next one no other callback has (from 1).

    Raises InvalidRequestError when two callbacks give the same id, or an id above
    ``MAX_OWN_CALLBACK_ID``.
    """
    first: dict[int, int] = {}
    for index, callback_id in enumerate(given):
        if (too_large := own_callback_id_problem(callback_id)) is not None:
            raise InvalidRequestError(f"job.callbacks[{index}].id: {too_large}")
        if callback_id and first.setdefault(callback_id, index) != index:
            raise InvalidRequestError(
                f"job.callbacks[{index}].id: {callback_id} is also job.callbacks"
                f"[{first[callback_id]}]'s; a job's callback ids are unique"
            )
    ids, next_id = [], 1
    for callback_id in given:
        if callback_id:
            ids.append(callback_id)
            continue
        while next_id in first:
            next_id += 1
        ids.append(next_id)
        next_id += 1
    return ids


def check_language(language: str) -> str | None:
    """None when a callback in ``language`` can run (any case, spaces around), else why not."""
    if _language(language) in _LANGUAGES:
        return None
    return f"{language!r} is not a callback language; expected {', '.join(_LANGUAGES)}"


def _language(language: str) -> str:
    return language.strip().lower()


def _spec(
    cb: Mapping[str, Any], callback_id: int, job: Mapping[str, Any], expr: Expr, mode: str
) -> dict[str, Any]:
    return {
        "id": callback_id,
        "triggers": str(cb.get("triggers") or ""),
        "language": _language(str(cb.get("language") or QUBE)),
        "code": str(cb.get("code") or ""),
        "user": str(cb.get("user") or job.get("user") or ""),
        "count": int(cb.get("count") or 0),
        "maximum": int(cb.get("maximum") or 0),
        "latches": [False] * len(atoms(expr)),
        "universal": bool(cb.get("universal", False)),
        "source": str(cb.get("source") or ""),
        "mode": mode,
    }


def surroundings(
    store: TriggerStore,
    place: JobPlace,
    job: Mapping[str, Any],
    exprs: Sequence[Expr],
    published: frozenset[str] | None,
) -> checks.Surroundings:
    """What the checks need around a registering job.

    The labels of its pgrp its atoms' checks read (``checks.labels_read``: a lookup each,
    so a registration costs the same in a big pgrp as in a small one; all of them when
    an atom names a label no job holds, which its check lists), the agendas of the jobs
    its triggers name.
    """
    found = [atom for expr in exprs for atom in atoms(expr)]
    own = [str(w["name"]) if isinstance(w, Mapping) else str(w) for w in job.get("agenda") or []]
    agendas: dict[int, Sequence[str]] = {place.job_id: own}
    with store.outside_transaction() as db:
        named = {label for atom in found for label in checks.labels_read(atom)}
        labels = TriggerStore.labels_among(db, place.pgrp, named)
        if any(
            atom.context_kind is ContextKind.LABEL
            and atom.context not in labels
            and atom.context != place.label
            for atom in found
        ):
            labels = TriggerStore.labels_of(db, place.pgrp)
        if place.label:
            labels[place.label] = place.job_id
        partial = checks.Surroundings(place, labels, {place.job_id: own}, published)
        for atom in found:
            job_id = checks.referenced_job(atom, partial)
            if atom.type is EventType.WORK and job_id is not None and job_id not in agendas:
                agendas[job_id] = states.agenda(db, job_id)
    return checks.Surroundings(place, labels, agendas, published)


class _Known:
    """The known states a level pass reads, each job's items loaded once."""

    def __init__(self, db: Db, place: JobPlace) -> None:
        self._db = db
        self._place = place
        # The holders of the labels looked up so far (not the pgrp's every label).
        self._labels: dict[str, int] = {}
        self._looked_up: set[str] = set()
        self._items: dict[tuple[int, str], dict[str, states.KnownState]] = {}

    def job_of(self, atom: Atom) -> int | None:
        if atom.context_kind is ContextKind.LABEL and atom.context not in self._looked_up:
            self._looked_up.add(atom.context)
            self._labels.update(
                TriggerStore.labels_among(self._db, self._place.pgrp, [atom.context])
            )
        where = checks.Surroundings(self._place, self._labels, {})
        return checks.referenced_job(atom, where)

    def items(self, job_id: int, type_: str) -> dict[str, states.KnownState]:
        key = (job_id, type_)
        if key not in self._items:
            self._items[key] = states.items(self._db, job_id, type_)
        return self._items[key]

    def mark(self, atom: Atom) -> SeenEvent | None:
        """The event that shows ``atom``'s event has already happened; None if it has not."""
        return self.mark_of(atom, self.job_of(atom))

    def mark_of(self, atom: Atom, job_id: int | None) -> SeenEvent | None:
        """``mark`` of an atom known to name job ``job_id``."""
        if job_id is None or atom.is_timed:
            return None
        type_ = atom.type.value
        if atom.type is EventType.JOB:
            known = states.state(self._db, job_id, type_)
            if known is None and atom.name is EventName.SUBMIT:
                # A job never registered whose submit event came: its submission.
                return states.submission(self._db, job_id)
            candidates = [("", known)] if known is not None else []
        elif atom.type in (EventType.WORK, EventType.SUBJOB):
            found = self.items(job_id, type_)
            if atom.extra == WILDCARD:
                candidates = list(found.items())
                if atom.type is EventType.SUBJOB:  # instance ids in number order
                    candidates.sort(key=lambda candidate: (len(candidate[0]), candidate[0]))
            else:
                candidates = [(atom.extra, found[atom.extra])] if atom.extra in found else []
        else:
            return None
        # A ``*`` atom fires with the latest of its items' events, as the README says.
        # A state a registration gave has no time (0.0; an event since it is later): of
        # those, the last in agenda (instance) order.
        latest: SeenEvent | None = None
        for item, known in candidates:
            if happened(atom, [known.state]):
                if atom.name is EventName.SUBMIT:
                    return SeenEvent(Event("submit", "job", job_id), 0.0)
                seen = states.seen_or_registered(known, job_id, type_, item)
                if latest is None or seen.at >= latest.at:
                    latest = seen
        return latest


def level_pass(
    db: Db,
    decider: Decider,
    cb: StoredCallback,
    expr: Expr,
    place: JobPlace,
    agenda: Sequence[str],
) -> None:
    """Level mode's first evaluation of a new callback, in its registration's transaction."""
    known = _Known(db, place)
    if not per_work(expr):
        after = decider.level(cb, expr, [known.mark(atom) for atom in atoms(expr)])
        if after is not None:
            TriggerStore.save_state(db, cb.rowid, after.count, after.latches, after.latched_by)
        return
    # What latched for every item: the state an item with no state yet starts from (the
    # items events will name without an agenda; those a registration adds to one).
    shared = [None if atom.per_work else known.mark(atom) for atom in atoms(expr)]
    if not agenda:
        unnamed = decider.level_unnamed(cb, expr, shared)
        if unnamed is not None:
            TriggerStore.save_state(db, cb.rowid, 0, unnamed.latches, unnamed.latched_by)
        return
    total = 0
    for item in agenda:
        item_expr = substitute_all(expr, item)
        marks = [known.mark(atom) for atom in atoms(item_expr)]
        after = decider.level(cb, item_expr, marks, item)
        if after is not None:
            items.save(db, cb.rowid, item, after)
            total += after.count
    if any(mark is not None for mark in shared):
        latches = [mark is not None for mark in shared]
        TriggerStore.save_state(db, cb.rowid, total, latches, shared)
    elif total:
        TriggerStore.save_count(db, cb.rowid, total)


def store_job(
    db: Db,
    job: Mapping[str, Any],
    specs: Sequence[Mapping[str, Any]],
    kept_as: Sequence[StoredCallback | None],
    previous: Sequence[StoredCallback],
) -> bool:
    """Replace what is stored of the job and its known states; True when it was not known.

    The callbacks of its last registration (``previous``) that this one does not keep
    (``continued``) go. Those it keeps stay in their rows, with their work items, for
    the engine to rewrite in place (``TriggerStore.rewrite_callback``): their index rows
    and timers go, and a kept row whose id moves takes an id no callback has meanwhile.
    """
    job_id = int(job["id"])
    first_time = states.state(db, job_id, states.JOB) is None
    kept = {cb.rowid for cb in kept_as if cb is not None}
    TriggerStore.delete_callbacks(db, [cb.rowid for cb in previous if cb.rowid not in kept])
    TriggerStore.unindex_callbacks(db, kept)
    TriggerStore.set_callback_ids_aside(
        db,
        [
            cb.rowid
            for spec, cb in zip(specs, kept_as, strict=True)
            if cb is not None and cb.callback_id != spec["id"]
        ],
    )
    TriggerStore.put_job(db, {k: v for k, v in job.items() if k != "callbacks"})
    states.register_job(db, job)
    return first_time


def take_registration(
    db: Db, decider: Decider, place: JobPlace, parsed: Callable[[str], Expr]
) -> None:
    """A job registered for the first time: other jobs' level callbacks latch its states.

    The same rule as a level callback's own registration, from the other side: each
    atom of theirs that names the job (by id, as a parent, by the label it registers
    with) latches what the job's states show has happened (``_Known.mark``), and fires
    what that makes true, at once, as had the job registered first. Its submission too:
    for level mode a job's registration is its submission ("submit: any job the engine
    knows"), and its submit event latches level callbacks no more
    (decide.Decider.matched), so one submission fires them once.

    When its submit event came before it registered (a job the engine was not given
    then, whose submission it remembered: states.submission), its events reached the
    callbacks naming it by id as they came, and those took the remembered submission in
    their level pass: its registration is the same submission and the same states, and
    only the callbacks naming it by the label it registers with, which could not see
    them, take it now. Edge callbacks wait for the next such event, as ever.
    """
    scopes = scopes_of(place)
    if states.take_submission(db, place.job_id):  # its states take over from here
        scopes = [scope for scope in scopes if scope_label(scope) is not None]
    hits, callbacks = TriggerStore.level_atoms_naming(db, scopes, HAPPENED_NAMES, place.job_id)
    slots: dict[int, set[int]] = {}
    for rowid, slot in hits:
        slots.setdefault(rowid, set()).add(slot)
    known = _Known(db, place)
    reason = f"the registration of job {place.job_id}"
    for cb in sorted(callbacks.values(), key=firing_order):
        expr = parsed(cb.triggers)
        naming = slots[cb.rowid]

        def mark(slot: int, atom: Atom, naming: set[int] = naming) -> SeenEvent | None:
            return known.mark_of(atom, place.job_id) if slot in naming else None

        if per_work(expr):
            _take_per_work(db, decider, cb, expr, mark, reason)
            continue
        marks = [mark(slot, atom) for slot, atom in enumerate(atoms(expr))]
        start = WorkState(cb.count, cb.latches, cb.marks)
        after = decider.level(cb, expr, marks, start=start, reason=reason)
        if after is not None:
            TriggerStore.save_state(db, cb.rowid, after.count, after.latches, after.latched_by)


def _take_per_work(
    db: Db,
    decider: Decider,
    cb: StoredCallback,
    expr: Expr,
    mark: Callable[[int, Atom], SeenEvent | None],
    reason: str,
) -> None:
    """``take_registration`` for a ``{work}`` callback, as ``level_pass`` would have latched.

    Its agenda's items (without one, the items events have named) latch what they
    would have; a ``{work}`` atom only with an agenda, as in ``level_pass``.
    """
    found = atoms(expr)
    size = len(found)
    agenda = states.agenda(db, cb.job_id)
    held = items.held(db, cb.rowid, size)
    total = cb.count
    for item in agenda or list(held):
        item_expr = substitute_all(expr, item)
        marks = [
            mark(slot, atom) if agenda or not found[slot].per_work else None
            for slot, atom in enumerate(atoms(item_expr))
        ]
        start = items.or_unnamed(held.get(item) or WorkState.fresh(size), cb)
        after = decider.level(cb, item_expr, marks, item, start=start, reason=reason)
        if after is not None:
            items.save(db, cb.rowid, item, after)
            total += after.count - start.count
    # What latched for every item: the state an item not named yet starts from.
    shared = [None if atom.per_work else mark(slot, atom) for slot, atom in enumerate(found)]
    unnamed = decider.level_unnamed(
        cb, expr, shared, start=items.unnamed(cb), reason=reason, told=not agenda
    )
    if unnamed is not None:
        TriggerStore.save_state(db, cb.rowid, total, unnamed.latches, unnamed.latched_by)
    elif total != cb.count:
        TriggerStore.save_count(db, cb.rowid, total)


__all__ = [
    "LEVEL",
    "Registration",
    "callback_specs",
    "continued",
    "keep_journal",
    "level_pass",
    "store_job",
    "surroundings",
    "take_registration",
]
