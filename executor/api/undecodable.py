"""Which field of request bytes makes them undecodable: a string not UTF-8, or nesting too deep.

protobuf refuses such a request whole, naming no field ("String field had bad UTF-8";
nesting past its limit of 100 messages is "Wire format was corrupt", as for garbage).
Only then are the bytes walked here, field by field along the message's descriptor, to
name the first string that is not UTF-8 as a path (``callback.code``, ``work[2]``,
``events[1].host``), or the field whose messages nest past the limit; a field inside a
``google.protobuf.Struct`` is named by the Struct field (``context.job.extra``, where a
list nests two messages and a dict three). Anything else the walk cannot read (a
truncated message, a group) names nothing.
"""

from __future__ import annotations

from typing import Final

from google.protobuf.descriptor import Descriptor, FieldDescriptor

# protobuf's own default recursion limit: a deeper request was refused for that.
_MAX_DEPTH: Final = 100
_STRUCT_TYPES: Final = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}
)
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class _Unreadable(Exception):
    """The bytes are not a message the walk can follow."""


class _TooDeep(Exception):
    """Messages nest past protobuf's limit, in the field at ``where``."""

    def __init__(self, where: str) -> None:
        super().__init__(where)
        self.where = where


def undecodable_field(descriptor: Descriptor, data: bytes) -> str | None:
    """Why ``data`` does not decode as ``descriptor``'s message, naming the field; None if unknown."""
    try:
        where = _walk(descriptor, memoryview(data), "", 0)
    except _TooDeep as deep:
        return (
            f"{deep.where} nests messages more than {_MAX_DEPTH} deep, protobuf's limit"
            " (in a Struct, a list takes two levels, a dict three)"
        )
    except _Unreadable:
        return None
    if where is None:
        return None
    return f"{where} is not valid UTF-8 (no string field may hold other bytes)"


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise _Unreadable
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _walk(descriptor: Descriptor, data: memoryview, path: str, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        raise _TooDeep(path)
    seen: dict[int, int] = {}
    position = 0
    while position < len(data):
        tag, position = _varint(data, position)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            _, position = _varint(data, position)
            continue
        if wire_type in (_FIXED64, _FIXED32):
            position += 8 if wire_type == _FIXED64 else 4
            continue
        if wire_type != _LENGTH:
            raise _Unreadable
        size, position = _varint(data, position)
        if position + size > len(data):
            raise _Unreadable
        payload = data[position : position + size]
        position += size
        field = descriptor.fields_by_number.get(number)
        if field is None:
            continue  # an unknown field: kept unparsed, never refused
        index = seen[number] = seen.get(number, -1) + 1
        where = f"{path}.{field.name}" if path else field.name
        if field.is_repeated:
            where += f"[{index}]"
        found = _in_field(field, payload, where, depth)
        if found is not None:
            return found
    return None


def _in_field(field: FieldDescriptor, payload: memoryview, where: str, depth: int) -> str | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            str(payload, "utf-8")
        except UnicodeDecodeError:
            return where
        return None
    message = field.message_type
    if field.type != FieldDescriptor.TYPE_MESSAGE or message is None:
        return None
    if message.full_name in _STRUCT_TYPES:
        # A Struct's map entries and values are no field a caller wrote: name the Struct.
        try:
            return where if _walk(message, payload, where, depth + 1) is not None else None
        except _TooDeep:
            raise _TooDeep(where) from None
    return _walk(message, payload, where, depth + 1)
