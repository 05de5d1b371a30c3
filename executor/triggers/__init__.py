"""Trigger language and engine: parse trigger expressions, match events, fire callbacks, say why.

The language (pure): ``parse`` / ``render`` / ``atoms`` (nodes, parser), the semantics the
engine runs (evaluate: match keys, latching, residuals, {work} items, level mode,
clocks), ``explain`` (the words), checks (what cannot work, found at registration). The
engine (durable, SQLite or a fleet's PostgreSQL): engine (ties the rest together), parsed
(registered triggers parsed once), applying (events applied in their transaction),
group_commit (concurrent publishers share a transaction), decide (one event's
decisions), deferred_writes (what a transaction writes once, at its end), group_reads,
group_state and group_writes (on PostgreSQL a group's reads and writes: a statement per
kind for the whole group), registration and registrar (a job's registration: its steps,
and their transaction), store (the durable state, tying together store_schema, store_rows,
store_jobs, store_callbacks, store_firings, store_timers, store_sightings and store_space),
items ({work} callbacks' per-item latches), journal (what each event did to each
callback), near_misses, states (the last known state of jobs and work items), why
(explanations), firings (the worker that runs what fired), fired_runs (each firing's run
under its policy, or its refusal), results_of_record (what a waiting publisher gets for
a firing run elsewhere or before), timers (clock atoms), conflicts (transactions run
again after a lost deadlock), universal (callbacks.conf) and universal_set (the set
loaded, and its lines' clocks).
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
