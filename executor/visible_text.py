r"""Text a caller chose, made safe to show: control, bidi and invisible characters as visible escapes.

A callback's output, a job name or a work item reaches a terminal (``cbexec runs show``,
``cbexec run``) and the dashboard. Raw, a control character acts instead of showing: an
escape sequence sets the window title, writes the clipboard or clears the screen, a
carriage return overwrites what came before on its line, and a bidi override draws what
follows it backwards ("FAKE: OUTCOME_SUCCEEDED", "framegnitiaw"). And an invisible
character draws nothing, so two names that differ by one look alike ("shot010" and
"shot<U+00AD>010"). So every C0 and C1 control but a tab and a newline (and a carriage
return just before one: a Windows line end), DEL, the line and paragraph separators
(U+2028, U+2029: a line break to some readers, a new bidi paragraph), every format
character (Unicode category Cf: the bidi controls, the soft hyphen U+00AD, zero width
space U+200B, word joiner, U+FEFF, the tag characters U+E0000-U+E007F that can carry
hidden ASCII, ...) and every other default-ignorable code point (the variation selectors
U+FE00-U+FE0F and U+E0100-U+E01EF, the combining grapheme joiner U+034F, the Mongolian
vowel separator and variation selectors U+180B-U+180F, the Hangul fillers) become
``\xNN`` / ``\uNNNN`` / ``\UNNNNNNNN``, as ``repr`` writes them and the service's log
already shows them. Everything else, letters of right-to-left scripts included, is left
as written; so are the zero width (non-)joiners U+200C and U+200D, which Persian, Indic
scripts and emoji sequences need to be spelled right, and the emoji presentation
selectors U+FE0E/U+FE0F right after an emoji's symbol or before a keycap (U+20E3), where
they show (a text or a coloured glyph) and spell emoji such as U+2764 U+FE0F.

Two more forms for what must stay on one line (a submitter's job name, label, work name
or host in a table or a sentence), both as ``repr`` writes a character that is not
printable (``\n``, ``\x1b``, ``\u202e``): ``printable`` for a field on its own (as is
when printable, else ``quoted``: its ``repr`` with quotes, as ``farm show`` prints a name:
``'real\n999'``), ``escaped`` for a whole line built around such strings (escaped in
place, no quotes); both escape the invisible characters above that ``repr`` leaves as
they are (it takes U+034F or U+FE0F for printable). A forged CR/LF in a job name can
then not add a row to an operator's table. All of them give text the next application
leaves unchanged; ``--json`` output needs none of them (JSON escapes control characters
itself).

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

# What draws nothing, or acts: every format character (Cf, Unicode 15.1) and every other
# default-ignorable code point (DerivedCoreProperties.txt), bar U+200C and U+200D (the
# module doc says why), with the line and paragraph separators. U+FE0E/U+FE0F are in it
# and kept where they show (``_shows``).
_PRESENTATION: Final = "\ufe0e\ufe0f"
# The BMP part but those two: always escaped, whatever is next to them.
_ALWAYS_HIDDEN_BMP: Final = (
    "\xad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5"
    "\u180b-\u180f\u200b\u200e\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0d\ufeff"
    "\uffa0\ufff0-\ufffb"
)
_HIDDEN_BMP: Final = _ALWAYS_HIDDEN_BMP + _PRESENTATION
_HIDDEN_ASTRAL: Final = re.compile(
    "[\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e0fff]"
)
_HIDDEN_ONLY: Final = re.compile(f"[{_HIDDEN_BMP}]|{_HIDDEN_ASTRAL.pattern}")
# The patterns below take every character past U+FFFF, and ``_escape`` gives back those
# not in ``_HIDDEN_ASTRAL``: one character class with a few ranges above U+FFFF took
# three times as long to search 16 MiB of ASCII output (0.17 s) as one range does.
_ANY_ASTRAL: Final = "\U00010000-\U0010ffff"
_CAUGHT: Final = _HIDDEN_BMP + _ANY_ASTRAL
# What may be left as it is, by what is next to it or by which it is (``_escape``).
_MAYBE_SHOWN: Final = re.compile(f"[{_PRESENTATION}{_ANY_ASTRAL}]")
# A run of ``_escape_run``'s: each character that may be shown, or a run of the others.
_RUN_PIECES: Final = re.compile(f"{_MAYBE_SHOWN.pattern}|[^{_PRESENTATION}{_ANY_ASTRAL}]+")


def _runs_of(one: str) -> re.Pattern[str]:
    """A pattern of runs of what ``one`` matches: each is escaped at once (``_escape_run``).

    One character at a time, a Python call each, 16 MiB of control characters took ~20 s
    to escape. Not ``one+``: that takes text with nothing to escape twice as long to search.
    """
    return re.compile(f"{one}(?:{one})*")


_SHOWN_ESCAPED: Final = _runs_of(f"(?:[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_CAUGHT}]|\r(?!\n))")

# ``visible``'s set, with the tab, the newline and a CR before one: text that stays on a line.
_SHOWN_ESCAPED_IN_A_LINE: Final = _runs_of(f"[\x00-\x1f\x7f-\x9f{_CAUGHT}]")

# ``visible_line``'s set but the tab and the newline (a carriage return before one is
# escaped too): text whose only line break is the newline, a ``.cb`` log's body. One
# character class, no lookahead as ``visible``'s: 16 MiB of output with nothing to
# escape is searched in ~0.06 s, half ``visible``'s time.
_SHOWN_ESCAPED_BUT_LINES: Final = _runs_of(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_CAUGHT}]")

# The symbols an emoji presentation selector follows where it shows: the blocks of
# Unicode's emoji-variation-sequences.txt (a few more symbols, which it leaves alone).
_EMOJI_SYMBOL: Final = re.compile(
    "[\xa9\xae\u203c\u2049\u2122\u2139\u2194-\u2199\u21a9\u21aa\u231a-\u23ff\u24c2"
    "\u25aa-\u27bf\u2934\u2935\u2b05-\u2b55\u3030\u303d\u3297\u3299\U0001f000-\U0001faff]"
)
_KEYCAP: Final = "\u20e3"


def _shows(match: re.Match[str]) -> bool:
    """Whether a matched character is an emoji presentation selector where it shows."""
    at, text = match.start(), match.string
    if match.group() not in _PRESENTATION:
        return False
    return text[at + 1 : at + 2] == _KEYCAP or (
        at > 0 and _EMOJI_SYMBOL.match(text, at - 1) is not None
    )


def _code(char: str) -> str:
    """``char`` as ``repr`` writes a character it does not show."""
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if _shows(match) or (char > "\uffff" and not _HIDDEN_ASTRAL.match(char)):
        return char
    return _code(char)


# What ``unicode_escape`` writes other than as ``repr`` writes a character it does not show.
_NAMED_ESCAPES: Final = (
    ("\t", "\\t", "\\x09"),
    ("\n", "\\n", "\\x0a"),
    ("\r", "\\r", "\\x0d"),
)


# ``_code`` of each control character: a lone one (invalid UTF-8 output is full of them)
# looked up, not written again.
_LATIN1_CODES: Final = {chr(code): _code(chr(code)) for code in (*range(0x20), *range(0x7F, 0xA0))}


def _codes(run: str) -> str:
    """``_code`` of each character of ``run`` (none a backslash, none above U+FFFF), in C."""
    written = run.encode("unicode_escape").decode("ascii")
    for char, named, code in _NAMED_ESCAPES:
        # No backslash in the run, so each such pair is an escape's start.
        if char in run:
            written = written.replace(named, code)
    return written


def _escape_run(match: re.Match[str]) -> str:
    """A run the patterns above matched, escaped: all at once but what may be shown (``_escape``)."""
    run = match.group()
    if len(run) == 1:  # most often, in text that is not all control characters
        return _LATIN1_CODES.get(run) or _escape(match)
    if _MAYBE_SHOWN.search(run) is None:
        return _codes(run)
    # Found in the whole text, so ``_shows`` sees the characters around each.
    return "".join(
        _escape(piece) if _MAYBE_SHOWN.fullmatch(piece.group()) else _codes(piece.group())
        for piece in _RUN_PIECES.finditer(match.string, match.start(), match.end())
    )


def _hidden_places(text: str) -> set[int]:
    """Where ``text`` has a character that draws nothing and ``repr`` may leave as it is."""
    return {m.start() for m in _HIDDEN_ONLY.finditer(text) if not _shows(m)}


def visible(text: str) -> str:
    """``text`` with every character that would act rather than show written as an escape."""
    return _SHOWN_ESCAPED.sub(_escape_run, text)


def visible_line(text: str) -> str:
    """``visible``, with the line ends and tabs escaped too: a field that stays on its line."""
    return _SHOWN_ESCAPED_IN_A_LINE.sub(_escape_run, text)


def visible_lines(text: str) -> str:
    """``visible``, with every carriage return escaped: the newline is the only line break left."""
    return _SHOWN_ESCAPED_BUT_LINES.sub(_escape_run, text)


def printable(text: str) -> str:
    r"""``text`` as is when it is printable and shows every character, else ``quoted``."""
    return text if text.isprintable() and not _hidden_places(text) else quoted(text)


def quoted(text: str) -> str:
    r"""``repr(text)`` (``'real\n999'``), with the invisible characters it keeps escaped too."""
    return _HIDDEN_ONLY.sub(_escape, repr(text))


def escaped(line: str) -> str:
    """``line`` with each character that is not printable, or draws nothing, written as ``repr`` writes it."""
    hidden = _hidden_places(line)
    if line.isprintable() and not hidden:
        return line
    return "".join(
        char
        if char.isprintable() and at not in hidden
        else _code(char)
        if char.isprintable()
        else repr(char)[1:-1]
        for at, char in enumerate(line)
    )


# What opens a line of ours where a callback's text is shown among them: "=== " a run's
# entry in the .cb log, "--- " a section there and in ``cbexec runs show``. The
# backslash first: the backslash put before a line must not be escaped again.
OUR_LINE_STARTS: Final = ("\\", "=== ", "--- ")


def backslashed_lines(text: str) -> str:
    """``text`` with a backslash before each line that begins as one of ours (``OUR_LINE_STARTS``).

    So a callback's line can never pass for a header or a section line, and one that
    begins with a backslash (an escape's too) tells itself from one so marked. By
    ``str.replace`` per start, not one regular expression: each pass is a C search, so
    16 MiB takes milliseconds (a regex with a lookbehind at every position took ~0.8 s,
    holding the GIL, and the event loop with it).
    """
    if text.startswith(OUR_LINE_STARTS):
        text = "\\" + text
    if "\n" in text:
        for ours in OUR_LINE_STARTS:
            text = text.replace("\n" + ours, "\n\\" + ours)
    return text
