"""Requests from plain values, refusing an argument by name before anything is sent.

Protobuf's own refusals name nothing ("bad argument type for built-in operation" for
``get_run(1)``), and it takes a str given for a repeated string field as its characters
(``retry_dead_letters("abc")`` would retry "a", "b" and "c").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = ["request_from"]

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


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def request_from(message: type[_M], **fields: Any) -> _M:
    """``message(**fields)``; TypeError or ValueError naming the argument it cannot hold.

    The error says what the argument takes ("invocation_id: expected a str, got int"),
    the caller's mistake named as ``check_timeout`` names ``timeout``.
    """
    # upb's descriptors, typed apart in the stubs, are these at run time.
    known = cast("Mapping[str, FieldDescriptor]", message.DESCRIPTOR.fields_by_name)
    for name, value in fields.items():
        if name in known and _repeated(known[name]) and isinstance(value, str | bytes):
            raise TypeError(
                f"{name}: expected {_expected(known[name])}, got {type(value).__name__}"
            )
    try:
        return message(**fields)
    except (TypeError, ValueError) as err:
        for name, value in fields.items():
            if name in known:
                _check_one(message, known[name], value)
        raise err from None  # an unknown field: protobuf's message names it


def _check_one(message: type[Message], field: FieldDescriptor, value: Any) -> None:
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
        raise TypeError(f"{name}: expected {_expected(field)}, got {got}{where}") from one
    except ValueError as one:
        raise ValueError(f"{name}: expected {_expected(field)}, got {value!r}{where}") from one
