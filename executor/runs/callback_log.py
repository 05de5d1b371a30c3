"""Qube-style callback logs: each run's output appended to ``<root>/job/<group>/<id>/<id>.cb``.

Qube writes a callback's ``print`` output to ``<jobid>.cb`` in the job's log directory,
``$LOGPATH/job/<jobid rounded down to 1000>/<jobid>/`` (qube-callbacks.md §3.3); admins
and tools already look there, so we keep the place and the name. Each entry starts
with one header line a person can grep (time, callback, trigger, language, outcome,
invocation, the sandbox policy, and the word ``shadow`` for a shadow run), then
stdout, then stderr and the failure when there are any.

Size cap: a file that would grow past ``max_bytes`` is first rotated to ``<id>.cb.1``
(replacing the older generation), so a job's logs never take more than twice the cap;
what all the jobs' logs take, and for how long, is ``callback_log_space``'s.
An entry larger than the cap on its own keeps its header and section lines; its texts
(stdout, stderr, the failure's message, the traceback) share the rest, a short one
whole, a long one as its start and its end around a marker of the bytes left out: an
admin reads the ``.cb`` to learn why a callback failed, and that is at the end of
stderr and in the failure, not in the start of a large stdout.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from executor.model import Invocation, RunResult
from executor.owned_dirs import OwnedDir, open_file, open_tree
from executor.runs.callback_log_space import CallbackLogSpace
from executor.visible_text import backslashed_lines, escaped, visible_lines

logger = logging.getLogger(__name__)

# Jobs whose log paths a CallbackLog keeps at once.
MAX_REMEMBERED_PATHS: Final = 4096
# Not the umask's (0644 under root's usual 022): the group its 0750 directories let in
# (a log reader's, with a setgid log_dir), no one else, whatever log_dir's own mode.
LOG_MODE: Final = 0o640
# Every directory made for the logs, log_dir's missing parts too (``owned_dirs``).
DIRECTORY_MODE: Final = 0o750


def log_path(root: Path, job_id: int) -> Path:
    """Where Qube keeps job ``job_id``'s callback log."""
    group = job_id // 1000 * 1000
    return root.joinpath(f"job/{group}/{job_id}/{job_id}.cb")  # one join: a run's bookkeeping


# The callback's own text is written as ``visible_lines`` shows it: every control
# character but the tab and the newline as an escape (``\x1b``), so none acts on a
# terminal that shows the log (a cursor move onto the header line, a carriage return,
# concealment) and the newline is the only line break any reader sees. Then a line that
# a reader could take for ours ("=== " opens a run's entry, "--- " a section) is escaped
# with a backslash, and so is a line that begins with one (an escape's included).
# Nothing else is changed.
def _escaped(text: str) -> str:
    """The callback's text, unable to act on a terminal or to forge a header or a section line."""
    return backslashed_lines(visible_lines(text))


@dataclass(frozen=True, slots=True)
class _Text:
    """One text the callback wrote, as an entry holds it."""

    name: str  # what the cut marker calls it
    text: str
    # Whether the entry ends it with a newline when it has none (a stream, the traceback;
    # the failure's message has the line break after it anyway).
    ends_line: bool


def _size(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


def _line_end(written: str, text: _Text) -> str:
    return "\n" if text.ends_line and written and not written.endswith("\n") else ""


def _marker(left_out_bytes: int, name: str) -> str:
    return f"[... {left_out_bytes} bytes of {name} left out ...]\n"


def _within(text: str, max_bytes: int, *, end: bool) -> tuple[str, int]:
    """The start (or ``end``) of ``text`` escaped in ``max_bytes`` at most, and its length kept.

    Cut before escaping, so an escape is never cut in two and a line the cut starts is
    escaped as every line start is (the end is written at a line start, after the marker).
    A character is at least a byte, so ``max_bytes`` characters are the most that can fit.
    """
    kept = min(len(text), max_bytes)
    while True:
        piece = text[len(text) - kept :] if end else text[:kept]
        written = _escaped(piece)
        size = _size(written)
        if size <= max_bytes or not kept:
            return written, kept
        kept = min(kept - 1, kept * max_bytes // size)


def _cut(text: _Text, max_bytes: int) -> str:
    """``text`` in ``max_bytes`` (or its marker alone): its start and end around a marker.

    The start takes up to half of the room, the end the rest.
    """
    # The marker with room for as many digits as the whole text's size has, and the two
    # line ends a cut may add.
    room = max_bytes - len(_marker(_size(text.text), text.name)) - 2
    head, head_chars = _within(text.text, max(0, room // 2), end=False)
    rest = text.text[head_chars:]
    tail, tail_chars = _within(rest, max(0, room - _size(head)), end=True)
    left_out = _size(rest[: len(rest) - tail_chars])
    return (
        head
        # A head that ends in the middle of a line ends it: the marker is a line of its own.
        + ("\n" if head and not head.endswith("\n") else "")
        + _marker(left_out, text.name)
        + tail
        + _line_end(tail, text)
    )


def _fitted(
    texts: list[_Text], max_bytes: int, escaped_texts: dict[int, str]
) -> Iterator[tuple[_Text, str]]:
    """Each text written whole or cut, all in ``max_bytes``: equal shares, a short one's rest to the others.

    ``escaped_texts``: the texts already escaped (by ``id``), not escaped again.
    """
    left = max_bytes
    sizes = {id(text): _size(text.text) for text in texts}
    # Shortest first: what one needs less than its share is left to the longer ones.
    for n, text in enumerate(sorted(texts, key=lambda t: sizes[id(t)])):
        share = max(0, left // (len(texts) - n))
        written = ""
        if sizes[id(text)] <= share:  # escaping only lengthens
            written = escaped_texts.get(id(text)) or _escaped(text.text)
            written += _line_end(written, text)
        if (not written and text.text) or _size(written) > share:
            written = _cut(text, share)
        left -= _size(written)
        yield text, written


def entry_stamp(when: float) -> str:
    """The time an entry's header shows for a run that ended at ``when`` (Unix time)."""
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")


def format_entry(
    invocation: Invocation, result: RunResult, when: float, max_bytes: int | None = None
) -> str:
    r"""The text appended for one run: header line, stdout, stderr, failure.

    Everything after the header that the callback wrote (its output, its exception's
    message and traceback) is escaped: a printed ``=== ... invocation=forged`` line is
    ``\\=== ...`` in the file, never a second header, and an ESC is ``\\x1b``. With
    ``max_bytes``, an entry larger than that is cut to it (see the module docstring):
    the header and section lines always stay, so a cap smaller than they are is passed.
    """
    stamp = entry_stamp(when)
    callback = invocation.callback
    header = (
        # The name may be a universal file's, which its admin chose: a control character
        # in it would act in a terminal or end the header line early.
        f"=== {stamp} callback={escaped(callback.name)} trigger={json.dumps(callback.triggers)} "
        f"language={callback.language} outcome={result.outcome.value} "
        f"invocation={result.invocation_id} policy={invocation.policy}"
        f"{' shadow' if invocation.shadow else ''}\n"
    )
    # The entry's parts in order: our own lines, and the callback's texts.
    parts: list[str | _Text] = [header]
    for name, text, truncated in (
        ("stdout", result.stdout, result.stdout_truncated),
        ("stderr", result.stderr, result.stderr_truncated),
    ):
        if not text and not truncated:
            continue
        if name == "stderr":
            parts.append("--- stderr\n")
        parts.append(_Text(name, text, ends_line=True))
        if truncated:
            parts.append(f"[{name} truncated at the output_bytes limit]\n")
    if result.failure is not None:
        parts += ["--- failure: ", _Text("the failure's message", result.failure.message, False)]
        parts.append("\n")
        if result.failure.traceback:
            parts.append(_Text("traceback", result.failure.traceback, ends_line=True))
    texts = [part for part in parts if isinstance(part, _Text)]
    ours = sum(_size(part) for part in parts if isinstance(part, str))
    written: dict[int, str] = {}
    if max_bytes is None or ours + sum(_size(t.text) for t in texts) <= max_bytes:
        written = {id(t): _escaped(t.text) for t in texts}
        whole = "".join(
            part
            if isinstance(part, str)
            else written[id(part)] + _line_end(written[id(part)], part)
            for part in parts
        )
        if max_bytes is None or _size(whole) <= max_bytes:
            return whole
    fitted = {id(text): cut for text, cut in _fitted(texts, max_bytes - ours, written)}
    return "".join(part if isinstance(part, str) else fitted[id(part)] for part in parts)


class CallbackLog:
    """Appends run entries to per-job ``.cb`` files under ``root``, capped at ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int, space: CallbackLogSpace | None = None) -> None:
        """``space`` hears what each job's log takes after each entry, and prunes the logs."""
        self._root = root
        self._max_bytes = max_bytes
        self.space = space
        # Each job's log path, made once: a job's runs come in bursts, and building a
        # Path was a fifth of an entry's cost. Forgotten wholesale past a bound.
        self._paths: dict[int, Path] = {}

    @property
    def root(self) -> Path:
        return self._root

    def append(self, invocation: Invocation, result: RunResult, when: float) -> Path:
        """Append one run's entry to its job's log; returns the file written.

        Raises UnsafePathError (no retry mends it) when something not the executor's is
        on the way (``owned_dirs``), another OSError when the storage refuses.
        """
        job_id = invocation.job_id
        path = self._path(job_id)
        data = format_entry(invocation, result, when, self._max_bytes).encode("utf-8", "replace")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        with open_tree(self._root, _directories(job_id), DIRECTORY_MODE) as directory:
            fd = open_file(directory, path.name, flags, LOG_MODE)
            rotated_size = None
            try:
                size = os.fstat(fd).st_size
                if size and size + len(data) > self._max_bytes:
                    rotated_size, size = size, 0
                    os.replace(
                        path.name,
                        path.name + ".1",
                        src_dir_fd=directory.fd,
                        dst_dir_fd=directory.fd,
                    )
                    os.close(fd)
                    fd = open_file(directory, path.name, flags, LOG_MODE)
                try:
                    unwritten = memoryview(data)
                    while unwritten:
                        unwritten = unwritten[os.write(fd, unwritten) :]
                except OSError:
                    # A full disk may take part of the entry: cut it off, so the entry
                    # written again later (``bookkeeping``) is the only one, whole.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, os.fstat(fd).st_size - (len(data) - len(unwritten)))
                    raise
                if self.space is not None:
                    if rotated_size is None and not self.space.knows(job_id):
                        rotated_size = _size_of(directory, path.name + ".1")
                    self.space.written(job_id, size + len(data), rotated_size)
            finally:
                os.close(fd)
        return path

    def logged(self, job_id: int) -> set[tuple[str, str]]:
        """The runs with an entry in the job's log (its rotated generation too).

        Each as its invocation id and its header's time (``entry_stamp``): the runs of one
        id (a resend's) are told apart by when they ended. Read at start-up only
        (``recovery``), for the few runs a crash left unrecorded: a header line is the
        only line that starts with "=== " (a callback's own are escaped).
        """
        name = self._path(job_id).name
        runs: set[tuple[str, str]] = set()
        try:
            directory = open_tree(self._root, _directories(job_id), DIRECTORY_MODE, make=False)
        except FileNotFoundError:
            return runs
        with directory:
            for generation in (name + ".1", name):
                try:
                    fd = open_file(directory, generation, os.O_RDONLY, LOG_MODE)
                except FileNotFoundError:
                    continue
                with os.fdopen(fd, encoding="utf-8", errors="replace") as file:
                    text = file.read()
                for line in text.splitlines():
                    if line.startswith("=== "):
                        stamp = line[4:].partition(" ")[0]
                        _, found, rest = line.partition(" invocation=")
                        if found:
                            runs.add((rest.partition(" policy=")[0], stamp))
        return runs

    def _path(self, job_id: int) -> Path:
        path = self._paths.get(job_id)
        if path is None:
            if len(self._paths) >= MAX_REMEMBERED_PATHS:
                self._paths.clear()
            path = self._paths[job_id] = log_path(self._root, job_id)
        return path


def _size_of(directory: OwnedDir, name: str) -> int:
    """The size of the file ``name`` in ``directory``; 0 when there is none."""
    try:
        return os.stat(name, dir_fd=directory.fd, follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def _directories(job_id: int) -> tuple[str, str, str]:
    """The directories of ``log_path``'s, below the root."""
    return ("job", str(job_id // 1000 * 1000), str(job_id))
