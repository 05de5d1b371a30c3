"""A mail header made from job fields: one line, shown as written, never read as encoded words.

The email package's header objects read RFC 2047 encoded words (``=?utf-8?q?...?=``) in
the value they are given, and then write the decoded text back as it is. A job named
``=?utf-8?q?x=0D=0ABcc=3A_a=40evil.example?=`` thus became ``x`` CR LF ``Bcc: ...`` in
the sent mail: a header (or, with a blank line, a body) of the submitter's choosing.
Even an encoded word of our own is no help, since it is decoded on the way in and the
text it held, itself an encoded word, written back bare.

``LiteralHeader`` is cleaned of control characters when made and never parsed. It is
written as the policy would write it when it holds no ``=?``, and otherwise as encoded
words of the whole value. A reader then decodes those once, back to exactly this text.
"""

from __future__ import annotations

import unicodedata
from email.header import Header
from email.policy import EmailPolicy
from typing import Final

ENCODED_WORD_START: Final = "=?"


def one_line(value: str) -> str:
    """``value`` on one line: control characters as spaces, runs of spaces as one."""
    return " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in value).split())


class LiteralHeader(str):
    """A header value that mail readers show exactly as this string.

    Its ``name`` makes ``EmailPolicy`` store it as a header object and call its ``fold``
    (the policy's documented rule for a value with a ``name``) instead of parsing it.
    """

    name: str

    def __new__(cls, name: str, value: str) -> LiteralHeader:
        header = super().__new__(cls, one_line(value))
        header.name = name
        return header

    def fold(self, *, policy: EmailPolicy) -> str:
        """The header's lines as ``policy`` writes them, ending in its line separator."""
        text = str(self)
        if ENCODED_WORD_START not in text:
            # Nothing here reads as an encoded word: the policy's own folding is safe.
            return str(policy.header_factory(self.name, text).fold(policy=policy))
        encoded = Header(text, "utf-8", header_name=self.name).encode(
            linesep=policy.linesep, maxlinelen=policy.max_line_length or 0
        )
        return f"{self.name}: {encoded}{policy.linesep}"
