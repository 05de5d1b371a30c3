"""Tokens to syntax tree: precedence, parentheses, and the validation of every atom.

Grammar (``&&`` binds tighter than ``||``; both are associative, so a chain is one
n-ary node; ``and``/``or`` in any case are aliases, see ``lexer``)::

    trigger := or_expr END
    or_expr := and_expr ( "||" and_expr )*
    and_expr := primary ( "&&" primary )*
    primary := ATOM | "(" or_expr ")"

Qube does not document precedence (§1.1); we use the conventional one and
recommend parentheses.

Atoms, ``name-type-context-extra``, are split on the first three hyphens: name,
type, context, and everything after the third hyphen is the extra, which may hold
hyphens itself (work ``1-10``, frame ``-5``, repeat ``T-interval``). Hence a label
used as a context cannot contain ``-`` (only letters, digits, ``_`` and ``.``).
The global forms start with their type and carry neither name nor context:
``global``, ``globaltime-<T>``, ``globalrepeat-<T>-<interval>``; their atoms get
the name ``dummy`` and an empty context.

Choices where Qube's documentation is silent or unclear:

* Event names must be one of ``EventName``. Qube allows "user-defined" names but
  nothing can raise one, so such a trigger could never fire; we reject it at
  registration (this also rejects ``unblock-job-1234`` from one Qube page, most
  likely a documentation slip). Names and types are case-sensitive, lower case as
  Qube writes them (an error says so for ``COMPLETE``), and so are ``self`` and
  ``parent``: ``SELF`` is a label (a label is case sensitive, and a job may hold it;
  checks.py warns while none does).
* Any real event name goes with any of job/subjob/work/host (e.g. ``submit-work``
  is accepted though it may never happen); ``dummy`` only goes with ``time`` and
  ``repeat``. The reverse is permissive: ``complete-time-self-<T>`` is accepted
  with a warning and means the same as ``dummy-time-self-<T>``.
* An extra on a ``job`` atom is dropped with a warning (Qube's old docs wrote
  ``failed-job-self-*``).
* ``subjob`` needs an instance id (non-negative int32) or ``*``; ``work`` a work
  name or ``*``; ``host`` a host name or ``*``. Work and host names are any run of
  characters the lexer leaves in an atom (no whitespace, ``&``, ``|``, parentheses).
* A ``time`` or ``repeat`` atom's context is ``self``: it is the owning job's timer and
  fires in that job's context. Qube documents only ``dummy-time-self-<T>``; ``parent``,
  a job id or a label would read as another job's clock, which nothing runs, so they
  are refused (a trigger stored before this rule keeps firing as its owner's timer).
* ``<T>`` is an absolute Qube time (seconds since the Qube epoch), as in Qube's
  delayed-start example, not a time of day; repeat intervals are positive seconds.
  T is at most the year 9999, and so is a repeat's second tick (T + interval).
* Job ids, subjob ids, times and intervals are stored canonically (``007`` → ``7``).
* A job id is 1 to ``MAX_ID`` (2^63 - 1), as everywhere else: ids are stored as
  signed 64-bit integers, and no job has id 0 (the farm numbers jobs from 1, and an
  event of job 0 is refused), so an atom outside that range could never fire.
* A list-valued ``triggers`` (allowed by Qube's class docstring, meaning
  undocumented) is the OR of its items: ``parse_trigger_list``. OR is the reading
  under which a one-item list equals its string, and what "a list of events the
  callback reacts to" suggests. The items are stored joined with `` || `` and no
  parentheses (``&&`` binds tighter, and an OR of ORs is one OR), so the expression is
  as deep as its deepest item; they share its size limit, joins counted.
* ``global`` alone parses (Qube lists the type) but nothing fires it.
* ``{work}`` as the whole extra of a work atom is the per-work-item placeholder
  (nodes). Any other ``{...}`` extra is refused as an unknown placeholder (a typo such
  as ``{frame}`` would otherwise be a work name no item has), and so is ``{work}`` in a
  subjob or host atom.

Hostile input fails fast: more than ``MAX_TRIGGER_BYTES`` is refused before
tokenising, and parentheses deeper than ``MAX_DEPTH`` before recursing further. The
canonical form (``render``: what ``triggers check`` prints, what the store shows and
what identifies a universal callback's line) must fit ``MAX_TRIGGER_BYTES`` too, so
that whatever is accepted, its canonical form is accepted as well.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, NoReturn

from executor.bounds import MAX_ID, MAX_SUBJOB_ID
from executor.triggers.errors import TriggerSyntaxError
from executor.triggers.lexer import MAX_DEPTH, MAX_TRIGGER_BYTES, Token, TokenKind, tokenize
from executor.triggers.nodes import (
    MAX_QUBE_TIME,
    PLACEHOLDER,
    WILDCARD,
    Atom,
    EventName,
    EventType,
    Expr,
    atoms,
    conjoin,
    disjoin,
    render,
    render_atom,
)

_NAMES: Final = frozenset(name.value for name in EventName)
_TYPES: Final = frozenset(type_.value for type_ in EventType)
_GLOBAL_HEADS: Final = ("global", "globaltime", "globalrepeat")
_LABEL: Final = re.compile(r"[A-Za-z0-9_.]+")
# Digits read as a number only to say it is too large (Python's int() refuses 4,300).
_TOO_MANY_DIGITS: Final = 40

EXPECT_NAME: Final = "one of " + ", ".join(EventName)
EXPECT_TYPE: Final = "one of " + ", ".join(EventType)
EXPECT_CONTEXT: Final = "self, parent, a job id or a label (letters, digits, '_' and '.')"
EXPECT_JOB_ID: Final = f"a job id from 1 to {MAX_ID}"
EXPECT_TIME: Final = "a Qube time (whole seconds since 2000-01-01 05:00:00 UTC)"
EXPECT_INTERVAL: Final = "'<T>-<seconds>' with a positive interval in seconds"
EXPECT_OPERAND: Final = "an event or '('"
EXPECT_WORK: Final = f"a work name, '*' or {PLACEHOLDER} (each work item of this job)"
# How a list-valued trigger's items are joined into the one expression stored (the
# same as supervisor_client.jobdict's): the OR of the items, with no parentheses added.
LIST_JOIN: Final = " || "


def parse(expression: str, *, stored: bool = False) -> Expr:
    """Parse one trigger expression.

    ``stored``: the expression was registered already, perhaps by an older version,
    whose grammar took job ids it now refuses (0, past 2^63 - 1): they are read as
    they were, an atom no event names, rather than failing every event of their job.
    Nor is its canonical form's size checked again (it was, or predates the check).

    Raises:
        TriggerSyntaxError: with the column of the problem and what was expected.
    """
    expr = _Parser(expression, tokenize(expression), stored=stored).parse()
    if not stored:
        column = _canonical_overflow(expr, expression, MAX_TRIGGER_BYTES)
        if column is not None:
            raise TriggerSyntaxError(
                "trigger too long in its canonical form",
                column,
                f"at most {MAX_TRIGGER_BYTES} bytes (UTF-8) written canonically too, with one "
                f"space each side of every operator ({_size(render(expr))} bytes)",
                expression,
            )
    return expr


def parse_trigger_list(items: Sequence[str]) -> Expr:
    """Parse a list-valued ``triggers`` as the OR of its items (see module docstring).

    Errors name the 0-based item (``error.item``); columns count within that item.
    The items are stored as one expression, joined with ``LIST_JOIN``, so they share
    its ``MAX_TRIGGER_BYTES``, as written and in canonical form, joins counted: a list
    this accepts, joined, ``parse`` accepts, and is as deep as its deepest item.
    """
    if isinstance(items, str):
        raise TypeError("parse_trigger_list takes a list of strings; use parse() for one")
    if not items:
        raise TriggerSyntaxError("empty trigger list", 1, "at least one trigger", "")
    expected = (
        f"at most {MAX_TRIGGER_BYTES} bytes (UTF-8) in all items together, as written and "
        f"written canonically, with the {_size(LIST_JOIN)} bytes of {LIST_JOIN!r} "
        "between each two"
    )
    written = canonical = MAX_TRIGGER_BYTES
    terms: list[Expr] = []
    for index, item in enumerate(items):
        join = _size(LIST_JOIN) if index else 0
        try:
            tokens = tokenize(item)
            if _size(item) > written - join:
                fits = item.encode("utf-8", "replace")[: max(written - join, 0)]
                stop = len(fits.decode("utf-8", "ignore")) + 1
                raise TriggerSyntaxError("trigger list too long", stop, expected, item)
            term = _Parser(item, tokens).parse()
            overflow = _canonical_overflow(term, item, canonical - join)
            if overflow is not None:
                raise TriggerSyntaxError(
                    "trigger list too long in its canonical form", overflow, expected, item
                )
        except TriggerSyntaxError as err:
            raise err.with_item(index) from None
        written -= join + _size(item)
        canonical -= join + _size(render(term))
        terms.append(term)
    return disjoin(terms)


def _size(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def _canonical_overflow(expr: Expr, expression: str, room: int) -> int | None:
    """None when ``expr``'s canonical form fits in ``room`` bytes; else where it stops fitting.

    The canonical form (``render``) puts one space each side of every operator, so a
    trigger written as ``a||b||...`` grows by 2 bytes per operator; what it stores and
    ``triggers check`` prints must itself be a trigger the limit takes. The column is
    that, in ``expression``, of the first atom whose canonical text ends past ``room``
    (or one past its end, when only a closing parenthesis does).
    """
    canonical = render(expr).encode("utf-8", "replace")
    if len(canonical) <= room:
        return None
    end = 0
    for atom in atoms(expr):
        end = canonical.index(render_atom(atom).encode("utf-8", "replace"), end)
        end += len(render_atom(atom).encode("utf-8", "replace"))
        if end > room:
            return atom.column
    return len(expression) + 1


def parse_triggers(value: str | Sequence[str]) -> Expr:
    """``parse`` for a string, ``parse_trigger_list`` for a list: what a job dict may hold."""
    if isinstance(value, str):
        return parse(value)
    return parse_trigger_list(value)


class _Parser:
    """Recursive descent over a token list; depth is bounded by ``MAX_DEPTH``."""

    def __init__(self, expression: str, tokens: list[Token], *, stored: bool = False) -> None:
        self._expression = expression
        self._tokens = tokens
        self._pos = 0
        self._stored = stored

    def parse(self) -> Expr:
        if self._peek().kind is TokenKind.END:
            self._fail("empty trigger", 1, "an event such as 'complete-job-self'")
        expr = self._or_expr(0)
        token = self._peek()
        if token.kind is TokenKind.RPAREN:
            self._fail("unmatched ')'", token.column, "'&&', '||' or end of trigger")
        if token.kind is not TokenKind.END:
            self._fail(
                f"unexpected {token.describe()}", token.column, "'&&', '||' or end of trigger"
            )
        return expr

    def _peek(self) -> Token:
        return self._tokens[self._pos]

    def _advance(self) -> Token:
        token = self._tokens[self._pos]
        if token.kind is not TokenKind.END:
            self._pos += 1
        return token

    def _fail(self, reason: str, column: int, expected: str) -> NoReturn:
        raise TriggerSyntaxError(reason, column, expected, self._expression)

    def _or_expr(self, depth: int) -> Expr:
        terms = [self._and_expr(depth)]
        while self._peek().kind is TokenKind.OR:
            self._advance()
            terms.append(self._and_expr(depth))
        return disjoin(terms)

    def _and_expr(self, depth: int) -> Expr:
        terms = [self._primary(depth)]
        while self._peek().kind is TokenKind.AND:
            self._advance()
            terms.append(self._primary(depth))
        return conjoin(terms)

    def _primary(self, depth: int) -> Expr:
        token = self._advance()
        if token.kind is TokenKind.ATOM:
            return _AtomParser(token.text, token.column, self._expression, self._stored).parse()
        if token.kind is TokenKind.LPAREN:
            if depth >= MAX_DEPTH:
                self._fail(
                    "parentheses nested too deep",
                    token.column,
                    f"at most {MAX_DEPTH} levels of parentheses",
                )
            inner = self._or_expr(depth + 1)
            close = self._peek()
            if close.kind is TokenKind.RPAREN:
                self._advance()
                return inner
            if close.kind is TokenKind.END:
                self._fail("unclosed '('", token.column, "a matching ')'")
            self._fail(f"unexpected {close.describe()}", close.column, "'&&', '||' or ')'")
        self._fail(f"unexpected {token.describe()}", token.column, EXPECT_OPERAND)


class _AtomParser:
    """Validates one ``name-type-context-extra`` atom and builds its ``Atom``."""

    def __init__(self, text: str, column: int, expression: str, stored: bool = False) -> None:
        self._text = text
        self._column = column
        self._expression = expression
        self._stored = stored

    def _fail(self, reason: str, offset: int, expected: str) -> NoReturn:
        raise TriggerSyntaxError(reason, self._column + offset, expected, self._expression)

    def _atom(
        self,
        name: EventName,
        type_: EventType,
        context: str = "",
        extra: str = "",
        warnings: Sequence[str] = (),
    ) -> Atom:
        return Atom(name, type_, context, extra, self._column, self._text, tuple(warnings))

    def parse(self) -> Atom:
        head, dash, rest = self._text.partition("-")
        if head in _GLOBAL_HEADS:
            return self._global(EventType(head), dash, rest)
        fields = self._text.split("-", 3)
        # offsets[i]: where field i starts (or would start) within the atom
        offsets = [0]
        for field in fields[:-1]:
            offsets.append(offsets[-1] + len(field) + 1)
        offsets.extend([len(self._text)] * (4 - len(offsets)))
        present = fields + [""] * (4 - len(fields))
        name_text, type_text, context_text, extra_text = present

        name = EventName(self._word(name_text, 0, "name", _NAMES, EXPECT_NAME))
        type_ = EventType(self._word(type_text, offsets[1], "type", _TYPES, EXPECT_TYPE))
        if type_.value in _GLOBAL_HEADS:
            self._fail(
                f"event type '{type_}' takes no name or context", 0, f"'{_global_form(type_)}'"
            )
        timed = type_ in (EventType.TIME, EventType.REPEAT)
        if name is EventName.DUMMY and not timed:
            self._fail(
                f"event type '{type_}' after 'dummy'",
                offsets[1],
                "time or repeat (e.g. 'dummy-time-self-<T>')",
            )
        if not context_text:
            self._fail("missing context", offsets[2], EXPECT_CONTEXT)
        context = self._context(context_text, offsets[2])
        if timed and context != "self" and not self._stored:
            # A time atom is the owning job's own timer and fires in its context: another
            # context would be read as naming that job's clock, which does not exist.
            own, jobless = (
                ("<T>", EventType.GLOBALTIME)
                if type_ is EventType.TIME
                else ("<T>-<interval>", EventType.GLOBALREPEAT)
            )
            self._fail(
                f"a {type_} event's context is 'self', not {_quoted(context_text)}",
                offsets[2],
                f"'{name}-{type_}-self-{own}' (the job's own timer, fired in its context), "
                f"or '{_global_form(jobless)}'",
            )

        warnings: list[str] = []
        if timed and name is not EventName.DUMMY:
            warnings.append(
                f"time events are named 'dummy'; '{name}' is accepted and means the same"
            )
        has_extra = len(fields) == 4
        offset = offsets[3]
        extra = ""
        if _is_placeholder(extra_text) and (
            type_ is not EventType.WORK or extra_text != PLACEHOLDER
        ):
            self._placeholder(extra_text, type_, offset)
        if type_ is EventType.JOB:
            if has_extra:
                warnings.append(
                    f"job events take no extra: '-{extra_text}' is ignored"
                    " (a label cannot contain '-')"
                )
        elif type_ is EventType.SUBJOB:
            extra = self._subjob_id(extra_text, offset)
        elif type_ is EventType.WORK:
            extra = self._required(extra_text, offset, "work name", EXPECT_WORK)
        elif type_ is EventType.HOST:
            extra = self._required(extra_text, offset, "host name", "a host name or '*'")
        elif type_ is EventType.TIME:
            extra = self._qube_time(extra_text, offset)
        else:
            extra = self._repeat(extra_text, offset)
        return self._atom(name, type_, context, extra, warnings)

    def _word(self, text: str, offset: int, what: str, words: frozenset[str], expected: str) -> str:
        """An event name or type: one of ``words``, written as Qube does (lower case)."""
        if not text:
            self._fail(f"missing event {what}", offset, expected)
        if text not in words:
            lower = text.lower()
            if lower in words:
                # A context in another case is a label (case sensitive): no such leeway here.
                expected = f"'{lower}' (event {what}s are lower case)"
            self._fail(f"unknown event {what} {_quoted(text)}", offset, expected)
        return text

    def _global(self, type_: EventType, dash: str, rest: str) -> Atom:
        offset = len(type_.value) + len(dash)
        if type_ is EventType.GLOBAL:
            if dash:
                self._fail(f"unexpected '-{rest}' after 'global'", offset - 1, "'global' alone")
            return self._atom(EventName.DUMMY, type_)
        if type_ is EventType.GLOBALTIME:
            extra = self._qube_time(rest, offset)
        else:
            extra = self._repeat(rest, offset)
        return self._atom(EventName.DUMMY, type_, extra=extra)

    def _placeholder(self, text: str, type_: EventType, offset: int) -> NoReturn:
        if text == PLACEHOLDER:
            self._fail(
                f"the {PLACEHOLDER} placeholder in a {type_} atom",
                offset,
                f"{PLACEHOLDER} in a work atom only (it names a work item of this job)",
            )
        self._fail(f"unknown placeholder {_quoted(text)}", offset, EXPECT_WORK)

    def _context(self, text: str, offset: int) -> str:
        if text in ("self", "parent"):
            return text
        if text.isascii() and text.isdigit():
            if self._stored:
                return str(int(text))
            value = _small_int(text.lstrip("0") or "0", len(str(MAX_ID)))
            if value == 0:
                self._fail(f"job id {_quoted(text)}: no job has id 0", offset, EXPECT_JOB_ID)
            if value is None or value > MAX_ID:
                self._fail(f"job id {_quoted(text)} out of range", offset, EXPECT_JOB_ID)
            return str(value)
        if _LABEL.fullmatch(text) is None:
            self._fail(f"bad context {_quoted(text)}", offset, EXPECT_CONTEXT)
        return text

    def _required(self, text: str, offset: int, what: str, expected: str) -> str:
        if not text:
            self._fail(f"missing {what}", offset, expected)
        return text

    def _subjob_id(self, text: str, offset: int) -> str:
        expected = "a subjob id (0, 1, ...) or '*'"
        self._required(text, offset, "subjob id", expected)
        if text == WILDCARD:
            return text
        value = _small_int(text)
        if value is None or value > MAX_SUBJOB_ID:
            self._fail(f"bad subjob id {_quoted(text)}", offset, expected)
        return str(value)

    def _qube_time(self, text: str, offset: int) -> str:
        self._required(text, offset, "time", EXPECT_TIME)
        value = _small_int(text, _TOO_MANY_DIGITS)
        if value is None:
            self._fail(f"bad time {_quoted(text)}", offset, EXPECT_TIME)
        if value > MAX_QUBE_TIME:
            self._fail(
                f"time {_quoted(text)} is past the year 9999",
                offset,
                f"a Qube time of at most {MAX_QUBE_TIME} (9999-12-31 23:59:59 UTC)",
            )
        return str(value)

    def _repeat(self, text: str, offset: int) -> str:
        start, dash, interval_text = text.partition("-")
        start_value = self._qube_time(start, offset)
        interval_offset = offset + len(start) + len(dash)
        if not interval_text:
            self._fail("missing repeat interval", interval_offset, EXPECT_INTERVAL)
        interval = _small_int(interval_text, _TOO_MANY_DIGITS)
        if interval is not None and interval > MAX_QUBE_TIME:
            self._fail(
                f"repeat interval {_quoted(interval_text)} too long",
                interval_offset,
                f"a repeat interval of at most {MAX_QUBE_TIME} seconds",
            )
        if interval is None or interval <= 0:
            self._fail(
                f"bad repeat interval {_quoted(interval_text)}", interval_offset, EXPECT_INTERVAL
            )
        start_time = int(start_value)
        if start_time + interval > MAX_QUBE_TIME and not self._stored:
            # Its second tick is past any date a person (or `why`) can be shown; one
            # registered before this rule is still read, and explained with that date.
            self._fail(
                f"repeat interval {_quoted(interval_text)} after time {start_time} ticks past"
                " the year 9999",
                interval_offset,
                f"a repeat interval of at most {MAX_QUBE_TIME - start_time} seconds after that"
                f" time (T + interval at most {MAX_QUBE_TIME}, 9999-12-31 23:59:59 UTC)",
            )
        return f"{start_value}-{interval}"


def is_label(text: str) -> bool:
    """Whether a trigger can name a job by ``text`` as its label (``complete-job-<text>``)."""
    return (
        _LABEL.fullmatch(text) is not None
        and text not in ("self", "parent")
        and not (text.isascii() and text.isdigit())
    )


def _quoted(text: str, limit: int = 40) -> str:
    """User text for an error message: quoted, and cut when long (a trigger may be 64 KiB)."""
    if len(text) <= limit:
        return f"'{text}'"
    return f"'{text[:limit]}...' ({len(text)} characters)"


def _is_placeholder(text: str) -> bool:
    return text.startswith("{") and text.endswith("}")


def _small_int(text: str, max_digits: int = 12) -> int | None:
    """A non-negative ASCII decimal of at most ``max_digits`` digits, else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > max_digits:
        return None
    return int(text)


def _global_form(type_: EventType) -> str:
    forms: dict[EventType, str] = {
        EventType.GLOBAL: "global",
        EventType.GLOBALTIME: "globaltime-<T>",
        EventType.GLOBALREPEAT: "globalrepeat-<T>-<interval>",
    }
    return forms[type_]
