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

A strip is bounded, as the run page's output is (a job of 100,000 frames drew 100,000
cells: a 9.9 MB page, fetched again at every refresh, that Chromium took seconds to
load). Up to ``MAX_STRIP_CELLS`` frames it is a cell per frame; a longer one draws each
run of neighbouring frames in the same state as one cell (a render's frames mostly
finish in order, so 100,000 frames are a few runs), and past ``MAX_STRIP_CELLS`` runs
the rest is one cell counting the frames it leaves out. The tally counts every frame.
Names and waiting words are cut in a cell (a work name may be 1024 characters, a
trigger 64 KiB), so a cell is a few hundred bytes at most.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from executor.bounds import cut
from executor.plurals import counted
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
# The most cells a strip draws: a frame each up to this many frames, else runs of frames.
MAX_STRIP_CELLS: Final = 200
# What a cell shows of a frame's name, and of what it waits for (in its title).
MAX_CELL_NAME_CHARS: Final = 48
MAX_CELL_WAITING_CHARS: Final = 200


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
        waiting = cut(self.waiting, MAX_CELL_WAITING_CHARS)
        state = self.state
        if state == SPENT:
            said = f"{fired}, its maximum: it fires no more"
        elif state == AGAIN:
            said = f"{fired}; waiting to fire again" + (f" for {waiting}" if waiting else "")
        elif state == PARTLY:
            said = "half latched" + (f" ({fired} before)" if self.count else "")
            said += f"; waiting for {waiting}" if waiting else ""
        else:
            said = f"waiting for {waiting}" if waiting else "waiting, nothing latched"
        own = f", callback {self.callback_id}" if self.callback_id else ""
        return f"frame {_short(self.name)}{own}: {said}"


@dataclass(frozen=True, slots=True)
class StripDrawn:
    """A strip as drawn: its HTML, and what it drew of its frames in words ("" when all, one a cell).

    Attributes:
        html: The cells.
        summary: How the frames were drawn when not a cell each, e.g. ``100000 frames
            drawn as 3 runs of the same state``; with what was left out, if anything.
        first_left_out: The first frame not drawn ("" when every frame is in a cell).
    """

    html: Html
    summary: str = ""
    first_left_out: str = ""


def draw_strip(frames: Sequence[Frame]) -> StripDrawn:
    """The frames as cells coloured by state, each titled with its sentence; bounded, and how.

    At most ``MAX_STRIP_CELLS`` cells, and one for the frames left out.
    """
    if len(frames) <= MAX_STRIP_CELLS:
        return StripDrawn(tag("div", *(_cell(frame) for frame in frames), class_="frames"))
    runs = _runs(frames)
    shown = runs[:MAX_STRIP_CELLS]
    cells = [_cell(run[0]) if len(run) == 1 else _run_cell(run) for run in shown]
    summary = f"{len(frames)} frames drawn as {counted(len(runs), 'run')} of the same state"
    left_out = sum(len(run) for run in runs[MAX_STRIP_CELLS:])
    first_left_out = ""
    if left_out:
        first_left_out = runs[MAX_STRIP_CELLS][0].name
        more = f"… {counted(left_out, 'more frame')}"
        cells.append(
            tag(
                "span",
                more,
                class_="frame more",
                title=f"{left_out} frames from {_short(first_left_out)} on are not drawn: "
                "the tally counts them",
            )
        )
        summary = (
            f"{len(frames)} frames in {counted(len(runs), 'run')} of the same state; "
            f"the first {MAX_STRIP_CELLS} runs drawn, {counted(left_out, 'frame')} after them not"
        )
    return StripDrawn(tag("div", *cells, class_="frames"), summary, first_left_out)


def _cell(frame: Frame) -> Html:
    return tag(
        "span", _short(frame.name), class_=f"frame {_CLASSES[frame.state]}", title=frame.words()
    )


def _run_cell(run: Sequence[Frame]) -> Html:
    """Neighbouring frames in one state as one cell: ``1 … 5000``, titled with the state."""
    first, last = _short(run[0].name), _short(run[-1].name)
    state = run[0].state
    words = dict(_TALLIED)[state]
    return tag(
        "span",
        f"{first} … {last}",
        class_=f"frame run {_CLASSES[state]}",
        title=f"frames {first} … {last} ({len(run)} frames): {words}",
    )


def _runs(frames: Sequence[Frame]) -> list[list[Frame]]:
    """The frames cut where the state changes, in their order."""
    runs: list[list[Frame]] = []
    for frame in frames:
        if runs and runs[-1][0].state == frame.state:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    return runs


def _short(name: str) -> str:
    return cut(name, MAX_CELL_NAME_CHARS)


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
