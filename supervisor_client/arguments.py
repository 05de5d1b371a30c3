"""Requests from plain values, refusing an argument by name before anything is sent.

Protobuf's own refusals name nothing ("bad argument type for built-in operation" for
``get_run(1)``), and it takes a str given for a repeated string field as its characters
(``retry_dead_letters("abc")`` would retry "a", "b" and "c"), None as the field unset
(``retry_dead_letters(None)`` would retry every dead letter), a bool as a number and an
int as a bool; Python's name nothing either (``dict(5)``: "'int' object is not
iterable"). Every check of both clients is here, each naming the argument (or the path
inside one: ``events[1].job_id``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = [
    "check_json",
    "check_mapping",
    "check_message",
    "check_request_alone",
    "check_seconds",
    "check_sequence",
    "check_str",
    "expects",
    "message_from",
    "request_from",
]

_M = TypeVar("_M", bound=Message)

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def _expected(field: FieldDescriptor) -> str:
    """What a field takes, in the caller's Python words."""
    if field.cpp_type in _INT_RANGES:
        low, high = _INT_RANGES[field.cpp_type]
        one = f"an int from {low} to {high}"
    elif field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        one = "a str"
    elif field.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        one = "a number"
    elif field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        one = "a bool"
    elif field.cpp_type == FieldDescriptor.CPPTYPE_ENUM and field.enum_type is not None:
        one = f"a {field.enum_type.name} value"
    elif field.message_type is not None:
        one = f"a {field.message_type.name}"
    else:
        one = "a value"
    return (
        f"a sequence of {one.removeprefix('a ').removeprefix('an ')}" if _repeated(field) else one
    )


def expects(message: type[Message], name: str) -> str:
    """What ``message``'s field ``name`` takes, in the caller's Python words ("a str")."""
    # upb's descriptors, typed apart in the stubs, are these at run time.
    return _expected(cast("FieldDescriptor", message.DESCRIPTOR.fields_by_name[name]))


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _kind(value: Any) -> str:
    return type(value).__name__


def _misread(field: FieldDescriptor, value: Any) -> bool:
    """True for what protobuf takes as another value: None (unset), a bool (a number), ..."""
    if value is None:
        return True
    if _repeated(field):
        return False
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return not isinstance(value, bool)
    if field.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return isinstance(value, bool)
    return False


def request_from(message: type[_M], **fields: Any) -> _M:
    """``message(**fields)``; TypeError or ValueError naming the argument it cannot hold.

    The error says what the argument takes ("invocation_id: expected a str, got int"),
    the caller's mistake named as ``check_timeout`` names ``timeout``.
    """
    return message_from(message, fields)


def message_from(
    message: type[_M],
    fields: Mapping[str, Any],
    *,
    where: str = "",
    names: Mapping[str, str] | None = None,
) -> _M:
    """``message(**fields)`` as ``request_from``, each name prefixed with ``where``.

    ``where`` is the path of the dict the fields came from ("event.", "events[1]."),
    and ``names`` the argument a field was given as, where the two differ
    (``{"timeout_seconds": "wait_seconds"}``).
    """
    # upb's descriptors, typed apart in the stubs, are these at run time.
    known = cast("Mapping[str, FieldDescriptor]", message.DESCRIPTOR.fields_by_name)
    # A caller's dict may hold any key, whatever its type says.
    for name, value in cast("Mapping[object, Any]", fields).items():
        if not isinstance(name, str):  # before it is joined to ``where``, as check_json words it
            argument = where.removesuffix(".") or "fields"
            raise TypeError(f"{argument}: expected str keys, got {_kind(name)} {name!r}")
        label = where + (names or {}).get(name, name)
        if name not in known:
            # A ValueError, as protobuf's own (which named the field but not where it was).
            raise ValueError(
                f"{label}: not a field of {message.DESCRIPTOR.name}; expected one of "
                + ", ".join(known)
            )
        if (_repeated(known[name]) and isinstance(value, str | bytes)) or _misread(
            known[name], value
        ):
            raise TypeError(f"{label}: expected {_expected(known[name])}, got {_kind(value)}")
    try:
        return message(**fields)
    except (TypeError, ValueError):
        for name, value in fields.items():
            _check_one(message, known[name], value, where + (names or {}).get(name, name))
        raise


def check_message(name: str, value: Any, message: type[_M]) -> _M:
    """``value`` when it is a ``message``; TypeError naming ``name`` otherwise.

    A dict given for a request would go out as it is and fail inside gRPC's serializer.
    """
    if not isinstance(value, message):
        article = "an" if message.DESCRIPTOR.name[0] in "AEIOU" else "a"
        raise TypeError(f"{name}: expected {article} {message.DESCRIPTOR.name}, got {_kind(value)}")
    return value


def check_request_alone(request: Any, fields: Mapping[str, Any]) -> None:
    """ValueError naming the ``fields`` given with a whole ``request``: they would go unused.

    A field keyword left empty (None, 0, "", False, an empty sequence: what each
    method's keywords default to) is not counted as given.
    """
    if request is None:
        return
    given = [
        name
        for name, value in fields.items()
        if not (value is None or (isinstance(value, str | int | float | Sequence) and not value))
    ]
    if given:
        raise ValueError(
            f"{', '.join(given)}: give the request or its fields, not both"
            " (the request's own fields would be sent, these dropped)"
        )


def check_seconds(name: str, value: Any) -> float:
    """``value`` as seconds, a finite number more than 0; TypeError or ValueError naming ``name``.

    NaN compares false with every bound (a prune ``time < now - nan`` deletes nothing), a
    bool is not a number of seconds, and an int too large for a float is refused here,
    not as an OverflowError of the arithmetic that uses it.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected seconds as a number, got {_kind(value)}")
    if not 0 < value <= sys.float_info.max:  # false for NaN, infinity and huge ints
        raise ValueError(f"{name}: expected seconds, a finite number more than 0; got {value!r}")
    return float(value)


def check_str(name: str, value: Any) -> str:
    """``value`` when it is a str; TypeError naming ``name`` otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {_kind(value)}")
    return value


def check_mapping(name: str, value: Any) -> Mapping[str, Any]:
    """``value`` when it is a dict (any Mapping); TypeError naming ``name`` otherwise."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{name}: expected a dict, got {_kind(value)}")
    return value


def check_sequence(name: str, value: Any, items: str) -> list[Any]:
    """``value``'s items as a list; TypeError naming ``name`` for one that holds no ``items``.

    A str, bytes or dict is refused, not taken as its characters or keys.
    """
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise TypeError(f"{name}: expected a sequence of {items}, got {_kind(value)}")
    return list(value)


_NON_FINITE: Final = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def check_json(where: str, value: Any, *, finite: bool) -> None:
    """Raise naming the first value under ``where`` that JSON (a Struct) cannot hold.

    TypeError for a value of another type (an object, bytes, a set, a key not a str),
    and with ``finite`` ValueError for NaN or ±Infinity, as the executor words it. Call it
    once a conversion has failed: it walks the whole value.
    """
    if isinstance(value, float) and not math.isfinite(value):
        if finite:
            raise ValueError(
                f"{where}: {_NON_FINITE[str(value)]} is not a JSON number;"
                " a Struct's numbers must be finite"
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: expected str keys, got {_kind(key)} {key!r}")
            check_json(
                f"{where}.{key}" if key.isidentifier() else f"{where}[{key!r}]", item, finite=finite
            )
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_json(f"{where}[{index}]", item, finite=finite)
    elif value is not None and not isinstance(value, str | int | float):
        raise TypeError(
            f"{where}: expected a JSON value (a str, number, bool, None, list or dict),"
            f" got {_kind(value)}"
        )


def as_json(where: str, value: Any) -> Any:
    """``value`` as plain JSON values (dict subclasses, tuples as lists); refusals as ``check_json``.

    A key that is not a str is refused too, where ``json.dumps`` would turn it into one
    (``1`` into ``"1"``).
    """
    try:
        plain = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        check_json(where, value, finite=True)
        raise
    if not _str_keys(value):
        check_json(where, value, finite=True)  # names it
    return plain


def _str_keys(value: Any) -> bool:
    """True when every dict under ``value`` has only str keys (a walk of keys alone: quick)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if not all(isinstance(key, str) for key in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def _check_one(message: type[Message], field: FieldDescriptor, value: Any, label: str) -> None:
    """Raise the named refusal if ``value`` is what the message cannot hold."""
    name = field.name
    where = ""
    if _repeated(field) and isinstance(value, list | tuple):
        # The first item refused, with its index: "got int at index 1".
        for index, item in enumerate(value):
            try:
                message(**{name: [item]})
            except (TypeError, ValueError):
                value, where = item, f" at index {index}"
                break
    try:
        message(**{name: value if where == "" else [value]})
    except TypeError as one:
        got = type(value).__name__
        raise TypeError(f"{label}: expected {_expected(field)}, got {got}{where}") from one
    except ValueError as one:
        raise ValueError(f"{label}: expected {_expected(field)}, got {value!r}{where}") from one
