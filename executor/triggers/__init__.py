"""Trigger language and engine: parse trigger expressions, match events, fire callbacks, say why.

The language (pure): ``parse`` / ``render`` / ``atoms`` (nodes, parser), the semantics the
engine runs (evaluate: match keys, latching, residuals, {work} items, level mode,
clocks), ``explain`` (the words), checks (what cannot work, found at registration). The
engine (durable, SQLite or a fleet's PostgreSQL): engine, group_commit (concurrent
publishers share a transaction), decide (one event's decisions), deferred_writes (what a
transaction writes once, at its end), group_reads, group_state and group_writes (on
PostgreSQL a group's reads and writes: a statement per kind for the whole group),
registration, store, items ({work} callbacks' per-item latches), journal (what each
event did to each callback), near_misses, states (the last known state of jobs and work
items), why (explanations), firings (the worker that runs what fired), universal
(callbacks.conf).
The gRPC edge is executor/api/triggers.py.
"""

from executor.triggers.errors import TriggerSyntaxError
from executor.triggers.evaluate import evaluate, next_fire
from executor.triggers.explain import explain
from executor.triggers.nodes import And, Atom, Expr, Or, atoms, render
from executor.triggers.parser import parse, parse_triggers

__all__ = [
    "And",
    "Atom",
    "Expr",
    "Or",
    "TriggerSyntaxError",
    "atoms",
    "evaluate",
    "explain",
    "next_fire",
    "parse",
    "parse_triggers",
    "render",
]
