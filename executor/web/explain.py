"""What each callback of a job still waits for, in words: the jobs page's one plug-in point.

The dashboard asks the trigger engine (``explain_from_engine``: its ExplainCallbacks
RPC, what ``cbexec triggers why`` prints): each atom's resolved context (a label as a
job id and pgrp, ``parent`` as a job id), the last known state of what it watches,
what the trigger still waits for, per work item for a ``{work}`` callback (with each
item's latches and count, which the page draws as a strip), and the callback's recent
journal. For a job the engine no longer knows it falls back to
``explain_from_latches``, which reads what ListRegisteredJobs already answered (the
trigger, each atom's latch, count and maximum) and names the atoms whose events have not
happened yet in the engine's own words (``triggers.explain.describe_atom``); so does
each callback past the first answer of a job with more callbacks than one answer holds
(1000: one call per job shown). The pages only read ``Explanation``, and of the job
the notes the engine adds (``JobExplanations.notes``: the universal lines loaded since
it registered, which it does not hold).

Bounded by what a page shows, not by what is registered: a callback's first
``MAX_ATOMS_SHOWN`` atoms only (a legal trigger holds thousands, and the engine reads
each one's context and state: 150 callbacks of 2,500 atoms made a 120 MB answer and held
the jobs page past its deadline), and from the engine only the callbacks, in id order,
whose triggers fit in ``EXPLAINED_TRIGGER_BYTES`` (the rows a job shows take no more);
others are explained from their latches when a row shows them, not all beforehand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from executor import triggers
from executor.triggers.explain import describe_atom
from executor.triggers.nodes import And, Atom, Expr, render_atom
from executor.triggers.why import MAX_CALLBACKS_EXPLAINED
from executor.web.frame_strip import times

# What a {work} callback waits for: at most this many lines of its item groups (a job of
# 100,000 frames in many states has as many groups), then how many more there are.
MAX_WORK_ITEM_LINES: Final = 12
# A callback's atoms explained and shown; past them the row says how many it left out.
MAX_ATOMS_SHOWN: Final = 50
# What a callback waits for, in words from its latches: at most this many atoms named.
MAX_WORDS_ATOMS: Final = MAX_ATOMS_SHOWN
# The engine explains a job's callbacks, in id order, while their triggers take this
# many bytes, and the one past them: a job's rows take no more (jobs_pages.JOB_BUDGET_BYTES).
EXPLAINED_TRIGGER_BYTES: Final = 256 << 10


@dataclass(frozen=True, slots=True)
class AtomState:
    """One atom of a trigger: as written, in words, and whether its event has happened."""

    text: str
    words: str
    latched: bool


@dataclass(frozen=True, slots=True)
class WorkItems:
    """Work items of a ``{work}`` callback in one state (ExplainCallbacks' work_items)."""

    names: tuple[str, ...]
    # How many times each fired, and its latches (one per atom of the trigger).
    count: int
    latches: tuple[bool, ...]
    # They fired the callback's maximum (per item).
    spent: bool
    # What they still wait for, canonical ("" when spent).
    waiting: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """What a callback is waiting for, for a person."""

    atoms: tuple[AtomState, ...]
    # In plain words; "" when nothing is missing (the trigger is spent, or cannot be read).
    waiting_for: str
    # It fired ``maximum`` times and never fires again.
    spent: bool = False
    # Recent engine journal lines (ExplainCallbacks); empty from the latches alone.
    journal: tuple[str, ...] = ()
    # A {work} callback's items, each with its own latches and count (ExplainCallbacks);
    # empty from the latches alone, which hold only what an unnamed item starts from.
    items: tuple[WorkItems, ...] = ()
    # Atoms past MAX_ATOMS_SHOWN: not in ``atoms``, nor named in ``waiting_for``.
    atoms_left_out: int = 0


@lru_cache(maxsize=4096)
def _parsed(text: str) -> Expr | None:
    try:
        return triggers.parse(text)
    except triggers.TriggerSyntaxError:
        return None


def explain_callback(callback: Any) -> Explanation:
    """A RegisteredCallback's explanation from its trigger, latches, count and maximum."""
    expr = _parsed(callback.canonical_triggers or callback.triggers)
    spent = bool(callback.maximum) and callback.count >= callback.maximum
    if expr is None:
        return Explanation((), "", spent)
    latches = list(callback.latches)
    found = triggers.atoms(expr)
    atoms = tuple(
        AtomState(render_atom(atom), describe_atom(atom), slot < len(latches) and latches[slot])
        for slot, atom in enumerate(found[:MAX_ATOMS_SHOWN])
    )
    left_out = len(found) - len(atoms)
    if spent:
        return Explanation(atoms, "", spent=True, atoms_left_out=left_out)
    slots = iter(slot < len(latches) and latches[slot] for slot in range(len(found)))
    _, missing = _missing(expr, slots, _Named(MAX_WORDS_ATOMS))
    return Explanation(atoms, missing, atoms_left_out=left_out)


def explain_from_latches(
    job: Any, answered: Mapping[int, Explanation] | None = None, notes: tuple[str, ...] = ()
) -> JobExplanations:
    """A registered job's callbacks explained: as ``answered`` (the engine's), else from their latches.

    Each from its latches only when the page looks it up (``JobExplanations``).
    """
    return JobExplanations(job, answered or {}, notes)


class JobExplanations(Mapping[int, Explanation]):
    """A job's callbacks' explanations by id, made when looked up, and what is said of the job.

    A page looks up the rows it shows, not every callback: made all at once, a job of
    150 callbacks of 2,500 atoms cost seconds of parsing at every refresh for the few
    rows a page shows.
    """

    def __init__(
        self, job: Any, answered: Mapping[int, Explanation], notes: tuple[str, ...] = ()
    ) -> None:
        self._callbacks = {callback.id: callback for callback in job.callbacks}
        self._made = dict(answered)
        # Of the job rather than a callback, in the engine's words (ExplainCallbacks'
        # universal_not_attached); none from the latches alone.
        self.notes = notes

    def __getitem__(self, callback_id: int) -> Explanation:
        if callback_id not in self._made:
            self._made[callback_id] = explain_callback(self._callbacks[callback_id])
        return self._made[callback_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._callbacks)

    def __len__(self) -> int:
        return len(self._callbacks)


# A job (ListRegisteredJobs' RegisteredJob) -> its callbacks' explanations, and its notes.
Explainer = Callable[[Any], JobExplanations]


class _Named:
    """How many more open atoms ``_missing`` may name in words; past them it writes "…"."""

    def __init__(self, most: int) -> None:
        self.left = most

    def words(self, atom: Atom) -> str:
        if self.left <= 0:
            return "…"
        self.left -= 1
        return describe_atom(atom)


def _missing(expr: Expr, latched: Iterator[bool], named: _Named) -> tuple[bool, str]:
    """(whether ``expr`` holds over the latches, what is missing in words).

    Consumes one latch per atom, left to right: the order of the latch slots.
    """
    if isinstance(expr, Atom):
        done = next(latched, False)
        return done, "" if done else named.words(expr)
    parts = [_missing(term, latched, named) for term in expr.terms]  # every slot consumed
    if isinstance(expr, And):
        wanted = [
            _grouped(term, text)
            for term, (ok, text) in zip(expr.terms, parts, strict=True)
            if not ok
        ]
        return not wanted, " AND ".join(_unrepeated(wanted))
    if any(ok for ok, _ in parts):
        return True, ""
    return False, " OR ".join(
        _unrepeated(
            [_grouped(term, text) for term, (_, text) in zip(expr.terms, parts, strict=True)]
        )
    )


def _unrepeated(texts: list[str]) -> list[str]:
    """The texts with the atoms past ``MAX_WORDS_ATOMS`` ("…") said once, at the end."""
    named = [text for text in texts if text != "…"]
    return [*named, "…"] if len(named) < len(texts) else named


def _grouped(term: Expr, text: str) -> str:
    return text if isinstance(term, Atom) else f"({text})"


def _atom_words(atom: Any) -> str:
    """An atom in words, with what its context names now and the state of what it watches."""
    parts = [atom.description]
    if atom.resolution:
        parts.append(f"({atom.resolution})")
    if atom.state:
        parts.append(f"- {atom.state}")
    return " ".join(parts)


def _work_item_lines(item: Any) -> list[str]:
    names = ", ".join(item.work_names[:12]) + (" …" if len(item.work_names) > 12 else "")
    if item.spent:
        return [f"work {names}: fired its maximum"]
    if not item.waiting:
        return []
    # As `triggers why` says it: a fired item without a maximum is waited for again.
    again = f"fired {times(item.count)}; waiting again for" if item.count else "waiting for"
    return [f"work {names}: {again} {line}" for line in item.waiting_for or [item.waiting]]


def _work_items(item: Any) -> tuple[WorkItems, ...]:
    """A {work} callback's items from its CallbackExplanation (none for another callback)."""
    if not item.callback.per_work_item:
        return ()
    return tuple(
        WorkItems(tuple(work.work_names), work.count, tuple(work.latches), work.spent, work.waiting)
        for work in item.work_items
    )


def explain_reply(reply: Any) -> dict[int, Explanation]:
    """An ExplainCallbacksResponse as the pages' explanations, by callback id."""
    from executor.cli.explain import format_entry  # the journal in the words of `triggers why`
    from supervisor_client.client import as_plain

    explained: dict[int, Explanation] = {}
    for item in reply.callbacks:
        atoms = tuple(AtomState(atom.atom, _atom_words(atom), atom.latched) for atom in item.atoms)
        lines = list(item.waiting_for) or ([item.waiting] if item.waiting else [])
        # As `triggers why` says it: first, that its firings are refused, or shadow runs.
        if item.refusal:
            lines.insert(0, f"each firing is refused (REJECTED), not run: {item.refusal}")
        elif item.shadow:
            lines.insert(0, "shadow: it runs, its qb actions are recorded, not applied")
        work_lines = [line for work in item.work_items for line in _work_item_lines(work)]
        if len(work_lines) > MAX_WORK_ITEM_LINES:
            left_out = len(work_lines) - MAX_WORK_ITEM_LINES
            work_lines[MAX_WORK_ITEM_LINES:] = [
                f"{left_out} more lines of work items: "
                f"cbexec triggers why {reply.job_id}:{item.callback.id}"
            ]
        lines += work_lines
        journal = tuple(format_entry(as_plain(entry)) for entry in item.journal)
        explained[item.callback.id] = Explanation(
            atoms,
            "; ".join(lines),
            spent=item.spent,
            journal=journal,
            items=_work_items(item),
            atoms_left_out=item.atoms_left_out,
        )
    return explained


def explain_from_engine(source: Any) -> Explainer:
    """The Explainer that asks the trigger engine (``source.explain``: ExplainCallbacks)."""

    def explain(job: Any) -> JobExplanations:
        reply = source.explain(job.id, limit=explained_callbacks(job), max_atoms=MAX_ATOMS_SHOWN)
        if reply is None:  # removed meanwhile: what ListRegisteredJobs said is all there is
            return explain_from_latches(job)
        # The callbacks past the first page (next_after_callback_id): from their latches.
        notes = (reply.universal_not_attached,) if reply.universal_not_attached else ()
        return explain_from_latches(job, explain_reply(reply), notes)

    return explain


def explained_callbacks(job: Any) -> int:
    """How many of a job's callbacks, in id order, the engine explains for the page (1 to 1000).

    Those whose triggers fit in ``EXPLAINED_TRIGGER_BYTES`` and the one past it: a row shows its
    trigger, so no job's rows take more; the rest (callbacks of frame groups, mostly)
    are explained from their latches.
    """
    size = 0
    for count, callback in enumerate(job.callbacks[:MAX_CALLBACKS_EXPLAINED]):
        size += len(callback.canonical_triggers or callback.triggers)
        if size > EXPLAINED_TRIGGER_BYTES:
            return count + 1  # the row that crosses the budget is shown too
    return MAX_CALLBACKS_EXPLAINED
