"""One callback per frame as a strip: each frame fired, half latched or waiting, and a tally in words.

Both ways of writing one callback per frame are drawn with it: a ``{work}`` callback
(one latch set, count and maximum per work item, from ExplainCallbacks' work items) and
the same trigger written once per frame (one callback each, from ListRegisteredJobs).
A frame is in one of four states, and the words say which, so that a callback without
a maximum, whose fired frames wait to fire again, does not read as done:

- fired its maximum: it fires no more (``fired``);
- fired, and waiting to fire again (``fired again``: no maximum, or below it);
- half latched: some of its atoms have happened (``partly``);
- waiting, nothing latched (``waiting``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from executor.web.html import Html, tag

SPENT: Final = "spent"
AGAIN: Final = "again"
PARTLY: Final = "partly"
WAITING: Final = "waiting"
# The state's class on the page (app.css colours them) and its words in the tally.
_CLASSES: Final = {SPENT: "fired", AGAIN: "fired again", PARTLY: "partly", WAITING: "waiting"}
_TALLIED: Final = (
    (SPENT, "fired the maximum"),
    (AGAIN, "fired and waiting again"),
    (PARTLY, "half latched"),
    (WAITING, "waiting, nothing latched"),
)
_DIGITS: Final = re.compile(r"([0-9]+)")


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a per-frame callback as things stand.

    Attributes:
        name: The work item (frame) name.
        count: How many times it fired (a {work} callback: this item's count).
        maximum: How many times it may fire (0: no maximum).
        latched: Whether any of its atoms is latched.
        waiting: What it waits for, in words or canonical ("" when not known).
        callback_id: The frame's own callback (written once per frame); 0 for a {work} one.
    """

    name: str
    count: int
    maximum: int
    latched: bool
    waiting: str = ""
    callback_id: int = 0

    @property
    def state(self) -> str:
        if self.maximum and self.count >= self.maximum:
            return SPENT
        if self.latched:
            return PARTLY
        return AGAIN if self.count else WAITING

    def words(self) -> str:
        """The frame's state in a sentence (the cell's title)."""
        fired = f"fired {times(self.count)}"
        state = self.state
        if state == SPENT:
            said = f"{fired}, its maximum: it fires no more"
        elif state == AGAIN:
            said = f"{fired}; waiting to fire again" + (
                f" for {self.waiting}" if self.waiting else ""
            )
        elif state == PARTLY:
            said = "half latched" + (f" ({fired} before)" if self.count else "")
            said += f"; waiting for {self.waiting}" if self.waiting else ""
        else:
            said = f"waiting for {self.waiting}" if self.waiting else "waiting, nothing latched"
        own = f", callback {self.callback_id}" if self.callback_id else ""
        return f"frame {self.name}{own}: {said}"


def strip(frames: Iterable[Frame]) -> Html:
    """The frames as a row of cells, coloured by state, each titled with its sentence."""
    cells = [
        tag("span", frame.name, class_=f"frame {_CLASSES[frame.state]}", title=frame.words())
        for frame in frames
    ]
    return tag("div", *cells, class_="frames")


def tally(frames: Sequence[Frame]) -> str:
    """How many frames are in each state: ``1 fired and waiting again, 2 half latched``."""
    counts = Counter(frame.state for frame in frames)
    return ", ".join(f"{counts[state]} {words}" for state, words in _TALLIED if counts[state])


def in_agenda_order(names: Iterable[str]) -> list[str]:
    """Work names as an agenda lists them: numbers by value (``2`` before ``10``), then text."""
    return sorted(names, key=_natural)


def _natural(name: str) -> tuple[tuple[int, int, str], ...]:
    # Digits compared by length then text: no int() of a name's 5000 digits (a ValueError).
    key = []
    for part in _DIGITS.split(name):
        if _DIGITS.fullmatch(part):
            value = part.lstrip("0")
            key.append((0, len(value), value))
        elif part:
            key.append((1, 0, part))
    return tuple(key)


def times(count: int) -> str:
    """``once``, ``3 times`` (as ``cbexec triggers why`` says it)."""
    return "once" if count == 1 else f"{count} times"
