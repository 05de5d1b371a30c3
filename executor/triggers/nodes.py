"""Syntax tree of a trigger: event atoms joined by ``&&`` (And) and ``||`` (Or).

The tree is normalised by construction: an ``And`` never holds an ``And`` directly
(``(a && b) && c`` is ``And(a, b, c)``; the operators are associative), the same for
``Or``, and each has at least two terms. With that, ``render`` can use minimal
parentheses and ``parse(render(x)) == x`` holds for every tree the parser builds.

Atoms compare on their meaning only (name, type, context, extra): the column, the
text as written and parse warnings are carried along for messages but ignored by
``==``, so a rendered-and-reparsed atom equals the original.

The position of an atom in ``atoms(expr)`` (left to right) is its *latch slot*:
the index of its satisfied-flag in the engine's per-callback latch vector (Qube's
``ready`` field).

A work atom whose extra is the placeholder ``{work}`` names, for each work item of
the callback's own job, the item of the same name (``complete-work-ribgen-{work}``:
"the same frame of ribgen"). A trigger holding one is *per work item*: the engine keeps
a latch vector per item (see evaluate); ``substitute`` gives an item's atom.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from executor.plurals import counted


class EventName(enum.StrEnum):
    """When: which transition an atom waits for."""

    COMPLETE = "complete"
    DONE = "done"  # complete, failed or killed
    SUBMIT = "submit"
    KILLED = "killed"
    BLOCKED = "blocked"
    FAILED = "failed"
    RUNNING = "running"
    WAITING = "waiting"
    ASSIGNED = "assigned"
    REMOVED = "removed"
    MODIFIED = "modified"
    TIMEOUT = "timeout"
    DUMMY = "dummy"  # the placeholder name of time-based events


class EventType(enum.StrEnum):
    """What kind of object an atom is about."""

    JOB = "job"
    SUBJOB = "subjob"
    WORK = "work"
    HOST = "host"
    TIME = "time"
    REPEAT = "repeat"
    GLOBAL = "global"
    GLOBALTIME = "globaltime"
    GLOBALREPEAT = "globalrepeat"


class ContextKind(enum.Enum):
    """How an atom names the job it is about; resolving it is the engine's job."""

    SELF = "self"
    PARENT = "parent"
    JOB_ID = "job id"
    LABEL = "label"
    NONE = "none"  # global forms carry no context


# Types whose atoms are fired by a clock, never by a published event.
TIME_TYPES: Final = frozenset(
    {EventType.TIME, EventType.REPEAT, EventType.GLOBALTIME, EventType.GLOBALREPEAT}
)
# Types written without name and context: ``global``, ``globaltime-<T>``,
# ``globalrepeat-<T>-<interval>``.
GLOBAL_TYPES: Final = frozenset({EventType.GLOBAL, EventType.GLOBALTIME, EventType.GLOBALREPEAT})
# Types that name an item of the job in their extra (or ``*``).
ITEM_TYPES: Final = frozenset({EventType.SUBJOB, EventType.WORK, EventType.HOST})
WILDCARD: Final = "*"
# The extra of a work atom that stands for each work item of the callback's own job.
PLACEHOLDER: Final = "{work}"

# Qube time = Unix time - QB_TIME_EPOCH_OFFSET (the Qube epoch is 2000-01-01 05:00:00 UTC).
QB_TIME_EPOCH_OFFSET: Final = 946702800
# The last Qube time a datetime can show (9999-12-31 23:59:59 UTC); larger is refused.
MAX_QUBE_TIME: Final = 253402300799 - QB_TIME_EPOCH_OFFSET


def context_kind(context: str) -> ContextKind:
    """Classify a context as written in an atom (the parser has validated it)."""
    if context == "self":
        return ContextKind.SELF
    if context == "parent":
        return ContextKind.PARENT
    if not context:
        return ContextKind.NONE
    if context.isascii() and context.isdigit():
        return ContextKind.JOB_ID
    return ContextKind.LABEL


@dataclass(frozen=True, slots=True)
class Atom:
    """One event specification ``name-type-context-extra``.

    Attributes:
        name: The transition waited for. Global forms get ``dummy``.
        type: The kind of object.
        context: ``self``, ``parent``, a decimal job id (canonical, no leading
            zeros) or a label; ``""`` for global forms.
        extra: Subjob id, work name, host name, ``*``, Qube time ``T`` or
            ``T-interval``; ``""`` when the type takes none (an extra written on a
            ``job`` atom is dropped with a warning).
        column: 1-based column of the atom in the expression (0 if built by hand).
        text: The atom as written.
        warnings: Things the parser accepted but a reader should know about.
    """

    name: EventName
    type: EventType
    context: str
    extra: str = ""
    column: int = field(default=0, compare=False)
    text: str = field(default="", compare=False)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        # Accept plain strings from hand-built atoms; a bad name or type is a ValueError.
        object.__setattr__(self, "name", EventName(self.name))
        object.__setattr__(self, "type", EventType(self.type))

    @property
    def context_kind(self) -> ContextKind:
        """How the context names its job."""
        return context_kind(self.context)

    @property
    def is_timed(self) -> bool:
        """True for atoms a clock fires (time, repeat, globaltime, globalrepeat)."""
        return self.type in TIME_TYPES

    @property
    def per_work(self) -> bool:
        """True for a work atom whose extra is the ``{work}`` placeholder."""
        return self.type is EventType.WORK and self.extra == PLACEHOLDER


@dataclass(frozen=True, slots=True)
class And:
    """All terms must hold. At least two terms, none of them an ``And``."""

    terms: tuple[Expr, ...]
    # Its atoms once ``atoms`` listed them: a stored trigger's are asked for at every event.
    _atoms: tuple[Atom, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_terms(self.terms, And)


@dataclass(frozen=True, slots=True)
class Or:
    """Any term must hold. At least two terms, none of them an ``Or``."""

    terms: tuple[Expr, ...]
    # Its atoms once ``atoms`` listed them: a stored trigger's are asked for at every event.
    _atoms: tuple[Atom, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_terms(self.terms, Or)


Expr: TypeAlias = Atom | And | Or


def _check_terms(terms: tuple[Expr, ...], kind: type[And | Or]) -> None:
    if len(terms) < 2:
        raise ValueError(f"{kind.__name__} needs at least two terms, got {len(terms)}")
    for term in terms:
        if isinstance(term, kind):
            raise TypeError(f"{kind.__name__} directly inside {kind.__name__}: flatten it")


def conjoin(terms: list[Expr]) -> Expr:
    """``And`` of ``terms``, splicing nested ``And``s; a single term is returned as is."""
    flat: list[Expr] = []
    for term in terms:
        flat.extend(term.terms if isinstance(term, And) else (term,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def disjoin(terms: list[Expr]) -> Expr:
    """``Or`` of ``terms``, splicing nested ``Or``s; a single term is returned as is."""
    flat: list[Expr] = []
    for term in terms:
        flat.extend(term.terms if isinstance(term, Or) else (term,))
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


def atoms(expr: Expr) -> list[Atom]:
    """The atoms of ``expr`` left to right; an atom's index is its latch slot."""
    if isinstance(expr, Atom):
        return [expr]
    if expr._atoms is None:
        found: list[Atom] = []
        stack: list[Expr] = [expr]
        while stack:
            node = stack.pop()
            if isinstance(node, Atom):
                found.append(node)
            else:
                stack.extend(reversed(node.terms))
        object.__setattr__(expr, "_atoms", tuple(found))  # a cache: not part of its value
    return list(expr._atoms or ())


def per_work(expr: Expr) -> bool:
    """Whether ``expr`` names the callback's own work items with ``{work}`` (any atom)."""
    return any(atom.per_work for atom in atoms(expr))


def substitute(atom: Atom, work_name: str) -> Atom:
    """The atom for work item ``work_name``: the placeholder replaced; any other atom as is."""
    if not atom.per_work:
        return atom
    text = atom.text[: len(atom.text) - len(PLACEHOLDER)] + work_name if atom.text else ""
    return Atom(atom.name, atom.type, atom.context, work_name, atom.column, text, atom.warnings)


def substitute_all(expr: Expr, work_name: str) -> Expr:
    """``expr`` with every ``{work}`` atom replaced by work item ``work_name``'s."""
    if isinstance(expr, Atom):
        return substitute(expr, work_name)
    terms = tuple(substitute_all(term, work_name) for term in expr.terms)
    return And(terms) if isinstance(expr, And) else Or(terms)


def render_atom(atom: Atom) -> str:
    """The canonical text of one atom."""
    if atom.type is EventType.GLOBAL:
        return "global"
    if atom.type in GLOBAL_TYPES:
        return f"{atom.type}-{atom.extra}"
    head = f"{atom.name}-{atom.type}-{atom.context}"
    return f"{head}-{atom.extra}" if atom.extra else head


def render(expr: Expr) -> str:
    """Canonical form: `` && `` and `` || `` with one space each side, minimal parentheses."""
    if isinstance(expr, Atom):
        return render_atom(expr)
    if isinstance(expr, Or):
        return " || ".join(render(term) for term in expr.terms)
    return " && ".join(
        f"({render(term)})" if isinstance(term, Or) else render(term) for term in expr.terms
    )


def _pieces(expr: Expr) -> Iterator[tuple[str, bool]]:
    """``render``'s text in pieces, left to right, each with whether it ends an atom."""
    if isinstance(expr, Atom):
        yield render_atom(expr), True
        return
    joint = " || " if isinstance(expr, Or) else " && "
    for index, term in enumerate(expr.terms):
        if index:
            yield joint, False
        wrapped = isinstance(expr, And) and isinstance(term, Or)
        if wrapped:
            yield "(", False
        yield from _pieces(term)
        if wrapped:
            yield ")", False


def _left_out(count: int, *, after_text: bool) -> str:
    return f"{' ' if after_text else ''}… ({counted(count, 'more atom')})"


def render_cut(expr: Expr, limit: int, count: int | None = None) -> str:
    """``render(expr)``, or, when longer than ``limit`` characters, its first atoms and the rest counted.

    A cut text ends after a whole atom, with `` … (N more atoms)``, which counts toward
    ``limit``. Only what is shown is rendered: a trigger of thousands of atoms costs its
    first ``limit`` characters, not its length. ``count``: how many atoms ``expr`` has,
    when the caller knows it.
    """
    total = len(atoms(expr)) if count is None else count
    parts: list[str] = []
    size = shown = 0
    kept = (0, 0)  # (parts, atoms) of the longest prefix that fits with its ending
    for text, ends_atom in _pieces(expr):
        parts.append(text)
        size += len(text)
        if size > limit:
            break
        if ends_atom:
            shown += 1
            if size + len(_left_out(total - shown, after_text=True)) <= limit:
                kept = (len(parts), shown)
    else:
        return "".join(parts)
    head = "".join(parts[: kept[0]])
    return head + _left_out(total - kept[1], after_text=bool(head))


def parse_warnings(expr: Expr) -> list[str]:
    """Every warning the parser recorded, prefixed with the atom and its column."""
    return [
        f"{atom.text or render_atom(atom)} (column {atom.column}): {warning}"
        for atom in atoms(expr)
        for warning in atom.warnings
    ]
