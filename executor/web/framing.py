r"""Where a request's body ends, from its header lines as received, or why that cannot be told.

A request whose end two HTTP parsers could place differently is refused, never guessed
at: behind a front end (a reverse proxy, a load balancer) that frames it the other way,
the rest of its body would be read here as a second request of the sender's choosing,
prefixed to another user's on a shared connection (request smuggling, RFC 9112 11.2).
So, as RFC 9112 says (6.1, 6.3, 5.1, 5.2):

- a ``Transfer-Encoding`` is not implemented here: 501 for one ending in ``chunked``,
  400 with a ``Content-Length`` too, or for one whose last coding is not ``chunked``
  (its length cannot be known at all);
- ``Content-Length`` is plain digits; given more than once, every value the same;
- a header line is a name (a token: no whitespace, before the colon either) and a
  colon, and never a continuation of the line before (obs-fold);
- every line, the request line and the blank one included, ends in CRLF and holds no
  other CR (RFC 9112 2.2 lets a recipient refuse a bare CR). The stdlib's reader ends a
  line at LF alone and keeps a bare CR inside it; other parsers end a line at a bare CR,
  or only at CRLF: ``X: a\rContent-Length: 43`` is one header here and two there.

The stdlib's parser is not asked: it takes the first of two ``Content-Length``s,
ignores ``Transfer-Encoding``, and ends the headers, unsaid, at a line it cannot read
(``Content-Length : 38``), taking the rest for the body.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

# RFC 9110 5.6.2: the characters of a token (a field name).
_FIELD_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_OWS: Final = b" \t"


class FramingError(Exception):
    """A request whose body's end is not for certain: answer ``status`` and close."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def check_line_end(line: bytes) -> None:
    """FramingError (400) unless ``line``, as read up to its LF, ends in CRLF and holds no other CR."""
    if not line.endswith(b"\r\n"):
        raise FramingError(400, "a line of the request does not end in CRLF (a bare LF, or none)")
    if b"\r" in line[:-2]:
        raise FramingError(400, "a bare CR in the request line or a header line")


def body_length(header_lines: Iterable[bytes]) -> int:
    """The body's length in bytes (0 for none); FramingError when it is not unambiguous.

    ``header_lines``: the lines after the request line as read, each with its line end,
    and the blank line that ends them (or the empty read that ended them: the client
    stopped sending).
    """
    lengths: list[bytes] = []
    codings: list[bytes] = []
    for raw in header_lines:
        if not raw:
            continue
        check_line_end(raw)
        line = raw[:-2]
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise FramingError(400, "a header line continues the one before it (obs-fold)")
        name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise FramingError(400, "a header line is not 'Name: value' (whitespace before ':'?)")
        if name.lower() == b"content-length":
            lengths.append(value.strip(_OWS))
        elif name.lower() == b"transfer-encoding":
            codings.extend(coding.strip(_OWS).lower() for coding in value.split(b","))
    if codings:
        if lengths:
            raise FramingError(400, "both Transfer-Encoding and Content-Length: which ends it?")
        if codings[-1] != b"chunked":
            raise FramingError(400, "a Transfer-Encoding whose last coding is not chunked")
        raise FramingError(501, "Transfer-Encoding is not implemented: send a Content-Length")
    if not lengths:
        return 0
    if any(not (given.isascii() and given.isdigit()) for given in lengths):
        # int() takes "-5", "+5" and "5_0"; a list ("5, 5") is refused as well.
        raise FramingError(400, "bad Content-Length: not a number of bytes")
    if len(set(lengths)) > 1:
        raise FramingError(400, "bad Content-Length: more than one, and they differ")
    return int(lengths[0])
