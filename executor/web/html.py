r"""HTML built in code, escaped by default: what a callback printed can never become markup.

Every value that reaches a page goes through ``esc`` unless it is already ``Html`` (a
fragment built by ``tag`` from escaped parts), so the only way to put raw markup on a
page is to construct ``Html`` on purpose, which only this package does, from literals.
A callback's output, its failure, a trigger, a job name: all are text, never markup.
Control and bidi characters in them are shown as escapes (``visible_text``): a raw
right-to-left override would draw the page's own words after it backwards. A line end
too (``\x0a``): a name, label or trigger stays on its line, and a newline in a job name
does not pass for a space. Only what is many lines by nature (a stream, a traceback, a
failure's message) keeps its line ends, through ``text_block``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import datetime
from typing import Final

from executor.visible_text import visible, visible_line

# Attributes written without a value when true (``<input checked>``).
_BOOLEAN_ATTRIBUTES: Final = frozenset({"checked", "selected", "disabled", "open", "hidden"})
_VOID: Final = frozenset({"br", "hr", "img", "input", "link", "meta"})


class Html(str):
    """Text that is already HTML: built here from escaped parts, never from a caller's string."""

    __slots__ = ()


def esc(value: object) -> Html:
    """``value`` as HTML text on one line: escaped (controls shown), unless it is ``Html`` already."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(visible_line(str(value)), quote=True))


def text_block(text: str) -> Html:
    """``text`` as HTML text that keeps its line ends and tabs (for ``<pre>``); other controls shown."""
    return Html(html.escape(visible(text), quote=True))


def join(parts: Iterable[object], separator: str = "") -> Html:
    """Parts (each escaped unless ``Html``) one after another."""
    return Html(separator.join(esc(part) for part in parts))


def tag(name: str, /, *children: object, **attributes: object) -> Html:
    """``<name attributes>children</name>``; ``class_`` is ``class``, ``data_x`` is ``data-x``.

    An attribute that is None or False is left out; True writes a boolean attribute.
    """
    rendered = []
    for key, value in attributes.items():
        if value is None or value is False:
            continue
        attribute = key.rstrip("_").replace("_", "-")
        if value is True or (attribute in _BOOLEAN_ATTRIBUTES and value):
            rendered.append(f" {attribute}")
        else:
            rendered.append(f' {attribute}="{esc(value)}"')
    opening = f"<{name}{''.join(rendered)}>"
    if name in _VOID:
        return Html(opening)
    return Html(f"{opening}{join(children)}</{name}>")


def local_time(unix_s: float) -> str:
    """Seconds since the epoch as the server's local time, to the second ("-" for 0)."""
    if unix_s <= 0:
        return "-"
    return datetime.fromtimestamp(unix_s).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def seconds(value: float) -> str:
    """A duration for a table cell: milliseconds below ten seconds, else seconds."""
    return f"{value * 1000:.1f} ms" if value < 10 else f"{value:.1f} s"


def size(value: int) -> str:
    """Bytes for a table cell, in KiB or MiB ("-" for none: a qube run has no process)."""
    if value <= 0:
        return "-"
    if value >= 1 << 20:
        return f"{value / (1 << 20):.1f} MiB"
    return f"{value / 1024:.0f} KiB"
