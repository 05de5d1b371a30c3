"""Trigger text to tokens: parentheses, ``&&``/``||`` (and the words and/or), event atoms.

An atom is any run of characters other than whitespace, ``&``, ``|``, ``(`` and
``)``; its inner structure is the parser's business. Whitespace around operators
is optional (``a&&b`` is ``a && b``).

Word operators: a whole token ``and`` or ``or`` in any case (``AND``, ``Or``) is an
operator. Qube documents only ``&&`` and ``||``, but an old revision of its
Callbacks page joined terms with ``' AND '`` and a real third-party job type joins
them with ``' and '``; no event atom can be a bare word (atoms have hyphens), so
accepting the words costs nothing.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from executor.triggers.errors import TriggerSyntaxError

# Limits that keep a hostile trigger cheap: both are checked before any recursion.
MAX_TRIGGER_BYTES: Final = 64 * 1024
MAX_DEPTH: Final = 64

_TOKEN: Final = re.compile(
    r"(?P<space>\s+)|(?P<AND>&&)|(?P<OR>\|\|)|(?P<LPAREN>\()|(?P<RPAREN>\))"
    r"|(?P<ATOM>[^\s&|()]+)|(?P<lone>[&|])"
)


class TokenKind(enum.Enum):
    """What a token is."""

    AND = "'&&'"
    OR = "'||'"
    LPAREN = "'('"
    RPAREN = "')'"
    ATOM = "event"
    END = "end of trigger"


_WORD_OPERATORS: Final = {"and": TokenKind.AND, "or": TokenKind.OR}


@dataclass(frozen=True, slots=True)
class Token:
    """One token with its 1-based column."""

    kind: TokenKind
    text: str
    column: int

    def describe(self) -> str:
        """How an error message names this token."""
        if self.kind is TokenKind.ATOM:
            return f"event '{self.text}'"
        if self.kind is TokenKind.END:
            return "end of trigger"
        return f"'{self.text}'"


def check_size(expression: str) -> None:
    """Refuse an expression over ``MAX_TRIGGER_BYTES`` (UTF-8) without reading all of it."""
    if len(expression) <= MAX_TRIGGER_BYTES // 4:
        return  # at most four bytes per character: cannot be over
    head = expression[: MAX_TRIGGER_BYTES + 1].encode("utf-8", "replace")
    if len(head) <= MAX_TRIGGER_BYTES and len(expression) <= MAX_TRIGGER_BYTES:
        return
    column = len(head[:MAX_TRIGGER_BYTES].decode("utf-8", "ignore")) + 1
    raise TriggerSyntaxError(
        "trigger too long",
        column,
        f"at most {MAX_TRIGGER_BYTES} bytes (UTF-8)",
        expression,
    )


def tokenize(expression: str) -> list[Token]:
    """Split ``expression`` into tokens, ending with one ``END`` token.

    Raises:
        TriggerSyntaxError: the expression is too long, or has a lone ``&`` or ``|``.
    """
    check_size(expression)
    tokens: list[Token] = []
    for match in _TOKEN.finditer(expression):
        group = match.lastgroup
        if group == "space":
            continue
        text = match.group()
        column = match.start() + 1
        if group == "lone":
            raise TriggerSyntaxError(f"'{text}' alone", column, f"'{text}{text}'", expression)
        kind = TokenKind[group or "ATOM"]
        if kind is TokenKind.ATOM:
            kind = _WORD_OPERATORS.get(text.lower(), TokenKind.ATOM)
        tokens.append(Token(kind, text, column))
    tokens.append(Token(TokenKind.END, "", len(expression) + 1))
    return tokens
