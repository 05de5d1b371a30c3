"""What each callback of a job still waits for, in words: the jobs page's one plug-in point.

Today the explanation is made here, from what ListRegisteredJobs already answers: the
trigger, each atom's latch, count and maximum. ``explain_from_latches`` walks the
trigger and names, in the engine's own words (``triggers.explain.describe_atom``), the
atoms whose events have not happened yet; an ``||`` says which alternatives remain.

The trigger engine's ExplainCallbacks RPC (issue 19) knows more: each atom's resolved
context (a label as job id and pgrp, ``parent`` as a job id), the event that set a
latch, near misses and a journal. When it lands, an ``Explainer`` that calls it
replaces ``explain_from_latches`` in ``Dashboard(explain=...)``; the pages only read
``Explanation``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from executor import triggers
from executor.triggers.explain import describe_atom
from executor.triggers.nodes import And, Atom, Expr, render_atom


@dataclass(frozen=True, slots=True)
class AtomState:
    """One atom of a trigger: as written, in words, and whether its event has happened."""

    text: str
    words: str
    latched: bool


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


# A job (ListRegisteredJobs' RegisteredJob) -> callback id -> its explanation.
Explainer = Callable[[Any], Mapping[int, Explanation]]


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
    atoms = tuple(
        AtomState(render_atom(atom), describe_atom(atom), slot < len(latches) and latches[slot])
        for slot, atom in enumerate(triggers.atoms(expr))
    )
    if spent:
        return Explanation(atoms, "", spent=True)
    _, missing = _missing(expr, iter(atom.latched for atom in atoms))
    return Explanation(atoms, missing)


def explain_from_latches(job: Any) -> dict[int, Explanation]:
    """Every callback of a registered job, explained from what the engine answered."""
    return {callback.id: explain_callback(callback) for callback in job.callbacks}


def _missing(expr: Expr, latched: Iterator[bool]) -> tuple[bool, str]:
    """(whether ``expr`` holds over the latches, what is missing in words).

    Consumes one latch per atom, left to right: the order of the latch slots.
    """
    if isinstance(expr, Atom):
        done = next(latched, False)
        return done, "" if done else describe_atom(expr)
    parts = [_missing(term, latched) for term in expr.terms]  # every slot consumed
    if isinstance(expr, And):
        wanted = [
            _grouped(term, text)
            for term, (ok, text) in zip(expr.terms, parts, strict=True)
            if not ok
        ]
        return not wanted, " AND ".join(wanted)
    if any(ok for ok, _ in parts):
        return True, ""
    return False, " OR ".join(
        _grouped(term, text) for term, (_, text) in zip(expr.terms, parts, strict=True)
    )


def _grouped(term: Expr, text: str) -> str:
    return text if isinstance(term, Atom) else f"({text})"
