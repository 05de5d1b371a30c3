"""Triggers parsed once: the registered callbacks' (cached), and the checks of a trigger's text.

Every event, tick and explanation reads the triggers of the callbacks it meets: a
registered one was checked when it registered, so ``parsed`` keeps its parse, not its
checks (``parse``'s ``stored``). One about to be registered or loaded is parsed by the
grammar as it stands (``checked``).
"""

from __future__ import annotations

from functools import lru_cache

from executor import triggers
from executor.triggers import checks
from executor.triggers.nodes import per_work


@lru_cache(maxsize=65536)
def parsed(expression: str) -> triggers.Expr:
    """A registered callback's trigger (``parse``'s ``stored``: checked when it registered)."""
    return triggers.parse(expression, stored=True)


def check_trigger(expression: str | list[str]) -> str | None:
    """None when the expression parses, else the parser's message.

    A list-valued trigger's items are checked as the one expression they are stored as
    (``parse_trigger_list``: its message names the item).
    """
    try:
        if isinstance(expression, str):
            checked(expression)
        else:
            triggers.parse_triggers(expression)
    except triggers.TriggerSyntaxError as err:
        return str(err)
    return None


@lru_cache(maxsize=4096)
def checked(expression: str) -> triggers.Expr:
    """A trigger about to be registered or loaded: the grammar as it stands."""
    return triggers.parse(expression)


def trigger_warnings(expression: str) -> list[str]:
    """The checks a trigger alone can fail (a universal callback's, at load), as lines."""
    return [f"{check.atom}: {check.message}" for check in checks.static_checks(parsed(expression))]


def canonical_triggers(expression: str) -> str:
    """The canonical text of a registered callback's triggers (``render`` of its parse)."""
    return triggers.render(parsed(expression))


def is_per_work(expression: str) -> bool:
    """Whether a registered callback's triggers hold the ``{work}`` placeholder."""
    return per_work(parsed(expression))
