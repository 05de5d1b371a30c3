r"""Text a caller chose, made safe to show: control and bidi characters as visible escapes.

A callback's output, a job name or a work item reaches a terminal (``cbexec runs show``,
``cbexec run``) and the dashboard. Raw, a control character acts instead of showing: an
escape sequence sets the window title, writes the clipboard or clears the screen, a
carriage return overwrites what came before on its line, and a bidi override draws what
follows it backwards ("FAKE: OUTCOME_SUCCEEDED", "framegnitiaw"). So every C0 and C1
control but a tab and a newline (and a carriage return just before one: a Windows line
end), DEL, and the bidi embedding, override, isolate and mark characters become
``\xNN`` / ``\uNNNN``, the way the service's log already shows them. Everything else,
letters of right-to-left scripts included, is left as written.
"""

from __future__ import annotations

import re
from typing import Final

_SHOWN_ESCAPED: Final = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]|\r(?!\n)"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every character that would act rather than show written as an escape."""
    return _SHOWN_ESCAPED.sub(_escape, text)
