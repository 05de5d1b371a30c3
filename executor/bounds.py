"""What a callback can make the executor hold and send: the stated sizes, and text cut to them.

A callback chooses the text of its output, its qb calls and its failure; every answer,
report and history record carries them. So each has a size, stated in the README:

- stdout and stderr: each at most the run's ``output_bytes`` of UTF-8 (after invalid
  bytes are replaced), see ``sandbox/capture.py``;
- actions: each record's verb, target and message cut to the sizes below, at most
  ``MAX_ACTIONS_BYTES`` of them together (later calls are counted, not kept);
- a failure: its message, exception type and traceback cut to the sizes below.
"""

from __future__ import annotations

from typing import Final

# The largest callback code, in UTF-8 bytes, the executor takes: at Execute and at
# RegisterJob alike (the reference farm's SubmitJobs has the same), so no path stores and
# runs what another refuses. A callbacks.conf file has its own (universal.MAX_FILE_BYTES).
MAX_CODE_BYTES: Final = 1 << 20
MAX_VERB_CHARS: Final = 64
MAX_TARGET_CHARS: Final = 512
MAX_MESSAGE_CHARS: Final = 1024
MAX_ACTIONS_BYTES: Final = 1 << 20
MAX_FAILURE_MESSAGE_CHARS: Final = 4096
MAX_EXCEPTION_TYPE_CHARS: Final = 256
MAX_TRACEBACK_CHARS: Final = 64 << 10
# The longest name a request may give what it names: a work item, an instance's or a
# worker's host, a job's name, label, user, status, prototype and mail addresses, an
# event's id, context and extra, an actor. Each is stored, journaled and sent on in
# events and reports; a Qube name is far shorter. Characters, as Python counts them.
MAX_NAME_CHARS: Final = 1024
# Ids are stored as SQLite integers (signed 64 bits): a uint64 above this cannot be kept,
# so neither a request nor a callback's qb call may name one. Instance ids are int32.
MAX_ID: Final = (1 << 63) - 1
MAX_SUBJOB_ID: Final = (1 << 31) - 1


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
