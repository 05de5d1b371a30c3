"""What a callback can make the executor hold and send: the stated sizes, and text cut to them.

A callback chooses the text of its output, its qb calls and its failure; every answer,
report and history record carries them. So each has a size, stated in the README:

- stdout and stderr: each at most the run's ``output_bytes`` of UTF-8 (after invalid
  bytes are replaced), see ``sandbox/capture.py``;
- actions: each record's verb, target and message cut to the sizes below, at most
  ``MAX_ACTIONS_BYTES`` of them together (later calls are counted, not kept);
- a failure: its message, exception type and traceback cut to the sizes below (the
  traceback keeps its end, where the cause is).

A size in bytes counts UTF-8 bytes (a character may take four), one in characters counts
characters: a bound on what goes on the wire must be in bytes, or a callback's 4-byte
characters make it four times what it says.
"""

from __future__ import annotations

from typing import Final

# The largest callback code, in UTF-8 bytes, the executor takes: at Execute and at
# RegisterJob alike (the reference farm's SubmitJobs has the same), so no path stores and
# runs what another refuses. A callbacks.conf file has its own (universal_files.MAX_FILE_BYTES).
MAX_CODE_BYTES: Final = 1 << 20
MAX_VERB_CHARS: Final = 64
MAX_TARGET_CHARS: Final = 512
MAX_MESSAGE_CHARS: Final = 1024
MAX_ACTIONS_BYTES: Final = 1 << 20
# What each action record takes on the wire beside its text (field tags and lengths: at
# most 14 bytes for a record within the sizes above), counted toward MAX_ACTIONS_BYTES:
# so the records are within it as an answer carries them, however many calls made them.
ACTION_FRAMING_BYTES: Final = 16
MAX_FAILURE_MESSAGE_BYTES: Final = 4096
MAX_EXCEPTION_TYPE_CHARS: Final = 256
MAX_TRACEBACK_BYTES: Final = 64 << 10
# The longest name a request may give what it names: a work item, an instance's or a
# worker's host, a job's name, label, user, status, prototype and mail addresses, an
# event's id, context and extra, an actor. Each is stored, journaled and sent on in
# events and reports; a Qube name is far shorter. Characters, as Python counts them.
MAX_NAME_CHARS: Final = 1024
# The largest request the executor's gRPC server takes (its receive limit). Above gRPC's
# 4 MiB default, so an oversized callback meets our own validation (a clear
# INVALID_ARGUMENT naming the field) instead of a transport-level refusal.
MAX_REQUEST_BYTES: Final = 16 << 20
# Ids are stored as SQLite integers (signed 64 bits): a uint64 above this cannot be kept,
# so neither a request nor a callback's qb call may name one. Instance ids are int32.
MAX_ID: Final = (1 << 63) - 1
MAX_SUBJOB_ID: Final = (1 << 31) - 1
# The longest one WaitJobs waits; `cbexec farm wait` waits longer in several of them.
MAX_WAIT_S: Final = 3600.0


def code_size_problem(code: str) -> str | None:
    """Why ``code`` is too large ("is N bytes; the limit is ..."), or None."""
    size = len(code.encode("utf-8", "surrogatepass"))
    if size <= MAX_CODE_BYTES:
        return None
    return f"is {size} bytes; the limit is {MAX_CODE_BYTES} (1 MiB)"


def cut(text: str, limit: int) -> str:
    """``text``, or as much of it as fits in ``limit`` characters with a marker.

    The marker says how many characters were left out, and counts toward the limit: the
    stated size holds.
    """
    if len(text) <= limit:
        return text
    kept = limit
    for _ in range(3):  # the marker's length depends on the count it states
        marker = f"…[{len(text) - kept} more characters]"
        kept = limit - len(marker)
    if kept <= 0:
        return text[:limit]
    return f"{text[:kept]}…[{len(text) - kept} more characters]"


def utf8_size(text: str) -> int:
    """How many bytes ``text`` takes as UTF-8 (a lone surrogate as the 3 of its U+FFFD)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def cut_utf8(text: str, max_bytes: int, left_out: str = "more bytes") -> str:
    """``text``, or its start as fits in ``max_bytes`` of UTF-8 with a marker after it.

    The cut falls on a character boundary; the marker (``…[N more bytes]``, or the words
    ``left_out`` gives) says how many bytes were left out, and counts toward the limit:
    the stated size holds.
    """
    size = utf8_size(text)
    if size <= max_bytes:
        return text
    # Its first max_bytes + 1 characters hold the cut: megabytes are not encoded for it.
    data = text[: max_bytes + 1].encode("utf-8", "surrogatepass")
    # Room for the marker at its longest: it never counts more than the whole text.
    kept = max_bytes - utf8_size(f"…[{size} {left_out}]")
    with_marker = kept > 0
    if not with_marker:
        kept = max_bytes
    while kept > 0 and data[kept] & 0xC0 == 0x80:  # a continuation byte: back to its start
        kept -= 1
    head = data[:kept].decode("utf-8", "surrogatepass")
    return f"{head}…[{size - kept} {left_out}]" if with_marker else head


def cut_utf8_end(text: str, max_bytes: int) -> str:
    """``text``, or its end as fits in ``max_bytes`` of UTF-8 after a marker.

    For a traceback, whose end (the innermost frames and the exception line) says why
    the run failed. The marker, ``…[N earlier bytes]``, comes first and counts toward
    the limit; the cut falls on a character boundary.
    """
    size = utf8_size(text)
    if size <= max_bytes:
        return text
    data = text[-(max_bytes + 1) :].encode("utf-8", "surrogatepass")  # holds the cut
    kept = max_bytes - utf8_size(f"…[{size} earlier bytes]")
    with_marker = kept > 0
    if not with_marker:
        kept = max_bytes
    start = len(data) - kept
    while start < len(data) and data[start] & 0xC0 == 0x80:  # inside a character: to the next
        start += 1
    tail = data[start:].decode("utf-8", "surrogatepass")
    left_out = size - (len(data) - start)
    return f"…[{left_out} earlier bytes]{tail}" if with_marker else tail


def mib(size: int) -> str:
    """A size (bytes, or characters) as messages say it: ``16.0 MiB``."""
    return f"{size / (1 << 20):.1f} MiB"
