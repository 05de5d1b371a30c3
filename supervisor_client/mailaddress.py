"""What a job's ``mailaddress`` may hold: the one rule the farm's submission and the mail share.

A list of recipients separated by ``,``, ``;`` or white space (``lead@studio.example,
bob``); an empty list means the job's user. Each recipient is ``local@domain`` or a bare
user name (the mail adds ``@`` and its default domain), without RFC 5322's specials: a
``:`` would make ``Bcc:`` a group in the To: header, ``<`` a display name, and an
encoded word (``=?utf-8?q?...?=``) would be decoded into another address. Both halves
are dot-separated parts, none of them empty (no leading, trailing or doubled ``.``):
the To: header's parser reads ``a@b..c`` or ``a@b.`` as no address at all, and the
mail would go to the null address ``<>``. The farm
refuses at submission what the mail would refuse when it is sent, by this same rule, so
a submitter learns of a bad address at once rather than when the job ends.
"""

from __future__ import annotations

import re
from typing import Final

SEPARATORS: Final = re.compile(r"[,;\s]+")
# local@domain or a bare user name: no '@' twice, none of RFC 5322's specials, each half
# non-empty parts joined by single dots (RFC 5322's dot-atom).
_PART: Final = r'[^@\s"(),.:;<>\[\]\\]+'
_ADDRESS: Final = re.compile(rf"^{_PART}(\.{_PART})*(@{_PART}(\.{_PART})*)?$")
EXPECTED: Final = "expected name@domain or a bare user name, with no empty part between dots"


def recipient_names(text: str) -> list[str]:
    """The names of a recipient list, separators dropped (empty: none given)."""
    return [name for name in SEPARATORS.split(text) if name]


def is_address(name: str) -> bool:
    """Whether one name of the list is an address the mail can send to."""
    return bool(_ADDRESS.match(name)) and "=?" not in name


def first_non_address(text: str) -> str | None:
    """The first name of the list that is no address, or None when all are."""
    return next((name for name in recipient_names(text) if not is_address(name)), None)
