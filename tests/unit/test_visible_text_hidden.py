"""Invisible characters are shown as escapes, so that two names never draw alike."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from executor.visible_text import escaped, printable, quoted, visible, visible_line, visible_lines

pytestmark = pytest.mark.unit

# Kept on purpose (the module doc says why): the joiners some scripts and emoji need.
JOINERS = "\u200c\u200d"
# Default-ignorable code points that are no format character (DerivedCoreProperties.txt),
# each range's ends: Mn, Lo and unassigned ones that repr and str.isprintable let through.
IGNORABLE_NOT_CF = (
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180d\u180f\u2065\u3164\ufe00\ufe0f\uffa0"
    "\ufff0\ufff8\U000e0000\U000e0002\U000e0080\U000e0100\U000e01ef\U000e0fff"
)


def shown_alike(char: str) -> list[str]:
    """Every form of a name holding ``char`` after a letter (where no selector shows)."""
    name = f"shot{char}010"
    return [visible(name), visible_line(name), visible_lines(name), printable(name), escaped(name)]


def repr_escape(char: str) -> str:
    code = ord(char)
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def test_every_format_and_default_ignorable_character_is_escaped_as_repr_writes_it() -> None:
    format_chars = [
        chr(code)
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) == "Cf" and chr(code) not in JOINERS
    ]
    assert len(format_chars) > 150  # the tags, the bidi controls, U+00AD, ...
    for char in [*format_chars, *IGNORABLE_NOT_CF, "\u2028", "\u2029"]:
        for form in shown_alike(char):
            assert char not in form, (hex(ord(char)), form)
            assert repr_escape(char) in form, (hex(ord(char)), form)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("shot\xad010", "shot\\xad010"),  # the soft hyphen
        ("shot010\U000e0041\U000e0042", "shot010\\U000e0041\\U000e0042"),  # tags: hidden "AB"
        ("shot\ufe0f010", "shot\\ufe0f010"),  # an emoji selector on a letter shows nothing
        ("shot\U000e0100010", "shot\\U000e0100010"),
        ("shot\u034f010", "shot\\u034f010"),  # the combining grapheme joiner
        ("shot\u180e010", "shot\\u180e010"),
        ("shot010\u3164", "shot010\\u3164"),  # a Hangul filler
    ],
)
def test_the_probe_s_look_alike_names_are_told_apart(text: str, line: str) -> None:
    assert visible(text) == visible_line(text) == visible_lines(text) == escaped(text) == line
    assert printable(text) == quoted(text) == f"'{line}'"
    assert text not in (visible(text), printable(text))


@pytest.mark.parametrize(
    "text",
    [
        "\u2764\ufe0f done",  # a red heart: U+2764 and the emoji selector
        "\u26a0\ufe0f warning, \u2714\ufe0f ok, \u2139\ufe0f",
        "\U0001f3f3\ufe0f\u200d\U0001f308",  # the rainbow flag: selector and ZWJ
        "1\ufe0f\u20e3",  # a keycap
        "\U0001f600 \U00010348 \U0001d11e",  # other characters past U+FFFF, as written
        "\u0645\u06cc\u200c\u0634\u0648\u062f",  # Persian with a ZWNJ
        "\u0915\u094d\u200d\u0937",  # Devanagari with a ZWJ
        "plate \u00e9 \u05e9\u05dc\u05d5\u05dd",
    ],
)
def test_emoji_and_scripts_that_need_a_selector_or_joiner_keep_it(text: str) -> None:
    assert visible(text) == visible_line(text) == visible_lines(text) == text
    # The CLI's forms escape what str.isprintable refuses (the joiners) as before.
    assert "\\ufe0f" not in escaped(text) and "\\ufe0f" not in printable(text)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x01\x1b\u202e\x85", "\\x01\\x1b\\u202e\\x85"),
        ("\x01\ufe0f\u20e3", "\\x01\ufe0f\u20e3"),  # a keycap after the run: the selector shows
        ("\x01\U0001f600\ufe0f\x01", "\\x01\U0001f600\ufe0f\\x01"),
        ("\x01\ufe0f\x01\U000e0041", "\\x01\\ufe0f\\x01\\U000e0041"),
        ("\t\x01\r\n", "\t\\x01\\x0d\n"),
    ],
)
def test_a_run_of_characters_to_escape_is_escaped_as_each_alone(text: str, shown: str) -> None:
    # Runs are escaped at once (probe 153); what may show still looks at its neighbours.
    assert visible_lines(text) == shown
