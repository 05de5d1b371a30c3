r"""Text a caller chose, made safe to show: control and bidi characters as visible escapes.

A callback's output, a job name or a work item reaches a terminal (``cbexec runs show``,
``cbexec run``) and the dashboard. Raw, a control character acts instead of showing: an
escape sequence sets the window title, writes the clipboard or clears the screen, a
carriage return overwrites what came before on its line, and a bidi override draws what
follows it backwards ("FAKE: OUTCOME_SUCCEEDED", "framegnitiaw"). So every C0 and C1
control but a tab and a newline (and a carriage return just before one: a Windows line
end), DEL, the bidi embedding, override, isolate and mark characters, the line and
paragraph separators (U+2028, U+2029: a line break to some readers, a new bidi paragraph)
and the invisible characters that make two names look alike (zero width space U+200B,
word joiner and invisible operators U+2060-U+2064, U+FEFF) become ``\xNN`` /
``\uNNNN``, the way the service's log already shows them and as the one-line forms below
write them too. Everything else, letters of right-to-left scripts included, is left as
written; so are the zero width (non-)joiners U+200C and U+200D, which Persian, Indic
scripts and emoji sequences need to be spelled right.

Two more forms for what must stay on one line (a submitter's job name, label, work name
or host in a table or a sentence), both as ``repr`` writes a character that is not
printable (``\n``, ``\x1b``, ``\u202e``): ``printable`` for a field on its own (as is
when printable, else its ``repr`` with quotes, as ``farm show`` prints a name:
``'real\n999'``), ``escaped`` for a whole line built around such strings (escaped in
place, no quotes). A forged CR/LF in a job name can then not add a row to an operator's
table. All three give text the next application leaves unchanged; ``--json`` output
needs none of them (JSON escapes control characters itself).

A ``.cb`` log's body (``runs.callback_log``) is ``visible_lines``: ``visible`` with a
carriage return escaped even before a newline, so a line there begins only after a
newline.

The dashboard keeps ``visible``'s ``\xNN`` escapes for such a field too, with
``visible_line``: a newline or tab in a job name is ``\x0a`` / ``\x09`` there, as a
carriage return already was (HTML would draw a raw newline as a space, so a name
holding one would read as a name holding a space).
"""

from __future__ import annotations

import re
from typing import Final

_SHOWN_ESCAPED: Final = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028\u2029"
    "\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]|\r(?!\n)"
)

# ``visible``'s set, with the tab, the newline and a CR before one: text that stays on a line.
_SHOWN_ESCAPED_IN_A_LINE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028\u2029"
    "\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


# ``visible_line``'s set but the tab and the newline (a carriage return before one is
# escaped too): text whose only line break is the newline, a ``.cb`` log's body. One
# character class, no lookahead as ``visible``'s: 16 MiB of output with nothing to
# escape is searched in ~0.08 s, half ``visible``'s time.
_SHOWN_ESCAPED_BUT_LINES: Final = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028\u2029"
    "\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every character that would act rather than show written as an escape."""
    return _SHOWN_ESCAPED.sub(_escape, text)


def visible_line(text: str) -> str:
    """``visible``, with the line ends and tabs escaped too: a field that stays on its line."""
    return _SHOWN_ESCAPED_IN_A_LINE.sub(_escape, text)


def visible_lines(text: str) -> str:
    """``visible``, with every carriage return escaped: the newline is the only line break left."""
    return _SHOWN_ESCAPED_BUT_LINES.sub(_escape, text)


def printable(text: str) -> str:
    r"""``text`` as is when it is printable, else its ``repr`` (``'real\n999'``)."""
    return text if text.isprintable() else repr(text)


def escaped(line: str) -> str:
    """``line`` with each character that is not printable written as ``repr`` writes it."""
    if line.isprintable():
        return line
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in line)
