"""Qube-style callback logs: each run's output appended to ``<root>/job/<group>/<id>/<id>.cb``.

Qube writes a callback's ``print`` output to ``<jobid>.cb`` in the job's log directory,
``$LOGPATH/job/<jobid rounded down to 1000>/<jobid>/`` (qube-callbacks.md §3.3); admins
and tools already look there, so we keep the place and the name. Each entry starts
with one header line a person can grep (time, callback, trigger, language, outcome,
invocation, the sandbox policy, and the word ``shadow`` for a shadow run), then
stdout, then stderr and the failure when there are any.

Size cap: a file that would grow past ``max_bytes`` is first rotated to ``<id>.cb.1``
(replacing the older generation), so a job's logs never take more than twice the cap;
an entry larger than the cap on its own is cut, with a marker saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from executor.model import Invocation, RunResult
from executor.visible_text import escaped, visible_lines

logger = logging.getLogger(__name__)

CUT_MARKER: Final = "\n[... entry cut at callback_log_max_bytes]\n"
# Jobs whose log paths a CallbackLog keeps at once.
MAX_REMEMBERED_PATHS: Final = 4096
# Not the umask's (0644 under root's usual 022): the group its 0750 directories let in
# (a log reader's, with a setgid log_dir), no one else, whatever log_dir's own mode.
LOG_MODE: Final = 0o640


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
_OURS: Final = ("\\", "=== ", "--- ")  # the backslash first: its escape must not be escaped


def _escaped(text: str) -> str:
    """The callback's text, unable to act on a terminal or to forge a header or a section line.

    The line starts by ``str.replace`` per prefix, not one regular expression: each
    pass is a C search, so 16 MiB takes milliseconds (a regex with a lookbehind at
    every position took ~0.8 s, holding the GIL, and the event loop with it).
    """
    text = visible_lines(text)
    if text.startswith(_OURS):
        text = "\\" + text
    if "\n" in text:
        for ours in _OURS:
            text = text.replace("\n" + ours, "\n\\" + ours)
    return text


def format_entry(
    invocation: Invocation, result: RunResult, when: float, max_bytes: int | None = None
) -> str:
    r"""The text appended for one run: header line, stdout, stderr, failure.

    Everything after the header that the callback wrote (its output, its exception's
    message and traceback) is escaped: a printed ``=== ... invocation=forged`` line is
    ``\\=== ...`` in the file, never a second header, and an ESC is ``\\x1b``. With
    ``max_bytes`` (the entry is cut there), each text is escaped only as far as can be kept.
    """
    stamp = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
    callback = invocation.callback
    header = (
        # The name may be a universal file's, which its admin chose: a control character
        # in it would act in a terminal or end the header line early.
        f"=== {stamp} callback={escaped(callback.name)} trigger={json.dumps(callback.triggers)} "
        f"language={callback.language} outcome={result.outcome.value} "
        f"invocation={result.invocation_id} policy={invocation.policy}"
        f"{' shadow' if invocation.shadow else ''}\n"
    )
    parts = [header]
    for name, text, truncated in (
        ("stdout", result.stdout, result.stdout_truncated),
        ("stderr", result.stderr, result.stderr_truncated),
    ):
        if not text and not truncated:
            continue
        if name == "stderr":
            parts.append("--- stderr\n")
        # A character is at least a byte; the margin keeps an escape that a cut "=== "
        # would lose beyond what is kept.
        kept = text if max_bytes is None else text[: max_bytes + len("=== ")]
        written = _escaped(kept)
        parts.append(written if written.endswith("\n") or not written else written + "\n")
        if truncated:
            parts.append(f"[{name} truncated at the output_bytes limit]\n")
    if result.failure is not None:
        parts.append(f"--- failure: {_escaped(result.failure.message)}\n")
        if result.failure.traceback:
            tb = _escaped(result.failure.traceback)
            parts.append(tb if tb.endswith("\n") else tb + "\n")
    return "".join(parts)


class CallbackLog:
    """Appends run entries to per-job ``.cb`` files under ``root``, capped at ``max_bytes``."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self._root = root
        self._max_bytes = max_bytes
        # Each job's log path, made once: a job's runs come in bursts, and building a
        # Path was a fifth of an entry's cost. Forgotten wholesale past a bound.
        self._paths: dict[int, Path] = {}

    @property
    def root(self) -> Path:
        return self._root

    def append(self, invocation: Invocation, result: RunResult, when: float) -> Path:
        """Append one run's entry to its job's log; returns the file written."""
        path = self._path(invocation.job_id)
        data = format_entry(invocation, result, when, self._max_bytes).encode("utf-8", "replace")
        if len(data) > self._max_bytes:
            marker = CUT_MARKER.encode()
            keep = max(0, self._max_bytes - len(marker))
            data = data[:keep].decode("utf-8", "ignore").encode() + marker
            data = data[: self._max_bytes]
        fd = self._open(path)
        try:
            size = os.fstat(fd).st_size
            if size and size + len(data) > self._max_bytes:
                os.replace(path, path.with_name(path.name + ".1"))
                os.close(fd)
                fd = self._open(path)
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
        finally:
            os.close(fd)
        return path

    def logged(self, job_id: int) -> set[str]:
        """The invocation ids with an entry in the job's log (its rotated generation too).

        Read at start-up only (``recovery``), for the few runs a crash left unrecorded: a
        header line is the only line that starts with "=== " (a callback's own are escaped).
        """
        path = self._path(job_id)
        ids: set[str] = set()
        for generation in (path.with_name(path.name + ".1"), path):
            try:
                text = generation.read_text("utf-8", "replace")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                if line.startswith("=== "):
                    _, found, rest = line.partition(" invocation=")
                    if found:
                        ids.add(rest.partition(" policy=")[0])
        return ids

    def _path(self, job_id: int) -> Path:
        path = self._paths.get(job_id)
        if path is None:
            if len(self._paths) >= MAX_REMEMBERED_PATHS:
                self._paths.clear()
            path = self._paths[job_id] = log_path(self._root, job_id)
        return path

    @staticmethod
    def _open(path: Path) -> int:
        """The log for appending, made with its directories when missing.

        Only then: a run's bookkeeping is on the event loop, and most runs find them.
        """
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            return os.open(path, flags, LOG_MODE)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            return os.open(path, flags, LOG_MODE)
