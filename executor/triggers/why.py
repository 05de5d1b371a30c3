"""Why a job's callbacks did or did not fire: each trigger's atoms resolved, latched, waited for.

Read-only over the store. For each callback: the trigger as written and canonical, every
atom with the job its context names now (label -> job id and pgrp, ``parent`` -> job
id), its latch and the event that set it, what the trigger still waits for in words
(``residual`` over the latches, each open atom with its job and that object's last
known state; a clock atom's timer as stored: when it is next due, or, without one,
why: it fired, or its clock was stopped), the checks registration found, and the
newest journal entries. A ``{work}`` callback shows its work items compactly: up to
``MAX_ITEMS_IN_FULL`` items holding a latch each in full with its atoms, the others
grouped by latches and count (one item in full on request). Of the job, the universal
lines loaded now that it does not hold (the engine words it: ``not_attached``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from executor.bounds import MAX_NAME_CHARS, cut
from executor.errors import ChangedMeanwhileError, InvalidRequestError, NotFoundError
from executor.sql import Db
from executor.triggers import checks, items, journal, states, submissions
from executor.triggers.evaluate import (
    HAPPENED_NAMES,
    JobPlace,
    happened,
    live_residual,
    residual,
    spent,
)
from executor.triggers.explain import (
    describe_atom,
    describe_job,
    unresolved_label,
)
from executor.triggers.items import WorkState
from executor.triggers.journal import JournalEntry, SeenEvent
from executor.triggers.nodes import (
    WILDCARD,
    Atom,
    ContextKind,
    EventName,
    EventType,
    Expr,
    atoms,
    per_work,
    render,
    render_atom,
    substitute_all,
)
from executor.triggers.store import TriggerStore
from executor.triggers.store_rows import EDGE, StoredCallback
from executor.triggers.universal import MAX_UNIVERSAL_LINES
from executor.visible_text import printable

# Up to this many work items holding latches are explained one by one (with their atoms
# and the events that set them); more are grouped by latches and count, like the rest.
MAX_ITEMS_IN_FULL: Final = 10
# The most callbacks one explanation holds (a page; the next starts after its last id):
# about 0.1 s of reads and 0.5 MB of answer for callbacks of one or two atoms.
MAX_CALLBACKS_EXPLAINED: Final = 1000
# A job without the callback asked for: its ids are listed, this many at most.
MAX_IDS_LISTED: Final = 20
# A callback's journal entries past those shown are counted up to this many ("10000 or more").
MAX_JOURNAL_COUNTED: Final = 10_000


@dataclass(frozen=True, slots=True)
class AtomExplanation:
    """One atom of a trigger as things stand.

    Attributes:
        slot: Its latch slot.
        atom: Canonical text (an item's, when explaining one work item).
        description: In words (``describe_atom``).
        job_id, pgrp: The job its context names now; 0 when none.
        resolution: In words, how the context resolved (or why it did not).
        latched: Its latch.
        latched_by: The event that set the latch; None when not latched (or unknown).
        state: In words, the last known state of the object it watches ("" if none);
            for a clock atom without a timer, why (it fired, or its clock was stopped).
        next_due_unix: A clock atom's timer: when it is next due, as stored (Unix
            seconds); 0 when it has none (and for other atoms).
    """

    slot: int
    atom: str
    description: str
    job_id: int
    pgrp: int
    resolution: str
    latched: bool
    latched_by: SeenEvent | None
    state: str
    next_due_unix: float = 0.0


@dataclass(frozen=True, slots=True)
class _Clocks:
    """A callback's timers as the store holds them: its clock atoms' real state."""

    due: Mapping[int, float]  # slot -> next due; a clock atom's slot missing: no timer
    universal: bool
    spent: bool

    def state(self, slot: int, atom: Atom, latched: bool) -> str:
        """Why a clock atom has no timer, in words ("" when it has one, or is no clock)."""
        if not atom.is_timed or slot in self.due:
            return ""
        if self.spent:
            return "its clock is stopped: the callback is spent"
        again = "" if latched else "; it will not latch again"
        if "-" not in atom.extra:  # a one-shot's timer goes when it fires
            if self.universal:
                return (
                    "its clock has fired (a time fires once), or was stopped when its"
                    f" callbacks.conf line was removed by a reload{again}"
                )
            return f"its clock has fired (a time fires once){again}"
        if self.universal:
            return (
                "its clock is stopped: its callbacks.conf line was removed by a reload (it"
                f" ticks again once a reload has the line back){again}"
            )
        return f"its clock is stopped: no tick is scheduled{again}"


@dataclass(frozen=True, slots=True)
class WorkExplanation:
    """Work items of a ``{work}`` callback in the same state (one item when it holds latches).

    ``atoms`` is filled for a single item only.
    """

    work_names: tuple[str, ...]
    count: int
    latches: tuple[bool, ...]
    spent: bool
    waiting: str
    waiting_for: tuple[str, ...]
    atoms: tuple[AtomExplanation, ...] = ()


@dataclass(frozen=True, slots=True)
class CallbackExplanation:
    """One callback: its atoms, what it waits for, its work items, checks and journal."""

    callback: StoredCallback
    canonical: str
    per_work: bool
    atoms: tuple[AtomExplanation, ...]
    spent: bool
    # Canonical residual of the trigger ("" when spent or true); for a {work} callback,
    # that of an item no event has named (items.unnamed), with the placeholder.
    waiting: str
    waiting_for: tuple[str, ...]
    work: tuple[WorkExplanation, ...]
    journal: tuple[JournalEntry, ...]
    checks: tuple[checks.Check, ...]
    # Its atoms past the request's ``max_atoms``: not explained (nor their waiting_for lines).
    atoms_left_out: int = 0
    # Why each of its firings is refused (REJECTED, not run) as things stand ("" when they
    # run), and whether they run as a shadow: the engine's (``TriggerEngine.firing_refusal``),
    # which knows the universal set loaded and the policies; the store does not.
    refusal: str = ""
    shadow: bool = False
    # Its entries kept past those in ``journal`` (counted up to MAX_JOURNAL_COUNTED).
    journal_left_out: int = 0


@dataclass(frozen=True, slots=True)
class JobExplanation:
    """A registered job and its callbacks (those asked for), explained."""

    job_id: int
    name: str
    label: str
    pgrp: int
    callbacks: tuple[CallbackExplanation, ...]
    # Checks about the job itself (its label).
    checks: tuple[checks.Check, ...]
    # How many callbacks the job has, and (when ``callbacks`` is one page of them and more
    # follow) the id the next page starts after; 0 when none follow.
    total_callbacks: int = 0
    next_after_callback_id: int = 0
    # Which registration of the job this describes (TriggerStore.put_job's number): the
    # pages after the first name it, so that no answer mixes two registrations' pages.
    registration: int = 0
    # The universal lines loaded now that this registration does not hold, in words
    # (``UniversalSet.not_attached``); "" when it holds them all.
    universal_not_attached: str = ""


def explain_job(
    store: TriggerStore,
    job_id: int,
    callback_id: int = 0,
    *,
    work_name: str = "",
    journal_limit: int,
    parsed: Callable[[str], Expr],
    after_callback_id: int = 0,
    limit: int,
    registration: int = 0,
    max_atoms: int = 0,
    not_attached: Callable[[list[tuple[str, str]]], str] | None = None,
) -> JobExplanation:
    """Explain a job's callbacks: those with ids above ``after_callback_id``, at most ``limit``.

    One of them when ``callback_id``; one work item of a ``{work}`` callback when
    ``work_name``. Of each callback the first ``max_atoms`` atoms (0: all): each atom
    costs reads, and a legal trigger holds thousands. Blocks for as long as the reads
    take (a page of a big job: a fraction of a second): call it on a worker thread. It reads on a snapshot connection
    (``TriggerStore.snapshot``), so it holds no lock that events or the loop wait for.
    ``registration`` (a page after the first: the first page's): the registration the
    answer must describe; 0 for the job as it stands. ``not_attached``: the universal
    lines loaded now that the job's universal callbacks (source, trigger) are not, in
    words (``UniversalSet.not_attached``); read from the same snapshot as the rest.

    Raises:
        NotFoundError: the job or the callback is not registered.
        ChangedMeanwhileError: the job was registered again since ``registration``.
    """
    with store.snapshot() as db:
        job = TriggerStore.head_in(db, job_id)
        current = TriggerStore.registration_in(db, job_id)
        if job is None or current is None:
            raise NotFoundError(
                f"job {job_id} is not registered with the trigger engine (never, or removed)"
            )
        if registration > current:  # numbers only grow: this job never had it
            raise InvalidRequestError(
                f"registration {registration}: job {job_id} has never been at it (it is at"
                f" {current}); name the registration its first page was answered with, or 0"
            )
        if registration and registration != current:
            raise ChangedMeanwhileError(
                f"job {job_id} was registered again since the first page was read "
                f"(registration {registration} asked for, the job is at {current} now): "
                "pages of two registrations would not be one answer; start over from the "
                "first page (after_callback_id and registration 0)"
            )
        if callback_id:
            page, total = TriggerStore.callbacks_page(db, job_id, after=callback_id - 1, limit=1)
            callbacks = [cb for cb in page if cb.callback_id == callback_id]
            if not callbacks:
                known, _ = TriggerStore.callbacks_page(db, job_id, limit=MAX_IDS_LISTED)
                raise NotFoundError(
                    f"job {job_id} has no callback {callback_id} (its callbacks: "
                    f"{_ids_listed([cb.callback_id for cb in known], total)})"
                )
            more = False
        else:
            page, total = TriggerStore.callbacks_page(
                db, job_id, after=after_callback_id, limit=limit + 1
            )
            callbacks, more = page[:limit], len(page) > limit
        place = job.place
        agenda = states.agenda(db, job_id)
        if len(work_name) > MAX_NAME_CHARS:
            # No stored name is longer, nor an event's: a job without an agenda, which
            # takes any name, answered one of 16 MiB at 13 times its size (probe 166).
            raise NotFoundError(
                f"job {job_id} has no work item {cut(work_name, 60)!r}: it is"
                f" {len(work_name)} characters, and a work item's name is at most"
                f" {MAX_NAME_CHARS}"
            )
        if work_name and agenda and work_name not in agenda:
            raise NotFoundError(
                f"job {job_id} has no work item {work_name!r} (its agenda: {_listed(agenda)})"
            )
        ids = (callbacks[0].callback_id, callbacks[-1].callback_id) if callbacks else (0, 0)
        found = checks.of_job(db, job_id, callback_ids=ids)
        view = _View(db, place)
        by_callback: dict[int, list[checks.Check]] = {}
        for stored in found:
            # As the label stands now, as the atoms are: it may have moved since.
            check = checks.as_it_stands(stored, view.holder(stored.pgrp, stored.label))
            by_callback.setdefault(check.callback_id, []).append(check)
        unattached = (
            not_attached(TriggerStore.universal_lines_of(db, job_id, most=MAX_UNIVERSAL_LINES))
            if not_attached is not None
            else ""
        )
        explained = tuple(
            _callback(
                db,
                view,
                cb,
                parsed(cb.triggers),
                work_name=work_name,
                journal_limit=journal_limit,
                checks_found=tuple(by_callback.get(cb.callback_id, ())),
                max_atoms=max_atoms,
            )
            for cb in callbacks
        )
    return JobExplanation(
        job_id=job_id,
        name=job.name,
        label=place.label,
        pgrp=place.pgrp,
        callbacks=explained,
        checks=tuple(by_callback.get(0, ())),
        total_callbacks=total,
        next_after_callback_id=callbacks[-1].callback_id if more else 0,
        registration=current,
        universal_not_attached=unattached,
    )


class _View:
    """What is known around the job: places, labels and states, each read once."""

    def __init__(self, db: Db, owner: JobPlace) -> None:
        self.db = db
        self.owner = owner
        self.labels = TriggerStore.labels_of(db, owner.pgrp)
        self._places: dict[int, JobPlace | None] = {}

    def holder(self, pgrp: int, label: str) -> int | None:
        """The job holding ``label`` in ``pgrp`` now (None: none, or no label)."""
        if not label:
            return None
        if pgrp == self.owner.pgrp:
            return self.labels.get(label)
        return TriggerStore.labels_among(self.db, pgrp, [label]).get(label)

    def place(self, job_id: int) -> JobPlace | None:
        if job_id not in self._places:
            head = TriggerStore.head_in(self.db, job_id)
            self._places[job_id] = None if head is None else head.place
        return self._places[job_id]

    def resolve(self, atom: Atom) -> tuple[int, str]:
        """(job id or 0, the resolution in words) of an atom's context."""
        owner = self.owner
        kind = atom.context_kind
        if kind is ContextKind.NONE:
            return 0, "no job (a global atom)"
        if atom.is_timed:
            # A job's timer fires in its own context, whatever context a trigger stored
            # before other contexts were refused names.
            kind = ContextKind.SELF
        if kind is ContextKind.PARENT and not owner.pid:
            return 0, f"no parent: job {owner.job_id} has pid 0"
        if kind is ContextKind.LABEL and atom.context not in self.labels:
            return 0, unresolved_label(atom.context, owner.pgrp, list(self.labels))
        job_id = {
            ContextKind.SELF: owner.job_id,
            ContextKind.PARENT: owner.pid,
            ContextKind.JOB_ID: int(atom.context) if kind is ContextKind.JOB_ID else 0,
            ContextKind.LABEL: self.labels.get(atom.context, 0),
        }[kind]
        words = describe_job(job_id, self.place(job_id))
        if kind is ContextKind.SELF:
            words = f"this job: {words}"
        elif kind is ContextKind.PARENT:
            words = f"parent: {words}"
        return job_id, words

    def state(self, atom: Atom, job_id: int) -> str:
        """The last known state of what the atom watches, in words ("" when nothing to say)."""
        if not job_id or atom.is_timed or self.place(job_id) is None:
            return ""
        if atom.type is EventType.JOB:
            known = states.state(self.db, job_id, "job")
            return f"job {job_id} is {known.state}" if known and known.state else ""
        if atom.type not in (EventType.WORK, EventType.SUBJOB):
            return ""
        noun = "work" if atom.type is EventType.WORK else "instance"
        if atom.extra == WILDCARD:
            known_items = states.items(self.db, job_id, atom.type.value).values()
            tally = Counter(k.state or "no event yet" for k in known_items)
            if not tally:
                return f"no {noun} item of job {job_id} is known"
            parts = ", ".join(f"{n} {state}" for state, n in sorted(tally.items()))
            return f"its {noun} items: {parts}"
        known = states.state(self.db, job_id, atom.type.value, atom.extra)
        if known is None and atom.type is EventType.WORK and states.agenda_known(self.db, job_id):
            return f"{noun} {atom.extra} is not known (not in job {job_id}'s agenda)"
        if known is None:  # the items an event names are the job's (items.py)
            if atom.type is EventType.SUBJOB:
                return f"no event of {noun} {atom.extra} yet"
            return (
                f"no event of {noun} {atom.extra} yet (job {job_id} was registered without"
                " an agenda: any work name counts)"
            )
        return f"{noun} {atom.extra} is {known.state or 'in the agenda, no event seen yet'}"

    def atom(
        self, slot: int, atom: Atom, latched: bool, mark: SeenEvent | None, clocks: _Clocks
    ) -> AtomExplanation:
        job_id, resolution = self.resolve(atom)
        place = self.place(job_id) if job_id else None
        if atom.is_timed:
            state = clocks.state(slot, atom, latched)
        else:
            state = "" if atom.per_work else self.state(atom, job_id)
        return AtomExplanation(
            slot=slot,
            atom=render_atom(atom),
            description=describe_atom(atom),
            job_id=job_id,
            pgrp=place.pgrp if place else 0,
            resolution=resolution,
            latched=latched,
            latched_by=mark if latched else None,
            state=state,
            next_due_unix=clocks.due.get(slot, 0.0) if atom.is_timed else 0.0,
        )


def _waiting_for(
    view: _View,
    cb: StoredCallback,
    count: int,
    expr: Expr,
    explained: Sequence[AtomExplanation],
    latches: Sequence[bool],
) -> tuple[str, tuple[str, ...]]:
    """(canonical residual, one line per open atom) of a latch vector.

    A clock atom whose timer is gone (a time that fired, a stopped clock), and a submit
    atom whose submission was seen (submissions.py: a job is submitted once), will not
    latch again: the ways through them are left out of both, and a trigger with no
    other way says first that it will not fire again (a universal line's clock, until a
    reload brings the line back and its clocks with it).
    """
    rest, open_slots = residual(expr, latches)
    if rest is None:
        return "", ()
    found = atoms(expr)
    level = cb.mode != EDGE
    shown = [slot for slot in open_slots if slot < len(explained)]
    submitted = {
        slot
        for slot in shown
        if submissions.is_submit(found[slot])
        and _already(view, found[slot], explained[slot].job_id, level=level)
    }
    never = submitted | {slot for slot in shown if found[slot].is_timed and explained[slot].state}
    lines = []
    if never:
        live = live_residual(expr, latches, never)
        if live is None:  # no way left: say so, and keep what it would have needed
            named = ", ".join(explained[slot].atom for slot in sorted(never))
            # A reload brings its clocks back; a submission never comes again.
            revived = cb.universal and live_residual(expr, latches, submitted) is not None
            until = " unless a reload brings its callbacks.conf line back" if revived else ""
            lines.append(
                f"it will not fire again{until}: it needs {named}, which will not latch again"
            )
        else:
            rest, open_slots = live
    for slot in open_slots:
        if slot >= len(explained):  # past max_atoms: not explained, counted in atoms_left_out
            break
        item = explained[slot]
        words = ", ".join(part for part in (item.resolution, item.state) if part)
        line = f"{item.atom}: {words}" if words else f"{item.atom}: {item.description}"
        if _already(view, found[slot], item.job_id, level=level):
            if found[slot].name is EventName.SUBMIT:
                # Nothing submits a job twice: there is no next such event to wait for.
                line += " (already happened; a job is submitted once, so it will not come again)"
            elif cb.mode == EDGE and count == 0:
                # Never fired and not latched: the event came before the callback could see it.
                line += (
                    " (already happened before it could latch: edge-triggered, this waits for"
                    f" the next such event; {_LEVEL_RULE})"
                )
            elif count == 0:
                # Level, never fired: the state came in a way it does not latch.
                reason = _submitted_first(view, found[slot], item.job_id) or _LEVEL_RULE
                line += f" (already happened, but not latched: {reason}; this waits for the next such event)"
            else:
                line += " (already happened; this waits for the next such event)"
        elif cb.mode != EDGE and (unknown := _not_registered(view, found[slot], item.job_id)):
            line += f" ({unknown})"
        lines.append(line)
    return render(rest), tuple(lines)


# The atoms whose events leave a state the engine keeps (of a registered job).
_STATE_TYPES: Final = frozenset({EventType.JOB, EventType.WORK, EventType.SUBJOB})
# What level mode latches besides the events that come after it registers.
_LEVEL_RULE: Final = (
    "a level callback latches what has happened when it registers and when the job"
    " it names first registers"
)


def _submitted_first(view: _View, atom: Atom, job_id: int) -> str:
    """Why a level callback's atom naming a job by id or as a parent took none of its states.

    A job submitted before it first registered (states.submitted_first): those callbacks
    had its events as they came, and its registrations latch none of them
    (registration.take_registration). "" for any other atom, or job.
    """
    how = {ContextKind.JOB_ID: "by id", ContextKind.PARENT: "as a parent"}.get(atom.context_kind)
    if how is None or not states.submitted_first(view.db, job_id):
        return ""
    return (
        f"job {job_id} was submitted before it first registered, and a level callback naming"
        f" it {how} had its events as they came, so that registration latched only those"
        " naming it by the label it registers with"
    )


def _not_registered(view: _View, atom: Atom, job_id: int) -> str:
    """For a level callback's atom on a job not registered here: why it did not latch.

    The engine keeps no state of such a job, only its submission (states.py), so an
    event of it from before the callback registered is not known. "" for any other atom.
    """
    if not job_id or atom.type not in _STATE_TYPES or view.place(job_id) is not None:
        return ""
    if atom.name is EventName.SUBMIT or atom.name.value not in HAPPENED_NAMES:
        return ""
    words = (
        f"the engine keeps no state of job {job_id}, only its submission: a {atom.name.value}"
        " event of it from before this callback registered is not known; this waits for"
        " the next such event"
    )
    if states.submission(view.db, job_id) is None:
        # Not submitted here yet: its first registration is taken as its states.
        words += ", or its registration with that state"
    return words


def _already(view: _View, atom: Atom, job_id: int, *, level: bool) -> bool:
    """Whether the atom's event has happened (a submission: as a callback of that mode takes it)."""
    if not job_id or atom.per_work or atom.extra == WILDCARD or atom.is_timed:
        return False
    if submissions.is_submit(atom):
        return submissions.seen(view.db, job_id, level=level)
    item = "" if atom.type is EventType.JOB else atom.extra
    known = states.state(view.db, job_id, atom.type.value, item)
    return known is not None and happened(atom, [known.state])


def _callback(
    db: Db,
    view: _View,
    cb: StoredCallback,
    expr: Expr,
    *,
    work_name: str,
    journal_limit: int,
    checks_found: tuple[checks.Check, ...],
    max_atoms: int = 0,
) -> CallbackExplanation:
    found = atoms(expr)
    shown = found[:max_atoms] if max_atoms else found
    work: tuple[WorkExplanation, ...] = ()
    is_spent = not per_work(expr) and spent(cb.count, cb.maximum)
    # Its clock atoms as their timers stand: a time that fired, or a clock a reload
    # stopped, has none, and is due no more (the atom's text alone would say it is).
    clocks = _Clocks(
        TriggerStore.timers_of(db, cb.rowid) if any(atom.is_timed for atom in shown) else {},
        cb.universal,
        is_spent,
    )
    if per_work(expr):
        # As an item no event has named stands (what latched for every item, if anything).
        unnamed = items.unnamed(cb)
        explained = tuple(
            view.atom(slot, atom, unnamed.latches[slot], unnamed.latched_by[slot], clocks)
            for slot, atom in enumerate(shown)
        )
        rest, open_slots = residual(expr, unnamed.latches)
        waiting = "" if rest is None else render(rest)
        waiting_for = tuple(
            _unnamed_line(explained[slot], shown[slot])
            for slot in open_slots
            if slot < len(explained)
        )
        work = _work_items(db, view, cb, expr, work_name, max_atoms, clocks)
    else:
        marks = cb.marks
        explained = tuple(
            view.atom(slot, atom, cb.latches[slot], marks[slot], clocks)
            for slot, atom in enumerate(shown)
        )
        waiting, waiting_for = (
            ("", ()) if is_spent else _waiting_for(view, cb, cb.count, expr, explained, cb.latches)
        )
    one_item = work_name if work_name and per_work(expr) else None
    entries = journal.read(db, cb.job_id, cb.callback_id, limit=journal_limit, work_name=one_item)
    # A full page may not be all: a {work} callback keeps entries per item, the journal
    # shown is the newest of them all.
    left_out = (
        journal.counted_past(
            db,
            cb.job_id,
            cb.callback_id,
            past=len(entries),
            most=MAX_JOURNAL_COUNTED,
            work_name=one_item,
        )
        if len(entries) >= journal_limit
        else 0
    )
    return CallbackExplanation(
        callback=cb,
        canonical=render(expr),
        per_work=per_work(expr),
        atoms=explained,
        spent=is_spent,
        waiting=waiting,
        waiting_for=waiting_for,
        work=work,
        journal=tuple(entries),
        checks=checks_found,
        atoms_left_out=len(found) - len(shown),
        journal_left_out=left_out,
    )


def _ids_listed(ids: list[int], total: int) -> str:
    if not ids:
        return "none"
    shown = ", ".join(map(str, ids[:MAX_IDS_LISTED]))
    return shown + (f", ... ({total} callbacks)" if total > MAX_IDS_LISTED else "")


def _listed(names: list[str], most: int = 10) -> str:
    shown = ", ".join(map(printable, names[:most]))  # a submitter's names: kept on one line
    return shown + (f", ... ({len(names)} items)" if len(names) > most else "")


def _unnamed_line(item: AtomExplanation, atom: Atom) -> str:
    """An open atom of an item no event has named: its context, and a clock's timer's state."""
    line = f"{item.atom}: {item.resolution}"
    return f"{line}, {item.state}" if atom.is_timed and item.state else line


def _work_items(
    db: Db,
    view: _View,
    cb: StoredCallback,
    expr: Expr,
    work_name: str,
    max_atoms: int,
    clocks: _Clocks,
) -> tuple[WorkExplanation, ...]:
    size = len(atoms(expr))
    held = items.held(db, cb.rowid, size)
    if work_name:
        state = held.get(work_name, items.unnamed(cb))
        return (_one_item(view, cb, expr, work_name, state, max_atoms, clocks),)
    agenda = states.agenda(db, cb.job_id)
    # The agenda as a set once: made per held item, 1,000 latched items of a 100,000-frame
    # job took 5 s of each explanation (the dashboard's jobs page asks at every refresh).
    in_agenda = set(agenda)
    names = [*agenda, *(name for name in held if name not in in_agenda)]
    latched = [name for name in names if name in held and any(held[name].latches)]
    single: list[WorkExplanation] = []
    if len(latched) <= MAX_ITEMS_IN_FULL:
        single = [
            _one_item(view, cb, expr, name, held[name], max_atoms, clocks) for name in latched
        ]
    groups: dict[tuple[int, tuple[bool, ...]], list[str]] = {}
    for name in names:
        state = held.get(name, items.unnamed(cb))
        if single and name in latched:
            continue
        groups.setdefault((state.count, state.latches), []).append(name)
    grouped = []
    for (count, latches), members in sorted(groups.items(), key=lambda g: (-sum(g[0][1]), g[0][0])):
        is_spent = spent(count, cb.maximum)
        rest, _ = residual(expr, latches)
        grouped.append(
            WorkExplanation(
                work_names=tuple(members),
                count=count,
                latches=latches,
                spent=is_spent,
                waiting="" if is_spent or rest is None else render(rest),
                waiting_for=(),
            )
        )
    return (*single, *grouped)


def _one_item(
    view: _View,
    cb: StoredCallback,
    expr: Expr,
    name: str,
    state: WorkState,
    max_atoms: int,
    clocks: _Clocks,
) -> WorkExplanation:
    item_expr = substitute_all(expr, name)
    found = atoms(item_expr)
    explained = tuple(
        view.atom(slot, atom, state.latches[slot], state.latched_by[slot], clocks)
        for slot, atom in enumerate(found[:max_atoms] if max_atoms else found)
    )
    is_spent = spent(state.count, cb.maximum)
    waiting, waiting_for = (
        ("", ())
        if is_spent
        else _waiting_for(view, cb, state.count, item_expr, explained, state.latches)
    )
    return WorkExplanation(
        work_names=(name,),
        count=state.count,
        latches=state.latches,
        spent=is_spent,
        waiting=waiting,
        waiting_for=waiting_for,
        atoms=explained,
    )
