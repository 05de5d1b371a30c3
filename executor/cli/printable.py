r"""How the CLI prints strings a submitter chose (job names, labels, work names, hosts).

A job name holding CR/LF would otherwise start a new line in an operator's table (a
forged ``farm jobs`` row) and an escape sequence would move the terminal's cursor. Two
forms, both as ``repr`` writes a control character (``\n``, ``\x1b``, ``\u202e``):

- ``printable``: a field on its own (a table cell, a name in a sentence): as is when it
  is printable, else its ``repr``, quotes included, as ``farm show`` prints a name
  (``'real\n999'``);
- ``escaped``: a whole line built around such strings (a history line, a supervisor's
  message, an explanation): its control characters escaped in place, no quotes added.

Both give printable text, so applying either again changes nothing. ``--json`` output
needs neither: JSON escapes control characters itself.
"""

from __future__ import annotations


def printable(text: str) -> str:
    r"""``text`` as is when it is printable, else its ``repr`` (``'real\n999'``)."""
    return text if text.isprintable() else repr(text)


def escaped(line: str) -> str:
    """``line`` with each character that is not printable written as ``repr`` writes it."""
    if line.isprintable():
        return line
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in line)
