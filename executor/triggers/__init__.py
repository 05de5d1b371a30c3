"""Trigger language and engine: parse trigger expressions, match events, fire callbacks.

The language (pure): ``parse`` / ``render`` / ``atoms`` (nodes, parser), the semantics the
engine runs (evaluate: match keys, latching, clocks), ``explain``. The engine (durable,
SQLite): engine, store, firings (the worker that runs what fired), universal
(callbacks.conf), rpc (the gRPC edge).
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
